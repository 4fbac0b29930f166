/**
 * Your own plugins, in the route's pipeline: the config's `routes[].plugins` and the plugins given
 * to `buildGateway(config, { plugins })`, each placed `beforeAuth` or `afterAuth` (the default).
 * A plugin placed on a route sees only that route's scope.
 */
import { existsSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyPluginAsync, FastifyPluginCallback } from 'fastify'
import type { RoutePlugin } from '../../schemas/config.js'
import { isScopeSharing } from '../core/fastify-internals.js'

export type AnyPlugin = FastifyPluginAsync<Record<string, unknown>> | FastifyPluginCallback<Record<string, unknown>>

/** `./x.js` (resolved against the config file at load) or a package name; default export is the plugin. */
export async function loadRoutePlugin (entry: RoutePlugin): Promise<{ plugin: AnyPlugin, options: Record<string, unknown> }> {
  const path = typeof entry === 'string' ? entry : entry.path
  const options = typeof entry === 'string' ? {} : { ...(entry.options ?? {}) }
  const specifier = path.startsWith('/') ? pathToFileURL(path).href : path
  let mod: Record<string, unknown>
  try {
    mod = await import(specifier) as Record<string, unknown>
  } catch (err) {
    // A TypeScript plugin named by its .js output that was never compiled (examples/ → dist/examples/).
    const uncompiled = path.endsWith('.js') && !existsSync(path) && existsSync(path.slice(0, -3) + '.ts')
    const hint = uncompiled ? ' (only its TypeScript source exists: compile it; `npm run build` puts examples/ in dist/examples/)' : ''
    throw new Error(`plugin ${path}: cannot be loaded: ${(err as Error).message}${hint}`)
  }
  let plugin = mod.default ?? mod.plugin
  if (typeof plugin === 'object' && plugin !== null && 'default' in plugin) plugin = (plugin as { default: unknown }).default
  if (typeof plugin !== 'function') throw new Error(`plugin ${path}: its default export must be a Fastify plugin function`)
  return { plugin: inRouteScope(plugin as AnyPlugin, path), options }
}

/**
 * A plain plugin would get a child scope of its own, and its hooks would never see the proxy
 * routes, which live in the route's scope. So it is registered the way fastify-plugin registers
 * (in the route's scope, still encapsulated from every other route); a plugin already wrapped
 * with fastify-plugin is used as it is.
 */
export function inRouteScope (plugin: AnyPlugin, path: string): AnyPlugin {
  if (isScopeSharing(plugin)) return plugin
  const shared = plugin.length >= 3
    ? function routePlugin (this: unknown, instance: FastifyInstance, opts: Record<string, unknown>, done: (err?: Error) => void): void {
      (plugin as FastifyPluginCallback<Record<string, unknown>>).call(this, instance, opts, done)
    }
    : async function routePlugin (this: unknown, instance: FastifyInstance, opts: Record<string, unknown>): Promise<void> {
      await (plugin as FastifyPluginAsync<Record<string, unknown>>).call(this, instance, opts)
    }
  return fp(shared as AnyPlugin, { name: `route-plugin:${path}`, fastify: '5.x' })
}

/** Where a user plugin runs in the route's pipeline. */
export type PluginPlace = 'beforeAuth' | 'afterAuth'

/** A plugin given in code: `buildGateway(config, { plugins: [{ plugin, at: 'beforeAuth' }] })`. */
export interface EmbeddedPlugin {
  plugin: AnyPlugin
  options?: Record<string, unknown>
  /** Default `afterAuth`. */
  at?: PluginPlace
  /** Shown in errors and the plugin's name; default the function's name. */
  name?: string
}

export interface UserPluginsOptions {
  /** The route's config entries at this place. */
  entries: readonly RoutePlugin[]
  /** The plugins given in code at this place. */
  embedded: readonly EmbeddedPlugin[]
}

/** Loads and registers the route's plugins of one place, in order: config entries, then code. */
async function userPluginsPlugin (scope: FastifyInstance, opts: UserPluginsOptions): Promise<void> {
  for (const entry of opts.entries) {
    const { plugin, options } = await loadRoutePlugin(entry)
    await scope.register(plugin, options)
  }
  for (const entry of opts.embedded) {
    const name = entry.name ?? (entry.plugin.name !== '' ? entry.plugin.name : 'embedded')
    await scope.register(inRouteScope(entry.plugin, name), { ...(entry.options ?? {}) })
  }
}

export const userPlugins = fp(userPluginsPlugin, { name: 'portcullis-user-plugins', fastify: '5.x' })

/** The place of a config entry (a bare path runs afterAuth). */
export function placeOf (entry: RoutePlugin): PluginPlace {
  return typeof entry === 'string' ? 'afterAuth' : entry.at ?? 'afterAuth'
}

/**
 * One encapsulated Fastify scope per configured route. The pipeline inside it, in this order:
 * path guard → (security plugins, added by their own modules) → the route's user plugins →
 * the proxy routes. Hooks registered here see only this route; registering them before the
 * proxy routes matters, because a route copies its scope's hooks when it is created.
 */
import { existsSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifyPluginAsync, FastifyPluginCallback, onRequestHookHandler } from 'fastify'
import type { GatewayConfig, RouteConfig, RoutePlugin } from '../schemas/config.js'
import { GatewayError } from '../schemas/errors.js'
import type { Forwarder } from './forward.js'
import validate from '../plugins/validate.js'
import { parseSize } from '../schemas/common.js'
import ipFilter from '../plugins/ip-filter.js'
import cors, { corsRouteMethods } from '../plugins/cors.js'
import { rateLimitConsumer, rateLimitEdge } from '../plugins/rate-limit.js'
import authenticate from '../plugins/authenticate.js'
import authorize from '../plugins/authorize.js'

export interface RouteScopeOptions {
  /** The whole config (users, jwt, rateLimit… are global sections the route's plugins read). */
  config: Readonly<GatewayConfig>
  route: Readonly<RouteConfig>
  forwarder: Forwarder
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The configured route's name: access log and metrics label (never the raw path). */
    routeName?: string
  }
}

export async function routeScope (scope: FastifyInstance, opts: RouteScopeOptions): Promise<void> {
  const { route, forwarder } = opts
  // The pipeline. Each stage is a fastify-plugin (not encapsulated), so its hooks land in this
  // scope, and hooks of one stage run in the order registered here. Every stage before the body
  // is parsed runs at onRequest, so a request refused there is never parsed.
  //  1. path guard (canonical prefix, no dot segments)
  //  2. IP allow/deny                       (edge: plugins/ip-filter)
  //  3. CORS preflight, rate limit by IP    (edge: plugins/cors, plugins/rate-limit)
  //  4. authenticate, then authorize        (plugins/authenticate, plugins/authorize)
  //  5. rate limit by consumer              (plugins/rate-limit)
  //  6. parse + validate the body           (plugins/validate)
  //  7. identity headers for the upstream   (plugins/identity: added by the forwarder at dispatch, no hook)
  //  8. the route's own plugins (config routes[].plugins)
  //  9. the proxy routes
  scope.addHook('onRequest', pathGuard(route.prefix))
  await scope.register(ipFilter, { filters: [opts.config.ipFilter, route.ipFilter] }) // 2
  if (route.cors !== undefined) await scope.register(cors, { cors: route.cors, methods: route.methods }) // 3
  if (route.rateLimit !== undefined) await scope.register(rateLimitEdge, { route: route.name, limit: route.rateLimit }) // 3
  if (route.auth.length > 0) { // 4 (onRequest, between the two limiters)
    await scope.register(authenticate, { config: opts.config, route })
    await scope.register(authorize, { route, realm: opts.config.authRealm })
  }
  if (route.rateLimit !== undefined) await scope.register(rateLimitConsumer, { route: route.name, limit: route.rateLimit }) // 5
  if (route.validate !== undefined) { // 6 (preValidation: after every onRequest stage, so never before auth)
    const upstream = Array.isArray(route.upstream) ? route.upstream[0] : route.upstream
    await scope.register(validate, {
      validate: route.validate,
      at: `routes[${opts.config.routes.indexOf(route)}].validate`,
      routeName: route.name,
      prefix: route.prefix,
      upstreamPath: new URL(upstream).pathname.replace(/\/+$/, ''),
      bodyLimit: parseSize(route.bodyLimit ?? opts.config.server.bodyLimit)
    })
  }

  for (const entry of route.plugins) {
    const { plugin, options } = await loadRoutePlugin(entry)
    await scope.register(plugin, options)
  }

  // Bodies stay unread streams: the forwarder pipes them to the upstream as they arrive.
  scope.removeAllContentTypeParsers()
  scope.addContentTypeParser('*', function passThrough (_request, payload, done) { done(null, payload) })

  // The forwarder answers through the reply (hijacked for the upstream's response, or an error).
  const handler = (request: FastifyRequest, reply: FastifyReply): void => { forwarder.forward(request, reply) }
  const base = route.prefix === '/' ? '' : route.prefix
  const urls = base === '' ? ['/', '/*'] : [base, `${base}/*`]
  for (const url of urls) {
    scope.route({ method: corsRouteMethods(route.methods, route.cors), url, handler, config: { routeName: route.name } })
  }
}

/**
 * The router matches paths after decoding them, and upstream servers normalise dot segments.
 * So a route only forwards URLs that start with its prefix exactly as configured, and never
 * a path with `.`/`..` segments (plain or percent-encoded) that the upstream could resolve to a
 * resource outside the prefix — under this route's authorization.
 */
export function pathGuard (prefix: string): onRequestHookHandler {
  const base = prefix === '/' ? '' : prefix
  return function guardPath (request, _reply, done) {
    const url = request.raw.url ?? '/'
    if (base !== '') {
      const next = url.charCodeAt(base.length)
      if (!url.startsWith(base) || !(Number.isNaN(next) || next === 47 /* / */ || next === 63 /* ? */)) {
        done(new GatewayError('GW_ERR_NOT_FOUND', 'No route matches this path.'))
        return
      }
    }
    if (hasDotSegment(url)) {
      done(new GatewayError('GW_ERR_BAD_REQUEST', 'The path must not contain "." or ".." segments.'))
      return
    }
    done()
  }
}

export function hasDotSegment (url: string): boolean {
  const q = url.indexOf('?')
  let path = q === -1 ? url : url.slice(0, q)
  if (!path.includes('.') && !path.includes('%') && !path.includes('\\')) return false
  path = path.replace(/%2e/gi, '.').replace(/%2f|%5c|\\/gi, '/')
  return path.split('/').some((segment) => segment === '.' || segment === '..')
}

type AnyPlugin = FastifyPluginAsync<Record<string, unknown>> | FastifyPluginCallback<Record<string, unknown>>

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
function inRouteScope (plugin: AnyPlugin, path: string): AnyPlugin {
  if ((plugin as unknown as Record<symbol, unknown>)[Symbol.for('skip-override')] === true) return plugin
  const shared = plugin.length >= 3
    ? function routePlugin (this: unknown, instance: FastifyInstance, opts: Record<string, unknown>, done: (err?: Error) => void): void {
      (plugin as FastifyPluginCallback<Record<string, unknown>>).call(this, instance, opts, done)
    }
    : async function routePlugin (this: unknown, instance: FastifyInstance, opts: Record<string, unknown>): Promise<void> {
      await (plugin as FastifyPluginAsync<Record<string, unknown>>).call(this, instance, opts)
    }
  return fp(shared as AnyPlugin, { name: `route-plugin:${path}`, fastify: '5.x' })
}

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
import validate from '../plugins/validation/validate.js'
import { parseSize } from '../schemas/common.js'
import ipFilter from '../plugins/edge/ip-filter.js'
import cors, { corsRouteMethods } from '../plugins/edge/cors.js'
import { rateLimitConsumer, rateLimitEdge } from '../plugins/rate-limit/rate-limit.js'
import authenticate from '../plugins/auth/authenticate.js'
import authorize from '../plugins/auth/authorize.js'

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
  //  1. path guard (canonical prefix; no dot segments, %2F, backslash, ;, NUL, #)
  //  2. IP allow/deny                       (edge: plugins/edge/ip-filter)
  //  3. CORS preflight, rate limit by IP    (edge: plugins/edge/cors, plugins/rate-limit/rate-limit)
  //  4. authenticate, then authorize        (plugins/auth/authenticate, plugins/auth/authorize)
  //  5. rate limit by consumer              (plugins/rate-limit/rate-limit)
  //  6. parse + validate the body           (plugins/validation/validate)
  //  7. identity headers for the upstream   (plugins/auth/identity: added by the forwarder at dispatch, no hook)
  //  8. the route's own plugins (config routes[].plugins)
  //  9. the proxy routes
  scope.addHook('onRequest', pathGuard(route.prefix, route.allowInPath))
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

/** Spellings a route may let through its path guard (routes[].allowInPath); NUL/control bytes never. */
export type PathAllowance = 'encodedSlash' | 'backslash' | 'semicolon'

const ALLOW_ENCODED_SLASH = 1
const ALLOW_BACKSLASH = 2
const ALLOW_SEMICOLON = 4

const DOT_SEGMENT = 'The path must not contain "." or ".." segments.'
const ENCODED_SLASH = 'The path must not contain an encoded slash (%2F).'
const BACKSLASH = 'The path must not contain a backslash (\\ or %5C).'
const SEMICOLON = 'The path must not contain ";" parameters.'
const CONTROL = 'The path must not contain a NUL byte or another control character (%00-%1F, %7F).'
const FRAGMENT = 'The request target must not contain a fragment (#).'

/**
 * The router matches paths after decoding them, and upstream servers normalise paths each their
 * own way. So a route only forwards URLs that start with its prefix exactly as configured, and
 * refuses (400) every path spelling that an upstream could resolve to another resource than the
 * one the gateway checked — under this route's authorization and validation:
 *
 * - `.`/`..` segments, plain or percent-encoded (resolved by every upstream);
 * - an encoded slash `%2F` (decoded to a separator by Tomcat with ALLOW_ENCODED_SLASH, some
 *   WSGI/CGI servers, anything that decodes before routing);
 * - a backslash, raw or `%5C` (a separator on Windows servers, IIS, some Java containers);
 * - `;` path parameters (`/admin;x/`, `/..;/`: stripped by Tomcat and Spring before matching);
 * - a NUL or other control byte, raw or encoded (C-string truncation; CR/LF injection where an
 *   upstream puts the decoded path in a header);
 * - a fragment `#` (not part of a request target, RFC 9112 §3.2; gunicorn and others drop it,
 *   so `/api/people/#x` is `/api/people/` upstream).
 *
 * `allow` lets a route accept encoded slashes, backslashes or `;` (routes[].allowInPath); dot
 * segments stay refused whatever the separator, and `..;x` counts as `..` when `;` is allowed.
 * Other percent-encodings (`%20`, `%25`, `%41`…) are ordinary: plugins/validation/validate.ts matches its
 * rules on decoded, trimmed segments, so they cannot slip past a rule either.
 */
export function pathGuard (prefix: string, allow: readonly PathAllowance[] = []): onRequestHookHandler {
  const base = prefix === '/' ? '' : prefix
  const allowed = (allow.includes('encodedSlash') ? ALLOW_ENCODED_SLASH : 0) |
    (allow.includes('backslash') ? ALLOW_BACKSLASH : 0) |
    (allow.includes('semicolon') ? ALLOW_SEMICOLON : 0)
  return function guardPath (request, _reply, done) {
    const url = request.raw.url ?? '/'
    if (base !== '') {
      const next = url.charCodeAt(base.length)
      if (!url.startsWith(base) || !(Number.isNaN(next) || next === 47 /* / */ || next === 63 /* ? */)) {
        done(new GatewayError('GW_ERR_NOT_FOUND', 'No route matches this path.'))
        return
      }
    }
    // The prefix itself is spelled as configured (checked above): the scan starts after it.
    const problem = pathProblem(url, allowed, base.length)
    if (problem !== null) {
      done(new GatewayError('GW_ERR_BAD_REQUEST', problem))
      return
    }
    done()
  }
}

/** Whether the URL's path (not its query string) has a `.` or `..` segment, in any spelling. */
export function hasDotSegment (url: string): boolean {
  return pathProblem(url, ALLOW_ENCODED_SLASH | ALLOW_BACKSLASH | ALLOW_SEMICOLON, 0) === DOT_SEGMENT
}

/** `url.indexOf(ch)` falls inside the path, before `end` (the query string's `?`). */
function inPath (url: string, ch: string, end: number): boolean {
  const i = url.indexOf(ch)
  return i !== -1 && i < end
}

function hexValue (code: number): number {
  if (code >= 48 && code <= 57) return code - 48 // 0-9
  const lower = code | 0x20
  if (lower >= 97 && lower <= 102) return lower - 87 // a-f
  return -1
}

/**
 * What is wrong with the spelling of the URL's path from `from` on (the detail of the 400), or
 * null. A path with none of `%`, `\\`, `;`, `#`, `.` costs five indexOf and nothing else;
 * otherwise one pass over the path, without allocating. `allow`: the ALLOW_* bits. Raw control
 * bytes are refused by Node's parser before this runs (HPE_INVALID_URL); the check for them here
 * costs nothing and does not rely on it.
 */
export function pathProblem (url: string, allow: number, from: number): string | null {
  let end = url.indexOf('?')
  if (end === -1) end = url.length
  if (!inPath(url, '%', end) && !inPath(url, '\\', end) && !inPath(url, ';', end) && !inPath(url, '#', end) && !inPath(url, '.', end)) {
    return null
  }
  // The segment being read: how many dots (raw or %2e) and whether anything else; `;` ends the
  // part of a segment that servers compare (`..;x` is `..` to Tomcat).
  let dots = 0
  let other = false
  let inParams = false
  for (let i = from; i <= end; i++) {
    let c = i === end ? 47 : url.charCodeAt(i)
    let separator = c === 47 // '/'
    if (c === 37 /* % */ && i + 2 < end) {
      const hi = hexValue(url.charCodeAt(i + 1))
      const lo = hexValue(url.charCodeAt(i + 2))
      if (hi !== -1 && lo !== -1) {
        c = hi * 16 + lo
        i += 2
        if (c === 0x2f) {
          if ((allow & ALLOW_ENCODED_SLASH) === 0) return ENCODED_SLASH
          separator = true
        } else if (c === 0x5c) {
          if ((allow & ALLOW_BACKSLASH) === 0) return BACKSLASH
          separator = true
        } else if (c < 0x20 || c === 0x7f) {
          return CONTROL
        }
        // Any other decoded byte (an encoded ';' or '#' included) is an ordinary character;
        // a decoded dot counts as a dot below.
      }
      // A malformed escape (%zz) is left to the router (400 "The request URL is malformed").
    } else if (c === 92 /* backslash */) {
      if ((allow & ALLOW_BACKSLASH) === 0) return BACKSLASH
      separator = true
    } else if (c === 59 /* ; */) {
      if ((allow & ALLOW_SEMICOLON) === 0) return SEMICOLON
      inParams = true
      continue
    } else if (c === 35 /* # */) {
      return FRAGMENT
    } else if (c < 0x20 || c === 0x7f) {
      return CONTROL
    }
    if (separator) {
      if (!other && (dots === 1 || dots === 2)) return DOT_SEGMENT
      dots = 0
      other = false
      inParams = false
    } else if (!inParams) {
      if (c === 46 /* . */) dots++
      else other = true
    }
  }
  return null
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

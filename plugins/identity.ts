/**
 * Pipeline stage 7: what the upstream learns about the caller. On every route (public ones
 * too) the client's own copies of the identity headers never reach the upstream: the forwarder
 * drops them route-wide (`routeStripHeaders`, set as ForwarderOptions.stripHeaders in
 * src/app.ts). After authentication this plugin adds the gateway's own:
 *
 *   X-Authenticated-User    the subject (percent-encoded outside printable ASCII)
 *   X-Authenticated-Scopes  the scopes, space-separated
 *   X-Authenticated-Via     jwt | basic | apiKey
 *
 * and applies `routes[].forwardAuthorization`: `bearer` (default) forwards `Authorization:
 * Bearer …` (the upstream, e.g. DRF, may verify it again) and strips Basic credentials and API
 * keys; `all` forwards everything; `none` strips them all.
 *
 * It runs at `preHandler`, so an identity set by a route's own plugin (at onRequest or
 * preValidation) is forwarded too.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { GatewayConfig, RouteConfig } from '../schemas/config.js'

export interface IdentityOptions {
  config: Readonly<GatewayConfig>
  route: Readonly<RouteConfig>
}

/** Request headers the forwarder drops on every request of this route. */
export function routeStripHeaders (config: Readonly<GatewayConfig>, route: Readonly<RouteConfig>): string[] {
  const names = Object.values(config.identityHeaders).map((h) => h.toLowerCase())
  if (route.forwardAuthorization !== 'all' && config.apiKeys.length > 0) names.push(config.apiKeyHeader.toLowerCase())
  if (route.forwardAuthorization === 'none') names.push('authorization')
  return names
}

/** A header-safe subject: printable ASCII as is, everything else (and `%`) percent-encoded as UTF-8. */
export function headerSafe (value: string): string {
  return /^[\x20-\x24\x26-\x7E]*$/.test(value)
    ? value
    : value.replace(/[^\x20-\x24\x26-\x7E]+/gu, (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase()))
}

const STRIP_AUTHORIZATION: ReadonlySet<string> = new Set(['authorization'])

async function identityPlugin (scope: FastifyInstance, opts: IdentityOptions): Promise<void> {
  const { config, route } = opts
  const userHeader = config.identityHeaders.user.toLowerCase()
  const scopesHeader = config.identityHeaders.scopes.toLowerCase()
  const viaHeader = config.identityHeaders.via.toLowerCase()
  // With `bearer`, an Authorization header of another scheme (Basic…) is dropped per request.
  const stripNonBearer = route.forwardAuthorization === 'bearer'
  if (route.auth.length === 0 && !stripNonBearer && route.plugins.length === 0) return

  scope.addHook('preHandler', function identityHeaders (request, _reply, done) {
    const identity = request.identity
    let strip: ReadonlySet<string> | undefined
    if (stripNonBearer) {
      const auth = request.headers.authorization
      if (auth !== undefined && !(auth.length > 7 && auth.slice(0, 7).toLowerCase() === 'bearer ')) strip = STRIP_AUTHORIZATION
    }
    if (identity === undefined && strip === undefined) { done(); return }
    const extras = request.upstream
    const next = { ...extras }
    if (strip !== undefined) next.strip = extras?.strip === undefined ? strip : new Set([...extras.strip, ...strip])
    if (identity !== undefined) {
      const own: Array<readonly [string, string]> = [
        [userHeader, headerSafe(identity.subject)],
        [scopesHeader, headerSafe(identity.scopes.join(' '))],
        [viaHeader, headerSafe(identity.scheme)]
      ]
      next.headers = extras?.headers === undefined ? own : [...extras.headers, ...own]
    }
    request.upstream = next
    done()
  })
}

export default fp(identityPlugin, { name: 'portcullis-identity', fastify: '5.x' })

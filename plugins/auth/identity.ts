/**
 * What the upstream learns about the caller. On every route (public ones
 * too) the client's own copies of the identity headers never reach the upstream: the forwarder
 * drops them route-wide (`routeStripHeaders`, set as ForwarderOptions.stripHeaders in
 * src/app.ts). After authentication the forwarder adds the gateway's own:
 *
 *   X-Authenticated-User    the subject (percent-encoded outside printable ASCII)
 *   X-Authenticated-Scopes  the scopes, space-separated
 *   X-Authenticated-Via     jwt | basic | apiKey
 *
 * `routes[].forwardAuthorization` is applied by the forwarder from route-wide settings fixed at
 * start (no hook): `bearer` (default) forwards `Authorization: Bearer …` (the upstream, e.g. DRF,
 * may verify it again) and strips Basic credentials and API keys (ForwarderOptions
 * .bearerOnlyAuthorization); `all` forwards everything; `none` strips them all (stripHeaders).
 *
 * The headers are added by the forwarder when it dispatches the request (ForwarderOptions
 * .identityHeaders, from `identityHeaderSource` below): no hook, no copy of `request.upstream`.
 * So an identity set by a route's own plugin, at any stage before the handler, is forwarded
 * too, and a retried request carries the same headers.
 */
import type { FastifyRequest } from 'fastify'
import type { GatewayConfig, RouteConfig } from '../../schemas/config.js'
import type { Identity } from '../../schemas/auth.js'

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

/** The identity headers of a request (after the client's own copies were dropped), or undefined. */
export type IdentityHeaderSource = (request: FastifyRequest) => ReadonlyArray<readonly [string, string]> | undefined

/** One per gateway: what the forwarder asks at dispatch for the headers of `request.identity`. */
export function identityHeaderSource (config: Readonly<GatewayConfig>): IdentityHeaderSource {
  const userHeader = config.identityHeaders.user.toLowerCase()
  const scopesHeader = config.identityHeaders.scopes.toLowerCase()
  const viaHeader = config.identityHeaders.via.toLowerCase()
  // A verified token is remembered (plugins/auth/jwt), so the same frozen Identity object comes back
  // request after request: its three header values are computed once.
  const headersOf = new WeakMap<Identity, ReadonlyArray<readonly [string, string]>>()
  return function identityHeaders (request) {
    const identity = request.identity
    if (identity === undefined) return undefined
    let own = headersOf.get(identity)
    if (own === undefined) {
      own = [
        [userHeader, headerSafe(identity.subject)],
        [scopesHeader, headerSafe(identity.scopes.join(' '))],
        [viaHeader, headerSafe(identity.scheme)]
      ]
      // Only frozen identities (what the gateway's schemes make) can be remembered safely.
      if (Object.isFrozen(identity) && Object.isFrozen(identity.scopes)) headersOf.set(identity, own)
    }
    return own
  }
}

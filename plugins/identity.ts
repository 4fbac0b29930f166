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
 * `routes[].forwardAuthorization` is applied by the forwarder from route-wide settings fixed at
 * start (no hook): `bearer` (default) forwards `Authorization: Bearer …` (the upstream, e.g. DRF,
 * may verify it again) and strips Basic credentials and API keys (ForwarderOptions
 * .bearerOnlyAuthorization); `all` forwards everything; `none` strips them all (stripHeaders).
 *
 * The hook runs at `preHandler`, so an identity set by a route's own plugin (at onRequest or
 * preValidation) is forwarded too; a public route without plugins gets no hook at all.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { GatewayConfig, RouteConfig } from '../schemas/config.js'
import type { Identity } from '../schemas/auth.js'

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

async function identityPlugin (scope: FastifyInstance, opts: IdentityOptions): Promise<void> {
  const { config, route } = opts
  const userHeader = config.identityHeaders.user.toLowerCase()
  const scopesHeader = config.identityHeaders.scopes.toLowerCase()
  const viaHeader = config.identityHeaders.via.toLowerCase()
  // Only a route that can have an identity (authentication, or the route's own plugins) needs the hook.
  if (route.auth.length === 0 && route.plugins.length === 0) return

  // A verified token is remembered (plugins/jwt), so the same frozen Identity object comes back
  // request after request: its three header values are computed once.
  const headersOf = new WeakMap<Identity, ReadonlyArray<readonly [string, string]>>()
  scope.addHook('preHandler', function identityHeaders (request, _reply, done) {
    const identity = request.identity
    if (identity === undefined) { done(); return }
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
    const extras = request.upstream
    request.upstream = extras === undefined
      ? { headers: own }
      : { ...extras, headers: extras.headers === undefined ? own : [...extras.headers, ...own] }
    done()
  })
}

export default fp(identityPlugin, { name: 'portcullis-identity', fastify: '5.x' })

/**
 * Authorization, right after authentication at `onRequest`. The scopes the
 * route requires for the request's method (`routes[].scopes`; HEAD falls back to GET's list, any
 * other method not listed to `"*"`) must
 * all be in `request.identity.scopes`, and the identity's claims must match `routes[].require`.
 * Otherwise 403 naming what is missing (a valid identity is never answered 401).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { RouteConfig } from '../../schemas/config.js'
import { GatewayError } from '../../schemas/errors.js'
import { channels, publish } from '../../schemas/events.js'
import { quote } from './auth-common.js'
import { claimsMatch } from './jwt.js'

export interface AuthorizeOptions {
  route: Readonly<RouteConfig>
  realm: string
}

async function authorizePlugin (scope: FastifyInstance, opts: AuthorizeOptions): Promise<void> {
  const { route, realm } = opts
  const fallback = route.scopes['*'] ?? []
  const byMethod = new Map<string, readonly string[]>()
  // HEAD is GET without the body: unless listed itself, it needs what GET needs.
  for (const method of route.methods) {
    byMethod.set(method, route.scopes[method] ?? (method === 'HEAD' ? route.scopes.GET : undefined) ?? fallback)
  }
  const require = route.require
  const hasRequire = Object.keys(require).length > 0
  if (route.auth.length === 0 || (!hasRequire && [...byMethod.values()].every((s) => s.length === 0))) return
  const routeName = route.name

  function deny (request: FastifyRequest, what: string, detail: string, bearer: boolean, scopeParam?: string): GatewayError {
    publish(channels.authzDenied, () => ({ request, route: routeName, scope: what }))
    // RFC 6750 §3.1: tell a bearer client which scope it lacks.
    const headers = bearer
      ? { 'www-authenticate': `Bearer realm=${quote(realm)}, error="insufficient_scope"${scopeParam === undefined ? '' : `, scope=${quote(scopeParam)}`}` }
      : undefined
    return new GatewayError('GW_ERR_FORBIDDEN', detail, { headers })
  }

  scope.addHook('onRequest', function authorize (request, _reply, done) {
    const identity = request.identity
    if (identity === undefined) {
      // Authentication runs first and refuses requests without an identity; never let one through.
      done(new GatewayError('GW_ERR_UNAUTHORIZED', 'Credentials are required.'))
      return
    }
    const needed = byMethod.get(request.method) ?? fallback
    for (let i = 0; i < needed.length; i++) {
      const s = needed[i]
      if (!identity.scopes.includes(s)) {
        done(deny(request, s, `Missing scope ${s}.`, identity.scheme === 'jwt', needed.join(' ')))
        return
      }
    }
    if (hasRequire) {
      const claim = claimsMatch(identity.claims, require)
      if (claim !== null) {
        done(deny(request, `claim:${claim}`, `The ${claim} claim does not have an accepted value.`, identity.scheme === 'jwt'))
        return
      }
    }
    done()
  })
}

export default fp(authorizePlugin, { name: 'portcullis-authorize', fastify: '5.x' })

/**
 * Authentication. One `onRequest` hook per route tries the route's schemes
 * (`routes[].auth`) in order. The first scheme for which the request carries credentials decides:
 * valid → `request.identity`; invalid → 401. No credentials for any → 401. Every 401 carries a
 * `WWW-Authenticate` challenge for each scheme the route accepts. Because it runs at onRequest,
 * a refused request's body is never read and the upstream never sees it; and an IP rate limiter
 * registered earlier at onRequest has already counted it.
 *
 * The schemes (plugins/auth/jwt.ts, plugins/auth/basic-auth.ts, plugins/auth/api-key.ts) are built once per
 * gateway (JWKS caches, user tables) by `authSchemes` on its root, and shared by every route.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { GatewayConfig, RouteConfig } from '../../schemas/config.js'
import type { Identity } from '../../schemas/auth.js'
import { GatewayError } from '../../schemas/errors.js'
import { channels, publish } from '../../schemas/events.js'
import { createJwtAuthenticator } from './jwt.js'
import { BasicVerifier, registerBasicAuth } from './basic-auth.js'
import { createApiKeyAuthenticator } from './api-key.js'
import { AuthFailure, type AuthResult, type Authenticator } from './auth-common.js'

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * Who made the request, once a scheme verified it (undefined on public routes and before
     * authentication). Your own plugins read it: `request.identity?.scopes.includes('admin')`.
     */
    identity: Identity | undefined
  }
}

export type { Identity }
export { AuthFailure, parseAuthorization, quote, type AuthResult, type Authenticator } from './auth-common.js'

/** The gateway-wide state of the schemes, built once per gateway and shared by all its routes. */
export interface SharedSchemes {
  jwt?: Authenticator
  apiKey?: Authenticator
  basic?: BasicVerifier
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The gateway's schemes (JWKS cache, user table, API keys), set on the root by `authSchemes`. */
    authSchemes: SharedSchemes
  }
}

export function createSchemes (config: Readonly<GatewayConfig>): SharedSchemes {
  const schemes: SharedSchemes = {}
  if (config.jwt !== undefined) schemes.jwt = createJwtAuthenticator(config.jwt, config.authRealm)
  if (config.apiKeys.length > 0) schemes.apiKey = createApiKeyAuthenticator(config.apiKeys, config.apiKeyHeader, config.authRealm)
  if (config.users.length > 0) schemes.basic = new BasicVerifier(config.users)
  return schemes
}

/**
 * Registered once on the gateway's root, before the routes and the token endpoint: the schemes
 * live on the instance, so two gateways in one process (even from one config object) share no
 * cache or user table.
 */
async function authSchemesPlugin (app: FastifyInstance, opts: { config: Readonly<GatewayConfig> }): Promise<void> {
  app.decorate('authSchemes', createSchemes(opts.config))
}

export const authSchemes = fp(authSchemesPlugin, { name: 'portcullis-auth-schemes', fastify: '5.x' })

/** The gateway's schemes; a scope whose gateway did not register `authSchemes` builds its own. */
export function schemesOf (scope: FastifyInstance, config: Readonly<GatewayConfig>): SharedSchemes {
  return scope.hasDecorator('authSchemes') ? scope.authSchemes : createSchemes(config)
}

export interface AuthenticateOptions {
  config: Readonly<GatewayConfig>
  route: Readonly<RouteConfig>
}

async function authenticatePlugin (scope: FastifyInstance, opts: AuthenticateOptions): Promise<void> {
  const { config, route } = opts
  if (route.auth.length === 0) return
  const schemes = schemesOf(scope, config)
  const authenticators: Authenticator[] = []
  for (const name of route.auth) {
    if (name === 'basic') authenticators.push(await registerBasicAuth(scope, schemes.basic as BasicVerifier, config.authRealm))
    else if (name === 'jwt') authenticators.push(schemes.jwt as Authenticator)
    else authenticators.push(schemes.apiKey as Authenticator)
  }
  const challenges = authenticators.map((a) => a.challenge())
  const routeName = route.name

  function refuse (request: FastifyRequest, failed: Authenticator | null, failure: AuthFailure): never {
    publish(channels.authFailure, () => ({ request, route: routeName, scheme: failed?.scheme ?? 'none', reason: failure.reason }))
    if (failure.unavailable) {
      throw new GatewayError('GW_ERR_UNAVAILABLE', failure.detail, { headers: { 'retry-after': '5' } })
    }
    const list = failed === null ? challenges : authenticators.map((a) => a === failed ? a.challenge(failure) : a.challenge())
    const headers = { 'www-authenticate': list.length === 1 ? list[0] : list }
    throw new GatewayError('GW_ERR_UNAUTHORIZED', failure.detail, { headers })
  }

  const missing = new AuthFailure('missing', `Credentials are required (${route.auth.join(' or ')}).`)

  /** True when `result` decides the request (an identity); throws the 401/503 of a failure. */
  function decide (request: FastifyRequest, authenticator: Authenticator, result: AuthResult): boolean {
    if (result === null) return false // not this scheme's credentials: try the next
    if (result instanceof AuthFailure) refuse(request, authenticator, result)
    request.identity = result
    return true
  }

  /** The rest of the schemes once one of them answered with a promise (a JWKS fetch, Basic's hash). */
  async function settleLater (request: FastifyRequest, reply: FastifyReply, index: number, pending: Promise<AuthResult>): Promise<void> {
    let result = await pending
    let i = index
    while (!decide(request, authenticators[i], result)) {
      if (++i === authenticators.length) refuse(request, null, missing)
      result = await authenticators[i].authenticate(request, reply)
    }
  }

  // A callback hook: a scheme that answers synchronously (a remembered token, an API key) costs no
  // promise; only one that answers with a promise makes the rest of the hook wait for it.
  scope.addHook('onRequest', function authenticate (request, reply, done) {
    try {
      for (let i = 0; i < authenticators.length; i++) {
        const result = authenticators[i].authenticate(request, reply)
        if (result instanceof Promise) {
          settleLater(request, reply, i, result).then(() => { done() }, done)
          return
        }
        if (decide(request, authenticators[i], result)) { done(); return }
      }
      refuse(request, null, missing)
    } catch (err) {
      done(err as Error)
    }
  })
}

export default fp(authenticatePlugin, { name: 'portcullis-authenticate', fastify: '5.x' })

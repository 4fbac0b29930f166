/**
 * The token endpoint (the seed's Flask-JWT `/auth` flow): `POST {tokenEndpoint.path}` with JSON
 * `{ "username", "password" }` checks the gateway's `users` and answers
 * `{ "access_token", "token_type": "Bearer", "expires_in" }`, a JWT signed with the configured
 * key. Its claims are exactly `sub` (the username), `iss` (jwt.issuer, else "portcullis"), `aud`
 * (jwt.audience's first, when set), `exp`, `iat`, `jti`, the scope claim (jwt.scopeClaim) and
 * `token_type: "access"` (so that `jwt.requiredClaims: { token_type: access }`, which refuses
 * simplejwt refresh tokens, accepts the gateway's own). Never `user_id` or another upstream's
 * identity claim, whatever jwt.subjectClaim names (that governs incoming tokens only): a gateway
 * user named `1` must not be an upstream's user 1.
 *
 * - Wrong credentials cost the same as right ones: an unknown user is checked against a dummy
 *   hash, the verified-password cache is not used here, and a token is signed either way.
 * - Rate-limited per client IP (tokenEndpoint.rateLimit; every attempt counts), on the shared
 *   rate-limit store (plugins/rate-limit/rate-limit.ts), before the body is read.
 * - The body is JSON only (else 415), at most 8 KB, and validated against TokenRequestSchema.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import { Compile } from 'typebox/compile'
import type { GatewayConfig } from '../../schemas/config.js'
import { ownTokenIssuer, TokenRequestSchema, type TokenRequest, type TokenResponse } from '../../schemas/auth.js'
import { parseDuration } from '../../schemas/common.js'
import { GatewayError } from '../../schemas/errors.js'
import { channels, publish } from '../../schemas/events.js'
import { routeLimiter } from '../rate-limit/rate-limit.js'
import { ipFilterHook } from '../edge/ip-filter.js'
import { schemesOf } from './authenticate.js'
import { BasicVerifier, BUSY } from './basic-auth.js'
import { isHmac } from './jwt-keys.js'

export interface TokenEndpointOptions {
  config: Readonly<GatewayConfig>
}

const BODY_LIMIT = 8 * 1024
const ROUTE_NAME = 'token-endpoint'
const validator = Compile(TokenRequestSchema)

/** Registered (encapsulated) on the root by src/app.ts when `tokenEndpoint` is configured. */
export default async function tokenEndpoint (scope: FastifyInstance, opts: TokenEndpointOptions): Promise<void> {
  const { config } = opts
  const te = config.tokenEndpoint
  const jwt = config.jwt
  if (te === undefined || jwt === undefined) return
  const verifier = schemesOf(scope, config).basic ?? new BasicVerifier(config.users)
  const algorithm: string = te.algorithm ?? jwt.algorithms[0]
  const expiresInMs = parseDuration(te.expiresIn)
  const audience = Array.isArray(jwt.audience) ? jwt.audience[0] : jwt.audience
  const sign = createSigner({
    key: (isHmac(algorithm) ? jwt.secret : te.privateKey) as string,
    algorithm: algorithm as never,
    expiresIn: expiresInMs,
    iss: ownTokenIssuer(jwt),
    ...(audience === undefined ? {} : { aud: audience })
  })
  const scopeClaim = jwt.scopeClaim

  // The gateway-wide IP allow/deny list first, as on every route; then the per-IP limit.
  const ipFilter = ipFilterHook([config.ipFilter])
  if (ipFilter !== null) scope.addHook('onRequest', ipFilter)
  const limiter = routeLimiter(scope, { route: ROUTE_NAME, limit: { max: te.rateLimit.max, window: te.rateLimit.window, by: 'ip' } })
  scope.addHook('onRequest', limiter.count)

  scope.removeAllContentTypeParsers()
  scope.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: BODY_LIMIT }, scope.getDefaultJsonParser('error', 'error'))

  const path = te.path.length > 1 ? te.path.replace(/\/+$/, '') : te.path
  scope.route({
    method: 'POST',
    url: path,
    bodyLimit: BODY_LIMIT,
    config: { routeName: ROUTE_NAME },
    async handler (request, reply) {
      const body = request.body
      if (!validator.Check(body)) {
        const errors = [...validator.Errors(body)].slice(0, 10).map((e) => ({
          pointer: e.instancePath + (e.keyword === 'required' ? `/${String((e.params as { requiredProperties?: string[] }).requiredProperties?.[0] ?? '')}` : ''),
          message: e.keyword === 'additionalProperties' ? 'is not allowed' : e.message
        }))
        throw new GatewayError('GW_ERR_VALIDATION', 'The body must be {"username": string, "password": string}.', { errors })
      }
      const { username, password } = body as TokenRequest
      const checked = await verifier.verify(username, password, { cached: false })
      if (checked === BUSY) {
        throw new GatewayError('GW_ERR_UNAVAILABLE', 'Too many password checks in progress; retry shortly.', { headers: { 'retry-after': '5' } })
      }
      const identity = checked
      // Signed either way, so that a wrong password costs what a right one does.
      const claims = {
        [scopeClaim]: (identity?.scopes ?? []).join(' '),
        sub: identity?.subject ?? username,
        token_type: 'access',
        jti: randomUUID()
      }
      const token = sign(claims)
      if (identity === null) {
        publish(channels.authFailure, () => ({ request, route: ROUTE_NAME, scheme: 'password', reason: 'invalid' }))
        throw new GatewayError('GW_ERR_UNAUTHORIZED', 'Invalid username or password.')
      }
      reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
      const answer: TokenResponse = { access_token: token, token_type: 'Bearer', expires_in: Math.floor(expiresInMs / 1000) }
      return answer
    }
  })
  // Other methods on the path: 405 with Allow, not 404.
  scope.route({
    method: ['GET', 'HEAD', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'],
    url: path,
    config: { routeName: ROUTE_NAME },
    handler () {
      throw new GatewayError('GW_ERR_METHOD_NOT_ALLOWED', 'Only POST is allowed here.', { headers: { allow: 'POST' } })
    }
  })
}

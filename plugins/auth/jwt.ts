/**
 * JWT bearer tokens, verified with fast-jwt against keys from the config only: a shared
 * `secret` (HS*), a PEM `publicKey`, or a `jwksUrl`; several issuers each with their own keys.
 *
 * What is refused, before fast-jwt sees the token (it would otherwise accept more):
 *  - an `alg` not in the allow-list, compared exactly (so `none`, `None`, `NONE`… all fail) and
 *    checked against the key's type (an HMAC token signed with an RSA public key never verifies);
 *  - `jku`, `x5u`, `jwk`, `x5c` (key selection by the token: never fetched, never trusted) and
 *    `crit` (no extension is understood);
 *  - a token without `exp`, an `iss` that is not a single string, a missing subject claim
 *    (`subjectClaim`; `sub` for the token endpoint's own tokens, whose `iss` is ownTokenIssuer);
 *  - tokens longer than `maxTokenLength`.
 * Then fast-jwt checks the signature, `exp`/`nbf` (with `clockTolerance`), `iss` and `aud`,
 * and this module the `requiredClaims` values (e.g. `token_type: access`, which refuses
 * djangorestframework-simplejwt refresh tokens).
 *
 * The token comes from `Authorization: Bearer` (scheme case-insensitive), or from the configured
 * cookie when there is no Authorization header — never from the query string.
 */
import { createDecoder, createVerifier, TokenError } from 'fast-jwt'
import { ownTokenIssuer, type ClaimMatcher, type Identity, type JwtConfig } from '../../schemas/auth.js'
import { parseDuration } from '../../schemas/common.js'
import { AuthFailure, hasBearerScheme, quote, type AuthResult, type Authenticator } from './auth-common.js'
import { JwksClient, JwksError, type JwksKey } from './jwks.js'

/** Token header parameters that select or carry keys, or demand extensions: always refused. */
const FORBIDDEN_HEADERS = ['jku', 'x5u', 'jwk', 'x5c', 'crit'] as const
/** A scope token (RFC 6749 §3.3); anything else in a token's scope claim is dropped. */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/
const TOKEN68 = /^[A-Za-z0-9._~+/-]+=*$/

/** Verified tokens remembered (exact token string → identity), and for how long at most. */
const CACHE_MAX = 1000
const CACHE_TTL_MS = 60_000

type Claims = Record<string, unknown>
type SyncVerify = (token: string) => Claims
/** Verifies a token whose header is already decoded (the JWKS verifier picks its key by it). */
type VerifyFn = (token: string, header: Record<string, unknown>) => Claims | Promise<Claims>

interface IssuerVerifier {
  algorithms: readonly string[]
  verify: VerifyFn
  jwks?: JwksClient
}

const F = {
  malformed: new AuthFailure('malformed', 'The bearer token is malformed.'),
  tooLong: new AuthFailure('too-long', 'The bearer token is too long.'),
  algorithm: new AuthFailure('algorithm', 'The bearer token\'s algorithm is not accepted.'),
  keySelection: new AuthFailure('key-selection', 'The bearer token names its own key (jku, x5u, jwk, x5c), which is not accepted.'),
  crit: new AuthFailure('crit', 'The bearer token requires extensions (crit) that are not supported.'),
  issuer: new AuthFailure('issuer', 'The bearer token\'s issuer is not accepted.'),
  audience: new AuthFailure('audience', 'The bearer token\'s audience is not accepted.'),
  expired: new AuthFailure('expired', 'The bearer token has expired.'),
  notYet: new AuthFailure('not-yet-valid', 'The bearer token is not valid yet.'),
  noExp: new AuthFailure('claims', 'The bearer token has no expiry (exp).'),
  claims: new AuthFailure('claims', 'The bearer token lacks a required claim.'),
  subject: new AuthFailure('claims', 'The bearer token has no subject.'),
  signature: new AuthFailure('signature', 'The bearer token\'s signature is invalid.'),
  unknownKey: new AuthFailure('unknown-key', 'The bearer token\'s key is not known.'),
  unavailable: new AuthFailure('jwks-unavailable', 'The keys to verify the bearer token cannot be fetched right now.', true),
  invalid: new AuthFailure('invalid', 'The bearer token is invalid.')
}

function fromTokenError (err: unknown): AuthFailure {
  if (err instanceof JwksError) {
    if (err.reason === 'unavailable') return F.unavailable
    if (err.reason === 'algorithm') return F.algorithm
    return F.unknownKey
  }
  if (!(err instanceof TokenError)) return F.invalid
  switch (err.code) {
    case TokenError.codes.expired: return F.expired
    case TokenError.codes.inactive: return F.notYet
    case TokenError.codes.invalidSignature: case TokenError.codes.missingSignature: return F.signature
    case TokenError.codes.invalidAlgorithm: case TokenError.codes.invalidKey: return F.algorithm
    case TokenError.codes.missingRequiredClaim:
      if (err.message.includes(' exp ')) return F.noExp
      if (err.message.includes(' iss ')) return F.issuer
      if (err.message.includes(' aud ')) return F.audience
      return F.claims
    case TokenError.codes.invalidCritHeader: return F.crit
    case TokenError.codes.malformed: case TokenError.codes.invalidPayload: return F.malformed
    case TokenError.codes.invalidClaimValue: case TokenError.codes.invalidClaimType:
      if (err.message.includes(' iss ')) return F.issuer
      if (err.message.includes(' aud ')) return F.audience
      return F.claims
    default: return F.invalid
  }
}

/** Whether the claims satisfy a `{ claim: value | [values] }` matcher. */
export function claimsMatch (claims: Readonly<Record<string, unknown>>, matcher: ClaimMatcher): string | null {
  for (const [claim, expected] of Object.entries(matcher)) {
    const actual = claims[claim]
    const allowed = Array.isArray(expected) ? expected : [expected]
    if (!allowed.some((v) => v === actual)) return claim
  }
  return null
}

/** The scopes in a claim: a space-separated string or an array of strings. */
export function scopesOf (value: unknown): string[] {
  const list = typeof value === 'string' ? value.split(' ') : Array.isArray(value) ? value : []
  return list.filter((s): s is string => typeof s === 'string' && SCOPE_TOKEN.test(s))
}

export interface JwtAuthenticator extends Authenticator {
  /** The JWKS clients, by URL (tests and readiness look at them). */
  readonly jwks: readonly JwksClient[]
  /** Verify a token as the hook does. */
  verifyToken: (token: string) => AuthResult | Promise<AuthResult>
}

export function createJwtAuthenticator (config: Readonly<JwtConfig>, realm: string, onJwksError?: (err: Error) => void): JwtAuthenticator {
  const clockTolerance = parseDuration(config.clockTolerance)
  const jwksOptions = {
    cacheTtlMs: parseDuration(config.jwks.cacheTtl),
    refetchIntervalMs: parseDuration(config.jwks.refetchInterval),
    timeoutMs: parseDuration(config.jwks.timeout)
  }
  const jwksClients = new Map<string, JwksClient>()
  const decode = createDecoder({ complete: true })

  function build (entry: { algorithms: readonly string[], secret?: string, publicKey?: string, jwksUrl?: string, issuer?: string, audience?: string | readonly string[] }): IssuerVerifier {
    const common = {
      algorithms: [...entry.algorithms] as never[],
      // fast-jwt checks iss and aud only when the token has them: a configured issuer or
      // audience must also be present.
      requiredClaims: ['exp', ...(entry.issuer === undefined ? [] : ['iss']), ...(entry.audience === undefined ? [] : ['aud'])],
      clockTolerance,
      allowedIss: entry.issuer,
      allowedAud: entry.audience === undefined ? undefined : (Array.isArray(entry.audience) ? [...entry.audience] : [entry.audience as string]),
      // This module remembers verified tokens itself (before decoding anything); fast-jwt's own
      // cache would also keep failures, some of which change (a JWKS that was unreachable).
      cache: false
    }
    if (entry.jwksUrl !== undefined) {
      let client = jwksClients.get(entry.jwksUrl)
      if (client === undefined) {
        client = new JwksClient(entry.jwksUrl, jwksOptions, onJwksError)
        jwksClients.set(entry.jwksUrl, client)
      }
      const jwks = client
      // One verifier per JWKS key, made with the key as a static key (parsed once, as a
      // publicKey is) the first time a token names it, dropped when the set stops serving it.
      // fast-jwt's async `key` callback would parse the PEM again for every token.
      const make = (key: JwksKey): SyncVerify => createVerifier({ ...common, key: key.pem }) as SyncVerify
      const verify: VerifyFn = (token, header) => {
        const keyed = jwks.verifierFor(header.kid, header.alg as string, common, make)
        return keyed instanceof Promise ? keyed.then((v) => v(token)) : keyed(token)
      }
      return { algorithms: entry.algorithms, verify, jwks }
    }
    const verifyStatic = createVerifier({ ...common, key: (entry.secret ?? entry.publicKey) as string }) as SyncVerify
    // Only the token: fast-jwt's verifiers take a callback as their second argument.
    return { algorithms: entry.algorithms, verify: (token) => verifyStatic(token) }
  }

  const fallback = config.secret !== undefined || config.publicKey !== undefined || config.jwksUrl !== undefined ? build(config) : null
  const byIssuer = new Map<string, IssuerVerifier>()
  for (const entry of config.issuers) {
    byIssuer.set(entry.issuer, build({ ...entry, algorithms: entry.algorithms ?? config.algorithms, audience: entry.audience ?? config.audience }))
  }

  const required = config.requiredClaims
  const hasRequired = Object.keys(required).length > 0
  const { subjectClaim, scopeClaim, maxTokenLength } = config
  // The token endpoint's own tokens name their subject in `sub`, never in an upstream's claim
  // (simplejwt's user_id): read theirs from `sub` whatever subjectClaim says.
  const ownIssuer = ownTokenIssuer(config)

  /**
   * Tokens that verified, by their exact text, until min(60 s, exp + clockTolerance): a client
   * repeating its token skips decoding and the signature check. Bounded; oldest out first.
   */
  const verified = new Map<string, { identity: Identity, until: number }>()

  function identityOf (token: string, claims: Record<string, unknown>): AuthResult {
    if (hasRequired && claimsMatch(claims, required) !== null) return F.claims
    const sub = claims[claims.iss === ownIssuer ? 'sub' : subjectClaim]
    if ((typeof sub !== 'string' || sub === '') && typeof sub !== 'number') return F.subject
    const identity: Identity = Object.freeze({ subject: String(sub), scopes: Object.freeze(scopesOf(claims[scopeClaim])), scheme: 'jwt', claims: Object.freeze(claims) })
    const now = Date.now()
    const until = Math.min(now + CACHE_TTL_MS, (claims.exp as number) * 1000 + clockTolerance)
    if (until > now) {
      if (verified.size >= CACHE_MAX) verified.delete(verified.keys().next().value as string)
      verified.set(token, { identity, until })
    }
    return identity
  }

  function verifyToken (token: string): AuthResult | Promise<AuthResult> {
    const hit = verified.get(token)
    if (hit !== undefined) {
      if (hit.until > Date.now()) return hit.identity
      verified.delete(token)
    }
    if (token.length > maxTokenLength) return F.tooLong
    // Checked after the cache: a remembered token verified as a JWT, so it is token68 already.
    if (!TOKEN68.test(token)) return F.malformed
    let decoded: { header: Record<string, unknown>, payload: Record<string, unknown> }
    try {
      decoded = decode(token) as typeof decoded
    } catch {
      return F.malformed
    }
    const { header, payload } = decoded
    const iss = payload.iss
    if (iss !== undefined && typeof iss !== 'string') return F.issuer
    const verifier = (typeof iss === 'string' ? byIssuer.get(iss) : undefined) ?? fallback
    if (verifier === null) return F.issuer
    if (typeof header.alg !== 'string' || !verifier.algorithms.includes(header.alg)) return F.algorithm
    for (const name of FORBIDDEN_HEADERS) {
      if (name in header) return name === 'crit' ? F.crit : F.keySelection
    }
    if (!('exp' in payload)) return F.noExp
    let result: Claims | Promise<Claims>
    try {
      result = verifier.verify(token, header)
    } catch (err) {
      return fromTokenError(err)
    }
    if (result instanceof Promise) return result.then((claims) => identityOf(token, claims), fromTokenError)
    return identityOf(token, result)
  }

  const cookiePrefix = config.cookie === undefined ? null : config.cookie + '='
  const challenge = `Bearer realm=${quote(realm)}`
  const invalidChallenge = `Bearer realm=${quote(realm)}, error="invalid_token"`

  return {
    scheme: 'jwt',
    jwks: [...jwksClients.values()],
    verifyToken,
    challenge: (failure) => failure === undefined || failure.reason === 'missing' ? challenge : invalidChallenge,
    authenticate (request) {
      const header = request.headers.authorization
      let token: string
      if (header !== undefined) {
        if (!hasBearerScheme(header)) {
          return header.toLowerCase() === 'bearer' ? F.malformed : null
        }
        token = header.slice(7)
      } else if (cookiePrefix !== null && request.headers.cookie !== undefined) {
        const found = cookieValue(request.headers.cookie, cookiePrefix)
        if (found === null) return null
        token = found
      } else {
        return null
      }
      return verifyToken(token)
    }
  }
}

function cookieValue (cookies: string, prefix: string): string | null {
  for (const part of cookies.split(';')) {
    const trimmed = part.trim()
    if (trimmed.startsWith(prefix)) return trimmed.slice(prefix.length)
  }
  return null
}

/**
 * Authentication and authorization: the config sections (`users`, `apiKeys`, `jwt`,
 * `tokenEndpoint`, `identityHeaders`, and the per-route `auth`, `scopes`, `require`,
 * `forwardAuthorization`), the token endpoint's request schema, and the `Identity` every
 * authentication scheme produces (`request.identity`, which a user's own plugin reads).
 */
import Type, { type Static } from 'typebox'
import { Duration } from './common.js'

/** The schemes a route can accept, by the names used in `routes[].auth`. */
export const AUTH_SCHEMES = ['jwt', 'basic', 'apiKey'] as const
export type AuthScheme = typeof AUTH_SCHEMES[number]

export const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'] as const
export const ASYMMETRIC_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const
export const JWT_ALGORITHMS = [...HMAC_ALGORITHMS, ...ASYMMETRIC_ALGORITHMS] as const
export type JwtAlgorithm = typeof JWT_ALGORITHMS[number]

/** What a verified request is, whatever the scheme: `request.identity`. */
export interface Identity {
  /** Who: the JWT's subject claim, the Basic username, or the API key's name. */
  readonly subject: string
  /** What it may do: the JWT's scope claim, the user's or the key's configured scopes. */
  readonly scopes: readonly string[]
  /** How it was verified: `jwt`, `basic`, `apiKey` (or a name a user's own plugin chooses). */
  readonly scheme: string
  /** The verified JWT claims; for Basic and API keys only `sub` and `scope`. */
  readonly claims: Readonly<Record<string, unknown>>
}

/** An OAuth 2.0 scope token (RFC 6749 §3.3): printable ASCII without space, `"` or `\`. */
const Scope = Type.String({ pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$', description: 'a scope, e.g. people:read' })
const Scopes = (description: string) => Type.Array(Scope, { default: [], uniqueItems: true, description })

/** An HTTP header field name (RFC 9110 token). */
export const HeaderName = (options: { default?: string, description: string }) =>
  Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', ...options })

export const PASSWORD_HASH_PATTERN = '^scrypt\\$[0-9]+\\$[0-9]+\\$[0-9]+\\$[A-Za-z0-9_-]+\\$[A-Za-z0-9_-]+$'
export const KEY_HASH_PATTERN = '^sha256\\$[0-9a-f]{64}$'

export const UserSchema = Type.Object({
  username: Type.String({
    minLength: 1,
    maxLength: 256,
    pattern: '^[^:\\x00-\\x1F\\x7F]+$',
    description: 'the name sent in HTTP Basic and to the token endpoint (no colon, no control characters)'
  }),
  passwordHash: Type.Optional(Type.String({
    pattern: PASSWORD_HASH_PATTERN,
    description: 'scrypt hash from `portcullis hash-password` (scrypt$N$r$p$salt$hash)'
  })),
  password: Type.Optional(Type.String({
    minLength: 1,
    description: 'plain password, accepted only as a whole ${ENV_VAR} reference; hashed at start'
  })),
  scopes: Scopes('scopes this user is granted')
}, { additionalProperties: false })

export const ApiKeySchema = Type.Object({
  name: Type.String({ pattern: '^[A-Za-z0-9_.:@-]{1,64}$', description: 'the key\'s name: the identity\'s subject, in logs and upstream headers' }),
  keyHash: Type.Optional(Type.String({ pattern: KEY_HASH_PATTERN, description: 'sha256$<hex> of the key, from `portcullis api-key`' })),
  key: Type.Optional(Type.String({ minLength: 16, description: 'the key itself, accepted only as a whole ${ENV_VAR} reference; hashed at start' })),
  scopes: Scopes('scopes this key is granted')
}, { additionalProperties: false })

const ClaimValue = Type.Union([Type.String(), Type.Number(), Type.Boolean()])
/** claim → value it must equal, or list of values it may take. */
export const ClaimMatcherSchema = (description: string) => Type.Record(
  Type.String({ minLength: 1 }),
  Type.Union([ClaimValue, Type.Array(ClaimValue, { minItems: 1 })]),
  { default: {}, description }
)

const Audience = Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })], {
  description: 'the token\'s `aud` must contain this value (or one of these); checked when set'
})
const Algorithms = Type.Array(Type.Union(JWT_ALGORITHMS.map((a) => Type.Literal(a))), {
  minItems: 1,
  uniqueItems: true,
  description: 'allow-list of signature algorithms; a token with any other `alg` (and `none` in every spelling) is refused'
})

/** Where the keys come from: exactly one of these (checked in src/config.ts). */
const keySources = {
  secret: Type.Optional(Type.String({ minLength: 1, description: 'shared secret for HS256/384/512 (at least as many bytes as the hash: 32, 48, 64)' })),
  publicKey: Type.Optional(Type.String({ minLength: 1, description: 'PEM public key for RS*, PS*, ES*, EdDSA: a file path, or the PEM text itself' })),
  jwksUrl: Type.Optional(Type.String({ minLength: 1, description: 'JWKS URL (https; http only on loopback); keys cached, an unknown kid triggers one rate-limited refetch' }))
}

export const JwtIssuerSchema = Type.Object({
  issuer: Type.String({ minLength: 1, description: 'the `iss` this entry verifies; tokens are routed to it by their `iss`' }),
  algorithms: Type.Optional(Algorithms),
  ...keySources,
  audience: Type.Optional(Audience)
}, { additionalProperties: false })

export const JwksOptionsSchema = Type.Object({
  cacheTtl: Duration({ default: '10m', description: 'how long a fetched key set is used before it is fetched again' }),
  refetchInterval: Duration({ default: '30s', description: 'least time between two refetches caused by an unknown kid' }),
  timeout: Duration({ default: '5s', description: 'time the JWKS server has to answer' })
}, { additionalProperties: false, default: {}, description: 'fetching and caching jwksUrl' })

export const JwtSchema = Type.Object({
  algorithms: Algorithms,
  ...keySources,
  issuer: Type.Optional(Type.String({ minLength: 1, description: 'the token\'s `iss` must equal this; checked when set' })),
  audience: Type.Optional(Audience),
  clockTolerance: Duration({ default: '5s', description: 'leeway for exp and nbf' }),
  scopeClaim: Type.String({ minLength: 1, default: 'scope', description: 'claim holding the scopes: a space-separated string or an array' }),
  subjectClaim: Type.String({ minLength: 1, default: 'sub', description: 'claim naming the subject (djangorestframework-simplejwt: user_id); required in every token' }),
  requiredClaims: ClaimMatcherSchema('claims every token must carry with these values, e.g. { token_type: access } to refuse refresh tokens'),
  cookie: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', description: 'also take the token from this cookie when there is no Authorization header' })),
  maxTokenLength: Type.Integer({ minimum: 64, maximum: 65536, default: 8192, description: 'longest token accepted, in characters' }),
  jwks: JwksOptionsSchema,
  issuers: Type.Array(JwtIssuerSchema, { default: [], description: 'more issuers, each with its own keys; settings not given are taken from this section' })
}, { additionalProperties: false, description: 'bearer-token verification (routes with auth: [jwt]); exactly one of secret, publicKey, jwksUrl (none when issuers is given)' })

/**
 * The `iss` of the token endpoint's own tokens: jwt.issuer when set (the issuer the gateway
 * verifies), else "portcullis". There is no separate tokenEndpoint.issuer: with jwt.issuer set any
 * other issuer would not verify, and the JWT authenticator, which sees only the jwt section,
 * reads the subject of tokens with this issuer from `sub` whatever jwt.subjectClaim says.
 */
export function ownTokenIssuer (jwt: { issuer?: string }): string {
  return jwt.issuer ?? 'portcullis'
}

export const TokenEndpointSchema = Type.Object({
  path: Type.String({ pattern: '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/-]*$', default: '/auth/token', description: 'where POST { username, password } returns a token' }),
  expiresIn: Duration({ default: '15m', description: 'lifetime of the tokens it issues' }),
  algorithm: Type.Optional(Type.Union(JWT_ALGORITHMS.map((a) => Type.Literal(a)), { description: 'signature algorithm (default: jwt.algorithms[0])' })),
  privateKey: Type.Optional(Type.String({ minLength: 1, description: 'PEM private key (file path or PEM text) for an asymmetric algorithm; HS* signs with jwt.secret' })),
  rateLimit: Type.Object({
    max: Type.Integer({ minimum: 1, default: 10, description: 'requests per window per client IP (failed attempts count)' }),
    window: Duration({ default: '1m', description: 'the window' })
  }, { additionalProperties: false, default: {}, description: 'attempts per client IP; every attempt counts, right or wrong' })
}, { additionalProperties: false, description: 'the gateway\'s own token endpoint: POST { username, password } checks users and returns a JWT; needs jwt.secret (HS*) or privateKey' })

export const IdentityHeadersSchema = Type.Object({
  user: HeaderName({ default: 'X-Authenticated-User', description: 'carries the identity\'s subject (percent-encoded outside printable ASCII)' }),
  scopes: HeaderName({ default: 'X-Authenticated-Scopes', description: 'carries the identity\'s scopes, space-separated' }),
  via: HeaderName({ default: 'X-Authenticated-Via', description: 'carries the scheme that verified it: jwt, basic or apiKey' })
}, { additionalProperties: false, default: {}, description: 'headers that tell the upstream who is calling; client-sent copies are removed on every route' })

/** The top-level config sections, spread into GatewayConfigSchema. */
export const authConfigProperties = {
  users: Type.Array(UserSchema, { default: [], description: 'the gateway\'s own identities, for HTTP Basic and the token endpoint' }),
  apiKeys: Type.Array(ApiKeySchema, { default: [], description: 'API keys, stored hashed' }),
  apiKeyHeader: HeaderName({ default: 'X-Api-Key', description: 'request header that carries an API key' }),
  authRealm: Type.String({ pattern: '^[\\x20\\x21\\x23-\\x5B\\x5D-\\x7E]{1,64}$', default: 'portcullis', description: 'realm named in WWW-Authenticate challenges' }),
  jwt: Type.Optional(JwtSchema),
  tokenEndpoint: Type.Optional(TokenEndpointSchema),
  identityHeaders: IdentityHeadersSchema
}

/** Per method (or "*" for every method not listed): the scopes required, all of them. */
// `propertyNames`, not `additionalProperties: false`: TypeBox's Value.Default throws a TypeError
// on a Record with additionalProperties: false when a key does not match (`scopes: { FOO: [x] }`),
// instead of leaving the refusal to the check (test/config-errors.test.ts).
const METHOD_KEY = '^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|\\*)$'
export const RouteScopesSchema = Type.Record(
  Type.String({ pattern: METHOD_KEY }),
  Type.Array(Scope, { uniqueItems: true }),
  { default: {}, propertyNames: { pattern: METHOD_KEY }, description: 'scopes required per method, all of them; "*" for every method not listed' }
)

/** The per-route keys, spread into RouteSchema. */
export const routeAuthProperties = {
  auth: Type.Array(Type.Union(AUTH_SCHEMES.map((s) => Type.Literal(s))), {
    default: [],
    uniqueItems: true,
    description: 'accepted schemes, tried in this order; any one suffices; [] = public'
  }),
  scopes: RouteScopesSchema,
  require: ClaimMatcherSchema('claims the identity must carry with these values (JWT claims; Basic and API keys have only sub and scope)'),
  forwardAuthorization: Type.Union([Type.Literal('bearer'), Type.Literal('all'), Type.Literal('none')], {
    default: 'bearer',
    description: 'which client credentials reach the upstream: bearer = Authorization: Bearer only (Basic and API keys stripped); all; none'
  })
}

export type UserConfig = Static<typeof UserSchema>
export type ApiKeyConfig = Static<typeof ApiKeySchema>
export type JwtConfig = Static<typeof JwtSchema>
export type JwtIssuerConfig = Static<typeof JwtIssuerSchema>
export type TokenEndpointConfig = Static<typeof TokenEndpointSchema>
export type IdentityHeadersConfig = Static<typeof IdentityHeadersSchema>
export type ClaimMatcher = Static<ReturnType<typeof ClaimMatcherSchema>>

/** The token endpoint's request body (the seed's Flask-JWT `/auth` shape). */
export const TokenRequestSchema = Type.Object({
  username: Type.String({ minLength: 1, maxLength: 256 }),
  password: Type.String({ minLength: 1, maxLength: 1024 })
}, { additionalProperties: false, description: 'credentials of one of the gateway\'s users' })
export type TokenRequest = Static<typeof TokenRequestSchema>

/** The token endpoint's answer. */
export const TokenResponseSchema = Type.Object({
  access_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer({ description: 'seconds' })
}, { additionalProperties: false })
export type TokenResponse = Static<typeof TokenResponseSchema>

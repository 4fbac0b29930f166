/**
 * Edge protection: the config sections `rateLimit`, `ipFilter`, `securityHeaders`,
 * `loadShedding` and the per-route `rateLimit`, `ipFilter`, `cors`; plus the small parsers
 * (CIDR, rate-limit key) that both the config check and the plugins use.
 */
import { isIP } from 'node:net'
import Type, { type Static } from 'typebox'
import { Duration, Size } from './common.js'

/** A header field name (RFC 9110 token). */
const TOKEN = '[A-Za-z0-9!#$%&\'*+.^_`|~-]+'

// --- rate limiting -----------------------------------------------------------------------

/** `host:port` of a Sentinel or a Cluster node: a name, an IPv4 address or a bracketed IPv6 one. */
const RedisEndpoint = Type.String({ pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9._-]+):[0-9]{1,5}$', description: 'host:port' })

export const RedisTlsSchema = Type.Object({
  ca: Type.Optional(Type.String({ minLength: 1, description: 'PEM file of the CA that signed the Redis (and Sentinel) certificates; default: the system CAs' })),
  servername: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'name the server certificates must carry (default: the host connected to)' })),
  insecureSkipVerify: Type.Boolean({ default: false, description: 'accept any certificate (never in production)' })
}, { additionalProperties: false, description: 'TLS to every Redis node (and to the Sentinels); certificates are verified unless insecureSkipVerify' })

export const RedisTopologySchema = Type.Object({
  url: Type.Optional(Type.String({ minLength: 1, description: 'one server, as the string form (redis:// or rediss://), for when it needs `tls` options' })),
  sentinels: Type.Optional(Type.Array(RedisEndpoint, { minItems: 1, maxItems: 32, uniqueItems: true, description: 'Sentinel mode: the Sentinels asked where the primary named `name` is (ioredis follows a failover)' })),
  name: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'Sentinel mode: the monitored primary\'s name (sentinel monitor NAME …)' })),
  cluster: Type.Optional(Type.Array(RedisEndpoint, { minItems: 1, maxItems: 64, uniqueItems: true, description: 'Cluster mode: some nodes of the Redis Cluster (the others are discovered with CLUSTER SLOTS)' })),
  username: Type.Optional(Type.String({ minLength: 1, description: 'ACL user on the Redis nodes (default: the default user)' })),
  password: Type.Optional(Type.String({ minLength: 1, description: 'password on the Redis nodes; write ${REDIS_PASSWORD} to take it from the environment' })),
  sentinelUsername: Type.Optional(Type.String({ minLength: 1, description: 'Sentinel mode: ACL user on the Sentinels' })),
  sentinelPassword: Type.Optional(Type.String({ minLength: 1, description: 'Sentinel mode: password on the Sentinels (requirepass in sentinel.conf); from the environment as above' })),
  db: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, description: 'Sentinel mode: database number (default 0; a Cluster has only 0)' })),
  tls: Type.Optional(RedisTlsSchema)
}, { additionalProperties: false, description: 'one server ({ url }), Redis Sentinel ({ sentinels, name }) or Redis Cluster ({ cluster }), with credentials and TLS (docs/rate-limiting.md, "Redis topologies")' })

export const RateLimitStoreSchema = Type.Object({
  store: Type.Union([Type.Literal('memory'), Type.Literal('redis')], {
    default: 'memory',
    description: 'where counters live: memory (this process only) or redis (shared by every instance)'
  }),
  redis: Type.Optional(Type.Union([Type.String({ minLength: 1 }), RedisTopologySchema], {
    description: 'the shared store (required with store: redis): a redis:// or rediss:// URL of one server, or { sentinels, name } or { cluster } (below)'
  })),
  onStoreError: Type.Union([Type.Literal('allow'), Type.Literal('deny')], {
    default: 'allow',
    description: 'when the store cannot answer in time: allow the request unlimited, or deny it with 503'
  }),
  timeout: Duration({ default: '250ms', description: 'longest wait for the store on a request; after it, onStoreError decides' }),
  keyPrefix: Type.String({ pattern: '^[A-Za-z0-9:_.-]{0,64}$', default: 'portcullis:rl:', description: 'prefix of every Redis key (to share one Redis between gateways with different limits)' }),
  maxKeys: Type.Integer({ minimum: 100, default: 10000, description: 'memory store: clients remembered per route (least recently seen are forgotten first); redis store: leases remembered per route' }),
  leaseMax: Type.Integer({
    minimum: 1,
    maximum: 1024,
    default: 64,
    description: 'redis store: the most counts an instance reserves at once per client and admits locally (at most max / 100; 1 = ask Redis on every request, exact); may under-admit, never over-admit (docs/rate-limiting.md)'
  })
}, { additionalProperties: false, default: {}, description: 'the store of the rate-limit counters, for every route' })

export const RATE_LIMIT_BY_PATTERN = `^(ip|consumer|header:${TOKEN})$`

export const RouteRateLimitSchema = Type.Object({
  max: Type.Integer({ minimum: 1, description: 'requests allowed per window and per client' }),
  window: Duration({ default: '1m', description: 'the window (fixed, starting at a client\'s first request)' }),
  by: Type.String({
    pattern: RATE_LIMIT_BY_PATTERN,
    default: 'ip',
    description: 'who a counter belongs to: ip, consumer (the authenticated subject; the IP when unauthenticated) or header:NAME (the IP when absent)'
  })
}, { additionalProperties: false, description: 'requests per window and per client on this route; past it → 429 with Retry-After' })

// --- IP allow/deny -----------------------------------------------------------------------

export const IpFilterSchema = Type.Object({
  allow: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'only these addresses/CIDRs may call (IPv4 and IPv6)' })),
  deny: Type.Array(Type.String({ minLength: 1 }), { default: [], description: 'these addresses/CIDRs get 403 (deny wins over allow)' })
}, { additionalProperties: false, description: 'client addresses allowed or refused (403); the top-level list applies to every route and the token endpoint, a route\'s own list in addition' })

// --- CORS --------------------------------------------------------------------------------

export const CorsSchema = Type.Object({
  origins: Type.Array(Type.String({ pattern: '^(\\*|https?://[^/\\s]+)$' }), {
    minItems: 1,
    description: 'allowed origins, exactly as browsers send them (https://app.example.com), or "*"'
  }),
  methods: Type.Optional(Type.Array(Type.String({ pattern: `^${TOKEN}$` }), { minItems: 1, description: 'methods a preflight allows (default: the route\'s methods)' })),
  allowedHeaders: Type.Optional(Type.Array(Type.String({ pattern: `^${TOKEN}$` }), { description: 'request headers a preflight allows (default: those the preflight asks for)' })),
  exposedHeaders: Type.Array(Type.String({ pattern: `^${TOKEN}$` }), {
    default: ['RateLimit', 'RateLimit-Policy', 'Retry-After', 'X-Request-Id'],
    description: 'response headers scripts may read'
  }),
  credentials: Type.Boolean({ default: false, description: 'allow cookies / Authorization from the browser (not with origin "*")' }),
  maxAge: Duration({ default: '10m', description: 'how long a browser may cache a preflight answer' })
}, { additionalProperties: false, description: 'CORS: preflights answered by the gateway, the upstream\'s own Access-Control-* headers dropped' })

// --- security headers ----------------------------------------------------------------------

export const HstsSchema = Type.Object({
  maxAge: Duration({ default: '8760h', description: 'Strict-Transport-Security max-age (8760h = one year)' }),
  includeSubDomains: Type.Boolean({ default: false, description: 'add includeSubDomains' }),
  preload: Type.Boolean({ default: false, description: 'add preload' })
}, { additionalProperties: false, description: 'send Strict-Transport-Security (only when configured: behind TLS)' })

export const SecurityHeadersSchema = Type.Object({
  contentTypeOptions: Type.Boolean({ default: true, description: 'send X-Content-Type-Options: nosniff' }),
  referrerPolicy: Type.Union([Type.String({ pattern: '^[a-z-]+(, *[a-z-]+)*$' }), Type.Literal(false)], {
    default: 'no-referrer',
    description: 'Referrer-Policy value, or false to leave it to the upstream'
  }),
  frameOptions: Type.Union([Type.Literal('DENY'), Type.Literal('SAMEORIGIN'), Type.Literal(false)], {
    default: 'DENY',
    description: 'X-Frame-Options value, or false to leave it to the upstream'
  }),
  hsts: Type.Optional(HstsSchema),
  hideUpstreamHeaders: Type.Array(Type.String({ pattern: `^${TOKEN}$` }), {
    default: ['server', 'x-powered-by'],
    description: 'upstream response headers never passed to the client (version leaks); [] passes them all'
  })
}, { additionalProperties: false, default: {}, description: 'headers set on every response, the gateway\'s own and proxied ones' })

// --- load shedding ---------------------------------------------------------------------------

export const LoadSheddingSchema = Type.Object({
  maxEventLoopDelay: Type.Optional(Duration({ description: 'shed while the mean event-loop delay over a sample exceeds this' })),
  maxHeapUsed: Type.Optional(Size({ description: 'shed while the V8 heap in use exceeds this' })),
  maxRss: Type.Optional(Size({ description: 'shed while the resident set size exceeds this' })),
  sampleInterval: Duration({ default: '1s', description: 'how often the delay and memory are sampled' }),
  retryAfter: Duration({ default: '10s', description: 'Retry-After on a shed request' })
}, { additionalProperties: false, default: {}, description: 'refuse new requests with 503 while the process is overloaded; with no limit set, nothing is registered' })

// --- trust-bearing request headers -------------------------------------------------------------

/**
 * Request headers through which a proxy in front tells the upstream who the client is, which
 * scheme, host, port or path it used, or which URL to serve instead. From a peer that
 * `server.trustProxy` does not trust they are removed before forwarding (and their `_` spellings
 * too, which WSGI servers fold onto the same name); from a trusted peer they are passed on.
 * `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` are always
 * replaced by the gateway's own (built from the trusted chain), whoever sent them.
 */
export const TRUST_BEARING_HEADERS: readonly string[] = [
  'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port',
  'x-forwarded-prefix', 'x-forwarded-ssl', 'x-forwarded-protocol', 'x-forwarded-scheme',
  'x-forwarded-server', 'x-forwarded-uri', 'x-url-scheme', 'front-end-https', 'x-real-ip',
  'x-original-url', 'x-rewrite-url', 'x-original-uri', 'x-original-host', 'x-host',
  'true-client-ip', 'cf-connecting-ip', 'x-client-ip', 'x-cluster-client-ip', 'fastly-client-ip',
  'x-envoy-external-address', 'x-original-forwarded-for', 'x-proxyuser-ip', 'client-ip',
  'script-name', 'path-info', 'x-script-name'
]

// --- spread into schemas/config.ts --------------------------------------------------------

export const edgeConfigProperties = {
  rateLimit: RateLimitStoreSchema,
  ipFilter: Type.Optional(IpFilterSchema),
  securityHeaders: SecurityHeadersSchema,
  loadShedding: LoadSheddingSchema
}

export const routeEdgeProperties = {
  rateLimit: Type.Optional(RouteRateLimitSchema),
  ipFilter: Type.Optional(IpFilterSchema),
  cors: Type.Optional(CorsSchema)
}

export const serverEdgeProperties = {
  maxHeaders: Type.Integer({ minimum: 8, maximum: 2000, default: 100, description: 'most request header lines accepted; more → 431' })
}

export type RateLimitStoreConfig = Static<typeof RateLimitStoreSchema>
export type RedisTopology = Static<typeof RedisTopologySchema>
export type RouteRateLimit = Static<typeof RouteRateLimitSchema>
export type IpFilterConfig = Static<typeof IpFilterSchema>
export type CorsConfig = Static<typeof CorsSchema>
export type SecurityHeadersConfig = Static<typeof SecurityHeadersSchema>
export type LoadSheddingConfig = Static<typeof LoadSheddingSchema>

// --- parsers -----------------------------------------------------------------------------------

export interface Cidr { address: string, prefix: number, family: 'ipv4' | 'ipv6' }

/** `10.0.0.0/8`, `2001:db8::/32`, or a single address; null when not valid. */
export function parseCidr (value: string): Cidr | null {
  const slash = value.indexOf('/')
  const address = slash === -1 ? value : value.slice(0, slash)
  const version = isIP(address)
  if (version === 0) return null
  const bits = version === 4 ? 32 : 128
  if (slash === -1) return { address, prefix: bits, family: version === 4 ? 'ipv4' : 'ipv6' }
  const text = value.slice(slash + 1)
  if (!/^[0-9]{1,3}$/.test(text) || Number(text) > bits) return null
  return { address, prefix: Number(text), family: version === 4 ? 'ipv4' : 'ipv6' }
}

/** What `by` counts: `ip`, `consumer`, or a header (lower-case name). */
export type LimitKey = { kind: 'ip' } | { kind: 'consumer' } | { kind: 'header', name: string }

export function parseLimitBy (by: string): LimitKey {
  if (by === 'ip' || by === 'consumer') return { kind: by }
  return { kind: 'header', name: by.slice('header:'.length).toLowerCase() }
}

// --- checks a schema cannot express (called by src/config.ts checkSemantics) ----------------

interface EdgeConfigView {
  rateLimit: RateLimitStoreConfig
  ipFilter?: IpFilterConfig
  routes: ReadonlyArray<{ ipFilter?: IpFilterConfig, cors?: CorsConfig, rateLimit?: RouteRateLimit }>
}

function checkIpFilter (filter: IpFilterConfig | undefined, at: string, problems: string[]): void {
  if (filter === undefined) return
  for (const list of ['allow', 'deny'] as const) {
    filter[list]?.forEach((entry, i) => {
      if (parseCidr(entry) === null) problems.push(`${at}.${list}[${i}]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)`)
    })
  }
}

/** What the schema cannot say about `rateLimit.redis` as an object: one topology, and its own keys only. */
function checkRedisTopology (redis: RedisTopology, problems: string[]): void {
  const at = 'rateLimit.redis'
  const given = (['url', 'sentinels', 'cluster'] as const).filter((k) => redis[k] !== undefined)
  if (given.length !== 1) {
    problems.push(given.length === 0
      ? `${at}: an object needs url (one server), sentinels: [host:port, …] with name (Redis Sentinel) or cluster: [host:port, …] (Redis Cluster)`
      : `${at}: give one of ${given.join(', ')}, not ${given.length === 2 ? 'both' : 'all three'}`)
    return
  }
  if (redis.url !== undefined && !isRedisUrl(redis.url)) problems.push(`${at}.url: must be a redis:// or rediss:// URL`)
  if (redis.sentinels !== undefined) {
    if (redis.name === undefined) problems.push(`${at}.name: required with sentinels (the NAME in the Sentinels' "sentinel monitor NAME host port quorum")`)
  } else {
    for (const key of ['name', 'sentinelUsername', 'sentinelPassword'] as const) {
      if (redis[key] !== undefined) problems.push(`${at}.${key}: only with sentinels`)
    }
  }
  if (redis.cluster !== undefined && (redis.db ?? 0) !== 0) problems.push(`${at}.db: a Redis Cluster has only database 0`)
  if (redis.url !== undefined && redis.db !== undefined) problems.push(`${at}.db: with url, write the database in the URL (redis://host:6379/2)`)
  for (const list of ['sentinels', 'cluster'] as const) {
    redis[list]?.forEach((endpoint, i) => {
      const port = Number(endpoint.slice(endpoint.lastIndexOf(':') + 1))
      if (port < 1 || port > 65535) problems.push(`${at}.${list}[${i}]: the port must be 1 to 65535`)
    })
  }
  if (redis.tls?.insecureSkipVerify === true && redis.tls.ca !== undefined) problems.push(`${at}.tls: ca is pointless with insecureSkipVerify: true (nothing is verified)`)
}

function isRedisUrl (url: string): boolean {
  return /^rediss?:\/\/[^\s]+$/.test(url) && URL.canParse(url)
}

export function checkEdgeSemantics (config: EdgeConfigView, problems: string[]): void {
  const { rateLimit } = config
  if (rateLimit.store === 'redis') {
    if (rateLimit.redis === undefined) problems.push('rateLimit.redis: required with store: redis')
    else if (typeof rateLimit.redis === 'string') {
      if (!isRedisUrl(rateLimit.redis)) problems.push('rateLimit.redis: must be a redis:// or rediss:// URL')
    } else checkRedisTopology(rateLimit.redis, problems)
  }
  checkIpFilter(config.ipFilter, 'ipFilter', problems)
  config.routes.forEach((route, i) => {
    checkIpFilter(route.ipFilter, `routes[${i}].ipFilter`, problems)
    if (route.cors?.credentials === true && route.cors.origins.includes('*')) {
      problems.push(`routes[${i}].cors.origins: "*" cannot be combined with credentials: true (list the origins)`)
    }
  })
}

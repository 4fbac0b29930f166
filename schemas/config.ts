/**
 * The config file's schema. It is the validator (src/config.ts compiles it once), the
 * TypeScript type (`GatewayConfig`) and the source of docs/configuration.md (`npm run docs`):
 * every key has a `description`, and every default lives here and nowhere else.
 */
import Type, { type Static } from 'typebox'
import { Duration, HOST_PATTERN, HTTP_METHODS, Size } from './common.js'
import { authConfigProperties, routeAuthProperties } from './auth.js'
import { routeUpstreamProperties } from './upstream.js'
import { MetricsSchema, TracingSchema } from './observability.js'
import { edgeConfigProperties, routeEdgeProperties, serverEdgeProperties } from './edge.js'
import { routeValidateProperties } from './validate.js'
import { routeWebSocketProperties } from './websocket.js'

export { HTTP_METHODS }
export const DEFAULT_METHODS = [...HTTP_METHODS]

/** Paths the gateway answers itself; no route may use or shadow them. */
export const RESERVED_PATHS = ['/healthz', '/readyz', '/metrics'] as const

const Method = Type.Union(HTTP_METHODS.map((m) => Type.Literal(m)))

export const TimeoutsSchema = Type.Object({
  headers: Duration({ default: '10s', description: 'time a client has to send the request headers (slowloris guard)' }),
  request: Duration({ default: '30s', description: 'time a client has to send the whole request' }),
  keepAlive: Duration({ default: '72s', description: 'how long an idle client connection is kept open' })
}, { additionalProperties: false, default: {}, description: 'client timeouts; Node checks them every second' })

export const ServerSchema = Type.Object({
  host: Type.String({ default: '127.0.0.1', minLength: 1, description: 'address to listen on' }),
  port: Type.Integer({ default: 8080, minimum: 0, maximum: 65535, description: 'port to listen on (0 = any free port)' }),
  trustProxy: Type.Union([
    Type.Boolean(),
    Type.Integer({ minimum: 1 }),
    Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })
  ], {
    default: false,
    description: 'whether X-Forwarded-* from the peer are believed: false, true, a hop count, or a list of trusted addresses/CIDRs'
  }),
  bodyLimit: Size({ default: '1mb', description: 'largest request body accepted (per-route override: routes[].bodyLimit)' }),
  requestBuffer: Size({ default: '64kb', description: 'a buffered request body (routes[].requestBuffering) up to this size is held in memory; a larger one is written to a temporary file in requestBufferDir (nginx: client_body_buffer_size)' }),
  requestBufferDir: Type.Optional(Type.String({ minLength: 1, description: 'folder for the temporary files of buffered bodies larger than requestBuffer (default: the system temporary folder; files are created mode 0600 and removed when the request ends)' })),
  requestBufferTotal: Size({ default: '1gb', description: 'most bytes of buffered request bodies held at once, in memory and on disk together, across all requests; a body that would pass it → 503 with Retry-After' }),
  headersWithUnderscores: Type.Union([Type.Literal('drop'), Type.Literal('reject'), Type.Literal('allow')], {
    default: 'drop',
    description: 'request header names containing "_": drop them before forwarding (nginx: underscores_in_headers off), reject the request with 400, or allow them (then a name that an upstream could fold onto an identity or trust-bearing header, X_Authenticated_User, is still dropped)'
  }),
  lingeringClose: Type.Object({
    time: Duration({ default: '5s', description: 'after the gateway refused a request before reading its body, how long it goes on reading and discarding the body so the client sees the answer (nginx: lingering_time)' }),
    size: Size({ default: '64mb', description: 'most bytes of such a body read and discarded; past it the connection is closed' })
  }, { additionalProperties: false, default: {}, description: 'reading the rest of a refused request\'s body, so the client sees the answer' }),
  allocationSitePretenuring: Type.Boolean({ default: false, description: "V8's allocation-site pretenuring, process-wide, set when the gateway starts (portcullis start, startServer). Off by default: under load it moved request-scoped objects to the old generation, which made every scavenge slow (bench/PROFILE.md)" }),
  maxHeaderSize: Size({ default: '16kb', description: 'largest request head (request line + headers) accepted; larger → 431' }),
  ...serverEdgeProperties,
  timeouts: TimeoutsSchema,
  readiness: Type.Array(Type.String({ minLength: 1 }), { default: [], uniqueItems: true, description: 'names of routes /readyz follows: 503 while one of them has no target left (by default /readyz does not depend on upstreams)' }),
  shutdownGrace: Duration({ default: '10s', description: 'on SIGTERM/SIGINT, how long in-flight requests get to finish' }),
  metrics: MetricsSchema
}, { additionalProperties: false, default: {}, description: 'the listener: address, port, client limits and timeouts, shutdown, metrics endpoint' })

export const LoggingSchema = Type.Object({
  level: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), {
    default: 'info', description: 'pino log level'
  }),
  accessLog: Type.Boolean({ default: true, description: 'one line per request: method, ip, route, path (never the query string), status, ms, upstreamMs, reqId, traceId' })
}, { additionalProperties: false, default: {}, description: 'pino JSON lines on stdout; credentials, cookies, API keys, passwords and tokens are always redacted' })

export const RoutePluginSchema = Type.Union([
  Type.String({ minLength: 1, description: 'path of a module whose default export is a Fastify plugin' }),
  Type.Object({
    path: Type.String({ minLength: 1, description: 'path of the plugin module (relative to the config file); a TypeScript plugin is named by the .js it compiles to' }),
    options: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'passed to the plugin as its options' })),
    at: Type.Optional(Type.Union([Type.Literal('beforeAuth'), Type.Literal('afterAuth')], {
      default: 'afterAuth',
      description: 'where in the route\'s pipeline: beforeAuth (after the IP filter, CORS and the per-IP limit; sees requests authentication will refuse) or afterAuth (after authorization, the consumer limit and validation, just before forwarding)'
    }))
  }, { additionalProperties: false })
])

export const RouteTlsSchema = Type.Object({
  insecureSkipVerify: Type.Boolean({ default: false, description: 'accept any certificate from an https upstream (never in production)' }),
  ca: Type.Optional(Type.String({ minLength: 1, description: 'PEM file of the CA that signed the upstream certificate' }))
}, { additionalProperties: false, default: {}, description: 'TLS to an https upstream; certificates are verified unless insecureSkipVerify' })

export const RouteSchema = Type.Object({
  name: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'unique name; used in logs and metrics labels' }),
  prefix: Type.String({ pattern: '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/-]*$', description: 'path prefix this route answers, e.g. /api/people' }),
  hosts: Type.Array(Type.String({ pattern: HOST_PATTERN, maxLength: 253 }), {
    default: [],
    uniqueItems: true,
    description: 'host names this route answers (the Host header, compared case-insensitively without its port and a trailing dot): api.example.com, or *.example.com for any name under example.com at any depth (not example.com itself). An exact name wins, then the longest wildcard, then the routes without hosts; [] (the default): every host. A request whose host no route with its prefix takes gets 404 (docs/proxying.md, "Host-based routes")'
  }),
  ...routeUpstreamProperties,
  methods: Type.Array(Method, { minItems: 1, uniqueItems: true, default: DEFAULT_METHODS, description: 'methods proxied; others get 405' }),
  timeout: Duration({ default: '30s', description: 'time the upstream has to send its response headers, and the longest pause inside its body' }),
  connections: Type.Integer({ minimum: 1, maximum: 4096, default: 128, description: 'keep-alive connections per upstream URL' }),
  maxPending: Type.Integer({ minimum: 0, maximum: 100000, default: 1024, description: 'requests that may wait for a free upstream connection (per upstream URL); one more → 503 with Retry-After (Envoy: max_pending_requests)' }),
  queueTimeout: Duration({ default: '5s', description: 'longest wait for a free upstream connection; after it → 503 with Retry-After' }),
  requestBuffering: Type.Boolean({ default: true, description: 'read the whole request body (up to bodyLimit) before contacting the upstream, so slow uploads never hold an upstream connection (nginx: proxy_request_buffering on); false streams bodies to the upstream as they arrive' }),
  bodyLimit: Type.Optional(Size({ description: 'largest request body on this route (default server.bodyLimit)' })),
  tls: RouteTlsSchema,
  allowInPath: Type.Array(Type.Union([Type.Literal('encodedSlash'), Type.Literal('backslash'), Type.Literal('semicolon')]), {
    default: [],
    uniqueItems: true,
    description: 'path spellings this route forwards instead of refusing them with 400: encodedSlash (%2F), backslash (\\ and %5C), semicolon (";" path parameters). Only for an upstream that needs them: one that decodes %2F or strips ";x" resolves such a path to another resource than the one the gateway checked. Dot segments, NUL and control bytes and a fragment (#) are always refused'
  }),
  ...routeValidateProperties,
  plugins: Type.Array(RoutePluginSchema, { default: [], description: 'your own Fastify plugins, registered in this route\'s scope before the proxy' }),
  ...routeAuthProperties,
  ...routeEdgeProperties,
  ...routeWebSocketProperties
}, { additionalProperties: false })

/** 10,000 routes start (npm run bench -- --scale; docs/benchmarks.md#cost-growth): start-up time and memory grow with each. */
export const MAX_ROUTES = 10_000

export const GatewayConfigSchema = Type.Object({
  server: ServerSchema,
  logging: LoggingSchema,
  ...authConfigProperties,
  ...edgeConfigProperties,
  tracing: TracingSchema,
  routes: Type.Array(RouteSchema, { minItems: 1, maxItems: MAX_ROUTES, description: `one route per API behind the gateway (at most ${MAX_ROUTES}: each route is a Fastify context, and start-up time and memory grow with them, docs/benchmarks.md#cost-growth); no two routes may share or shadow a prefix for the same host (routes[].hosts), and /healthz, /readyz, /metrics are the gateway's` })
}, { additionalProperties: false })

export type GatewayConfig = Static<typeof GatewayConfigSchema>
export type RouteConfig = Static<typeof RouteSchema>
export type ServerConfig = Static<typeof ServerSchema>
export type RoutePlugin = Static<typeof RoutePluginSchema>

/**
 * Config keys for observability: `server.metrics` (the Prometheus endpoint) and `tracing`
 * (W3C trace context and the optional OTLP/HTTP exporter). Imported by schemas/config.ts.
 */
import Type, { type Static } from 'typebox'
import { Duration } from './common.js'
import { PASSWORD_HASH_PATTERN } from './auth.js'
import { parseCidr } from './edge.js'

/** Latency histogram bounds in seconds: a loopback hop is well under a millisecond. */
export const DEFAULT_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

export const MetricsBasicSchema = Type.Object({
  username: Type.String({ minLength: 1, description: 'user name the scraper sends with HTTP Basic' }),
  passwordHash: Type.String({ pattern: PASSWORD_HASH_PATTERN, description: 'its password as `scrypt$…` (from `portcullis hash-password`)' })
}, { additionalProperties: false, description: 'require HTTP Basic to scrape' })

export const MetricsSchema = Type.Object({
  enabled: Type.Boolean({ default: true, description: 'collect metrics and serve them; off, the gateway pays nothing for them' }),
  path: Type.String({ default: '/metrics', pattern: '^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$', description: 'path the Prometheus text exposition is served on' }),
  port: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535, description: 'serve metrics on this port (a second listener) instead of the gateway port' })),
  host: Type.Optional(Type.String({ minLength: 1, description: 'address of the metrics listener (default server.host); only with port' })),
  basic: Type.Optional(MetricsBasicSchema),
  allow: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    minItems: 1, description: 'client addresses or CIDRs allowed to scrape; others get 403'
  })),
  defaultMetrics: Type.Boolean({ default: true, description: 'Node.js process metrics (CPU, memory, event loop lag, GC, handles)' }),
  buckets: Type.Array(Type.Number({ exclusiveMinimum: 0 }), {
    minItems: 1, default: DEFAULT_LATENCY_BUCKETS, description: 'latency histogram bucket bounds in seconds, ascending'
  })
}, { additionalProperties: false, default: {}, description: 'the Prometheus endpoint' })

export const OtlpSchema = Type.Object({
  endpoint: Type.String({ minLength: 1, description: 'OTLP/HTTP traces URL of the collector, e.g. http://127.0.0.1:4318/v1/traces' }),
  headers: Type.Record(Type.String(), Type.String(), { default: {}, description: 'extra request headers for the collector (an API key from ${ENV})' }),
  serviceName: Type.String({ minLength: 1, default: 'portcullis', description: 'the service.name resource attribute' }),
  interval: Duration({ default: '5s', description: 'how often queued spans are sent' }),
  batchSize: Type.Integer({ minimum: 1, maximum: 10_000, default: 512, description: 'most spans in one export request; a full batch is sent at once' }),
  queueSize: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 4096, description: 'spans waiting to be sent; beyond it new spans are dropped (and counted)' }),
  timeout: Duration({ default: '10s', description: 'time one export request may take' })
}, { additionalProperties: false, description: 'export sampled requests as spans to an OpenTelemetry collector (OTLP/HTTP, JSON); off unless set' })

export const TracingSchema = Type.Object({
  enabled: Type.Boolean({ default: true, description: 'accept (or start) W3C trace context, forward it upstream, log the trace id' }),
  sampleRatio: Type.Number({ minimum: 0, maximum: 1, default: 1, description: 'share of new traces marked sampled; a valid incoming traceparent keeps its own flag' }),
  otlp: Type.Optional(OtlpSchema)
}, { additionalProperties: false, default: {}, description: 'W3C Trace Context and the optional OTLP exporter' })

export type MetricsConfig = Static<typeof MetricsSchema>
export type TracingConfig = Static<typeof TracingSchema>
export type OtlpConfig = Static<typeof OtlpSchema>

// --- checks a schema cannot express (called by src/config.ts checkSemantics) ----------------

interface ObservabilityConfigView {
  server: { port: number, metrics: MetricsConfig }
  tracing: TracingConfig
  routes: ReadonlyArray<{ name: string, prefix: string }>
}

/** The route label of requests no route matched: no route may take it as its name. */
export const UNMATCHED_ROUTE = 'unmatched'
const GATEWAY_PATHS = ['/healthz', '/readyz']

export function checkObservabilitySemantics (config: ObservabilityConfigView, problems: string[]): void {
  const { metrics } = config.server
  if (metrics.host !== undefined && metrics.port === undefined) problems.push('server.metrics.host: only meaningful with server.metrics.port')
  if (metrics.port !== undefined && metrics.port !== 0 && metrics.port === config.server.port) {
    problems.push('server.metrics.port: must differ from server.port (leave it out to serve metrics on the gateway port)')
  }
  metrics.allow?.forEach((entry, i) => {
    if (parseCidr(entry) === null) problems.push(`server.metrics.allow[${i}]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)`)
  })
  if (metrics.buckets.some((b, i) => i > 0 && b <= metrics.buckets[i - 1])) {
    problems.push('server.metrics.buckets: must be in ascending order, without repeats')
  }
  // The default path is in RESERVED_PATHS, which the route checks cover.
  if (metrics.enabled && metrics.port === undefined && metrics.path !== '/metrics') {
    if (GATEWAY_PATHS.includes(metrics.path)) problems.push(`server.metrics.path: "${metrics.path}" is the gateway's own`)
    config.routes.forEach((route, i) => {
      const prefix = route.prefix.replace(/\/+$/, '')
      if (prefix !== '' && (metrics.path === prefix || metrics.path.startsWith(prefix + '/') || prefix.startsWith(metrics.path + '/'))) {
        problems.push(`server.metrics.path: "${metrics.path}" collides with routes[${i}].prefix "${route.prefix}"`)
      }
    })
  }
  const endpoint = config.tracing.otlp?.endpoint
  if (endpoint !== undefined && !/^https?:$/.test(URL.canParse(endpoint) ? new URL(endpoint).protocol : '')) {
    problems.push('tracing.otlp.endpoint: must be an http or https URL')
  }
  config.routes.forEach((route, i) => {
    if (route.name === UNMATCHED_ROUTE) problems.push(`routes[${i}].name: "${UNMATCHED_ROUTE}" is the metrics label of requests no route matched`)
  })
}

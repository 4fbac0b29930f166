/**
 * Upstream resilience: the config of `routes[].upstream` and what keeps a route serving when some
 * of its targets fail — balancing, active health checks, passive health (outlier ejection), a
 * circuit breaker per target, retries on another target under a budget — and `server.readiness`.
 * The concern is plugins/upstream/; docs/upstreams.md compares each key with Kong and Envoy.
 */
import Type, { type Static } from 'typebox'
import { Duration, parseDuration } from './common.js'

/** A header field name (RFC 9110 token). */
const TOKEN = '[A-Za-z0-9!#$%&\'*+.^_`|~-]+'

export const UpstreamTargetSchema = Type.Object({
  url: Type.String({ minLength: 1, description: 'http(s) URL of the target; every target of a route has the same path' }),
  weight: Type.Integer({ minimum: 1, maximum: 1000, default: 1, description: 'share of the requests, relative to the other targets' })
}, { additionalProperties: false })

export const BALANCE_PATTERN = `^(round-robin|least-requests|hash:(ip|header:${TOKEN}))$`

export const HealthCheckSchema = Type.Object({
  path: Type.String({ pattern: '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/?-]*$', default: '/healthz', description: 'absolute path asked on each target\'s origin (not under the route\'s path), e.g. /healthz' }),
  interval: Duration({ default: '10s', description: 'time between two checks of a target (jittered ±10 %)' }),
  timeout: Duration({ default: '2s', description: 'a check that has no answer within this time failed' }),
  healthyThreshold: Type.Integer({ minimum: 1, maximum: 100, default: 2, description: 'consecutive passed checks that bring an unhealthy target back' }),
  unhealthyThreshold: Type.Integer({ minimum: 1, maximum: 100, default: 3, description: 'consecutive failed checks that take a target out' }),
  expectStatus: Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), { minItems: 1, uniqueItems: true, default: [200], description: 'statuses that pass' })
}, { additionalProperties: false, description: 'active health checks: the gateway asks each target itself, outside the pipeline; off when absent' })

export const OutlierDetectionSchema = Type.Object({
  consecutiveFailures: Type.Integer({ minimum: 1, maximum: 1000, default: 5, description: 'consecutive failures that eject a target' }),
  count: Type.Union([Type.Literal('gateway-errors'), Type.Literal('5xx')], {
    default: 'gateway-errors',
    description: 'what is a failure: gateway-errors (no connection, reset, timeout, 502, 503, 504) or 5xx (any 5xx answer too)'
  }),
  baseEjectionTime: Duration({ default: '30s', description: 'first ejection; each further ejection of the same target lasts this times the number of its ejections' }),
  maxEjectionTime: Duration({ default: '5m', description: 'longest ejection' }),
  maxEjectionPercent: Type.Integer({ minimum: 0, maximum: 100, default: 50, description: 'most targets of the route ejected at once, in per cent' })
}, { additionalProperties: false, description: 'passive health: a target that keeps failing real requests leaves the rotation for a while' })

export const CircuitBreakerSchema = Type.Object({
  failureRatio: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.5, description: 'share of failed requests in the window that opens the breaker' }),
  window: Duration({ default: '10s', description: 'the sliding window the ratio is measured over' }),
  minRequests: Type.Integer({ minimum: 1, maximum: 100000, default: 20, description: 'requests in the window before the ratio counts' }),
  openFor: Duration({ default: '10s', description: 'how long an open breaker sends nothing to its target' }),
  halfOpenRequests: Type.Integer({ minimum: 1, maximum: 100, default: 3, description: 'probes let through when half-open; all must pass to close it' })
}, { additionalProperties: false, description: 'a breaker per target: open, its target gets nothing (other targets do; none left → 503 + Retry-After)' })

export const RetryBudgetSchema = Type.Object({
  ratio: Type.Number({ minimum: 0, maximum: 1, default: 0.2, description: 'retries allowed as a share of the route\'s requests' }),
  minPerSecond: Type.Integer({ minimum: 0, maximum: 10000, default: 10, description: 'retries allowed each second on top of the ratio (so a quiet route can still retry)' })
}, { additionalProperties: false, description: 'caps retries, so a failing upstream never gets more than (1 + ratio) × the requests plus minPerSecond a second' })

export const RETRY_ON = ['connect-failure', 'reset', 'timeout', '502', '503', '504'] as const

export const routeUpstreamProperties = {
  upstream: Type.Union([
    Type.String({ minLength: 1 }),
    Type.Array(Type.Union([Type.String({ minLength: 1 }), UpstreamTargetSchema]), { minItems: 1, maxItems: 64 })
  ], { description: 'http(s) URL, or a list of targets (a URL, or { url, weight }) balanced by `balance`; its path replaces the prefix' }),
  balance: Type.String({
    pattern: BALANCE_PATTERN,
    default: 'round-robin',
    description: 'round-robin (smooth, weighted), least-requests (the less busy of two random targets) or hash:ip / hash:header:NAME (consistent: one client stays on one target; the IP when the header is absent)'
  }),
  healthCheck: Type.Optional(HealthCheckSchema),
  outlierDetection: Type.Union([Type.Literal(false), OutlierDetectionSchema], { default: {}, description: 'passive health, on by default; false turns it off' }),
  circuitBreaker: Type.Union([Type.Literal(false), CircuitBreakerSchema], { default: {}, description: 'a circuit breaker per target, on by default; false turns it off' }),
  retries: Type.Integer({ minimum: 0, maximum: 5, default: 1, description: 'retries of a body-less GET, HEAD or OPTIONS, each on another target when there is one, on the retryOn conditions' }),
  retryOn: Type.Array(Type.Union(RETRY_ON.map((c) => Type.Literal(c))), {
    uniqueItems: true,
    default: ['connect-failure', 'reset'],
    description: 'what is retried: connect-failure, reset (before any response byte), timeout (no response headers within tryTimeout), 502, 503, 504'
  }),
  tryTimeout: Type.Optional(Duration({ description: 'time one try has for the response headers (default: the route\'s timeout)' })),
  retryBudget: Type.Union([Type.Literal(false), RetryBudgetSchema], { default: {}, description: 'the cap on retries, on by default; false leaves only `retries`' })
}

export type UpstreamTarget = Static<typeof UpstreamTargetSchema>
export type HealthCheckConfig = Static<typeof HealthCheckSchema>
export type OutlierDetectionConfig = Static<typeof OutlierDetectionSchema>
export type CircuitBreakerConfig = Static<typeof CircuitBreakerSchema>
export type RetryBudgetConfig = Static<typeof RetryBudgetSchema>
export type RetryOn = typeof RETRY_ON[number]

/** A route's targets as `{ url, weight }`, whichever way the config wrote them. */
export function upstreamTargets (upstream: string | ReadonlyArray<string | UpstreamTarget>): UpstreamTarget[] {
  const list = typeof upstream === 'string' ? [upstream] : upstream
  return list.map((t) => typeof t === 'string' ? { url: t, weight: 1 } : t)
}

interface UpstreamConfigView {
  server: { readiness: readonly string[] }
  routes: ReadonlyArray<{ name: string, upstream: string | ReadonlyArray<string | UpstreamTarget>, retries: number, retryOn: readonly string[], healthCheck?: HealthCheckConfig }>
}

/** What the schema cannot say: readiness names existing routes; a health check that can finish before the next. */
export function checkUpstreamSemantics (config: UpstreamConfigView, problems: string[]): void {
  const names = new Set(config.routes.map((r) => r.name))
  config.server.readiness.forEach((name, i) => {
    if (!names.has(name)) problems.push(`server.readiness[${i}]: "${name}" is not the name of a route`)
  })
  config.routes.forEach((route, i) => {
    const check = route.healthCheck
    if (check !== undefined && parseDuration(check.timeout) >= parseDuration(check.interval)) {
      problems.push(`routes[${i}].healthCheck.timeout: must be shorter than healthCheck.interval`)
    }
    if (route.retryOn.length === 0 && route.retries > 0) {
      problems.push(`routes[${i}].retryOn: empty, so nothing is retried; set retries: 0 instead`)
    }
  })
}

/**
 * Prometheus metrics (`server.metrics`): the text exposition on `/metrics` (or on a port of
 * its own), optionally behind HTTP Basic and/or an address allow list.
 *
 * Cost on the hot path: `GatewayMetrics.start` is called by the app's LogController for every
 * request (no hook on the routes), adds one `close` listener to the response, and at close
 * bumps a few numbers in per-route typed arrays (no label hashing, no allocation). prom-client
 * turns them into the exposition when scraped. Everything else — authentication failures,
 * denials, validation failures, 429s, upstream errors — arrives on the diagnostics channels
 * of schemas/events.ts, which cost the publishers nothing while metrics are off.
 *
 * Label values are configured route names (or the gateway's own endpoint names, or
 * `unmatched`), never paths, and every label taken from an event is bounded, so no client can
 * grow the number of series.
 */
import { createHash, timingSafeEqual, randomUUID } from 'node:crypto'
import cluster from 'node:cluster'
import type { Channel } from 'node:diagnostics_channel'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { isIP, type AddressInfo, type BlockList } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import client from 'prom-client'
import type { GatewayConfig } from '../../schemas/config.js'
import { UNMATCHED_ROUTE, type MetricsConfig } from '../../schemas/observability.js'
import { ERRORS, GatewayError, problemType, type ErrorCode } from '../../schemas/errors.js'
import { PROBLEM_CONTENT_TYPE } from '../../schemas/problem.js'
import { blockList, unmapIPv4 } from '../edge/ip-filter.js'
import { parsePasswordHash, verifyPassword, type ParsedHash } from '../auth/password-hash.js'
import type { Lease } from '../core/shared.js'
import {
  channels, type AuthFailureEvent, type AuthzDeniedEvent, type RateLimitedEvent, type UpstreamErrorEvent, type ValidationFailureEvent
} from '../../schemas/events.js'
import { routeNameOf } from '../core/fastify-internals.js'
import type { BreakerState } from '../upstream/breaker.js'
import type { UpstreamSet } from '../upstream/index.js'
import type { WebSocketRouteStats } from '../websocket/index.js'

/** The route label of a request no configured route matched (404s, bad URLs). */
export const UNMATCHED = UNMATCHED_ROUTE
/** What a label taken from an event becomes when it is malformed or one value too many. */
export const OTHER = 'other'

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'other'] as const
const METHOD_INDEX = new Map<string, number>(METHODS.slice(0, -1).map((m, i) => [m, i]))
const OTHER_METHOD = METHODS.length - 1
/** Status classes; `aborted` = the response never finished (client went away, upstream died mid-body). */
const CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'aborted'] as const
const ABORTED = CLASSES.length - 1

/** Every metric the gateway exports itself (the dashboard test checks its queries against these). */
export const METRIC_NAMES = {
  requests: 'portcullis_requests_total',
  requestDuration: 'portcullis_request_duration_seconds',
  upstreamDuration: 'portcullis_upstream_duration_seconds',
  proxiedDuration: 'portcullis_proxied_request_duration_seconds',
  inFlight: 'portcullis_requests_in_flight',
  upstreamErrors: 'portcullis_upstream_errors_total',
  authFailures: 'portcullis_auth_failures_total',
  authzDenials: 'portcullis_authz_denials_total',
  validationFailures: 'portcullis_validation_failures_total',
  validationReported: 'portcullis_validation_report_violations_total',
  rateLimited: 'portcullis_rate_limited_total',
  upstreamTargetUp: 'portcullis_upstream_target_up',
  upstreamTargetHealthy: 'portcullis_upstream_target_healthy',
  upstreamTargetEjected: 'portcullis_upstream_target_ejected',
  upstreamBreakerState: 'portcullis_upstream_breaker_state',
  upstreamEjections: 'portcullis_upstream_ejections_total',
  upstreamBreakerTransitions: 'portcullis_upstream_breaker_transitions_total',
  upstreamRetries: 'portcullis_upstream_retries_total',
  upstreamRetryBudgetExhausted: 'portcullis_upstream_retry_budget_exhausted_total',
  upstreamInFlight: 'portcullis_upstream_in_flight',
  websocketTunnelsOpen: 'portcullis_websocket_tunnels_open',
  websocketUpgrades: 'portcullis_websocket_upgrades_total',
  websocketBytes: 'portcullis_websocket_bytes_total'
} as const

/** A latency histogram as plain numbers: `counts[i]` holds values ≤ bounds[i] (and > bounds[i-1]). */
class Buckets {
  readonly counts: Float64Array
  sum = 0
  count = 0
  constructor (private readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1)
  }

  observe (seconds: number): void {
    const b = this.bounds
    let i = 0
    while (i < b.length && seconds > b[i]) i++
    this.counts[i]++
    this.sum += seconds
    this.count++
  }
}

class RouteStats {
  /** Requests by method × status class. */
  readonly requests = new Float64Array(METHODS.length * CLASSES.length)
  readonly latency: Buckets
  readonly upstream: Buckets
  /** The whole time of the requests in `upstream` (the proxied ones), so that the two compare. */
  readonly proxied: Buckets
  constructor (readonly route: string, bounds: readonly number[]) {
    this.latency = new Buckets(bounds)
    this.upstream = new Buckets(bounds)
    this.proxied = new Buckets(bounds)
  }
}

interface HistogramValue { labels: Record<string, string | number>, value: number, metricName: string }

/**
 * A histogram registered in prom-client whose numbers live in RouteStats: prom-client only
 * asks for them (`get`) when scraped.
 */
class RouteHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  constructor (
    readonly name: string,
    readonly help: string,
    private readonly stats: ReadonlyMap<string, RouteStats>,
    private readonly pick: (s: RouteStats) => Buckets,
    private readonly bounds: readonly number[]
  ) {}

  async get (): Promise<{ name: string, help: string, type: string, aggregator: string, values: HistogramValue[] }> {
    const values: HistogramValue[] = []
    for (const s of this.stats.values()) {
      const h = this.pick(s)
      if (h.count === 0) continue
      let cumulative = 0
      for (let i = 0; i < this.bounds.length; i++) {
        cumulative += h.counts[i]
        values.push({ metricName: `${this.name}_bucket`, labels: { route: s.route, le: this.bounds[i] }, value: cumulative })
      }
      values.push({ metricName: `${this.name}_bucket`, labels: { route: s.route, le: '+Inf' }, value: h.count })
      values.push({ metricName: `${this.name}_sum`, labels: { route: s.route }, value: h.sum })
      values.push({ metricName: `${this.name}_count`, labels: { route: s.route }, value: h.count })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  reset (): void {}
}

const LABEL_VALUE = /^[A-Za-z0-9_.:@-]{1,64}$/
const MAX_LABEL_VALUES = 64

/** Bounds the values one label of one metric may take: well-formed, and at most 64 distinct. */
class LabelGuard {
  private readonly seen = new Set<string>()
  value (raw: unknown): string {
    if (typeof raw !== 'string' || !LABEL_VALUE.test(raw)) return OTHER
    if (this.seen.has(raw)) return raw
    if (this.seen.size >= MAX_LABEL_VALUES) return OTHER
    this.seen.add(raw)
    return raw
  }
}

// --- upstream targets (plugins/upstream) -------------------------------------------------------

/** Each route's upstream set by route name, asked at scrape time (undefined: the gateway has none). */
export type UpstreamSource = () => ReadonlyMap<string, UpstreamSet> | undefined

const BREAKER_STATES = ['closed', 'open', 'half-open'] as const
const TRANSITIONS = [['open', 'breakerOpened'], ['half-open', 'breakerHalfOpened'], ['closed', 'breakerClosed']] as const

/** One target as one scrape sees it. */
interface TargetReading {
  route: string
  /** scheme://host:port (targetLabel). */
  target: string
  index: number
  set: UpstreamSet
  healthy: boolean
  ejected: boolean
  breaker: BreakerState | 'off'
}

/**
 * A target's `target` label: its origin, scheme://host:port. The WHATWG origin never carries the
 * URL's userinfo, path or query, and it is parsed again here whatever the set's `origin` holds:
 * a password in a target URL must never reach /metrics.
 */
export function targetLabel (origin: string): string {
  try {
    const { origin: bare } = new URL(origin)
    return bare === 'null' ? OTHER : bare
  } catch {
    return OTHER
  }
}

/**
 * The upstream series, read from the route's sets when scraped: nothing on the request path. The
 * values are the sets' own (states(), inFlight, counters); prom-client collects every metric of
 * one scrape in one synchronous pass, so the states are read once per scrape (kept until the next
 * microtask) and the up, healthy, ejected and breaker series of a scrape agree with each other.
 *
 * Counters are prom-client Counters whose collect() sets the set's count (reset, then inc by it),
 * as portcullis_requests_total does: they keep `# TYPE … counter`. Under `--workers N` the
 * primary adds the counters up; a target is up only when every worker sees it up (min), ejected
 * or in a breaker state when some worker does (max); in-flight requests add up.
 */
export class UpstreamSeries {
  private readings: TargetReading[] | null = null
  private readonly forget = (): void => { this.readings = null }
  readonly metrics: client.Metric[]

  constructor (private readonly source: UpstreamSource, registers: client.Registry[]) {
    const series = this
    const perTarget = (name: string, help: string, aggregator: client.Aggregator, value: (r: TargetReading) => number): client.Metric =>
      new client.Gauge({
        name,
        help,
        labelNames: ['route', 'target'] as const,
        aggregator,
        registers,
        collect () {
          this.reset()
          for (const r of series.targets()) this.set({ route: r.route, target: r.target }, value(r))
        }
      })
    const perRoute = (name: string, help: string, count: (set: UpstreamSet) => number): client.Metric =>
      new client.Counter({
        name,
        help,
        labelNames: ['route'] as const,
        registers,
        collect () {
          this.reset()
          for (const [route, set] of series.sets()) this.inc({ route }, count(set))
        }
      })
    this.metrics = [
      perTarget(METRIC_NAMES.upstreamTargetUp,
        'Whether a target gets requests now (1): its health checks pass, it is not ejected and its breaker is not open; by route and target (its origin).',
        'min', (r) => r.healthy && !r.ejected && r.breaker !== 'open' ? 1 : 0),
      perTarget(METRIC_NAMES.upstreamTargetHealthy,
        'Whether a target passes its active health checks (1; always 1 without healthCheck), by route and target.', 'min', (r) => r.healthy ? 1 : 0),
      perTarget(METRIC_NAMES.upstreamTargetEjected,
        'Whether outlier detection has ejected a target now (1), by route and target.', 'max', (r) => r.ejected ? 1 : 0),
      perTarget(METRIC_NAMES.upstreamInFlight,
        'Requests sent to a target and not finished, by route and target.', 'sum', (r) => r.set.inFlight[r.index]),
      new client.Gauge({
        name: METRIC_NAMES.upstreamBreakerState,
        help: 'Each target\'s circuit breaker, one-hot over closed, open and half-open (routes with circuitBreaker: false have none).',
        labelNames: ['route', 'target', 'state'] as const,
        aggregator: 'max',
        registers,
        collect () {
          this.reset()
          for (const r of series.targets()) {
            if (r.breaker === 'off') continue
            for (const state of BREAKER_STATES) this.set({ route: r.route, target: r.target, state }, r.breaker === state ? 1 : 0)
          }
        }
      }),
      new client.Counter({
        name: METRIC_NAMES.upstreamEjections,
        help: 'Ejections of a target by outlier detection (consecutive failures), by route and target.',
        labelNames: ['route', 'target'] as const,
        registers,
        collect () {
          this.reset()
          for (const r of series.targets()) this.inc({ route: r.route, target: r.target }, r.set.counters.ejections[r.index])
        }
      }),
      new client.Counter({
        name: METRIC_NAMES.upstreamBreakerTransitions,
        help: 'Circuit breaker transitions, by route, target and the state moved to (open, half-open, closed).',
        labelNames: ['route', 'target', 'to'] as const,
        registers,
        collect () {
          this.reset()
          for (const r of series.targets()) {
            if (r.breaker === 'off') continue
            for (const [to, key] of TRANSITIONS) this.inc({ route: r.route, target: r.target, to }, r.set.counters[key][r.index])
          }
        }
      }),
      perRoute(METRIC_NAMES.upstreamRetries,
        'Retries of failed tries (on another target when there is one), by route.', (set) => set.counters.retries),
      perRoute(METRIC_NAMES.upstreamRetryBudgetExhausted,
        'Retries not made because the route\'s retry budget was spent, by route.', (set) => set.counters.retriesRefusedByBudget)
    ]
  }

  private sets (): Iterable<[string, UpstreamSet]> {
    return this.source() ?? []
  }

  /** Every target of every route, read once per scrape. */
  private targets (): readonly TargetReading[] {
    if (this.readings !== null) return this.readings
    const readings: TargetReading[] = []
    for (const [route, set] of this.sets()) {
      set.states().forEach((s, index) => {
        readings.push({ route, target: targetLabel(s.origin), index, set, healthy: s.healthy, ejected: s.ejected, breaker: s.breaker })
      })
    }
    this.readings = readings
    queueMicrotask(this.forget)
    return readings
  }
}

/**
 * Node's process metrics: one set per process, however many gateways it runs — process-wide on
 * purpose. prom-client's collectDefaultMetrics starts monitors (event-loop delay, GC observer) it
 * never stops, so one set per gateway would leave them running for every gateway ever built. The
 * values describe the process, the same for every gateway in it, and no gateway's requests change
 * them. The one coupling: prom-client resets the event-loop delay percentiles when they are
 * collected, so they cover the time since the last scrape of any gateway in the process, as they
 * already do for two scrapers of one gateway.
 */
let processRegistry: client.Registry | undefined
function processMetrics (): client.Registry {
  if (processRegistry === undefined) {
    processRegistry = new client.Registry()
    client.collectDefaultMetrics({ register: processRegistry })
  }
  return processRegistry
}

const kReply = Symbol('portcullis.metrics.reply')
const kStart = Symbol('portcullis.metrics.start')
/** Fastify measures `reply.elapsedTime` only when logging is on: the start is kept here instead. */
type TrackedResponse = ServerResponse & { [kReply]?: FastifyReply, [kStart]?: number }

/** Where the WebSocket series read each route's tunnel counters (plugins/websocket's `app.websockets.stats()`). */
export type WebSocketSource = () => Iterable<WebSocketRouteStats> | undefined

/**
 * The WebSocket series, read from the routes' counters when scraped (nothing on the tunnels' path):
 * open tunnels (handshakes included), upgrade requests answered by status (a bounded set), bytes
 * each way (upstream: from the client; downstream: to it).
 */
function webSocketSeries (source: WebSocketSource, registers: client.Registry[]): client.Metric[] {
  const routes = (): Iterable<WebSocketRouteStats> => source() ?? []
  const open = new client.Gauge({
    name: METRIC_NAMES.websocketTunnelsOpen,
    help: 'WebSocket tunnels open now (handshakes with the upstream included), by route.',
    labelNames: ['route'] as const,
    registers,
    collect () {
      this.reset()
      for (const r of routes()) this.set({ route: r.route }, r.open)
    }
  })
  // Counters whose collect() sets each route's count (reset, then inc by it), as the upstream series do.
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[], add: (r: WebSocketRouteStats, inc: (labels: Record<L, string>, n: number) => void) => void): client.Metric =>
    new client.Counter({
      name,
      help,
      labelNames,
      registers,
      collect () {
        this.reset()
        for (const r of routes()) add(r, (labels, n) => { if (n > 0) this.inc(labels, n) })
      }
    })
  const upgrades = counter(METRIC_NAMES.websocketUpgrades, 'Upgrade requests answered, by route and status (101: a tunnel opened; aborted: the client left first).',
    ['route', 'status'], (r, inc) => { for (const [status, n] of r.upgrades) inc({ route: r.route, status }, n) })
  const bytes = counter(METRIC_NAMES.websocketBytes, 'Bytes through WebSocket tunnels, by route and direction (upstream: client to upstream; downstream: upstream to client).',
    ['route', 'direction'], (r, inc) => {
      inc({ route: r.route, direction: 'upstream' }, r.bytesUp)
      inc({ route: r.route, direction: 'downstream' }, r.bytesDown)
    })
  return [open, upgrades, bytes]
}

/**
 * The gateway's metrics: built from the config before the Fastify instance (the LogController
 * needs it), attached to the instance by the plugin below.
 */
export class GatewayMetrics {
  readonly registry = new client.Registry()
  readonly config: Readonly<MetricsConfig>
  private readonly stats = new Map<string, RouteStats>()
  /** Route names that events may use as labels: configured routes and every named Fastify route. */
  private readonly known = new Set<string>([UNMATCHED])
  private readonly bounds: readonly number[]
  private inFlight = 0
  private readonly onClose: (this: TrackedResponse) => void
  private upstreams: UpstreamSource = () => undefined
  private websockets: WebSocketSource = () => undefined
  /** The series of the routes' targets (plugins/upstream), read at scrape time. */
  readonly upstreamSeries: UpstreamSeries
  private readonly subscriptions: Array<[Channel, (message: unknown) => void]> = []
  /** The HTTP servers of the gateways counted here (more than one across a live reload). */
  private readonly servers = new Set<object>()
  private readonly requests: client.Counter<'route' | 'method' | 'status_class'>
  private readonly inFlightGauge: client.Gauge
  readonly upstreamErrors: client.Counter<'route' | 'kind'>
  readonly authFailures: client.Counter<'route' | 'scheme' | 'reason'>
  readonly authzDenials: client.Counter<'route'>
  readonly validationFailures: client.Counter<'route' | 'part'>
  readonly validationReported: client.Counter<'route' | 'part'>
  readonly rateLimited: client.Counter<'route' | 'by'>

  constructor (config: Readonly<GatewayConfig>) {
    this.config = config.server.metrics
    this.bounds = [...this.config.buckets].sort((a, b) => a - b)
    for (const route of config.routes) this.routeStats(route.name)

    const metrics = this
    this.onClose = function onResponseClose (this: TrackedResponse) { metrics.finish(this) }
    const registers = [this.registry]
    const stats = this.stats
    this.requests = new client.Counter({
      name: METRIC_NAMES.requests,
      help: 'Requests answered, by route, method and status class (aborted: the response never finished).',
      labelNames: ['route', 'method', 'status_class'] as const,
      registers,
      collect () {
        this.reset()
        for (const s of stats.values()) {
          for (let i = 0; i < s.requests.length; i++) {
            const n = s.requests[i]
            if (n === 0) continue
            this.inc({ route: s.route, method: METHODS[Math.floor(i / CLASSES.length)], status_class: CLASSES[i % CLASSES.length] }, n)
          }
        }
      }
    })
    this.registry.registerMetric(new RouteHistogram(METRIC_NAMES.requestDuration,
      'Time from the request\'s arrival to the end of the response, by route.', stats, (s) => s.latency, this.bounds) as unknown as client.Metric)
    this.registry.registerMetric(new RouteHistogram(METRIC_NAMES.upstreamDuration,
      'The upstream\'s share: time from dispatch to its response headers, by route.', stats, (s) => s.upstream, this.bounds) as unknown as client.Metric)
    this.registry.registerMetric(new RouteHistogram(METRIC_NAMES.proxiedDuration,
      'Time from arrival to the end of the response of the requests the upstream answered (those in portcullis_upstream_duration_seconds), by route.',
      stats, (s) => s.proxied, this.bounds) as unknown as client.Metric)
    this.inFlightGauge = new client.Gauge({
      name: METRIC_NAMES.inFlight,
      help: 'Requests being handled right now.',
      registers,
      collect () { this.set(metrics.inFlight) }
    })
    this.upstreamErrors = new client.Counter({
      name: METRIC_NAMES.upstreamErrors, help: 'Upstream failures by route and kind (refused, timeout, reset, tls, other).', labelNames: ['route', 'kind'], registers
    })
    this.authFailures = new client.Counter({
      name: METRIC_NAMES.authFailures, help: 'Failed authentications by route, scheme and reason.', labelNames: ['route', 'scheme', 'reason'], registers
    })
    this.authzDenials = new client.Counter({
      name: METRIC_NAMES.authzDenials, help: 'Requests refused for a missing scope (403), by route.', labelNames: ['route'], registers
    })
    this.validationFailures = new client.Counter({
      name: METRIC_NAMES.validationFailures, help: 'Requests refused by validation, by route and request part.', labelNames: ['route', 'part'], registers
    })
    this.validationReported = new client.Counter({
      name: METRIC_NAMES.validationReported, help: 'Validation violations let through in report mode, by route and request part.', labelNames: ['route', 'part'], registers
    })
    this.rateLimited = new client.Counter({
      name: METRIC_NAMES.rateLimited, help: 'Requests refused with 429, by route and what the limit counts by.', labelNames: ['route', 'by'], registers
    })
    this.upstreamSeries = new UpstreamSeries(() => this.upstreams(), registers)
    webSocketSeries(() => this.websockets(), registers)
  }

  /** Where the WebSocket series read each route's tunnel counters (the plugin: `app.websockets`). */
  readWebSockets (source: WebSocketSource): void {
    this.websockets = source
  }

  /** Where the upstream series read each route's targets (the plugin: the gateway's `app.upstreams`). */
  readUpstreams (source: UpstreamSource): void {
    this.upstreams = source
  }

  /** Called by the LogController for every request, before any hook. */
  start (_request: FastifyRequest, reply: FastifyReply): void {
    const res = reply.raw as TrackedResponse
    if (res[kReply] !== undefined) return // already tracked: count a response once
    this.inFlight++
    res[kReply] = reply
    res[kStart] = performance.now()
    res.on('close', this.onClose)
  }

  private finish (res: TrackedResponse): void {
    const reply = res[kReply]
    if (reply === undefined) return
    res[kReply] = undefined
    this.inFlight--
    const stats = this.routeStats(routeNameOf(reply.request) ?? UNMATCHED)
    const cls = res.writableEnded ? statusClass(res.statusCode) : ABORTED
    stats.requests[(METHOD_INDEX.get(reply.request.method) ?? OTHER_METHOD) * CLASSES.length + cls]++
    const seconds = (performance.now() - (res[kStart] as number)) / 1000
    stats.latency.observe(seconds)
    const upstreamMs = reply.request.upstreamMs
    if (upstreamMs !== undefined) {
      stats.upstream.observe(upstreamMs / 1000)
      stats.proxied.observe(seconds)
    }
  }

  /** Route names come from route definitions (code and config), never from the request. */
  private routeStats (route: string): RouteStats {
    let stats = this.stats.get(route)
    if (stats === undefined) {
      stats = new RouteStats(route, this.bounds)
      this.stats.set(route, stats)
      this.known.add(route)
    }
    return stats
  }

  /** A route name named in an event: one we know, or `unmatched`. */
  routeLabel (route: unknown): string {
    return typeof route === 'string' && this.known.has(route) ? route : UNMATCHED
  }

  /** A name some Fastify route uses (collected by the plugin's onRoute hook). */
  knowRoute (route: string): void {
    this.known.add(route)
  }

  /**
   * Subscribe to the pipeline's events; `unsubscribe` undoes it (at close). `server`: the
   * gateway's HTTP server — the channels are process-wide, so an event about a request another
   * gateway in this process handled is not counted here. The generations of a live reload share
   * one GatewayMetrics: each adds its server, and the last to leave unsubscribes.
   */
  subscribe (server?: object): void {
    if (server !== undefined) this.servers.add(server)
    if (this.subscriptions.length > 0) return
    const servers = this.servers
    const kind = new LabelGuard()
    const scheme = new LabelGuard()
    const reason = new LabelGuard()
    const part = new LabelGuard()
    const by = new LabelGuard()
    const on = <T>(channel: Channel, handler: (message: Partial<T>) => void): void => {
      const listener = (message: unknown): void => {
        if (message === null || typeof message !== 'object') return
        const about = (message as { request?: { server?: { server?: object } } }).request
        if (servers.size > 0 && about?.server?.server !== undefined && !servers.has(about.server.server)) return
        handler(message as Partial<T>)
      }
      channel.subscribe(listener)
      this.subscriptions.push([channel, listener])
    }
    on<UpstreamErrorEvent>(channels.upstreamError, (m) => {
      this.upstreamErrors.inc({ route: this.routeLabel(m.route), kind: kind.value(m.kind) })
    })
    on<AuthFailureEvent>(channels.authFailure, (m) => {
      this.authFailures.inc({ route: this.routeLabel(m.route), scheme: scheme.value(m.scheme), reason: reason.value(m.reason) })
    })
    on<AuthzDeniedEvent>(channels.authzDenied, (m) => {
      this.authzDenials.inc({ route: this.routeLabel(m.route) })
    })
    on<ValidationFailureEvent>(channels.validationFailure, (m) => {
      const counter = m.reportOnly === true ? this.validationReported : this.validationFailures
      counter.inc({ route: this.routeLabel(m.route), part: part.value(m.part) })
    })
    on<RateLimitedEvent>(channels.rateLimited, (m) => {
      this.rateLimited.inc({ route: this.routeLabel(m.route), by: by.value(m.by) })
    })
  }

  unsubscribe (server?: object): void {
    if (server !== undefined) this.servers.delete(server)
    if (this.servers.size > 0) return
    for (const [channel, listener] of this.subscriptions) channel.unsubscribe(listener)
    this.subscriptions.length = 0
  }

  /** The Prometheus text exposition. */
  async render (): Promise<string> {
    const own = await this.registry.metrics()
    return this.config.defaultMetrics ? own + '\n' + await processMetrics().metrics() : own
  }

  get contentType (): string {
    return this.registry.contentType
  }
}

function statusClass (status: number): number {
  const cls = Math.floor(status / 100) - 1
  return cls >= 0 && cls < ABORTED ? cls : 4
}

// --- who may scrape ----------------------------------------------------------------------------

export type ScrapeVerdict = 'ok' | 'unauthorized' | 'forbidden'

const sha256 = (value: string): Buffer => createHash('sha256').update(value).digest()

/** The allow list, then HTTP Basic; a verified Authorization header is remembered (scrypt is slow on purpose). */
export class ScrapeGuard {
  private readonly allow: BlockList | null
  private readonly password: ParsedHash | null
  private verified: Buffer | null = null
  constructor (private readonly config: Readonly<MetricsConfig>) {
    this.allow = config.allow === undefined ? null : blockList(config.allow)
    this.password = config.basic === undefined ? null : parsePasswordHash(config.basic.passwordHash)
    if (config.basic !== undefined && this.password === null) throw new TypeError('server.metrics.basic.passwordHash: not a valid scrypt hash')
  }

  async check (rawIp: string | undefined, authorization: string | undefined): Promise<ScrapeVerdict> {
    if (this.allow !== null) {
      const ip = unmapIPv4(rawIp ?? '')
      const family = isIP(ip)
      if (family === 0 || !this.allow.check(ip, family === 4 ? 'ipv4' : 'ipv6')) return 'forbidden'
    }
    const basic = this.config.basic
    if (basic === undefined || this.password === null) return 'ok'
    if (authorization === undefined || !/^basic /i.test(authorization)) return 'unauthorized'
    const digest = sha256(authorization)
    if (this.verified !== null && timingSafeEqual(digest, this.verified)) return 'ok'
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon === -1) return 'unauthorized'
    const userOk = timingSafeEqual(sha256(decoded.slice(0, colon)), sha256(basic.username))
    const passwordOk = await verifyPassword(decoded.slice(colon + 1), this.password)
    if (!userOk || !passwordOk) return 'unauthorized'
    this.verified = digest
    return 'ok'
  }
}

const WWW_AUTHENTICATE = 'Basic realm="metrics", charset="UTF-8"'

// --- the plugin -------------------------------------------------------------------------------

export interface MetricsPluginOptions {
  metrics: GatewayMetrics
  /** Where the metrics listener is kept across live reloads (plugins/core/shared.ts). */
  shared: Lease
  /** Address of the separate metrics listener when `server.metrics.host` is not set. */
  host: string
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The gateway's metrics (undefined when `server.metrics.enabled` is false). */
    metrics: GatewayMetrics | undefined
    /** The separate metrics listener, when `server.metrics.port` is set and the gateway is ready. */
    metricsServer: Server | undefined
  }
}

async function metricsPlugin (app: FastifyInstance, opts: MetricsPluginOptions): Promise<void> {
  const { metrics } = opts
  const config = metrics.config
  const guard = new ScrapeGuard(config)
  app.decorate('metrics', metrics)
  app.decorate('metricsServer', undefined)
  app.addHook('onRoute', (route) => {
    const name = route.config?.routeName
    if (typeof name === 'string') metrics.knowRoute(name)
  })
  metrics.subscribe(app.server)
  const own = app.server
  // Asked at scrape time: the upstream stage decorates the gateway after this one (src/pipeline.ts).
  metrics.readUpstreams(() => app.hasDecorator('upstreams') ? app.upstreams : undefined)
  metrics.readWebSockets(() => app.hasDecorator('websockets') ? app.websockets?.stats() : undefined)
  app.addHook('onClose', async () => { metrics.unsubscribe(own) })

  if (config.port !== undefined && cluster.isWorker) {
    // `portcullis start --workers N`: the primary serves every worker's metrics on the port.
    joinCluster(metrics)
    return
  }
  if (config.port === undefined) {
    app.get(config.path, { config: { routeName: 'metrics' } }, async (request, reply) => {
      const verdict = await guard.check(request.ip, request.headers.authorization)
      if (verdict === 'forbidden') throw new GatewayError('GW_ERR_FORBIDDEN', 'This address may not read the metrics.')
      if (verdict === 'unauthorized') {
        throw new GatewayError('GW_ERR_UNAUTHORIZED', 'Credentials are required to read the metrics.', { headers: { 'www-authenticate': WWW_AUTHENTICATE } })
      }
      const body = await metrics.render()
      return reply.header('cache-control', 'no-store').type(metrics.contentType).send(body)
    })
    return
  }

  // One listener across the generations of a live reload: the first one's, closed by the last.
  const server = opts.shared.acquire(`metrics listener ${JSON.stringify(config)}`, () => {
    const server = createServer((req, res) => { serveScrape(req, res, config.path, guard, metrics).catch(() => { res.destroy() }) })
    server.headersTimeout = 10_000
    server.requestTimeout = 10_000
    return server
  }, async (server) => {
    if (!server.listening) return
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  app.addHook('onReady', async () => {
    if (server.listening) {
      app.metricsServer = server
      return
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(config.port, config.host ?? opts.host, () => { server.off('error', reject); resolve() })
    })
    app.metricsServer = server
    app.log.info({ url: `${formatUrl(server.address() as AddressInfo)}${config.path}` }, 'metrics listening')
  })
}

/** `http://127.0.0.1:8080`, `http://[::1]:8080`: a listening server's address (this one's, the gateway's). */
export function formatUrl (address: AddressInfo): string {
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return `http://${host}:${address.port}`
}

/** What a listener serves: one gateway's metrics, or a cluster's. */
interface MetricsSource { render: () => Promise<string>, contentType: string }

/** The separate listener: GET `path` and nothing else, in the same problem+json contract. */
async function serveScrape (req: IncomingMessage, res: ServerResponse, metricsPath: string, guard: ScrapeGuard, metrics: MetricsSource): Promise<void> {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  if (path !== metricsPath) return sendProblem(res, 'GW_ERR_NOT_FOUND', 'No route matches this path.', path)
  if (req.method !== 'GET') return sendProblem(res, 'GW_ERR_METHOD_NOT_ALLOWED', `${req.method ?? ''} is not allowed here.`, path, { allow: 'GET' })
  const authorization = req.headers.authorization
  const verdict = await guard.check(req.socket.remoteAddress, authorization)
  if (verdict === 'forbidden') return sendProblem(res, 'GW_ERR_FORBIDDEN', 'This address may not read the metrics.', path)
  if (verdict === 'unauthorized') {
    return sendProblem(res, 'GW_ERR_UNAUTHORIZED', 'Credentials are required to read the metrics.', path, { 'www-authenticate': WWW_AUTHENTICATE })
  }
  const body = await metrics.render()
  res.writeHead(200, { 'content-type': metrics.contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' })
  res.end(body)
}

function sendProblem (res: ServerResponse, code: ErrorCode, detail: string, instance: string, headers: Record<string, string> = {}): void {
  const { status, title } = ERRORS[code]
  const body = JSON.stringify({ type: problemType(code), title, status, detail, instance, requestId: randomUUID() })
  res.writeHead(status, { ...headers, 'content-type': PROBLEM_CONTENT_TYPE, 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

// --- node:cluster ------------------------------------------------------------------------------

/**
 * Process-wide on purpose: prom-client's cluster protocol asks each worker *process* once, over
 * its IPC channel, and answers from the registries of the static `setRegistries` — there is one
 * answer per process. A worker of `portcullis start --workers N` runs one gateway (src/cluster.ts).
 */
let clusterAnswerer: client.AggregatorRegistry<client.RegistryContentType> | undefined

/** In a worker: answer the primary's requests for this process's metrics (prom-client's IPC). */
function joinCluster (metrics: GatewayMetrics): void {
  client.AggregatorRegistry.setRegistries(metrics.config.defaultMetrics ? [metrics.registry, processMetrics()] : [metrics.registry])
  clusterAnswerer ??= new client.AggregatorRegistry()
}

/**
 * In the primary of `portcullis start --workers N`, when `server.metrics.port` is set: listen
 * there and serve the sum of every worker's metrics (counters and histograms added up, gauges
 * per prom-client's aggregation), protected like a single gateway's. Null when there is nothing
 * to serve. Call it before the workers are forked.
 */
export async function startClusterMetrics (config: Readonly<GatewayConfig>): Promise<Server | null> {
  const mc = config.server.metrics
  if (!mc.enabled || mc.port === undefined) return null
  const aggregator = new client.AggregatorRegistry()
  const source: MetricsSource = { render: () => aggregator.clusterMetrics(), contentType: aggregator.contentType }
  const guard = new ScrapeGuard(mc)
  const server = createServer((req, res) => { serveScrape(req, res, mc.path, guard, source).catch(() => { res.destroy() }) })
  server.headersTimeout = 10_000
  server.requestTimeout = 10_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(mc.port, mc.host ?? config.server.host, () => { server.off('error', reject); resolve() })
  })
  return server
}

export default fp(metricsPlugin, { name: 'portcullis-metrics', fastify: '5.x' })

/**
 * One route's targets and what decides which of them gets a request: the balancer, active health
 * checks, passive health (outlier ejection), a circuit breaker per target and the retry budget.
 * The forwarder (src/forward.ts) asks `pick` for a target, tells `dispatched`, `result` and
 * `done` what happened, and asks `mayRetry` before a retry; it knows nothing of why a target is
 * out. Built per route by the upstream stage (./index.ts), one per gateway.
 *
 * A target is available when its active checks pass (or there are none), it is not ejected and
 * its breaker lets a request through. What counts as a failure is the same for ejection and the
 * breaker: no connection, a reset or a timeout before the response, and a 502, 503 or 504 — or any
 * 5xx with `outlierDetection.count: 5xx`.
 */
import type { FastifyRequest } from 'fastify'
import { createBalancer, type Balancer, type BalanceMode } from './balance.js'
import { CircuitBreaker, OutlierDetector, RetryBudget, type BreakerOptions, type BreakerState, type OutlierOptions, type RetryBudgetOptions } from './breaker.js'
import { ActiveHealthChecker, type CheckLimiter, type HealthCheckOptions } from './health-check.js'

/** The log lines a set writes: one per change of a target's state. */
interface SetLog {
  info: (obj: object, msg: string) => void
  warn: (obj: object, msg: string) => void
}

export interface UpstreamSetOptions {
  route: string
  targets: ReadonlyArray<{ url: string, weight: number }>
  /** round-robin, least-requests, hash:ip or hash:header:NAME */
  balance: string
  healthCheck?: HealthCheckOptions | null
  /** A shared bound on concurrent checks (one per gateway); required with healthCheck. */
  limiter?: CheckLimiter
  outlier?: (OutlierOptions & { count: 'gateway-errors' | '5xx' }) | null
  breaker?: BreakerOptions | null
  retryBudget?: RetryBudgetOptions | null
  tls?: { rejectUnauthorized: boolean, ca?: Buffer }
  log?: SetLog
  now?: () => number
}

export interface TargetView {
  readonly url: string
  readonly origin: string
  readonly weight: number
}

/** Counters the metrics stage reads at scrape time (nothing is computed per request for them). */
export interface UpstreamCounters {
  retries: number
  retriesRefusedByBudget: number
  /** Per target. */
  ejections: number[]
  /** Per target, by destination state. */
  breakerOpened: number[]
  breakerHalfOpened: number[]
  breakerClosed: number[]
}

const NOOP_LOG: SetLog = { info () {}, warn () {} }
/** Statuses that are failures whatever `outlierDetection.count` says. */
const GATEWAY_STATUSES = new Set([502, 503, 504])

export class UpstreamSet {
  readonly route: string
  readonly targets: readonly TargetView[]
  readonly counters: UpstreamCounters
  /** Requests sent to each target and not finished (least-requests reads it). */
  readonly inFlight: Int32Array
  private readonly balancer: Balancer
  private readonly checker: ActiveHealthChecker | null
  private readonly outlier: OutlierDetector | null
  private readonly breakers: ReadonlyArray<CircuitBreaker | null>
  private readonly budget: RetryBudget | null
  private readonly any5xx: boolean
  private readonly hashHeader: string | null
  private readonly hashed: boolean
  private readonly retryAfterDefaultMs: number
  /** Built once: the balancer's availability test (no closure per pick). */
  private readonly isAvailable: (i: number) => boolean

  constructor (options: UpstreamSetOptions) {
    const log = options.log ?? NOOP_LOG
    this.route = options.route
    this.targets = options.targets.map((t) => ({ url: t.url, origin: new URL(t.url).origin, weight: t.weight }))
    const n = this.targets.length
    this.inFlight = new Int32Array(n)
    this.counters = {
      retries: 0,
      retriesRefusedByBudget: 0,
      ejections: new Array<number>(n).fill(0),
      breakerOpened: new Array<number>(n).fill(0),
      breakerHalfOpened: new Array<number>(n).fill(0),
      breakerClosed: new Array<number>(n).fill(0)
    }
    const [mode, by] = splitBalance(options.balance)
    this.hashed = mode === 'hash'
    this.hashHeader = by !== null && by.startsWith('header:') ? by.slice(7).toLowerCase() : null
    const inFlight = this.inFlight
    this.balancer = createBalancer(mode, this.targets.map((t) => t.weight), (i) => inFlight[i])
    const origins = this.targets.map((t) => t.origin)
    const check = options.healthCheck ?? null
    this.checker = check === null
      ? null
      : new ActiveHealthChecker(origins, check, options.limiter as CheckLimiter, (i, healthy, reason) => {
        if (healthy) log.info({ route: this.route, upstream: origins[i] }, 'upstream target healthy again: back in rotation')
        else log.warn({ route: this.route, upstream: origins[i], reason }, 'upstream target failed its health checks: out of rotation')
      }, options.tls)
    this.retryAfterDefaultMs = check === null ? 1000 : check.intervalMs
    const outlier = options.outlier ?? null
    this.any5xx = outlier?.count === '5xx'
    this.outlier = outlier === null
      ? null
      : new OutlierDetector(n, outlier, (i, forMs, times) => {
        this.counters.ejections[i]++
        log.warn({ route: this.route, upstream: origins[i], forMs, times }, 'upstream target ejected after consecutive failures')
      }, (i) => {
        log.info({ route: this.route, upstream: origins[i] }, 'upstream target back from ejection')
      }, options.now)
    const breaker = options.breaker ?? null
    this.breakers = origins.map((origin, i) => breaker === null
      ? null
      : new CircuitBreaker(breaker, (from: BreakerState, to: BreakerState) => {
        if (to === 'open') this.counters.breakerOpened[i]++
        else if (to === 'half-open') this.counters.breakerHalfOpened[i]++
        else this.counters.breakerClosed[i]++
        const line = { route: this.route, upstream: origin, from, to }
        if (to === 'open') log.warn(line, 'circuit breaker opened: the target gets no requests for a while')
        else log.info(line, `circuit breaker ${to}`)
      }, options.now))
    this.budget = options.retryBudget === null || options.retryBudget === undefined ? null : new RetryBudget(options.retryBudget, options.now)
    const checker = this.checker
    const ejector = this.outlier
    const breakers = this.breakers
    this.isAvailable = (i: number): boolean =>
      (checker === null || checker.isHealthy(i)) &&
      (ejector === null || !ejector.isEjected(i)) &&
      (breakers[i] === null || (breakers[i] as CircuitBreaker).canPass())
  }

  /** Starts the active checks (at the gateway's start). */
  start (): void { this.checker?.start() }

  /** Stops them; nothing is left running (at close). */
  async stop (): Promise<void> { await this.checker?.stop() }

  /** The request's hash key (hash balancing only): the header's value, else the client's IP. */
  keyOf (request: FastifyRequest): string {
    if (!this.hashed) return ''
    if (this.hashHeader !== null) {
      const value = request.headers[this.hashHeader]
      if (typeof value === 'string' && value !== '') return value
    }
    return request.ip
  }

  /** Index of the target for a request (never `exclude`, a target a retry just failed on), or -1: none is available. */
  pick (key: string, exclude = -1): number {
    return this.balancer.pick(this.isAvailable, key, exclude)
  }

  /** Whether some target is available (readiness, with server.readiness). */
  hasAvailable (): boolean {
    for (let i = 0; i < this.targets.length; i++) if (this.isAvailable(i)) return true
    return false
  }

  /** Whether target i is available now (a retry with no other target goes back to it only then). */
  available (i: number): boolean { return this.isAvailable(i) }

  /** How long a client should wait when no target is available: the soonest breaker to half-open, else a check interval. */
  retryAfterSeconds (): number {
    let soonest = Infinity
    for (const breaker of this.breakers) {
      if (breaker === null) continue
      const ms = breaker.retryAfterMs()
      if (ms > 0 && ms < soonest) soonest = ms
    }
    return Math.max(1, Math.ceil((soonest === Infinity ? this.retryAfterDefaultMs : soonest) / 1000))
  }

  /** Every original request (not retries): it feeds the retry budget. */
  requested (): void { this.budget?.onRequest() }

  /** A request goes to target i. */
  dispatched (i: number): void {
    this.inFlight[i]++
    this.breakers[i]?.onDispatch()
  }

  /** The request on target i is over (answered, failed or abandoned). */
  done (i: number): void { this.inFlight[i]-- }

  /**
   * What target i did: a response status, or 0 for no response (no connection, reset, timeout).
   * A client that went away is not reported: it says nothing about the target.
   */
  result (i: number, status: number): void {
    const failed = status === 0 || GATEWAY_STATUSES.has(status) || (this.any5xx && status >= 500)
    const breaker = this.breakers[i]
    if (failed) {
      this.outlier?.onFailure(i)
      breaker?.onFailure()
    } else {
      this.outlier?.onSuccess(i)
      breaker?.onSuccess()
    }
  }

  /** The request on target i was given up before its answer (the client left): it says nothing of the target, but frees a half-open probe. */
  abandoned (i: number): void { this.breakers[i]?.onCancel() }

  /** May a failed try be retried? Takes one retry from the budget (counted either way). */
  mayRetry (): boolean {
    if (this.budget !== null && !this.budget.tryRetry()) {
      this.counters.retriesRefusedByBudget++
      return false
    }
    this.counters.retries++
    return true
  }

  /** For metrics and /readyz: each target's state now. */
  states (): Array<{ origin: string, healthy: boolean, ejected: boolean, breaker: BreakerState | 'off' }> {
    return this.targets.map((t, i) => ({
      origin: t.origin,
      healthy: this.checker === null || this.checker.isHealthy(i),
      ejected: this.outlier !== null && this.outlier.isEjected(i),
      breaker: this.breakers[i]?.state ?? 'off'
    }))
  }
}

function splitBalance (balance: string): [BalanceMode, string | null] {
  if (balance === 'round-robin' || balance === 'least-requests') return [balance, null]
  if (balance.startsWith('hash:')) return ['hash', balance.slice(5)]
  throw new TypeError(`unknown balance: ${balance}`)
}

/**
 * The three ways a route stops sending to a failing target, each per route and per gateway, with
 * an injected clock (`now`, ms) and nothing allocated on the request path:
 *
 * - CircuitBreaker, one per target: failure ratio over a sliding window (10 fixed buckets); open,
 *   nothing passes for `openForMs`; half-open, exactly `halfOpenRequests` probes pass — all of them
 *   succeed, it closes with an empty window; one fails, it opens again.
 * - OutlierDetector (passive health, Envoy's outlier detection): N consecutive failures eject a
 *   target for base × (its ejections), capped. Envoy ejects at most `max_ejection_percent` of a
 *   cluster (default 10 %; with `always_eject_one_host` at least one host,
 *   https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/outlier_detection.proto).
 *   Here: at most ⌊n × percent / 100⌋ targets, but at least one when there are two or more and
 *   percent > 0 (10 % of three targets would otherwise never eject any), and never the only
 *   target of a route: ejecting it turns a flaky upstream into a full outage, and its breaker
 *   already stops a failing one. The multiplier shrinks by one for each `baseEjectionMs` a target
 *   stays in (Envoy lowers it the same way, per sweep interval), worked out at its next ejection.
 * - RetryBudget (Linkerd's retry budget, Envoy's budget_percent): over a 10 s window of 1 s
 *   buckets, retries may reach ratio × requests + minPerSecond × 10. Over any T seconds with R
 *   requests that allows at most ratio × R + minPerSecond × (T + 10) retries — the window is the
 *   constant — and an idle minute banks nothing beyond one window's minPerSecond × 10.
 */

export interface BreakerOptions { failureRatio: number, windowMs: number, minRequests: number, openForMs: number, halfOpenRequests: number }
export type BreakerState = 'closed' | 'open' | 'half-open'

const BUCKETS = 10

/** Counts per bucket of a sliding window, rotated by time (no allocation after construction). */
class Window {
  readonly a = new Int32Array(BUCKETS)
  readonly b = new Int32Array(BUCKETS)
  sumA = 0
  sumB = 0
  private epoch = -1
  constructor (private readonly bucketMs: number) {}

  /** Moves the window to `now`, dropping buckets that slid out; returns the current bucket. */
  at (now: number): number {
    const epoch = Math.floor(now / this.bucketMs)
    if (this.epoch === -1) this.epoch = epoch
    const steps = Math.min(BUCKETS, epoch - this.epoch)
    for (let s = 1; s <= steps; s++) {
      const slot = (this.epoch + s) % BUCKETS
      this.sumA -= this.a[slot]
      this.sumB -= this.b[slot]
      this.a[slot] = 0
      this.b[slot] = 0
    }
    if (epoch > this.epoch) this.epoch = epoch
    return this.epoch % BUCKETS
  }

  clear (): void {
    this.a.fill(0)
    this.b.fill(0)
    this.sumA = 0
    this.sumB = 0
  }
}

export class CircuitBreaker {
  private current: BreakerState = 'closed'
  /** Requests (a) and failures (b) in the window, while closed. */
  private readonly window: Window
  private openedAt = 0
  private probesSent = 0
  private probesPassed = 0

  constructor (
    private readonly options: BreakerOptions,
    private readonly onTransition: (from: BreakerState, to: BreakerState) => void,
    private readonly now: () => number = () => performance.now()
  ) {
    this.window = new Window(Math.max(1, options.windowMs / BUCKETS))
  }

  /** The state now: an open breaker whose time is up becomes half-open when read. */
  get state (): BreakerState {
    if (this.current === 'open' && this.now() - this.openedAt >= this.options.openForMs) {
      this.probesSent = 0
      this.probesPassed = 0
      this.move('half-open')
    }
    return this.current
  }

  /** May a request go to this target now? (Does not reserve a probe: onDispatch does.) */
  canPass (): boolean {
    const state = this.state
    if (state === 'closed') return true
    if (state === 'open') return false
    return this.probesSent < this.options.halfOpenRequests
  }

  onDispatch (): void {
    if (this.current === 'half-open') this.probesSent++
  }

  onSuccess (): void {
    if (this.current === 'closed') {
      this.window.a[this.window.at(this.now())]++
      this.window.sumA++
    } else if (this.current === 'half-open' && ++this.probesPassed >= this.options.halfOpenRequests) {
      this.window.clear()
      this.move('closed')
    }
  }

  onFailure (): void {
    if (this.current === 'closed') {
      const w = this.window
      const slot = w.at(this.now())
      w.a[slot]++
      w.sumA++
      w.b[slot]++
      w.sumB++
      if (w.sumA >= this.options.minRequests && w.sumB >= this.options.failureRatio * w.sumA) this.open()
    } else if (this.current === 'half-open') {
      this.open()
    }
    // Open: a late answer to a request sent before it opened changes nothing.
  }

  /** A request sent and abandoned (the client left): a half-open probe slot is free again. */
  onCancel (): void {
    if (this.current === 'half-open' && this.probesSent > this.probesPassed) this.probesSent--
  }

  /** ms until an open breaker half-opens, 0 when it is not open. */
  retryAfterMs (): number {
    if (this.state !== 'open') return 0
    return Math.max(0, this.openedAt + this.options.openForMs - this.now())
  }

  private open (): void {
    this.openedAt = this.now()
    this.move('open')
  }

  private move (to: BreakerState): void {
    const from = this.current
    if (from === to) return
    this.current = to
    this.onTransition(from, to)
  }
}

export interface OutlierOptions { consecutiveFailures: number, baseEjectionMs: number, maxEjectionMs: number, maxEjectionPercent: number }

export class OutlierDetector {
  private readonly consecutive: Int32Array
  /** When each ejection ends (0: not ejected). */
  private readonly until: Float64Array
  private readonly times: Int32Array
  /** When each target last came back (for the multiplier's decay). */
  private readonly returnedAt: Float64Array
  private ejected = 0
  private readonly most: number

  constructor (
    private readonly targets: number,
    private readonly options: OutlierOptions,
    private readonly onEject: (i: number, forMs: number, times: number) => void,
    private readonly onReturn: (i: number) => void,
    private readonly now: () => number = () => performance.now()
  ) {
    this.consecutive = new Int32Array(targets)
    this.until = new Float64Array(targets)
    this.times = new Int32Array(targets)
    this.returnedAt = new Float64Array(targets)
    this.most = targets < 2 || options.maxEjectionPercent === 0 ? 0 : Math.max(1, Math.floor(targets * options.maxEjectionPercent / 100))
  }

  onSuccess (i: number): void { this.consecutive[i] = 0 }

  onFailure (i: number): void {
    if (this.isEjected(i)) return
    if (++this.consecutive[i] < this.options.consecutiveFailures || this.ejected >= this.most) return
    const now = this.now()
    const { baseEjectionMs, maxEjectionMs } = this.options
    const decay = this.times[i] === 0 ? 0 : Math.floor((now - this.returnedAt[i]) / Math.max(1, baseEjectionMs))
    const times = Math.max(0, this.times[i] - decay) + 1
    this.times[i] = times
    const forMs = Math.min(maxEjectionMs, baseEjectionMs * times)
    this.until[i] = now + forMs
    this.consecutive[i] = 0
    this.ejected++
    this.onEject(i, forMs, times)
  }

  /** Whether target i is ejected now; an ejection whose time is up ends here (onReturn, once). */
  isEjected (i: number): boolean {
    const until = this.until[i]
    if (until === 0) return false
    const now = this.now()
    if (now < until) return true
    this.until[i] = 0
    this.returnedAt[i] = now
    this.ejected--
    this.onReturn(i)
    return false
  }

  ejectedCount (): number { return this.ejected }
}

export interface RetryBudgetOptions { ratio: number, minPerSecond: number }

export class RetryBudget {
  /** Requests (a) and retries (b) per 1 s bucket over the last 10 s. */
  private readonly window = new Window(1000)
  private readonly floor: number

  constructor (private readonly options: RetryBudgetOptions, private readonly now: () => number = () => performance.now()) {
    this.floor = options.minPerSecond * BUCKETS
  }

  onRequest (): void {
    const w = this.window
    w.a[w.at(this.now())]++
    w.sumA++
  }

  /** Takes one retry from the budget; false when it is spent. */
  tryRetry (): boolean {
    const w = this.window
    const slot = w.at(this.now())
    if (w.sumB + 1 > this.options.ratio * w.sumA + this.floor) return false
    w.b[slot]++
    w.sumB++
    return true
  }
}

/**
 * The three ways a route stops sending to a failing target. Plain classes, one state per
 * instance, a clock injected (`now`, ms, default performance.now); the request-path methods
 * (canPass, onDispatch, onSuccess, onFailure, onCancel, isEjected, onRequest, tryRetry) allocate
 * nothing and cost O(1), or O(targets) / O(10) at most.
 *
 * CircuitBreaker, one per target.
 * - Closed: outcomes are counted over a sliding window of 10 fixed buckets (windowMs / 10 each);
 *   a bucket leaves the window whole, so the window spans 0.9–1 × windowMs. A failure opens it
 *   when the window holds ≥ minRequests outcomes and failures / outcomes ≥ failureRatio.
 * - Open: nothing passes for openForMs; the first look after that (state, canPass, retryAfterMs)
 *   makes it half-open.
 * - Half-open: at most halfOpenRequests probes in flight (onDispatch takes a place, onCancel gives
 *   it back). All halfOpenRequests must succeed to close it, with an empty window; one failure
 *   opens it again for a full openForMs. An outcome while no probe is in flight is a late answer
 *   to a request sent before it opened and is ignored (without a request token that is the best
 *   it can tell: a late answer can still stand in for a probe that is out).
 * - onTransition is called once per change of state, in order, never for a non-change.
 *
 * OutlierDetector: passive health, Envoy's consecutive-5xx outlier detection
 * (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier).
 * - consecutiveFailures failures in a row eject a target for baseEjectionMs × m, at most
 *   maxEjectionMs, m its multiplier: one more per ejection, growing only until base × m reaches
 *   the cap; one less for each baseEjectionMs the target then stays in, worked out at its next
 *   ejection. Envoy does the same, but takes one off per `interval` sweep (default 10 s) in which
 *   the host was healthy (outlier_detection_impl.cc, onIntervalTimer). We have no sweep, and a
 *   target needs as long in rotation to lose a step as its first ejection lasted.
 * - The cap on ejected targets. Envoy: max_ejection_percent, default 10 %; a host is ejected only
 *   while (ejected + 1) / hosts ≤ that percent, so 10 % of 3 hosts ejects none — unless
 *   always_eject_one_host (a bool, off unless set) lets the first ejection through whatever the
 *   percent (outlier_detection_impl.cc, DetectorImpl::ejectHost). The field's comment still says
 *   it "will eject at least one host regardless of the value"; the code does so only with that
 *   option (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/outlier_detection.proto).
 *   Here (default 50 %): at most ⌊targets × percent / 100⌋ out at once, but at least one when a
 *   route has two or more targets and percent > 0 — always_eject_one_host on. The only target of
 *   a route is never ejected: Envoy gets away with ejecting every host because its balancer then
 *   panics and uses them all anyway; we have no panic mode, so ejecting it would turn a flaky
 *   upstream into a full outage, and its breaker already fails fast (with a Retry-After) when it
 *   is really down. percent 0 ejects nothing.
 * - Failures of an ejected target are not counted; it comes back with a count of zero, like
 *   Envoy's. An ejection ends at the first isEjected(i) after its time (onReturn, once), or in
 *   the sweep that ejectedCount() and a capped onFailure make over all targets.
 *
 * RetryBudget: Linkerd's retry budget (ratio of requests, minimum per second, deposits that expire
 * after a 10 s ttl), with the bank capped. A token bank of ten 1 s buckets: each original request
 * deposits `ratio` tokens, time deposits minPerSecond tokens a second (credited at the next call,
 * at most 10 s of it), a retry takes one token (oldest first), a bucket's tokens expire when it
 * leaves the window, and the bank never holds more than C = max(1, minPerSecond × 10) — deposits
 * beyond are dropped. Counted in millionths of a token (the ratio rounded down to one), so sums
 * are exact. It starts with one second's minimum (minPerSecond tokens), so a gateway that just
 * started can retry as the minimum promises.
 * Bound: over any T seconds with R original requests, retries ≤ ratio × R + minPerSecond × T + C
 * (C = 100 at the defaults 0.2 and 10/s): the bank
 * plus the time not yet credited never exceeds C, only requests and time add to it, and each
 * retry takes one. Linkerd's bank has no cap: 10 s of healthy traffic leave ratio × those
 * requests in it, all spendable the instant an outage starts (10,000 requests, then a failure:
 * 2,000 retries at once; here 100).
 */

export interface BreakerOptions { failureRatio: number, windowMs: number, minRequests: number, openForMs: number, halfOpenRequests: number }
export type BreakerState = 'closed' | 'open' | 'half-open'

/** Buckets of the breaker's window. */
const BUCKETS = 10

function defaultNow (): number { return performance.now() }

export class CircuitBreaker {
  private current: BreakerState = 'closed'
  /** Outcomes and failures per bucket of the window (closed state only), and their sums. */
  private readonly outcomes = new Int32Array(BUCKETS)
  private readonly failures = new Int32Array(BUCKETS)
  private outcomeSum = 0
  private failureSum = 0
  private readonly bucketMs: number
  /** Absolute index (time / bucketMs) of the newest bucket; NaN until the first outcome. */
  private epoch = NaN
  private openedAt = 0
  private probesOut = 0
  private probesPassed = 0

  constructor (
    private readonly options: BreakerOptions,
    private readonly onTransition: (from: BreakerState, to: BreakerState) => void,
    private readonly now: () => number = defaultNow
  ) {
    if (!(options.windowMs > 0)) throw new RangeError(`windowMs must be > 0, got ${options.windowMs}`)
    if (!Number.isInteger(options.halfOpenRequests) || options.halfOpenRequests < 1) throw new RangeError(`halfOpenRequests must be an integer ≥ 1, got ${options.halfOpenRequests}`)
    this.bucketMs = options.windowMs / BUCKETS
  }

  /** The state now: an open breaker whose openFor is over becomes half-open when read. */
  get state (): BreakerState {
    if (this.current === 'open' && this.now() - this.openedAt >= this.options.openForMs) {
      this.probesOut = 0
      this.probesPassed = 0
      this.move('half-open')
    }
    return this.current
  }

  /** May a request go to this target now? Does not reserve a probe: onDispatch does. */
  canPass (): boolean {
    const state = this.state
    if (state === 'closed') return true
    if (state === 'open') return false
    return this.probesOut + this.probesPassed < this.options.halfOpenRequests
  }

  /** The request was sent: in half-open it is a probe and takes a place. */
  onDispatch (): void {
    if (this.current === 'half-open') this.probesOut++
  }

  onSuccess (): void {
    if (this.current === 'closed') {
      this.outcomes[this.slide(this.now())]++
      this.outcomeSum++
    } else if (this.current === 'half-open' && this.probesOut > 0) {
      this.probesOut--
      if (++this.probesPassed >= this.options.halfOpenRequests) {
        this.outcomes.fill(0)
        this.failures.fill(0)
        this.outcomeSum = 0
        this.failureSum = 0
        this.move('closed')
      }
    }
    // Open: a late answer to a request sent before it opened changes nothing.
  }

  onFailure (): void {
    if (this.current === 'closed') {
      const slot = this.slide(this.now())
      this.outcomes[slot]++
      this.failures[slot]++
      const n = ++this.outcomeSum
      const failed = ++this.failureSum
      if (n >= this.options.minRequests && failed / n >= this.options.failureRatio) this.open()
    } else if (this.current === 'half-open' && this.probesOut > 0) {
      this.open()
    }
  }

  /** A request sent and given up before its answer (the client left): a probe's place is free again. */
  onCancel (): void {
    if (this.current === 'half-open' && this.probesOut > 0) this.probesOut--
  }

  /** ms until an open breaker half-opens (for Retry-After), 0 when it is not open. */
  retryAfterMs (): number {
    if (this.state !== 'open') return 0
    return this.openedAt + this.options.openForMs - this.now()
  }

  /** Moves the window to `now`, emptying the buckets that slid out; returns the current bucket. */
  private slide (now: number): number {
    const epoch = Math.floor(now / this.bucketMs)
    if (Number.isNaN(this.epoch)) this.epoch = epoch
    const steps = Math.min(BUCKETS, epoch - this.epoch)
    for (let s = 1; s <= steps; s++) {
      const slot = mod(this.epoch + s, BUCKETS)
      this.outcomeSum -= this.outcomes[slot]
      this.failureSum -= this.failures[slot]
      this.outcomes[slot] = 0
      this.failures[slot] = 0
    }
    if (epoch > this.epoch) this.epoch = epoch
    return mod(this.epoch, BUCKETS)
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
  /** When each target's ejection ends; 0: not ejected. */
  private readonly until: Float64Array
  /** Each target's multiplier as of its last ejection. */
  private readonly multiplier: Int32Array
  /** When each target last came back (for the multiplier's decay). */
  private readonly returnedAt: Float64Array
  private ejected = 0
  /** Targets that may be out at once. */
  readonly maxEjected: number
  /** Highest multiplier: the first m with base × m ≥ maxEjectionMs. */
  private readonly maxMultiplier: number

  constructor (
    private readonly targets: number,
    private readonly options: OutlierOptions,
    private readonly onEject: (i: number, forMs: number, times: number) => void,
    private readonly onReturn: (i: number) => void,
    private readonly now: () => number = defaultNow
  ) {
    if (!(options.baseEjectionMs > 0)) throw new RangeError(`baseEjectionMs must be > 0, got ${options.baseEjectionMs}`)
    this.consecutive = new Int32Array(targets)
    this.until = new Float64Array(targets)
    this.multiplier = new Int32Array(targets)
    this.returnedAt = new Float64Array(targets)
    this.maxEjected = targets < 2 || options.maxEjectionPercent <= 0
      ? 0
      : Math.max(1, Math.floor(targets * options.maxEjectionPercent / 100))
    this.maxMultiplier = Math.max(1, Math.ceil(options.maxEjectionMs / options.baseEjectionMs))
  }

  /** Target i answered: its run of failures ends. */
  onSuccess (i: number): void { this.consecutive[i] = 0 }

  /** Target i failed: the consecutiveFailures-th in a row ejects it if the cap leaves room (onEject). */
  onFailure (i: number): void {
    if (this.isEjected(i)) return
    if (++this.consecutive[i] < this.options.consecutiveFailures) return
    if (this.ejected >= this.maxEjected && this.sweep() >= this.maxEjected) return
    const now = this.now()
    const { baseEjectionMs, maxEjectionMs } = this.options
    const m = this.multiplier[i]
    const decay = m === 0 ? 0 : Math.floor((now - this.returnedAt[i]) / baseEjectionMs)
    const times = Math.min(this.maxMultiplier, Math.max(0, m - decay) + 1)
    const forMs = Math.min(maxEjectionMs, baseEjectionMs * times)
    this.multiplier[i] = times
    this.until[i] = now + forMs
    this.consecutive[i] = 0
    this.ejected++
    this.onEject(i, forMs, times)
  }

  /** Whether target i is ejected now; an ejection whose time is over ends here (onReturn, once). */
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

  /** Targets ejected now (ends the ejections whose time is over). */
  ejectedCount (): number { return this.sweep() }

  private sweep (): number {
    for (let i = 0; i < this.targets; i++) this.isEjected(i)
    return this.ejected
  }
}

export interface RetryBudgetOptions { ratio: number, minPerSecond: number }

/** The budget's window: ten buckets of a second; a deposit expires when its bucket leaves. */
const BANK_BUCKETS = 10
const BANK_BUCKET_MS = 1000
const BANK_WINDOW_MS = BANK_BUCKETS * BANK_BUCKET_MS
/** Tokens are counted in millionths, so that sums are exact integers (a retry costs TOKEN). */
const TOKEN = 1_000_000

export class RetryBudget {
  /** Unspent millionths of a token deposited in each second of the window. */
  private readonly bank = new Float64Array(BANK_BUCKETS)
  /** Most tokens the bank holds: the constant C of the bound. */
  readonly cap: number
  private readonly capUnits: number
  /** A request's deposit (the ratio, rounded down to a millionth), and time's, per ms. */
  private readonly perRequest: number
  private readonly perMs: number
  /** Absolute index of the current bucket; when time was last credited, and the fraction of a unit left over. */
  private epoch: number
  private credited: number
  private carry = 0

  constructor (options: RetryBudgetOptions, private readonly now: () => number = defaultNow) {
    if (!(options.ratio >= 0) || !(options.minPerSecond >= 0)) throw new RangeError('ratio and minPerSecond must be ≥ 0')
    this.cap = Math.max(1, options.minPerSecond * BANK_WINDOW_MS / 1000)
    this.capUnits = Math.floor(this.cap * TOKEN)
    this.perRequest = Math.floor(options.ratio * TOKEN)
    this.perMs = options.minPerSecond * TOKEN / 1000
    const at = now()
    this.epoch = Math.floor(at / BANK_BUCKET_MS)
    this.credited = at
    // One second's minimum to start with: a gateway that just started (or a route's first failing
    // request) may still retry, as the minimum promises; the bank stays within its cap.
    this.deposit(Math.floor(options.minPerSecond * TOKEN))
  }

  /** Every original request (not retries) deposits `ratio` tokens. */
  onRequest (): void {
    this.advance()
    this.deposit(this.perRequest)
  }

  /** Takes one retry from the budget (its oldest token); false when less than one token is left. */
  tryRetry (): boolean {
    this.advance()
    if (this.balance() < TOKEN) return false
    let need = TOKEN
    for (let s = BANK_BUCKETS - 1; need > 0; s--) {
      const slot = mod(this.epoch - s, BANK_BUCKETS)
      const take = Math.min(this.bank[slot], need)
      this.bank[slot] -= take
      need -= take
    }
    return true
  }

  /** Tokens in the bank now (a retry takes one). */
  available (): number {
    this.advance()
    return this.balance() / TOKEN
  }

  /** Expires the buckets that left the window, then credits the time since the last call (10 s at most). */
  private advance (): void {
    const at = this.now()
    const epoch = Math.floor(at / BANK_BUCKET_MS)
    const steps = Math.min(BANK_BUCKETS, epoch - this.epoch)
    for (let s = 1; s <= steps; s++) this.bank[mod(this.epoch + s, BANK_BUCKETS)] = 0
    if (epoch > this.epoch) this.epoch = epoch
    const elapsed = Math.min(BANK_WINDOW_MS, at - this.credited)
    if (elapsed <= 0) return
    this.credited = at
    const units = elapsed * this.perMs + this.carry
    const whole = Math.floor(units)
    this.carry = units - whole
    this.deposit(whole)
  }

  /** Adds units to the current bucket; what would take the bank past its cap is dropped. */
  private deposit (units: number): void {
    const room = this.capUnits - this.balance()
    if (room > 0) this.bank[mod(this.epoch, BANK_BUCKETS)] += Math.min(units, room)
  }

  private balance (): number {
    let sum = 0
    for (let s = 0; s < BANK_BUCKETS; s++) sum += this.bank[s]
    return sum
  }
}

function mod (a: number, n: number): number {
  const r = a % n
  return r < 0 ? r + n : r
}

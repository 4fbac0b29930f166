/**
 * Active health checks: the gateway asks each target of a route itself, outside the pipeline, and
 * takes a target out after `unhealthyThreshold` consecutive failed checks and back after
 * `healthyThreshold` consecutive passed ones. Targets start healthy.
 *
 * A check is `GET {origin}{path}` with `user-agent: portcullis-health-check` on the checker's own
 * undici Client per target (one connection, pipelining 1, kept alive a little longer than the
 * interval so that consecutive checks reuse it; never the forwarding pool, never through the
 * gateway). It fails on a connect error, on no complete answer within `timeoutMs` (headers and
 * body together, counted from the moment the check got its limiter slot; the connect timeout is
 * at most `timeoutMs` too), or on a status not in `expectStatus`. The body is read and thrown
 * away; past 64 KB the request is aborted (the connection goes with it) and the status decides.
 *
 * Timing: the first round fires within the first 10 % of the interval, each target in its own
 * slice of it (target i of n somewhere in [i, i + 1) × interval / 10n), so one checker's targets
 * never all fire at the same instant; after that each target fires every interval ± 10 %,
 * counted from its previous firing, whatever the check took.
 *
 * Overload: a CheckLimiter (one per process: plugins/upstream/index.ts keeps it with the shared
 * objects, so every generation of a live reload uses the same one) bounds the checks in flight
 * across every route. A round is skipped — neither a pass nor a failure, the target keeps its
 * state — when (1) the target's previous check is still waiting or running at its next firing,
 * (2) the limiter's queue is full, or (3) the check waited in the queue longer than its interval
 * before getting a slot.
 * So a target has at most one check pending, the queue holds at most one check per target, and a
 * check that waited more than an interval is dropped, not run late. Skipped rounds are counted
 * (`ActiveHealthChecker.skippedRounds`, `CheckLimiter.skipped`); a gateway that keeps skipping
 * has more targets than `concurrency × interval / check duration` can cover. The limiter measures
 * waits on an injected clock (`now`, ms); the checker itself runs on real timers and sockets.
 *
 * stop() clears the timers, aborts the checks in flight or queued, waits for them, then destroys
 * the Clients (their promises resolve once the sockets are closed): nothing is left running.
 * `onChange` is called once per change of state, with a short reason ('status 500', 'timeout',
 * 'connection refused', 'TLS: CERT_HAS_EXPIRED' …); it must not throw.
 */
import { Client } from 'undici'

export interface HealthCheckOptions {
  /** Absolute path (may carry a ?query) asked on each target's origin. */
  path: string
  intervalMs: number
  timeoutMs: number
  healthyThreshold: number
  unhealthyThreshold: number
  /** Statuses that pass, e.g. [200] or [200, 204]. */
  expectStatus: readonly number[]
}

export interface HealthCheckTls { rejectUnauthorized: boolean, ca?: Buffer }

/** Bytes of a check's response body read before the request is aborted. */
export const MAX_CHECK_BODY = 64 * 1024
const USER_AGENT = 'portcullis-health-check'
const HEADERS = { 'user-agent': USER_AGENT }
/** Longest connect attempt (10 s is undici's default), never longer than the check's timeout. */
const MAX_CONNECT_MS = 10_000
/** Queued checks a limiter holds by default before it skips rounds. */
const DEFAULT_MAX_QUEUED = 1024

/** Why a check's signal was aborted (compared by identity). */
const TIMED_OUT = new Error('health check timed out')
const STOPPED = new Error('health checker stopped')

interface Waiter {
  resolve: (granted: boolean) => void
  signal: AbortSignal
  since: number
  maxWaitMs: number
  onAbort: () => void
}

/**
 * At most `concurrency` checks at once across all the checkers that share it (one per process),
 * the others wait in a FIFO queue of at most `maxQueued`. acquire() resolves false — skip this
 * round — when the queue is full, when the waiter's signal aborts, or when a slot frees up after
 * the waiter has waited more than its `maxWaitMs`. No timers: waits are measured on `now`.
 */
export class CheckLimiter {
  readonly concurrency: number
  readonly maxQueued: number
  /** Rounds refused: the queue was full or the check waited too long. */
  skipped = 0
  private running = 0
  private readonly waiting: Waiter[] = []
  private readonly now: () => number

  constructor (concurrency: number, now: () => number = () => performance.now(), maxQueued: number = DEFAULT_MAX_QUEUED) {
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`CheckLimiter concurrency must be an integer ≥ 1, got ${concurrency}`)
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`CheckLimiter maxQueued must be an integer ≥ 0, got ${maxQueued}`)
    this.concurrency = concurrency
    this.maxQueued = maxQueued
    this.now = now
  }

  /** Checks holding a slot. */
  get active (): number { return this.running }
  /** Checks waiting for one. */
  get queued (): number { return this.waiting.length }

  /** A slot (true; give it back with release()) or a skipped round (false). */
  async acquire (maxWaitMs: number, signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return false
    if (this.running < this.concurrency) {
      this.running++
      return true
    }
    if (this.waiting.length >= this.maxQueued) {
      this.skipped++
      return false
    }
    return await new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        resolve,
        signal,
        since: this.now(),
        maxWaitMs,
        onAbort: () => {
          const at = this.waiting.indexOf(waiter)
          if (at !== -1) this.waiting.splice(at, 1)
          resolve(false)
        }
      }
      signal.addEventListener('abort', waiter.onAbort, { once: true })
      this.waiting.push(waiter)
    })
  }

  /** Gives a slot back; it goes to the oldest waiter that has not waited too long. */
  release (): void {
    if (this.running === 0) throw new Error('CheckLimiter.release() without a slot held')
    this.running--
    const now = this.now()
    for (let w = this.waiting.shift(); w !== undefined; w = this.waiting.shift()) {
      w.signal.removeEventListener('abort', w.onAbort)
      if (now - w.since > w.maxWaitMs) {
        this.skipped++
        w.resolve(false)
        continue
      }
      this.running++
      w.resolve(true)
      return
    }
  }
}

export class ActiveHealthChecker {
  /** Rounds not run because the target's previous check was still pending or the limiter refused. */
  skippedRounds = 0
  private readonly options: HealthCheckOptions
  private readonly limiter: CheckLimiter
  private readonly onChange: (i: number, healthy: boolean, reason: string) => void
  private readonly clients: Client[]
  private readonly expect: ReadonlySet<number>
  private readonly healthy: Uint8Array
  private readonly passes: Int32Array
  private readonly failures: Int32Array
  private readonly timers: Array<NodeJS.Timeout | null>
  /** The pending check of each target: its abort controller and its promise. */
  private readonly controllers: Array<AbortController | null>
  private readonly rounds: Array<Promise<void> | null>
  private state: 'idle' | 'running' | 'stopped' = 'idle'
  private stopped: Promise<void> | null = null

  constructor (
    origins: readonly string[],
    options: HealthCheckOptions,
    limiter: CheckLimiter,
    onChange: (i: number, healthy: boolean, reason: string) => void,
    tls?: HealthCheckTls
  ) {
    checkOptions(options)
    this.options = options
    this.limiter = limiter
    this.onChange = onChange
    this.expect = new Set(options.expectStatus)
    const n = origins.length
    this.healthy = new Uint8Array(n).fill(1)
    this.passes = new Int32Array(n)
    this.failures = new Int32Array(n)
    this.timers = new Array<NodeJS.Timeout | null>(n).fill(null)
    this.controllers = new Array<AbortController | null>(n).fill(null)
    this.rounds = new Array<Promise<void> | null>(n).fill(null)
    const timeoutMs = Math.ceil(options.timeoutMs)
    const connectMs = Math.min(timeoutMs, MAX_CONNECT_MS)
    this.clients = origins.map((origin) => {
      const url = new URL(origin)
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`health check origin must be http: or https:, got ${origin}`)
      return new Client(url.origin, {
        pipelining: 1,
        // Outlives the gap between two checks (≤ 1.1 × interval); a server's Keep-Alive hint wins.
        keepAliveTimeout: Math.ceil(options.intervalMs * 1.2),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        connect: url.protocol === 'https:'
          ? { timeout: connectMs, rejectUnauthorized: tls?.rejectUnauthorized ?? true, ca: tls?.ca }
          : { timeout: connectMs }
      })
    })
  }

  /** Starts the rounds (once; no-op when already started or stopped). */
  start (): void {
    if (this.state !== 'idle') return
    this.state = 'running'
    // Target i of n fires somewhere in [i, i + 1) / n of the first tenth of the interval.
    const n = this.clients.length
    for (let i = 0; i < n; i++) this.schedule(i, jitterDelay(this.options.intervalMs, true, (i + Math.random()) / n))
  }

  /** Clears the timers, aborts the pending checks and closes the connections; resolves when none is left. */
  async stop (): Promise<void> {
    if (this.stopped !== null) return await this.stopped
    this.state = 'stopped'
    for (let i = 0; i < this.timers.length; i++) {
      const timer = this.timers[i]
      if (timer !== null) clearTimeout(timer)
      this.timers[i] = null
      this.controllers[i]?.abort(STOPPED)
    }
    this.stopped = (async () => {
      await Promise.allSettled(this.rounds)
      await Promise.all(this.clients.map(async (client) => { await client.destroy() }))
    })()
    return await this.stopped
  }

  isHealthy (i: number): boolean { return this.healthy[i] === 1 }

  private schedule (i: number, delayMs: number): void {
    // Not unref'd: a checker that was never stopped keeps the process alive, so the leak shows.
    this.timers[i] = setTimeout(this.fire, delayMs, i)
  }

  /** A target's turn: the next one is booked first, then this one runs unless its last is pending. */
  private readonly fire = (i: number): void => {
    this.timers[i] = null
    if (this.state !== 'running') return
    this.schedule(i, jitterDelay(this.options.intervalMs, false))
    if (this.controllers[i] !== null) {
      this.skippedRounds++
      return
    }
    const controller = new AbortController()
    this.controllers[i] = controller
    this.rounds[i] = this.round(i, controller)
  }

  private async round (i: number, controller: AbortController): Promise<void> {
    const signal = controller.signal
    let status = 0
    let reason = ''
    if (await this.limiter.acquire(this.options.intervalMs, signal)) {
      try {
        if (!signal.aborted) status = await this.check(i, controller)
      } catch (err) {
        reason = signal.reason === TIMED_OUT ? 'timeout' : reasonOf(err)
      } finally {
        this.limiter.release()
      }
    } else if (!signal.aborted) {
      this.skippedRounds++
    }
    this.controllers[i] = null
    this.rounds[i] = null
    if (this.state !== 'running' || signal.reason === STOPPED) return
    if (status !== 0) this.record(i, this.expect.has(status), `status ${status}`)
    else if (reason !== '') this.record(i, false, reason)
  }

  /** One GET; resolves with the status once the body is read (or cut), rejects on failure. */
  private async check (i: number, controller: AbortController): Promise<number> {
    const timer = setTimeout(abortTimedOut, this.options.timeoutMs, controller)
    try {
      const { statusCode, body } = await this.clients[i].request({
        method: 'GET',
        path: this.options.path,
        headers: HEADERS,
        signal: controller.signal
      })
      // Leaving the loop early destroys the body, which aborts the request and closes the socket;
      // the destroy's own error has nobody else to go to.
      body.on('error', noop)
      let bytes = 0
      for await (const chunk of body) {
        bytes += (chunk as Buffer).length
        if (bytes >= MAX_CHECK_BODY) break
      }
      return statusCode
    } finally {
      clearTimeout(timer)
    }
  }

  private record (i: number, passed: boolean, reason: string): void {
    if (passed) {
      this.failures[i] = 0
      this.passes[i]++
      if (this.healthy[i] === 0 && this.passes[i] >= this.options.healthyThreshold) {
        this.healthy[i] = 1
        this.onChange(i, true, reason)
      }
    } else {
      this.passes[i] = 0
      this.failures[i]++
      if (this.healthy[i] === 1 && this.failures[i] >= this.options.unhealthyThreshold) {
        this.healthy[i] = 0
        this.onChange(i, false, reason)
      }
    }
  }
}

function noop (): void {}

/** Delay before a target's first round (within the first 10 % of the interval) or its next one (interval ± 10 %). */
export function jitterDelay (intervalMs: number, first: boolean, random: number = Math.random()): number {
  return first ? intervalMs * 0.1 * random : intervalMs * (0.9 + 0.2 * random)
}

function abortTimedOut (controller: AbortController): void { controller.abort(TIMED_OUT) }

function checkOptions (o: HealthCheckOptions): void {
  const positive = (name: string, v: number): void => {
    if (!Number.isFinite(v) || v <= 0) throw new RangeError(`health check ${name} must be a positive number of ms, got ${v}`)
  }
  const count = (name: string, v: number): void => {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`health check ${name} must be an integer ≥ 1, got ${v}`)
  }
  positive('intervalMs', o.intervalMs)
  positive('timeoutMs', o.timeoutMs)
  count('healthyThreshold', o.healthyThreshold)
  count('unhealthyThreshold', o.unhealthyThreshold)
  if (!o.path.startsWith('/')) throw new TypeError(`health check path must start with /, got ${o.path}`)
  if (o.expectStatus.length === 0) throw new RangeError('health check expectStatus must name at least one status')
}

/** Error codes and their words; anything else is named by its code, never by message or stack. */
const REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  EPIPE: 'connection reset',
  UND_ERR_SOCKET: 'connection closed',
  UND_ERR_INFO: 'connection closed',
  UND_ERR_HEADERS_TIMEOUT: 'timeout',
  UND_ERR_BODY_TIMEOUT: 'timeout',
  UND_ERR_CONNECT_TIMEOUT: 'connect timeout',
  ENOTFOUND: 'DNS lookup failed',
  EAI_AGAIN: 'DNS lookup failed',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ETIMEDOUT: 'timeout'
}

/** A failed check's reason in a few words, from the error's code; never its message or stack. */
export function reasonOf (err: unknown): string {
  let code = codeOf(err)
  // Happy eyeballs (several addresses) fails with an AggregateError of the attempts.
  if (code === '' && err instanceof AggregateError && err.errors.length > 0) code = codeOf(err.errors[0])
  if (code === '') return 'request failed'
  const words = REASONS[code]
  if (words !== undefined) return words
  if (code.startsWith('HPE_') || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') return 'bad response'
  if (/CERT|SSL|TLS|SIGNATURE|ISSUER|SELF_SIGNED/.test(code)) return `TLS: ${code}`
  return `error ${code}`
}

function codeOf (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : ''
}

/**
 * The circuit breaker, outlier ejection and retry budget on their own (plugins/upstream/breaker.ts),
 * on a clock the test moves. Through a running gateway with real upstream processes:
 * test/upstream-resilience.test.ts.
 */
import t from 'tap'
import { CircuitBreaker, OutlierDetector, RetryBudget, type BreakerOptions } from '../plugins/upstream/breaker.js'

function clock (): { now: () => number, advance: (ms: number) => void } {
  let at = 1_000_000
  return { now: () => at, advance: (ms) => { at += ms } }
}

const options: BreakerOptions = { failureRatio: 0.5, windowMs: 10_000, minRequests: 20, openForMs: 10_000, halfOpenRequests: 3 }

/** A breaker on its own clock, with its transitions written down as 'from→to'. */
function breaker (opts = options): { b: CircuitBreaker, c: ReturnType<typeof clock>, moves: string[] } {
  const c = clock()
  const moves: string[] = []
  const b = new CircuitBreaker(opts, (from, to) => moves.push(`${from}→${to}`), c.now)
  return { b, c, moves }
}

function times (n: number, f: () => void): void { for (let i = 0; i < n; i++) f() }

t.test('breaker: opens at minRequests, not one before', async (t) => {
  const { b, moves } = breaker()
  times(19, () => b.onFailure())
  t.equal(b.state, 'closed', '19 failures, one below minRequests: closed')
  t.equal(b.canPass(), true)
  b.onFailure()
  t.equal(b.state, 'open', 'the 20th: open')
  t.equal(b.canPass(), false)
  t.same(moves, ['closed→open'])
})

t.test('breaker: opens at failureRatio, not one failure below', async (t) => {
  const { b } = breaker()
  times(11, () => b.onSuccess())
  times(10, () => b.onFailure())
  t.equal(b.state, 'closed', '10 failures in 21 (48 %): closed')
  b.onFailure()
  t.equal(b.state, 'open', '11 in 22 (50 %): open')
  const { b: low } = breaker({ ...options, failureRatio: 0.1, minRequests: 30 })
  times(27, () => low.onSuccess())
  times(2, () => low.onFailure())
  t.equal(low.state, 'closed', '2 in 29: below minRequests')
  low.onFailure()
  t.equal(low.state, 'open', '3 in 30 is exactly 10 %: open')
})

t.test('breaker: successes never open it, however many requests', async (t) => {
  const { b, moves } = breaker()
  times(1000, () => b.onSuccess())
  times(999, () => b.onFailure())
  t.equal(b.state, 'closed', '999 failures in 1,999: below 50 %')
  b.onFailure()
  t.equal(b.state, 'open', '1,000 in 2,000')
  t.same(moves, ['closed→open'])
})

t.test('breaker: old outcomes slide out of the window', async (t) => {
  const { b, c } = breaker()
  times(15, () => b.onFailure())
  c.advance(5_000)
  times(4, () => b.onFailure())
  t.equal(b.state, 'closed', '19 failures within one window: below minRequests')
  c.advance(5_000)
  b.onFailure()
  t.equal(b.state, 'closed', '10 s on, the first 15 have slid out: 5 in the window')
  times(14, () => b.onFailure())
  t.equal(b.state, 'closed', '19 in the window')
  b.onFailure()
  t.equal(b.state, 'open', '20 in the window: open')
  const { b: d, c: dc } = breaker()
  times(15, () => d.onFailure())
  dc.advance(11_000)
  times(15, () => d.onSuccess())
  times(5, () => d.onFailure())
  t.equal(d.state, 'closed', 'the 15 old failures are gone: 5 of 20 fail, closed')
  times(9, () => d.onFailure())
  t.equal(d.state, 'closed', '14 of 29')
  d.onFailure()
  t.equal(d.state, 'open', '15 of 30: open')
})

t.test('breaker: open refuses until openFor, half-open lets exactly N probes out, all pass → closed', async (t) => {
  const { b, c, moves } = breaker()
  times(20, () => b.onFailure())
  t.equal(b.canPass(), false, 'open: nothing passes')
  t.equal(b.retryAfterMs(), 10_000, 'Retry-After counts from openFor')
  c.advance(4_000)
  t.equal(b.retryAfterMs(), 6_000, 'and counts down')
  c.advance(5_999)
  t.equal(b.retryAfterMs(), 1, '1 ms before the end')
  t.equal(b.canPass(), false, 'still open')
  c.advance(1)
  t.equal(b.canPass(), true, 'after openFor: half-open, a probe may pass')
  t.equal(b.state, 'half-open')
  t.equal(b.retryAfterMs(), 0, 'not open: no Retry-After')
  for (let i = 0; i < 3; i++) { t.equal(b.canPass(), true, `probe ${i + 1} may pass`); b.onDispatch() }
  t.equal(b.canPass(), false, 'a fourth may not while three are out')
  b.onSuccess()
  t.equal(b.canPass(), false, 'nor after one came back: exactly three probes in all')
  b.onSuccess()
  t.equal(b.state, 'half-open', 'two of three back: still half-open')
  b.onSuccess()
  t.equal(b.state, 'closed', 'all three passed: closed')
  times(19, () => b.onFailure())
  t.equal(b.state, 'closed', 'the window was emptied on closing: 19 new failures do not open it')
  t.same(moves, ['closed→open', 'open→half-open', 'half-open→closed'], 'each transition reported once, in order')
})

t.test('breaker: one failed probe opens it again for a full openFor', async (t) => {
  const { b, c, moves } = breaker()
  times(20, () => b.onFailure())
  c.advance(10_000)
  times(3, () => { b.canPass(); b.onDispatch() })
  b.onSuccess()
  b.onSuccess()
  b.onFailure()
  t.equal(b.state, 'open', 'two passed, the third failed: open again')
  t.equal(b.retryAfterMs(), 10_000, 'for a full openFor from the failure')
  b.onSuccess()
  t.equal(b.state, 'open', 'a late success changes nothing while open')
  c.advance(10_000)
  t.equal(b.state, 'half-open', 'and half-opens again')
  times(3, () => { b.canPass(); b.onDispatch() })
  times(3, () => b.onSuccess())
  t.equal(b.state, 'closed')
  t.same(moves, ['closed→open', 'open→half-open', 'half-open→open', 'open→half-open', 'half-open→closed'])
})

t.test('breaker: an abandoned probe frees its place; answers with no probe out are ignored', async (t) => {
  const { b, c, moves } = breaker()
  times(20, () => b.onFailure())
  c.advance(10_000)
  b.canPass()
  b.onSuccess()
  b.onFailure()
  t.equal(b.state, 'half-open', 'a late success and a late failure (no probe out): ignored')
  times(3, () => b.onDispatch())
  t.equal(b.canPass(), false, 'three probes out')
  b.onCancel()
  t.equal(b.canPass(), true, 'one abandoned (the client left): a place is free')
  b.onDispatch()
  times(2, () => b.onSuccess())
  t.equal(b.state, 'half-open', 'two of three')
  b.onCancel()
  b.onSuccess()
  t.equal(b.state, 'half-open', 'the last probe was abandoned: its place is free, a stray success does not count')
  b.onDispatch()
  b.onSuccess()
  t.equal(b.state, 'closed', 'a third probe passed')
  t.same(moves, ['closed→open', 'open→half-open', 'half-open→closed'])
})

t.test('breaker: refuses a window or probe count it cannot use', async (t) => {
  t.throws(() => new CircuitBreaker({ ...options, windowMs: 0 }, () => {}), RangeError)
  t.throws(() => new CircuitBreaker({ ...options, halfOpenRequests: 0 }, () => {}), RangeError)
})

const outlier = { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionMs: 100_000, maxEjectionPercent: 50 }

/** A detector on its own clock, with its events written down. */
function detector (targets: number, opts = outlier): { o: OutlierDetector, c: ReturnType<typeof clock>, events: string[] } {
  const c = clock()
  const events: string[] = []
  const o = new OutlierDetector(targets, opts, (i, forMs, m) => events.push(`eject ${i} ${forMs} ×${m}`), (i) => events.push(`return ${i}`), c.now)
  return { o, c, events }
}

t.test('outlier: N-1 failures then a success do not eject; N in a row eject for base', async (t) => {
  const { o, c, events } = detector(4)
  times(4, () => o.onFailure(0))
  o.onSuccess(0)
  times(4, () => o.onFailure(0))
  t.equal(o.isEjected(0), false, '4 failures, a success, 4 failures: not ejected')
  o.onFailure(0)
  t.equal(o.isEjected(0), true, 'the 5th in a row: ejected')
  t.same(events, ['eject 0 30000 ×1'])
  times(20, () => o.onFailure(0))
  t.same(events, ['eject 0 30000 ×1'], 'failures while ejected do not count')
  c.advance(29_999)
  t.equal(o.isEjected(0), true, 'still out 1 ms before base')
  c.advance(1)
  t.equal(o.isEjected(0), false, 'back at base')
  t.equal(o.isEjected(0), false)
  t.same(events, ['eject 0 30000 ×1', 'return 0'], 'onReturn once')
  times(4, () => o.onFailure(0))
  t.equal(o.isEjected(0), false, 'it came back with a count of zero: 4 failures do not eject')
})

t.test('outlier: each ejection in a row lasts base × m, up to maxEjection', async (t) => {
  const { o, c, events } = detector(2)
  for (let k = 0; k < 5; k++) {
    times(5, () => o.onFailure(1))
    c.advance(100_000)
    o.isEjected(1)
  }
  t.same(events.filter((e) => e.startsWith('eject')), [
    'eject 1 30000 ×1', 'eject 1 60000 ×2', 'eject 1 90000 ×3', 'eject 1 100000 ×4', 'eject 1 100000 ×4'
  ], '30 s, 60 s, 90 s, then the 100 s cap; the multiplier stops at the cap')
  t.equal(events.filter((e) => e === 'return 1').length, 5, 'one return per ejection')
})

t.test('outlier: the multiplier loses one for each base time in rotation', async (t) => {
  const { o, c, events } = detector(2)
  times(5, () => o.onFailure(1))
  c.advance(30_000); o.isEjected(1)
  times(5, () => o.onFailure(1))
  c.advance(60_000); o.isEjected(1)
  times(5, () => o.onFailure(1))
  c.advance(90_000); o.isEjected(1)
  c.advance(59_999) // one base time in rotation (and almost a second): 3 → 2
  times(5, () => o.onFailure(1))
  c.advance(90_000); o.isEjected(1)
  c.advance(300_000) // ten base times: back to the start
  times(5, () => o.onFailure(1))
  t.same(events.filter((e) => e.startsWith('eject')).map((e) => e.split(' ')[3]), ['×1', '×2', '×3', '×3', '×1'])
})

t.test('outlier: never more than maxEjectionPercent out', async (t) => {
  const { o, c } = detector(4)
  for (const i of [0, 1, 2, 3]) times(5, () => o.onFailure(i))
  t.equal(o.ejectedCount(), 2, '4 targets at 50 %: 2 ejected')
  t.same([0, 1, 2, 3].map((i) => o.isEjected(i)), [true, true, false, false])
  o.onFailure(2)
  t.equal(o.isEjected(2), false, 'a further failure of a third target: still at the cap')
  c.advance(30_000)
  o.onFailure(3)
  t.equal(o.isEjected(3), true, 'once the first two are back (nobody asked about them), the next failure of a failing target ejects it')
  t.equal(o.ejectedCount(), 1, 'and the count says so')
  const eight = detector(8, { ...outlier, maxEjectionPercent: 30 }).o
  for (let i = 0; i < 8; i++) times(5, () => eight.onFailure(i))
  t.equal(eight.ejectedCount(), 2, '8 targets at 30 %: ⌊2.4⌋ = 2')
})

t.test('outlier: at least one of two or more targets may go; the only target never does', async (t) => {
  const three = detector(3, { ...outlier, maxEjectionPercent: 10 }).o
  for (const i of [0, 1]) times(5, () => three.onFailure(i))
  t.equal(three.ejectedCount(), 1, '3 targets at 10 % (Envoy without always_eject_one_host: none): one')
  const two = detector(2).o
  for (const i of [0, 1]) times(5, () => two.onFailure(i))
  t.equal(two.ejectedCount(), 1, '2 targets at 50 %: one, never both')
  const { o: one, events } = detector(1, { ...outlier, maxEjectionPercent: 100 })
  times(50, () => one.onFailure(0))
  t.equal(one.isEjected(0), false, 'a route\'s only target stays in, even at 100 % (its breaker handles it)')
  t.same(events, [])
  const off = detector(3, { ...outlier, maxEjectionPercent: 0 }).o
  times(50, () => off.onFailure(0))
  t.equal(off.isEjected(0), false, 'maxEjectionPercent 0: nothing is ejected')
})

/** Tokens a budget grants, asking until it says no. */
function drain (budget: RetryBudget): number {
  let n = 0
  while (budget.tryRetry()) if (++n > 1_000_000) throw new Error('unbounded')
  return n
}

t.test('retry budget: 1,000 requests over 10 s, each wanting two retries', async (t) => {
  const c = clock()
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 10 }, c.now)
  t.equal(budget.cap, 100, 'C = minPerSecond × 10 s')
  /** 100 requests a second for 10 s, each followed by two tries at a retry. */
  const tenSeconds = (): number => {
    let allowed = 0
    for (let i = 0; i < 1000; i++) {
      budget.onRequest()
      if (budget.tryRetry()) allowed++
      if (budget.tryRetry()) allowed++
      c.advance(10)
    }
    return allowed
  }
  // T = 10 s, R = 1,000: ratio × R + minPerSecond × T = 300; the last 10 ms are not credited yet.
  const fresh = tenSeconds()
  t.ok(fresh <= 310, `a new budget starts with one second's minimum: ${fresh} ≤ 300 + 10`)
  t.ok(fresh >= 299, `and the budget is used: ${fresh} ≥ 299`)
  c.advance(60_000)
  const afterIdle = tenSeconds()
  t.ok(afterIdle <= 400, `after an idle minute the bank is full: ${afterIdle} ≤ 300 + C`)
  t.ok(afterIdle >= 399, `and close to it: ${afterIdle} ≥ 399`)
})

t.test('retry budget: an idle minute banks one window, no more; nor does healthy traffic', async (t) => {
  const c = clock()
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 10 }, c.now)
  c.advance(30_000)
  times(10_000, () => budget.onRequest())
  t.equal(drain(budget), 100, 'after 10,000 healthy requests, an outage starts with C = 100 retries (Linkerd\'s uncapped bank: 2,100)')
  c.advance(60_000)
  t.equal(drain(budget), 100, 'after an idle minute: minPerSecond × 10, not × 60')
  c.advance(1_000)
  t.equal(drain(budget), 10, 'then minPerSecond a second')
  times(50, () => budget.onRequest())
  t.equal(drain(budget), 10, 'plus ratio × requests')
  const slow = new RetryBudget({ ratio: 0, minPerSecond: 0.05 }, c.now)
  c.advance(60_000)
  t.equal(slow.available(), 0.5, 'at 0.05 a second (C = 1), an idle minute still credits only 10 s: half a token')
})

t.test('retry budget: a deposit expires after the 10 s window', async (t) => {
  const c = clock() // starts on a bucket's edge
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 0 }, c.now)
  t.equal(budget.tryRetry(), false, 'nothing deposited yet')
  times(5, () => budget.onRequest())
  c.advance(9_999)
  t.equal(budget.available(), 1, 'five requests × 0.2: one token, still there after 9.999 s')
  c.advance(1)
  t.equal(budget.tryRetry(), false, 'gone at 10 s')
  const none = new RetryBudget({ ratio: 0, minPerSecond: 0 }, c.now)
  times(100, () => none.onRequest())
  t.equal(none.tryRetry(), false, 'ratio 0 and minPerSecond 0: no retry at all')
})

t.test('retry budget: retries ≤ ratio × R + minPerSecond × T + C over every interval of a random run', async (t) => {
  let seed = 42
  const random = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x80000000 }
  const c = clock()
  const ratio = 0.25
  const minPerSecond = 3
  const budget = new RetryBudget({ ratio, minPerSecond }, c.now)
  // events: [time, requests so far, retries so far], one per call
  const at: number[] = []
  const requests: number[] = []
  const retries: number[] = []
  let r = 0
  let g = 0
  for (let k = 0; k < 3000; k++) {
    // quiet stretches, healthy bursts, outages that retry everything
    const phase = Math.floor(k / 300) % 3
    c.advance(phase === 0 ? random() * 400 : random() * 20)
    if (phase !== 0 && random() < 0.7) { budget.onRequest(); r++ }
    if (phase !== 1 && budget.tryRetry()) g++
    at.push(c.now()); requests.push(r); retries.push(g)
  }
  let worst = -Infinity
  for (let i = 0; i < at.length; i++) {
    for (let j = i; j < at.length; j++) {
      const granted = retries[j] - (i === 0 ? 0 : retries[i - 1])
      const asked = requests[j] - (i === 0 ? 0 : requests[i - 1])
      const bound = ratio * asked + minPerSecond * (at[j] - at[i]) / 1000 + budget.cap
      if (granted - bound > worst) worst = granted - bound
    }
  }
  t.ok(worst <= 0, `no interval goes over the bound (closest: ${worst.toFixed(3)})`)
  t.ok(worst > -2, 'and some interval comes within two retries of it')
  t.ok(g > 100, `retries were granted (${g})`)
})

t.test('retry budget: a new one may retry at once, minPerSecond times', async (t) => {
  const c = clock()
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 10 }, c.now)
  t.equal(drain(budget), 10, 'a gateway that just started: one second\'s minimum, no more')
  t.equal(drain(new RetryBudget({ ratio: 0.2, minPerSecond: 0 }, c.now)), 0, 'minPerSecond 0: nothing before requests deposit')
})

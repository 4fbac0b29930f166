/**
 * The circuit breaker, outlier ejection and retry budget on their own (plugins/upstream/breaker.ts),
 * on a clock the test moves. Through a running gateway with real upstream processes:
 * test/upstream-resilience.test.ts.
 */
import t from 'tap'
import { CircuitBreaker, OutlierDetector, RetryBudget, type BreakerState } from '../plugins/upstream/breaker.js'

function clock (): { now: () => number, advance: (ms: number) => void } {
  let at = 1_000_000
  return { now: () => at, advance: (ms) => { at += ms } }
}

const options = { failureRatio: 0.5, windowMs: 10_000, minRequests: 20, openForMs: 10_000, halfOpenRequests: 3 }

t.test('breaker: opens only with enough requests and a high enough failure ratio', async (t) => {
  const c = clock()
  const moves: string[] = []
  const b = new CircuitBreaker(options, (from, to) => moves.push(`${from}→${to}`), c.now)
  for (let i = 0; i < 19; i++) b.onFailure()
  t.equal(b.state, 'closed', '19 failures, below minRequests: closed')
  b.onFailure()
  t.equal(b.state, 'open', 'the 20th: open')
  t.same(moves, ['closed→open'])
})

t.test('breaker: the ratio threshold, exactly', async (t) => {
  const c = clock()
  const b = new CircuitBreaker(options, () => {}, c.now)
  for (let i = 0; i < 11; i++) b.onSuccess()
  for (let i = 0; i < 10; i++) b.onFailure()
  t.equal(b.state, 'closed', '10 failures in 21 requests (48 %): closed')
  b.onFailure()
  t.equal(b.state, 'open', '11 in 22 (50 %): open')
})

t.test('breaker: old failures slide out of the window', async (t) => {
  const c = clock()
  const b = new CircuitBreaker(options, () => {}, c.now)
  for (let i = 0; i < 15; i++) b.onFailure()
  c.advance(11_000)
  for (let i = 0; i < 10; i++) b.onSuccess()
  for (let i = 0; i < 10; i++) b.onFailure()
  t.equal(b.state, 'open', '10 of 20 in the window fail: open (the window holds only the new ones)')
  const d = new CircuitBreaker(options, () => {}, c.now)
  for (let i = 0; i < 15; i++) d.onFailure()
  c.advance(11_000)
  for (let i = 0; i < 15; i++) d.onSuccess()
  for (let i = 0; i < 5; i++) d.onFailure()
  t.equal(d.state, 'closed', '15 old failures are gone: 5 of 20 fail, closed')
})

t.test('breaker: open refuses until openFor, half-open lets exactly N probes through, all pass → closed', async (t) => {
  const c = clock()
  const moves: Array<[BreakerState, BreakerState]> = []
  const b = new CircuitBreaker(options, (from, to) => moves.push([from, to]), c.now)
  for (let i = 0; i < 20; i++) b.onFailure()
  t.equal(b.canPass(), false, 'open: nothing passes')
  t.equal(b.retryAfterMs(), 10_000, 'Retry-After counts from openFor')
  c.advance(4_000)
  t.equal(b.retryAfterMs(), 6_000, 'and counts down')
  c.advance(6_000)
  t.equal(b.canPass(), true, 'after openFor: half-open, a probe may pass')
  t.equal(b.state, 'half-open')
  t.equal(b.retryAfterMs(), 0, 'not open: no Retry-After')
  for (let i = 0; i < 3; i++) { t.equal(b.canPass(), true, `probe ${i + 1} passes`); b.onDispatch() }
  t.equal(b.canPass(), false, 'a fourth does not, while three are out')
  b.onSuccess(); b.onSuccess()
  t.equal(b.state, 'half-open', 'two of three back: still half-open')
  b.onSuccess()
  t.equal(b.state, 'closed', 'all three passed: closed')
  for (let i = 0; i < 19; i++) b.onFailure()
  t.equal(b.state, 'closed', 'the window was emptied on closing: 19 new failures do not open it')
  t.same(moves, [['closed', 'open'], ['open', 'half-open'], ['half-open', 'closed']], 'each transition reported once, in order')
})

t.test('breaker: one failed probe opens it again; an abandoned probe frees its place', async (t) => {
  const c = clock()
  const moves: string[] = []
  const b = new CircuitBreaker(options, (from, to) => moves.push(`${from}→${to}`), c.now)
  for (let i = 0; i < 20; i++) b.onFailure()
  c.advance(10_000)
  b.canPass(); b.onDispatch(); b.onDispatch(); b.onDispatch()
  t.equal(b.canPass(), false, 'three probes out')
  b.onCancel()
  t.equal(b.canPass(), true, 'one abandoned (the client left): a place is free')
  b.onDispatch()
  b.onSuccess()
  b.onFailure()
  t.equal(b.state, 'open', 'a failed probe: open again')
  t.equal(b.retryAfterMs(), 10_000, 'for a full openFor')
  t.same(moves, ['closed→open', 'open→half-open', 'half-open→open'])
})

const outlier = { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionMs: 100_000, maxEjectionPercent: 50 }

t.test('outlier: consecutive failures eject, for base × ejections, capped; back after the time, once', async (t) => {
  const c = clock()
  const events: string[] = []
  const o = new OutlierDetector(4, outlier, (i, forMs, times) => events.push(`eject ${i} ${forMs} ${times}`), (i) => events.push(`return ${i}`), c.now)
  for (let i = 0; i < 4; i++) o.onFailure(0)
  o.onSuccess(0)
  o.onFailure(0)
  t.equal(o.isEjected(0), false, '4 failures, a success, a failure: not ejected')
  for (let i = 0; i < 4; i++) o.onFailure(0)
  t.equal(o.isEjected(0), true, '5 in a row: ejected')
  c.advance(29_999)
  t.equal(o.isEjected(0), true, 'still out just before 30 s')
  c.advance(1)
  t.equal(o.isEjected(0), false, 'back at 30 s')
  t.equal(o.isEjected(0), false)
  for (let i = 0; i < 5; i++) o.onFailure(0)
  c.advance(59_999)
  t.equal(o.isEjected(0), true, 'the second ejection lasts 60 s')
  c.advance(1)
  t.equal(o.isEjected(0), false)
  for (let i = 0; i < 5; i++) o.onFailure(0)
  for (let i = 0; i < 5; i++) { c.advance(100_000); o.isEjected(0); for (let k = 0; k < 5; k++) o.onFailure(0) }
  t.match(events.at(-1), /^eject 0 100000 /, 'capped at maxEjectionTime')
  t.same(events.slice(0, 4), ['eject 0 30000 1', 'return 0', 'eject 0 60000 2', 'return 0'], 'each ejection and return reported once')
})

t.test('outlier: the multiplier shrinks while a target stays in', async (t) => {
  const c = clock()
  const events: string[] = []
  const o = new OutlierDetector(2, outlier, (i, forMs) => events.push(`${forMs}`), () => {}, c.now)
  for (let i = 0; i < 5; i++) o.onFailure(1)
  c.advance(30_000); o.isEjected(1)
  for (let i = 0; i < 5; i++) o.onFailure(1)
  c.advance(60_000); o.isEjected(1)
  c.advance(60_000) // two base times in rotation: the multiplier drops from 2 to 0
  for (let i = 0; i < 5; i++) o.onFailure(1)
  t.same(events, ['30000', '60000', '30000'])
})

t.test('outlier: never more than maxEjectionPercent out; one target is never ejected', async (t) => {
  const c = clock()
  const o = new OutlierDetector(4, outlier, () => {}, () => {}, c.now)
  for (const i of [0, 1, 2, 3]) for (let k = 0; k < 5; k++) o.onFailure(i)
  t.equal(o.ejectedCount(), 2, '4 targets at 50 %: 2 ejected')
  t.same([0, 1, 2, 3].map((i) => o.isEjected(i)), [true, true, false, false])
  const three = new OutlierDetector(3, { ...outlier, maxEjectionPercent: 10 }, () => {}, () => {}, c.now)
  for (const i of [0, 1]) for (let k = 0; k < 5; k++) three.onFailure(i)
  t.equal(three.ejectedCount(), 1, '3 targets at 10 %: still one may go')
  const one = new OutlierDetector(1, outlier, () => {}, () => {}, c.now)
  for (let k = 0; k < 50; k++) one.onFailure(0)
  t.equal(one.isEjected(0), false, 'a route\'s only target stays in (its breaker handles it)')
  const off = new OutlierDetector(3, { ...outlier, maxEjectionPercent: 0 }, () => {}, () => {}, c.now)
  for (let k = 0; k < 50; k++) off.onFailure(0)
  t.equal(off.isEjected(0), false, 'maxEjectionPercent 0: nothing is ejected')
})

t.test('retry budget: ratio × requests + minPerSecond × window, and an idle period banks no more', async (t) => {
  const c = clock()
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 10 }, c.now)
  let allowed = 0
  for (let s = 0; s < 10; s++) {
    for (let i = 0; i < 100; i++) {
      budget.onRequest()
      if (budget.tryRetry()) allowed++
      if (budget.tryRetry()) allowed++
    }
    c.advance(1000)
  }
  // 1,000 requests over 10 s, every one asking for two retries: at most 0.2 × 1,000 + 10 × (10 + 10).
  t.ok(allowed <= 200 + 200, `retries allowed: ${allowed} ≤ 400`)
  t.ok(allowed >= 250, `and the budget is used, not starved (${allowed})`)
  c.advance(60_000)
  let burst = 0
  while (budget.tryRetry() && burst < 10_000) burst++
  t.equal(burst, 100, 'after an idle minute: one window\'s minPerSecond × 10, no more')
  const none = new RetryBudget({ ratio: 0, minPerSecond: 0 }, c.now)
  none.onRequest()
  t.equal(none.tryRetry(), false, 'ratio 0 and minPerSecond 0: no retry at all')
})

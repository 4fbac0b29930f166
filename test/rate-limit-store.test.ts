/**
 * The memory rate-limit store (plugins/rate-limit/memory-store.ts) against @fastify/rate-limit's
 * store contract: the same calls give the same answers as the package's LocalStore (loaded here
 * only, through createRequire), windows end, `maxKeys` forgets the least recently used key,
 * `child()` takes the route's options — all on a clock the test moves (Date.now replaced), so no
 * assertion depends on timing. Then the gateway through real HTTP: max 3, the 4th is refused.
 */
import { createRequire } from 'node:module'
import t, { type Test } from 'tap'
import { call, startTestGateway, startUpstream } from './helper.js'
import { MemoryCounterStore, type CounterCallback, type CounterResult } from '../plugins/rate-limit/memory-store.js'

interface Store {
  incr: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
  read: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
  child: (routeOptions: Record<string, unknown>) => Store
}
const LocalStore = createRequire(import.meta.url)('@fastify/rate-limit/store/LocalStore.js') as
  new (continueExceeding: boolean, exponentialBackoff: boolean, cache: number) => Store

/** Replaces Date.now with a clock the test moves; restored at teardown. */
function fakeClock (t: Test): { advance: (ms: number) => void } {
  const real = Date.now
  let now = 1_700_000_000_000
  Date.now = () => now
  t.teardown(() => { Date.now = real })
  return { advance (ms) { now += ms } }
}

/** The store's synchronous answer (a copy: the store may reuse its result object). */
function answer (op: 'incr' | 'read', store: Store, key: string, window: number, max: number): CounterResult {
  let out: CounterResult | undefined
  store[op](key, (err, r) => {
    if (err !== null || r === undefined) throw err ?? new Error('no result')
    out = { current: r.current, ttl: r.ttl }
  }, window, max)
  if (out === undefined) throw new Error(`${op} did not call back synchronously`)
  return out
}

/** A fixed pseudo-random sequence (LCG), so a failure can be replayed. */
function lcg (seed: number): () => number {
  let s = seed
  return () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648 }
}

const WINDOW = 1000
const MAX = 3

for (const [label, continueExceeding] of [['plain windows', false], ['continueExceeding', true]] as const) {
  t.test(`same calls, same answers as LocalStore (${label}, 4 keys remembered of 7)`, async (t) => {
    const clock = fakeClock(t)
    const ours = new MemoryCounterStore({ maxKeys: 4, continueExceeding })
    const theirs = new LocalStore(continueExceeding, false, 4)
    const random = lcg(7)
    let differ = 0
    let refused = 0
    let expired = 0
    for (let i = 0; i < 5000; i++) {
      const key = `k${Math.floor(random() * 7)}`
      const op = random() < 0.8 ? 'incr' : 'read'
      const a = answer(op, ours, key, WINDOW, MAX)
      const b = answer(op, theirs, key, WINDOW, MAX)
      if (a.current !== b.current || a.ttl !== b.ttl) {
        differ++
        if (differ <= 3) t.fail(`call ${i}: ${op} ${key}: ours ${JSON.stringify(a)}, LocalStore ${JSON.stringify(b)}`)
      }
      if (op === 'incr' && a.current > MAX) refused++
      if (op === 'incr' && a.current === 1) expired++
      clock.advance(Math.floor(random() * 120))
    }
    t.equal(differ, 0, 'every answer equal')
    t.ok(refused > 100 && expired > 100, `the sequence went past max (${refused}) and started new windows (${expired})`)
  })
}

t.test('a window: counts up, ttl counts down, then starts again; read does not count', async (t) => {
  const clock = fakeClock(t)
  const store = new MemoryCounterStore({ maxKeys: 100 })
  t.same(answer('read', store, 'a', WINDOW, MAX), { current: 0, ttl: 0 }, 'unknown key: nothing counted')
  t.same(answer('incr', store, 'a', WINDOW, MAX), { current: 1, ttl: 1000 })
  clock.advance(300)
  t.same(answer('incr', store, 'a', WINDOW, MAX), { current: 2, ttl: 700 })
  t.same(answer('read', store, 'a', WINDOW, MAX), { current: 2, ttl: 700 }, 'read: the same numbers')
  t.same(answer('read', store, 'a', WINDOW, MAX), { current: 2, ttl: 700 }, 'and does not count')
  clock.advance(699)
  t.same(answer('incr', store, 'a', WINDOW, MAX), { current: 3, ttl: 1 }, 'the last ms of the window')
  clock.advance(1)
  t.same(answer('read', store, 'a', WINDOW, MAX), { current: 0, ttl: 0 }, 'window over: read reports nothing')
  t.same(answer('incr', store, 'a', WINDOW, MAX), { current: 1, ttl: 1000 }, 'window over: a new one')
  t.same(answer('incr', store, 'b', WINDOW, MAX), { current: 1, ttl: 1000 }, 'another key has its own')
})

t.test('maxKeys: the least recently counted or read key is forgotten; the store never grows past it', async (t) => {
  fakeClock(t)
  const store = new MemoryCounterStore({ maxKeys: 3 })
  for (const key of ['a', 'b', 'a', 'c']) answer('incr', store, key, WINDOW, 10) // oldest first: b, a, c
  answer('read', store, 'b', WINDOW, 10) // a, c, b
  answer('incr', store, 'd', WINDOW, 10) // full: a goes
  t.equal(store.size, 3)
  t.same(answer('read', store, 'a', WINDOW, 10), { current: 0, ttl: 0 }, 'a forgotten: counted twice, but longest ago')
  t.same(answer('read', store, 'b', WINDOW, 10), { current: 1, ttl: 1000 }, 'b kept: a read counts as use')
  t.same(answer('read', store, 'c', WINDOW, 10), { current: 1, ttl: 1000 }, 'c kept')
  t.same(answer('read', store, 'd', WINDOW, 10), { current: 1, ttl: 1000 }, 'd kept')
  // A flood of new keys (hostile names included): the size stays bounded, the newest are kept.
  for (let i = 0; i < 10_000; i++) answer('incr', store, i % 3 === 0 ? '__proto__' : `flood${i}`, WINDOW, 10)
  t.equal(store.size, 3, 'still 3 keys')
  t.equal(answer('read', store, 'flood9998', WINDOW, 10).current, 1, 'the newest key is there')
  t.equal(answer('read', store, '__proto__', WINDOW, 10).current, 3334, '__proto__ is an ordinary key')
  t.throws(() => new MemoryCounterStore({ maxKeys: 0 }), /maxKeys must be a positive integer/)
})

t.test('exponentialBackoff: LocalStore\'s answers while it remembers; the backoff window is kept to its end', async (t) => {
  const clock = fakeClock(t)
  const ours = new MemoryCounterStore({ maxKeys: 10, exponentialBackoff: true })
  const theirs = new LocalStore(false, true, 10)
  const both = (): [CounterResult, CounterResult] => [answer('incr', ours, 'k', WINDOW, 2), answer('incr', theirs, 'k', WINDOW, 2)]
  const seen: CounterResult[] = []
  for (let i = 0; i < 5; i++) {
    const [a, b] = both()
    t.same(a, b, `call ${i + 1}: same answer`)
    seen.push(a)
    clock.advance(100)
  }
  t.same(seen.map((r) => r.ttl), [1000, 900, 1000, 2000, 4000], 'past max the window doubles each time')
  // 1.5 windows later: LocalStore has started over; the 4000 ms it announced are not over.
  clock.advance(1500)
  const [a, b] = both()
  t.same(b, { current: 1, ttl: 1000 }, 'LocalStore: a new window (its announced ttl was not kept)')
  t.same(a, { current: 6, ttl: 8000 }, 'ours: still refused, the backoff goes on')
  t.same(answer('read', ours, 'k', WINDOW, 2), { current: 6, ttl: 8000 }, 'read reports the same window')
})

t.test('child(): a store of its own with the route\'s options', async (t) => {
  const clock = fakeClock(t)
  const parent = new MemoryCounterStore({ maxKeys: 2 })
  const child = parent.child({ cache: 1, continueExceeding: true })
  answer('incr', parent, 'a', WINDOW, 1)
  t.same(answer('read', child, 'a', WINDOW, 1), { current: 0, ttl: 0 }, 'counters are not shared with the parent')
  answer('incr', child, 'a', WINDOW, 1)
  clock.advance(400)
  t.same(answer('incr', child, 'a', WINDOW, 1), { current: 2, ttl: 1000 }, 'continueExceeding: past max the window starts again')
  answer('incr', child, 'b', WINDOW, 1)
  t.equal(child.size, 1, 'cache: 1 key')
  const inherited = parent.child({})
  for (const key of ['x', 'y', 'z']) answer('incr', inherited, key, WINDOW, 1)
  t.equal(inherited.size, 2, 'no cache option: the parent\'s maxKeys')
  t.same(answer('incr', inherited, 'z', WINDOW, 1), { current: 2, ttl: 1000 }, 'no continueExceeding: the window runs on')
})

t.test('through the gateway: max 3 per window, the 4th request is refused', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, rateLimit: { max: 3, window: '1m', by: 'ip' } }]
  })
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await call(`${url}/api/people/`)).status)
  t.same(statuses, [200, 200, 200, 429])
  t.equal(up.requests.length, 3, 'the upstream saw 3')
})

/**
 * Leases on the Redis store (`rateLimit.leaseMax`, plugins/rate-limit/lease-store.ts), against a
 * real redis-server shared by two gateways in this process: requests for one key spread over
 * both are never admitted past max and at least max − (instances − 1) × (cap − 1); each admitted
 * request has its own position (RateLimit r values never repeat across the two); far fewer
 * scripts run than requests; windows still reset (no count of an old window is used in the
 * next); Redis killed mid-lease under onStoreError allow and deny; a peek's reuse ends within its
 * bound; a client spreading over many keys keeps the lease table at maxKeys and reserves 1 count
 * per new key. The block sizes and the coalescing of concurrent renewals are checked on an
 * in-process backend.
 */
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { request } from 'undici'
import { requireCommand, startRedis, startUpstream, type RedisServer } from './helper.js'
import { basic, cheapHash } from './auth-helper.js'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'
import { LeaseStore, READ_REUSE_MS, type LeaseBackend } from '../plugins/rate-limit/lease-store.js'
import type { CounterCallback, CounterResult } from '../plugins/rate-limit/memory-store.js'
import type { RouteRateLimit } from '../schemas/edge.js'

const hasRedis = requireCommand(t, 'redis-server', 'apt-get install redis-server')

interface Res { status: number, r: number | null, ms: number }

async function get (url: string, headers: Record<string, string> = {}): Promise<Res> {
  const started = performance.now()
  const res = await request(url, { headers, headersTimeout: 30_000, bodyTimeout: 30_000 })
  await res.body.text()
  const m = /;r=([0-9]+);/.exec(String(res.headers.ratelimit ?? ''))
  return { status: res.statusCode, r: m === null ? null : Number(m[1]), ms: performance.now() - started }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** Polls until `probe` is true; false after `withinMs`. */
async function until (withinMs: number, probe: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + withinMs
  while (Date.now() < deadline) {
    if (await probe()) return true
    await sleep(50)
  }
  return false
}

interface Gateway { url: string, app: Awaited<ReturnType<typeof buildGateway>>, limit: RouteRateLimit }

async function gateway (t: Test, redis: RedisServer, origin: string, options: { leaseMax?: number, onStoreError?: 'allow' | 'deny', maxKeys?: number, rateLimit: Record<string, unknown>, auth?: boolean }): Promise<Gateway> {
  const config = parseConfig({
    ...(options.auth === true ? { users: [{ username: 'alice', passwordHash: cheapHash('alice-pw'), scopes: [] }] } : {}),
    rateLimit: { store: 'redis', redis: redis.url, timeout: '1s', onStoreError: options.onStoreError ?? 'allow', leaseMax: options.leaseMax ?? 16, ...(options.maxKeys === undefined ? {} : { maxKeys: options.maxKeys }) },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${origin}/api/people`, rateLimit: options.rateLimit, ...(options.auth === true ? { auth: ['basic'] } : {}) }]
  })
  const app = await buildGateway(config, { logger: false })
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { url, app, limit: config.routes[0].rateLimit as RouteRateLimit }
}

async function client (t: Test, redis: RedisServer): Promise<Redis> {
  const c = new Redis(redis.url, { maxRetriesPerRequest: 0, lazyConnect: true })
  c.on('error', () => {})
  await c.connect()
  t.teardown(() => { c.disconnect() })
  return c
}

/** The scripts Redis ran (EVALSHA and EVAL). */
async function scriptCalls (c: Redis): Promise<number> {
  const info = await c.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=([0-9]+)/gm)) calls += Number(m[1])
  return calls
}

/** `total` GETs spread over the gateways by `workers` loops (each alternating), statuses in order of answer. */
async function spread (urls: string[], total: number, workers: number, headers: Record<string, string> = {}): Promise<Res[]> {
  const out: Res[] = []
  let sent = 0
  await Promise.all(Array.from({ length: workers }, async (_, w) => {
    for (let i = 0; sent < total; i++) {
      sent++
      out.push(await get(`${urls[(w + i) % urls.length]}/api/people/`, headers))
    }
  }))
  return out
}

t.test('two gateways, one key: never past max, at most (instances − 1) × (cap − 1) short of it, each position once', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const c = await client(t, redis)
  const max = 1000
  const leaseMax = 16
  const cap = Math.min(leaseMax, Math.floor(max / 100)) // 10
  const gws = [await gateway(t, redis, up.origin, { leaseMax, rateLimit: { max, window: '10m', by: 'ip' } }),
    await gateway(t, redis, up.origin, { leaseMax, rateLimit: { max, window: '10m', by: 'ip' } })]
  const before = await scriptCalls(c)
  const results = await spread(gws.map((g) => g.url), 1400, 20)
  const calls = await scriptCalls(c) - before
  const admitted = results.filter((r) => r.status === 200)
  t.ok(results.every((r) => r.status === 200 || r.status === 429), 'only 200 and 429')
  t.ok(admitted.length <= max, `admitted ${admitted.length} ≤ max ${max}`)
  t.ok(admitted.length >= max - (2 - 1) * (cap - 1), `admitted ${admitted.length} ≥ max − (2 − 1) × (cap − 1) = ${max - (cap - 1)}`)
  const positions = new Set(admitted.map((r) => r.r))
  t.equal(positions.size, admitted.length, 'every admitted request had its own position (RateLimit r)')
  t.ok(results.filter((r) => r.status === 429).every((r) => r.r === 0), '429s say r=0')
  const counted = Number(await c.get('portcullis:rl:{people|ip:127.0.0.1}'))
  t.ok(counted >= admitted.length, `the count in Redis (${counted}) ≥ the requests admitted`)
  t.ok(calls < 1400 / 4, `${calls} scripts for 1400 requests (one a request without leases)`)
  t.comment(`admitted ${admitted.length} of ${results.length}, Redis count ${counted}, ${calls} scripts`)
})

t.test('leaseMax: 1 asks Redis on every request: exact', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const c = await client(t, redis)
  const gws = [await gateway(t, redis, up.origin, { leaseMax: 1, rateLimit: { max: 1000, window: '10m', by: 'ip' } }),
    await gateway(t, redis, up.origin, { leaseMax: 1, rateLimit: { max: 1000, window: '10m', by: 'ip' } })]
  const before = await scriptCalls(c)
  const results = await spread(gws.map((g) => g.url), 1100, 20)
  t.equal(results.filter((r) => r.status === 200).length, 1000, 'exactly max admitted')
  t.equal(await scriptCalls(c) - before, 1100, 'one script a request')
})

t.test('windows reset: no count of an old window is used in the next, and a spent key passes again', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const c = await client(t, redis)
  const key = 'portcullis:rl:{people|ip:127.0.0.1}'
  const gws = [await gateway(t, redis, up.origin, { rateLimit: { max: 400, window: '1s', by: 'ip' } }),
    await gateway(t, redis, up.origin, { rateLimit: { max: 400, window: '1s', by: 'ip' } })]
  const urls = gws.map((g) => g.url)
  await spread(urls, 60, 6) // leases held on both, unused counts left over
  t.ok(await until(5000, async () => await c.exists(key) === 0), 'the window ended in Redis')
  const fresh = [await get(`${urls[0]}/api/people/`), await get(`${urls[1]}/api/people/`)]
  t.same(fresh.map((r) => r.status), [200, 200])
  t.same(fresh.map((r) => r.r).sort(), [398, 399], 'positions 1 and 2 of a new window, not old leases')
  t.equal(Number(await c.get(key)), 2, 'a new window starts with blocks of 1')

  // Spend a key (bounded), then it passes again once its window ends.
  const spenders = [await gateway(t, redis, up.origin, { rateLimit: { max: 100, window: '2s', by: 'header:x-key' } }),
    await gateway(t, redis, up.origin, { rateLimit: { max: 100, window: '2s', by: 'header:x-key' } })]
  const spend = { 'x-key': 'spend' }
  let refused = false
  for (let i = 0; i < 20 && !refused; i++) refused = (await spread(spenders.map((g) => g.url), 60, 10, spend)).some((r) => r.status === 429)
  t.ok(refused, 'the key was spent')
  t.ok(await until(8000, async () => (await get(`${spenders[0].url}/api/people/`, spend)).status === 200 && (await get(`${spenders[1].url}/api/people/`, spend)).status === 200),
    'both gateways admit again in the next window')
})

for (const mode of ['allow', 'deny'] as const) {
  t.test(`Redis killed mid-lease, onStoreError: ${mode}`, { skip: !hasRedis }, async (t) => {
    const redis = await startRedis(t)
    const up = await startUpstream(t)
    const leaseMax = 16
    const max = 1000
    const cap = Math.min(leaseMax, max / 100)
    const gw = await gateway(t, redis, up.origin, { leaseMax, onStoreError: mode, rateLimit: { max, window: '10m', by: 'ip' } })
    const warm: number[] = []
    for (let i = 0; i < 40; i++) warm.push((await get(`${gw.url}/api/people/`)).status)
    t.ok(warm.every((s) => s === 200), '40 admitted, leases grown')
    await redis.stop()
    const after: Res[] = []
    for (let i = 0; i < 2 * cap; i++) after.push(await get(`${gw.url}/api/people/`))
    t.ok(after.every((r) => r.ms < 3000), 'each answered within the store timeout + margin')
    const fromLease = after.findIndex((r) => r.r === null)
    t.ok(fromLease >= 0 && fromLease <= cap - 1, `${fromLease} answered from the lease (≤ cap − 1 = ${cap - 1}), counted before the kill`)
    t.ok(after.slice(0, fromLease).every((r) => r.status === 200), 'those pass, with their positions')
    const rest = after.slice(fromLease)
    t.ok(rest.every((r) => r.r === null && r.status === (mode === 'allow' ? 200 : 503)), `then every request gets onStoreError: ${mode}`)
    await redis.start()
    t.ok(await until(10_000, async () => (await get(`${gw.url}/api/people/`)).r !== null), 'counted again once Redis is back')
  })
}

t.test('peeks (by: consumer, before authentication): a reused answer ends within READ_REUSE_MS', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const options = { auth: true, rateLimit: { max: 4, window: '10m', by: 'consumer' } }
  const [a, b] = [await gateway(t, redis, up.origin, options), await gateway(t, redis, up.origin, options)]
  const right = { authorization: basic('alice', 'alice-pw') }
  t.equal((await get(`${b.url}/api/people/`, right)).status, 200, 'b has read the IP bucket (empty)')
  for (let i = 0; i < 4; i++) t.equal((await get(`${a.url}/api/people/`, { authorization: basic('alice', `guess-${i}`) })).status, 401)
  t.equal((await get(`${a.url}/api/people/`, right)).status, 429, 'a counted the failed logins: refused before credentials, exactly')
  const started = Date.now()
  let passed = 0
  const refused = await until(READ_REUSE_MS + 5000, async () => {
    const res = await get(`${b.url}/api/people/`, right)
    if (res.status === 200) passed++
    return res.status === 429
  })
  t.ok(refused, `b refuses too, ${Date.now() - started} ms later (${passed} passed meanwhile, on a read at most ${READ_REUSE_MS} ms old)`)
  t.ok(passed <= 3, 'alice has her own bucket: at most 3 more could pass')
})

t.test('hostile: a client spreading over many keys keeps the table at maxKeys and reserves 1 count a new key', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const c = await client(t, redis)
  const gw = await gateway(t, redis, up.origin, { leaseMax: 64, maxKeys: 100, rateLimit: { max: 100_000, window: '10m', by: 'header:x-key' } })
  const store = gw.app.rateLimitBackend.store('people', gw.limit) as LeaseStore
  t.ok(store instanceof LeaseStore, 'the route counts through leases')
  let sent = 0
  const statuses: number[] = []
  await Promise.all(Array.from({ length: 10 }, async () => {
    while (sent < 500) {
      const n = sent++
      statuses.push((await get(`${gw.url}/api/people/`, { 'x-key': `k-${n}` })).status)
    }
  }))
  t.ok(statuses.every((s) => s === 200), '500 keys, each admitted')
  t.ok(store.size <= 100, `lease table ${store.size} ≤ maxKeys 100`)
  const keys = await c.keys('portcullis:rl:*')
  t.equal(keys.length, 500, 'one Redis key per client key')
  const counts = await Promise.all(keys.map(async (k) => Number(await c.get(k))))
  t.equal(counts.reduce((a, b) => a + b, 0), 500, 'each reserved 1 count: nothing reserved beyond what was used')
  // A hot key still gets its blocks after the flood.
  const hot: number[] = []
  for (let i = 0; i < 50; i++) hot.push((await get(`${gw.url}/api/people/`, { 'x-key': 'hot' })).status)
  t.ok(hot.every((s) => s === 200), 'a hot key after the flood: admitted')
  t.equal((await c.keys('portcullis:rl:*')).length, 501)
  t.ok(store.size <= 100, 'still bounded')
})

// --- the lease logic on an in-process backend ---------------------------------------------------

/** Counts in a Map, answering on the next turn of the event loop; records each call's size. */
class Backend implements LeaseBackend {
  readonly counts = new Map<string, number>()
  readonly calls: number[] = []
  incrBy (key: string, by: number, cb: CounterCallback): void {
    this.calls.push(by)
    const current = (this.counts.get(key) ?? 0) + by
    this.counts.set(key, current)
    setImmediate(() => { cb(null, { current, ttl: 60_000 }) })
  }

  read (key: string, cb: CounterCallback): void {
    const current = this.counts.get(key) ?? 0
    setImmediate(() => { cb(null, { current, ttl: current === 0 ? 0 : 60_000 }) })
  }
}

async function incr (store: LeaseStore, key: string, max: number): Promise<CounterResult> {
  return await new Promise((resolve, reject) => {
    store.incr(key, (err, result) => { if (err !== null || result === undefined) reject(err); else resolve({ ...result }) }, 60_000, max)
  })
}

t.test('blocks double within a window up to min(leaseMax, max / 100), and shrink to what is left', async (t) => {
  const backend = new Backend()
  const store = new LeaseStore(backend, { leaseMax: 8, maxKeys: 100 })
  for (let i = 0; i < 40; i++) await incr(store, 'k', 10_000)
  t.same(backend.calls.slice(0, 6), [1, 2, 4, 8, 8, 8], 'doubling to the cap')
  const small = new Backend()
  const near = new LeaseStore(small, { leaseMax: 64, maxKeys: 100 })
  const seen: number[] = []
  for (let i = 0; i < 700; i++) seen.push((await incr(near, 'k', 600)).current)
  t.same(seen.slice(0, 600), Array.from({ length: 600 }, (_, i) => i + 1), 'positions 1…max in order')
  t.ok(seen.slice(600).every((c) => c > 600), 'then refused')
  t.ok(small.calls.every((k) => k <= 6), 'blocks ≤ max / 100')
  t.equal(small.counts.get('k'), 700, 'one instance: the blocks ended at max exactly; each refusal counted 1, as without leases')
})

t.test('concurrent requests wait for one renewal; more than the block gets the next', async (t) => {
  const backend = new Backend()
  const store = new LeaseStore(backend, { leaseMax: 8, maxKeys: 100 })
  const results = await Promise.all(Array.from({ length: 20 }, async () => await incr(store, 'k', 10_000)))
  t.same(results.map((r) => r.current).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1), 'twenty positions, each once')
  t.ok(backend.calls.length <= 4, `${backend.calls.length} renewals (${backend.calls.join(', ')}) for 20 concurrent requests`)
  t.equal(backend.counts.get('k'), backend.calls.reduce((a, b) => a + b, 0))
})

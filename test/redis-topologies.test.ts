/**
 * rateLimit.redis as Redis Sentinel and as Redis Cluster, against real processes from Debian's
 * packages (redis-server, redis-sentinel, redis-tools; test/redis-topologies-helper.ts):
 *
 *  - Sentinel: a primary, a replica, three Sentinels; three gateway processes under a steady,
 *    bounded load; the primary SIGKILLed → the gateways follow the failover, the requests of the
 *    gap follow onStoreError (allow, and deny), none waits past the store timeout (+ margin), and
 *    limiting is exact again after it. The requests over the limit the failover admitted are
 *    counted and printed (docs/rate-limiting.md, "Redis topologies", has the figures);
 *  - Cluster: three primaries; limits exact across three gateway processes, keys spread over the
 *    nodes and tagged to one slot per limit and client; a killed node's slots follow onStoreError
 *    while the others keep counting, /readyz answers 503 until the node is back;
 *  - hostile and wrong configs: a wrong Sentinel name, no Sentinel reachable at start, a wrong
 *    or missing password and an untrusted certificate (the start fails at once, naming the cause;
 *    a password that goes wrong while running is a store outage; a right one from the environment
 *    is logged nowhere), TLS to a plain server, a missing CA file, and the config checks.
 */
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { freePort, requireCommand, startRedis, startUpstream, transpileProject } from './helper.js'
import { cli, startCluster, startGatewayProcess, startSentinels, startTlsRedis, until, type GatewayProcess } from './redis-topologies-helper.js'
import { ConfigError, parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'

interface Res { status: number, headers: Record<string, string | string[] | undefined>, text: string, ms: number }

async function get (url: string, headers: Record<string, string> = {}): Promise<Res> {
  const started = performance.now()
  const res = await request(url, { headers, headersTimeout: 30_000, bodyTimeout: 30_000 })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, text, ms: performance.now() - started }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The store timeout. Not the default 250 ms: on the loaded 2-core CI machine a call now and then
 * took longer with the store healthy (3 of 90 once), and onStoreError: allow then let it pass
 * uncounted, which an exactness check cannot tell from a counting error.
 */
const TIMEOUT_MS = 1000
/** No answer may take longer than the store timeout plus this. */
const BOUND_MS = TIMEOUT_MS + 1750

/** The sources transpiled once for the gateway processes of this file (no build needed). */
const build = transpileProject(t)

const hasTools = ['redis-server', 'redis-sentinel', 'redis-cli'].map((c) => requireCommand(t, c, 'apt-get install redis-server redis-sentinel redis-tools')).every(Boolean)

/** The route every gateway here serves: counted per x-client header value. */
function route (origin: string, max: number, name = 'people'): Record<string, unknown> {
  return { name, prefix: `/api/${name}`, upstream: `${origin}/api/people`, rateLimit: { max, window: '10m', by: 'header:x-client' } }
}

/**
 * `total` requests for one client spread round-robin over the gateways, `concurrency` at a time;
 * the statuses, in order.
 */
async function burst (gateways: GatewayProcess[], client: string, total: number, concurrency = 9): Promise<number[]> {
  const statuses: number[] = []
  for (let sent = 0; sent < total; sent += concurrency) {
    const n = Math.min(concurrency, total - sent)
    const results = await Promise.all(Array.from({ length: n }, (_, i) => get(`${gateways[(sent + i) % gateways.length].url}/api/people/`, { 'x-client': client })))
    statuses.push(...results.map((r) => r.status))
  }
  return statuses
}

const count = (statuses: number[], status: number): number => statuses.filter((s) => s === status).length

/** The Redis key of a `by: header:x-client` counter (rate-limit.ts keyOf + redis-store.ts). */
function counterKey (client: string, routeName = 'people'): string {
  return `portcullis:rl:{${routeName}|h:${createHash('sha256').update(client).digest('base64url').slice(0, 24)}}`
}

// --- Sentinel --------------------------------------------------------------------------------

interface LoadResult { status: number, ms: number, limited: boolean }

/**
 * A steady, bounded load on the route `load`: `workers` loops, each one request at a time with a
 * 20 ms pause, spread over the gateways, all as one client, recorded in `results`, until `stop()`.
 */
function steadyLoad (gateways: GatewayProcess[], client: string, results: LoadResult[], workers = 6): { stop: () => Promise<void> } {
  const state = { running: true, next: 0 }
  const loops = Array.from({ length: workers }, async () => {
    while (state.running) {
      const gw = gateways[state.next++ % gateways.length]
      const res = await get(`${gw.url}/api/load/`, { 'x-client': client })
      results.push({ status: res.status, ms: res.ms, limited: res.headers.ratelimit !== undefined })
      await sleep(20)
    }
  })
  return {
    async stop () {
      state.running = false
      await Promise.all(loops)
    }
  }
}

const SENTINEL_MAX = 30 // per client on the route people, for the exactness checks
const LOAD_MAX = 400 // on the route load: not yet spent when the primary dies, spent after

for (const mode of ['allow', 'deny'] as const) {
  t.test(`Sentinel: the primary SIGKILLed under load across three gateway processes, onStoreError: ${mode}`, { skip: !hasTools, timeout: 200_000 }, async (t) => {
    const redis = await startSentinels(t)
    const up = await startUpstream(t)
    t.equal(redis.primaryPort(), redis.primary.port, 'the Sentinels report the primary')
    const raw = {
      // leaseMax 1: one increment a request, so that the passes can be checked against what the new
      // primary holds (a lease reserves ahead: test/rate-limit-lease.test.ts).
      rateLimit: { store: 'redis', redis: { sentinels: redis.endpoints, name: redis.name }, onStoreError: mode, timeout: `${TIMEOUT_MS}ms`, leaseMax: 1 },
      routes: [route(up.origin, SENTINEL_MAX), route(up.origin, LOAD_MAX, 'load')]
    }
    const gateways = await Promise.all([0, 1, 2].map(async () => await startGatewayProcess(t, build, raw)))
    for (const gw of gateways) t.equal((await get(`${gw.url}/readyz`)).status, 200, `${gw.url} ready through the Sentinels`)

    const before = await burst(gateways, 'before', 3 * SENTINEL_MAX)
    t.equal(count(before, 200), SENTINEL_MAX, `before: exactly ${SENTINEL_MAX} of ${before.length} pass across the three gateways`)

    const results: LoadResult[] = []
    const load = steadyLoad(gateways, 'load', results)
    await sleep(1000)
    const killedAt = Date.now()
    await redis.primary.kill()
    await until('the Sentinels promote the replica', 30_000, () => redis.primaryPort() === redis.replica.port)
    const promotedAt = Date.now()
    // Every gateway counts again (answers with RateLimit), on the new primary.
    await until('every gateway counts on the new primary', 30_000, async () => {
      for (const gw of gateways) if ((await get(`${gw.url}/api/people/`, { 'x-client': 'probe' })).headers.ratelimit === undefined) return false
      return true
    })
    const followedAt = Date.now()
    // Let the load spend the rest of its limit (these checks are part of it), then stop it.
    await until('the load\'s limit is spent on every gateway', 60_000, async () => {
      for (const gw of gateways) {
        const res = await get(`${gw.url}/api/load/`, { 'x-client': 'load' })
        results.push({ status: res.status, ms: res.ms, limited: res.headers.ratelimit !== undefined })
        if (res.status !== 429) return false
      }
      return true
    })
    await load.stop()
    t.comment(`failover: the Sentinels promoted the replica ${promotedAt - killedAt} ms after the kill; every gateway counted on it ${followedAt - killedAt} ms after`)

    const gap = results.filter((r) => !r.limited)
    const slowest = Math.max(...results.map((r) => r.ms))
    t.comment(`load: ${results.length} requests, slowest answer ${Math.round(slowest)} ms (store timeout ${TIMEOUT_MS} ms)`)
    t.ok(slowest < BOUND_MS, `no request waited past the store timeout + margin (slowest ${Math.round(slowest)} ms < ${BOUND_MS} ms)`)
    t.ok(gap.length > 0, `some requests met the gap (${gap.length})`)
    if (mode === 'allow') {
      t.ok(gap.every((r) => r.status === 200), 'allow: every request of the gap passed, uncounted')
    } else {
      t.ok(gap.every((r) => r.status === 503), 'deny: every request of the gap got 503')
    }
    t.ok(results.every((r) => r.limited ? r.status === 200 || r.status === 429 : r.status === (mode === 'allow' ? 200 : 503)), 'nothing else: 200 or 429 when counted, the policy when not')

    // What the failover cost: passes over the limit. Two causes: a gap request that passed
    // uncounted (allow), and a counted increment the new primary never got (taken by the old
    // primary, not yet sent to the replica); a command that ran but whose reply the kill cut off
    // went the other way (counted, answered as the gap).
    const passed = count(results.map((r) => r.status), 200)
    const counted = results.filter((r) => r.limited).length
    const held = Number(cli(redis.replica.port, 'GET', counterKey('load', 'load')))
    const gapPassed = gap.filter((r) => r.status === 200).length
    t.comment(`over-admission (${mode}): ${passed - LOAD_MAX} over max ${LOAD_MAX} (${passed} passed of ${results.length}); ${gapPassed} passed uncounted in the gap; the new primary holds ${held} of ${counted} counted (${counted - held} lost)`)
    t.equal(passed - gapPassed, Math.min(counted, LOAD_MAX + counted - held), 'the counted passes are the limit plus the increments the new primary lost')

    const after = await burst(gateways, 'after', 3 * SENTINEL_MAX)
    t.equal(count(after, 200), SENTINEL_MAX, `after the failover: exactly ${SENTINEL_MAX} of ${after.length} pass in a fresh window`)
    for (const gw of gateways) t.equal((await get(`${gw.url}/readyz`)).status, 200, `${gw.url} ready again`)
    t.ok(gateways.some((gw) => gw.logs.some((l) => l.level === 40 && /rate-limit store unreachable/.test(String(l.msg)))), 'the outage was logged')
    t.ok(gateways.every((gw) => !gw.logs.some((l) => Number(l.level) >= 50)), 'no error logged')
  })
}

// --- Cluster ---------------------------------------------------------------------------------

t.test('Cluster: three primaries, three gateway processes, a node SIGKILLed and back', { skip: !hasTools, timeout: 200_000 }, async (t) => {
  const cluster = await startCluster(t)
  const up = await startUpstream(t)
  const MAX = 10
  const config = (onStoreError: string): Record<string, unknown> => ({
    // One node named is enough: the others come from CLUSTER SLOTS.
    rateLimit: { store: 'redis', redis: { cluster: [cluster.endpoints[0]] }, onStoreError, timeout: `${TIMEOUT_MS}ms` },
    routes: [route(up.origin, MAX)]
  })
  // Two gateways deny, one allows: the counters are shared whatever each does on a failure.
  const [deny1, deny2, allow] = await Promise.all([config('deny'), config('deny'), config('allow')].map(async (raw) => await startGatewayProcess(t, build, raw)))
  const gateways = [deny1, deny2, allow]
  for (const gw of gateways) t.equal((await get(`${gw.url}/readyz`)).status, 200, 'ready')

  // Clients until each node owns at least two of them.
  const clients: string[] = []
  const owners = new Map<number, string[]>()
  for (let i = 0; clients.length < 60 && [...owners.values()].filter((l) => l.length >= 2).length < 3; i++) {
    const client = `client-${i}`
    const owner = cluster.ownerOf(counterKey(client))
    t.equal(Number(cli(cluster.nodes[0].port, 'CLUSTER', 'KEYSLOT', counterKey(client))), Number(cli(cluster.nodes[0].port, 'CLUSTER', 'KEYSLOT', counterKey(client).slice(counterKey(client).indexOf('{') + 1, -1))), `${client}: the slot is the tag's`)
    clients.push(client)
    owners.set(owner, [...(owners.get(owner) ?? []), client])
  }
  t.equal(owners.size, 3, `${clients.length} clients spread over the three nodes`)
  const chosen = [...owners.values()].flatMap((l) => l.slice(0, 2))
  for (const client of chosen) {
    const statuses = await burst(gateways, client, 3 * MAX)
    t.equal(count(statuses, 200), MAX, `${client}: exactly ${MAX} of ${statuses.length} pass across the three gateways`)
  }
  for (const node of cluster.nodes) {
    const keys = cli(node.port, '--scan', '--pattern', 'portcullis:rl:*').split('\n').filter((k) => k !== '')
    t.equal(keys.length, 2, `node ${node.port} holds the 2 counters of its clients (${Number(cli(node.port, 'DBSIZE'))} keys)`)
    for (const key of keys) t.equal(cluster.ownerOf(key), node.port, `${key} is on the node owning its slot`)
  }

  // Kill the node that owns the first two clients; the others' slots keep counting.
  const [deadPort, deadClients] = [...owners.entries()][0]
  const dead = cluster.nodes.find((n) => n.port === deadPort)
  if (dead === undefined) throw new Error('no such node')
  await dead.kill()

  const results: Res[] = []
  for (const gw of gateways) {
    const res = await get(`${gw.url}/api/people/`, { 'x-client': `${deadClients[0]}` })
    results.push(res)
    t.equal(res.status, gw === allow ? 200 : 503, `a client on the dead node: ${gw === allow ? 'allowed' : 'denied'} by onStoreError`)
    t.equal(res.headers.ratelimit, undefined, 'not counted')
  }
  // A fresh client on a live node: exactly MAX again (a fresh window).
  const livePort = cluster.nodes.find((n) => n !== dead)?.port
  let fresh = 'fresh-0'
  for (let i = 1; cluster.ownerOf(counterKey(fresh), livePort) === deadPort; i++) fresh = `fresh-${i}`
  const freshStatuses = await burst(gateways, fresh, 3 * MAX)
  t.equal(count(freshStatuses, 200), MAX, `with a node down, a client on a live node: exactly ${MAX} of ${freshStatuses.length} pass`)
  const storm = await Promise.all(Array.from({ length: 30 }, (_, i) => get(`${gateways[i % 3].url}/api/people/`, { 'x-client': deadClients[i % 2] })))
  const slowest = Math.max(...[...results, ...storm].map((r) => r.ms))
  t.comment(`cluster, a node down: slowest answer for its clients ${Math.round(slowest)} ms (store timeout ${TIMEOUT_MS} ms)`)
  t.ok(slowest < BOUND_MS, `no request waited past the store timeout + margin (${Math.round(slowest)} ms)`)
  t.ok(storm.every((r, i) => r.status === (i % 3 === 2 ? 200 : 503)), '30 requests for the dead node\'s clients: the policy, every one')
  for (const gw of gateways) {
    const ready = await get(`${gw.url}/readyz`)
    t.equal(ready.status, 503, `/readyz 503 with a primary down (${gw === allow ? 'allow' : 'deny'})`)
    t.ok(ready.ms < BOUND_MS, '/readyz answers in time')
  }

  await dead.restart() // same port, same nodes.conf: it takes its slots back (empty)
  await until('the node is back in the cluster', 30_000, () => cli(deadPort, 'CLUSTER', 'INFO').includes('cluster_state:ok'))
  for (const gw of gateways) {
    await until(`${gw.url} ready again`, 30_000, async () => (await get(`${gw.url}/readyz`)).status === 200)
  }
  t.pass('every gateway ready again')
  const back = await burst(gateways, deadClients[1], 3 * MAX)
  t.equal(count(back, 200), MAX, `a client of the restarted node: exactly ${MAX} of ${back.length} pass (its counters were lost with the node)`)
})

// --- hostile and wrong configs -----------------------------------------------------------------

/** An in-process gateway whose log lines are captured; `env` for ${VAR} substitution. */
async function captured (t: Test, rateLimit: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Promise<{ url: string, logs: string[], startMs: number }> {
  const up = await startUpstream(t)
  const logs: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) { logs.push(...chunk.toString().split('\n').filter((l) => l !== '')); cb() }
  })
  const config = parseConfig({ rateLimit: { store: 'redis', timeout: `${TIMEOUT_MS}ms`, ...rateLimit }, routes: [route(up.origin, 5)] }, { env })
  const started = performance.now()
  const app = await buildGateway(config, { logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { url, logs, startMs: performance.now() - started }
}

/**
 * The same gateway, for a start that must fail: with a store timeout of 2 s, so that the start's
 * wait for a Redis that is only down (4 × timeout) would be 8 s (within Fastify's 10 s for
 * onReady). The error, the log lines, and how long the start (listen) took.
 */
async function refused (t: Test, rateLimit: Record<string, unknown>): Promise<{ err: Error, logs: string[], ms: number }> {
  const up = await startUpstream(t)
  const logs: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) { logs.push(...chunk.toString().split('\n').filter((l) => l !== '')); cb() }
  })
  const config = parseConfig({ rateLimit: { store: 'redis', timeout: '2s', ...rateLimit }, routes: [route(up.origin, 5)] }, { env: {} })
  const app = await buildGateway(config, { logger: { level: 'info', stream } })
  t.teardown(() => app.close().catch(() => {}))
  const started = performance.now()
  const err = await app.listen({ host: '127.0.0.1', port: 0 }).then(() => new Error('the gateway started'), (e: unknown) => e as Error)
  t.comment(`the start failed: ${err.message}`)
  return { err, logs, ms: performance.now() - started }
}

/** Half the 8 s the start would wait for a Redis that is only down; a refused start takes milliseconds. */
const FAST_MS = 4_000

t.test('Sentinel: wrong name, no Sentinel reachable, passwords', { skip: !hasTools, timeout: 120_000 }, async (t) => {
  const PASSWORD = 'pw-' + createHash('sha256').update(String(Math.random())).digest('hex').slice(0, 20)
  const redis = await startSentinels(t, { count: 1, password: PASSWORD })

  t.test('a name no Sentinel knows: a bounded start, 503 on /readyz, onStoreError, a message that says so', async (t) => {
    // A store timeout of 250 ms: the start waits 1 s for a Sentinel that may yet learn the name.
    const { url, logs, startMs } = await captured(t, { redis: { sentinels: redis.endpoints, name: 'nope', password: PASSWORD }, onStoreError: 'deny', timeout: '250ms' })
    t.ok(startMs < 10_000, `started in ${Math.round(startMs)} ms`)
    const res = await get(`${url}/api/people/`, { 'x-client': 'a' })
    t.equal(res.status, 503, 'deny')
    t.ok(res.ms < BOUND_MS, 'at once')
    t.equal((await get(`${url}/readyz`)).status, 503)
    t.ok(logs.some((l) => l.includes('no Sentinel knows a primary named \\"nope\\"')), 'the warning names the wrong name')
  })

  t.test('no Sentinel reachable at start: the same', async (t) => {
    const closed = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`]
    const { url, logs, startMs } = await captured(t, { redis: { sentinels: closed, name: redis.name }, onStoreError: 'allow', timeout: '250ms' })
    t.ok(startMs < 10_000, `started in ${Math.round(startMs)} ms`)
    const res = await get(`${url}/api/people/`, { 'x-client': 'a' })
    t.equal(res.status, 200, 'allow')
    t.equal(res.headers.ratelimit, undefined, 'uncounted')
    const ready = await get(`${url}/readyz`)
    t.equal(ready.status, 503)
    t.match(ready.text, /unreachable \(onStoreError: allow\)/)
    t.ok(logs.some((l) => /All sentinels are unreachable/.test(l)), 'the warning says the Sentinels are unreachable')
  })

  t.test('a wrong password: the start fails at once with WRONGPASS, the password nowhere', async (t) => {
    const wrong = 'wrong-' + PASSWORD
    const { err, logs, ms } = await refused(t, { redis: { sentinels: redis.endpoints, name: redis.name, password: wrong }, onStoreError: 'deny' })
    t.match(err.message, /^rateLimit\.redis: .*WRONGPASS/, 'the start fails, naming the cause')
    t.ok(ms < FAST_MS, `without waiting for Redis (${Math.round(ms)} ms; for a Redis that is only down it would wait 8 s)`)
    t.ok(logs.some((l) => /rate-limit store unreachable/.test(l) && /WRONGPASS/.test(l)), 'WRONGPASS logged')
    t.notOk([err.message, ...logs].some((l) => l.includes(wrong) || l.includes(PASSWORD)), 'no password in the error or any log line')
  })

  t.test('the password from the environment: counted, and logged nowhere', async (t) => {
    const { url, logs } = await captured(t, { redis: { sentinels: redis.endpoints, name: redis.name, password: '${REDIS_PASSWORD}' } }, { REDIS_PASSWORD: PASSWORD })
    const res = await get(`${url}/api/people/`, { 'x-client': 'env' })
    t.equal(res.status, 200)
    t.match(res.headers.ratelimit, /^"people";r=4;t=[0-9]+$/, 'counted in Redis')
    t.equal((await get(`${url}/readyz`)).status, 200)
    t.notOk(logs.some((l) => l.includes(PASSWORD)), 'no password in any log line')
  })
})

t.test('TLS misconfigured: a missing CA file is refused at build, TLS to a plain server is a store outage', { skip: !hasTools }, async (t) => {
  const up = await startUpstream(t)
  const config = parseConfig({
    rateLimit: { store: 'redis', redis: { sentinels: ['127.0.0.1:1'], name: 'mymaster', tls: { ca: '/nonexistent/ca.pem' } } },
    routes: [route(up.origin, 5)]
  })
  await t.rejects(buildGateway(config, { logger: false }), /rateLimit\.redis\.tls\.ca: cannot read \/nonexistent\/ca\.pem: ENOENT/)

  const plain = await startRedis(t)
  const { url, logs } = await captured(t, { redis: `rediss://127.0.0.1:${plain.port}`, onStoreError: 'deny', timeout: '250ms' })
  const res = await get(`${url}/api/people/`, { 'x-client': 'a' })
  t.equal(res.status, 503, 'deny')
  t.ok(res.ms < BOUND_MS, `answered in ${Math.round(res.ms)} ms`)
  t.equal((await get(`${url}/readyz`)).status, 503)
  t.ok(logs.some((l) => /rate-limit store unreachable/.test(l)), 'the outage is logged')
})

t.test('TLS with a private CA: counted with tls.ca; without it or with another name the start fails at once, naming the certificate', { skip: !hasTools || !requireCommand(t, 'openssl', 'apt-get install openssl') }, async (t) => {
  const redis = await startTlsRedis(t)
  const url = `rediss://127.0.0.1:${redis.port}`

  const trusted = await captured(t, { redis: { url, tls: { ca: redis.ca } }, onStoreError: 'deny' })
  const res = await get(`${trusted.url}/api/people/`, { 'x-client': 'tls' })
  t.equal(res.status, 200)
  t.match(res.headers.ratelimit, /^"people";r=4;t=[0-9]+$/, 'counted over TLS')
  t.equal((await get(`${trusted.url}/readyz`)).status, 200)

  for (const [what, redisConfig, message] of [
    ['without the CA (the system CAs do not know it)', url, /certificate/],
    ['with a servername the certificate does not carry', { url, tls: { ca: redis.ca, servername: 'redis.example.com' } }, /does not match|altnames/]
  ] as const) {
    const { err, logs, ms } = await refused(t, { redis: redisConfig, onStoreError: 'deny' })
    t.match(err.message, /^rateLimit\.redis: /, `${what}: the start fails`)
    t.match(err.message, message, `${what}: the error says why`)
    t.ok(ms < FAST_MS, `${what}: without waiting for Redis (${Math.round(ms)} ms)`)
    t.ok(logs.some((l) => /rate-limit store unreachable/.test(l) && message.test(l)), `${what}: the warning says why`)
  }
})

t.test('one server with a password: none given fails the start at once (NOAUTH); a password that goes wrong while running is a store outage', { skip: !hasTools }, async (t) => {
  const redis = await startRedis(t)
  const password = 'pw-' + createHash('sha256').update(String(Math.random())).digest('hex').slice(0, 20)
  cli(redis.port, 'CONFIG', 'SET', 'requirepass', password)

  const { err, ms } = await refused(t, { redis: redis.url, onStoreError: 'deny' })
  t.match(err.message, /^rateLimit\.redis: .*NOAUTH/, 'no password: the start fails, naming the cause')
  t.ok(ms < FAST_MS, `without waiting for Redis (${Math.round(ms)} ms)`)

  const { url, logs } = await captured(t, { redis: { url: redis.url, password }, onStoreError: 'deny' })
  t.equal((await get(`${url}/api/people/`, { 'x-client': 'a' })).status, 200, 'the right password: counted')
  // The password changes under the running gateway, and its connection is dropped.
  const rotated = password + '-rotated'
  spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '-a', password, '--no-auth-warning', 'CONFIG', 'SET', 'requirepass', rotated], { encoding: 'utf8', timeout: 10_000 })
  spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '-a', rotated, '--no-auth-warning', 'CLIENT', 'KILL', 'TYPE', 'normal'], { encoding: 'utf8', timeout: 10_000 })
  await until('readiness says the store is down', 10_000, async () => (await get(`${url}/readyz`)).status === 503)
  t.pass('/readyz 503')
  const res = await get(`${url}/api/people/`, { 'x-client': 'a' })
  t.equal(res.status, 503, 'deny')
  t.notOk(res.text.includes(password), 'not in the answer')
  t.ok(logs.some((l) => /rate-limit store unreachable/.test(l)), 'the outage is logged')
  t.notOk(logs.some((l) => l.includes(password)), 'no password in any log line')
})

t.test('config checks of rateLimit.redis as an object', async (t) => {
  const problems = (redis: unknown): string[] => {
    try {
      parseConfig({ rateLimit: { store: 'redis', redis }, routes: [route('http://127.0.0.1:1', 5)] }, { env: {} })
      return []
    } catch (err) {
      if (err instanceof ConfigError) return err.problems
      throw err
    }
  }
  t.same(problems({ sentinels: ['127.0.0.1:26379'], name: 'mymaster', password: 'x' }), [], 'Sentinel')
  t.same(problems({ cluster: ['10.0.0.1:6379', 'redis-0.redis:6379', '[::1]:7000'] }), [], 'Cluster')
  t.same(problems({ url: 'rediss://redis:6380', tls: { ca: 'ca.pem', servername: 'redis.internal' } }), [], 'one server with a CA')
  t.same(problems({ sentinels: ['127.0.0.1:26379'] }), ['rateLimit.redis.name: required with sentinels (the NAME in the Sentinels\' "sentinel monitor NAME host port quorum")'])
  t.same(problems({ sentinels: ['a:1'], name: 'm', cluster: ['b:2'] }), ['rateLimit.redis: give one of sentinels, cluster, not both'])
  t.same(problems({ password: 'x' }), ['rateLimit.redis: an object needs url (one server), sentinels: [host:port, …] with name (Redis Sentinel) or cluster: [host:port, …] (Redis Cluster)'])
  t.same(problems({ cluster: ['a:1'], name: 'm', sentinelPassword: 'p', db: 2 }), [
    'rateLimit.redis.db: a Redis Cluster has only database 0',
    'rateLimit.redis.name: only with sentinels',
    'rateLimit.redis.sentinelPassword: only with sentinels'
  ])
  t.same(problems({ cluster: ['a:0', 'b:70000'] }), ['rateLimit.redis.cluster[0]: the port must be 1 to 65535', 'rateLimit.redis.cluster[1]: the port must be 1 to 65535'])
  t.same(problems({ url: 'http://x' }), ['rateLimit.redis.url: must be a redis:// or rediss:// URL'])
  t.same(problems({ cluster: ['a:1'], tls: { ca: 'ca.pem', insecureSkipVerify: true } }), ['rateLimit.redis.tls: ca is pointless with insecureSkipVerify: true (nothing is verified)'])
  const hostile = problems({ cluster: ['no-port', 'a:1\r\nFLUSHALL'], password: 'hunter2-secret', bogus: 1 })
  t.ok(hostile.length >= 3, hostile.join(' | '))
  t.notOk(hostile.some((p) => p.includes('hunter2-secret')), 'no password in the problems')
  t.same(problems(42), ['rateLimit.redis: must be a redis:// or rediss:// URL'], 'a number is taken for a string (as from the environment)')
  t.same(problems({ sentinels: ['a:1'], name: 'm', password: '${REDIS_PASSWORD}' }), ['rateLimit.redis.password: environment variable REDIS_PASSWORD is not set (write ${REDIS_PASSWORD:-default} to give a default)'])
})

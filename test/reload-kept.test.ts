/**
 * What a live reload keeps besides pools and counters (issue 17 review): the health-check limiter
 * (one per process) and the log of a kept upstream set (it follows the generation serving), and
 * the Redis rate-limit client (kept while its connection settings stay the same). Real servers on
 * 127.0.0.1 (redis-server as test/rate-limit-redis.test.ts starts it); bounded polls, no timings.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { parseConfig } from '../src/config.js'
import { startServer } from '../src/server.js'
import { SharedObjects } from '../plugins/core/shared.js'
import { CheckLimiter } from '../plugins/upstream/health-check.js'
import { requireCommand, startRedis, type RawConfig } from './helper.js'
import { waitFor } from './fault-helpers.js'

/** An upstream whose /health answers 200 or 500 as `healthy` says, and every other path 200. */
async function checkedUpstream (t: Test): Promise<{ url: string, healthy: { value: boolean }, checks: () => number }> {
  const healthy = { value: true }
  let checks = 0
  const server = createServer((req, res) => {
    req.resume()
    if (req.url === '/health') {
      checks++
      res.statusCode = healthy.value ? 200 : 500
    }
    res.end('{}')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, healthy, checks: () => checks }
}

t.test('a kept upstream set logs through the generation serving, and every generation shares one check limiter', async (t) => {
  const up = await checkedUpstream(t)
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-kept-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const logFile = join(dir, 'gateway.log')
  const route = { name: 'checked', prefix: '/checked', upstream: `${up.url}/c`, healthCheck: { path: '/health', interval: '500ms', timeout: '400ms', unhealthyThreshold: 2, healthyThreshold: 1 } }
  // Generation 1 logs errors only; generation 2 (a reload of `logging` alone) logs info too.
  const config = (level: string): ReturnType<typeof parseConfig> => parseConfig({
    server: { host: '127.0.0.1', port: 0, shutdownGrace: '1s' },
    logging: { level, accessLog: false },
    routes: [route]
  } satisfies RawConfig, { env: {} })
  const shared = new SharedObjects()
  const gw = await startServer(config('error'), { handleSignals: false, shared, logDestination: logFile })
  t.teardown(() => gw.close())
  const set = gw.app.upstreams.get('checked')
  const limiter = shared.get('upstream health-check limiter')
  t.ok(limiter instanceof CheckLimiter, 'the limiter is kept with the shared objects')
  t.ok(await waitFor(() => up.checks() >= 1, 10_000), 'checks run')

  t.same(await gw.reload(config('info')), { ok: true, generation: 2 })
  t.equal(gw.app.upstreams.get('checked'), set, 'the route kept its set')
  t.equal(shared.get('upstream health-check limiter'), limiter, 'the new generation uses the same limiter: one bound for the process')
  const lines = (): Array<{ msg: string, level: number, upstream?: string }> => existsSync(logFile)
    ? readFileSync(logFile, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { msg: string, level: number })
    : []
  t.ok(await waitFor(() => lines().some((l) => l.msg === 'old generation closed'), 20_000), 'generation 1 closed')

  // A check that timed out on the loaded machine may have taken the target out already: it comes
  // back first (a line of generation 2's too), so the failure below is a change of state.
  t.ok(await waitFor(() => set?.hasAvailable() === true, 20_000), 'the target is in rotation')
  const before = up.checks()
  const from = lines().length
  const after = (prefix: string, start: number): number => lines().findIndex((l, i) => i >= start && l.msg.startsWith(prefix))
  up.healthy.value = false
  t.ok(await waitFor(() => after('upstream target failed its health checks', from) !== -1, 20_000),
    'the target going out is logged at generation 2\'s level (info), not generation 1\'s (error)')
  up.healthy.value = true
  t.ok(await waitFor(() => after('upstream target healthy again', after('upstream target failed its health checks', from)) !== -1, 20_000), 'and coming back')
  t.ok(up.checks() > before, `the checks went on after the reload (${up.checks() - before} more)`)
  t.ok(await waitFor(() => set?.hasAvailable() === true, 20_000), 'the target is in rotation again')

  // A reload that changes the healthCheck: a new set, the same limiter.
  await gw.reload(parseConfig({ ...(config('info') as unknown as RawConfig), routes: [{ ...route, healthCheck: { ...route.healthCheck, interval: '600ms' } }] }, { env: {} }))
  t.not(gw.app.upstreams.get('checked'), set, 'a changed healthCheck: a new set')
  t.equal(shared.get('upstream health-check limiter'), limiter, 'still the one limiter')
})

const hasRedis = requireCommand(t, 'redis-server', 'apt-get install redis-server')

/** The ids of the clients connected to `redis`, but for `self`'s own connection. */
async function clientIds (self: Redis): Promise<string[]> {
  const own = String(await self.client('ID'))
  const list = String(await self.client('LIST'))
  return list.split('\n').map((l) => /(?:^| )id=(\d+)/.exec(l)?.[1]).filter((id): id is string => id !== undefined && id !== own).sort()
}

t.test('the Redis client is kept across a reload that keeps rateLimit.redis, and replaced when the URL changes', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const up = await checkedUpstream(t)
  const admin = new Redis(redis.url, { lazyConnect: false })
  t.teardown(() => { admin.disconnect() })
  const config = (url: string, max: number): ReturnType<typeof parseConfig> => parseConfig({
    server: { host: '127.0.0.1', port: 0, shutdownGrace: '1s' },
    rateLimit: { store: 'redis', redis: url, timeout: '2s' },
    routes: [{ name: 'limited', prefix: '/limited', upstream: `${up.url}/l`, rateLimit: { max, window: '1m' } }]
  }, { env: {} })
  const lines: Array<{ msg: string, generation?: number }> = []
  const stream = { write: (line: string) => { lines.push(JSON.parse(line) as { msg: string }) } }
  const gw = await startServer(config(redis.url, 5), { handleSignals: false, logger: { level: 'info', stream } })
  t.teardown(() => gw.close())
  const retired = (generation: number): Promise<boolean> => waitFor(() => lines.some((l) => l.msg === 'old generation closed' && l.generation === generation), 20_000)
  /** Polls the client ids until `done` holds (bounded); returns the last ids seen. */
  const idsWhen = async (done: (ids: string[]) => boolean): Promise<string[]> => {
    let ids: string[] = []
    for (let i = 0; i < 100; i++) {
      ids = await clientIds(admin)
      if (done(ids)) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    return ids
  }
  const status = async (): Promise<number> => { const res = await fetch(`${gw.url}/limited/x`); await res.text(); return res.status }
  t.equal(await status(), 200)
  const first = await clientIds(admin)
  t.equal(first.length, 1, 'one gateway client')

  t.same(await gw.reload(config(redis.url, 6)), { ok: true, generation: 2 }, 'a reload of the route\'s limit, the same Redis settings')
  t.equal(await status(), 200)
  t.ok(await retired(1), 'generation 1 closed')
  t.same(await clientIds(admin), first, 'the same client (the same id) across the reload: no new connection')
  t.equal(await status(), 200, 'counting in Redis through the kept client')

  const other = redis.url.replace('127.0.0.1', 'localhost')
  t.same(await gw.reload(config(other, 6)), { ok: true, generation: 3 }, 'a reload to another URL (the same server, named otherwise)')
  t.equal(await status(), 200)
  t.ok(await retired(2), 'generation 2 closed')
  const now = await idsWhen((ids) => ids.length === 1 && ids[0] !== first[0])
  t.ok(now.length === 1 && now[0] !== first[0], `a new client, and the old one quit with generation 2 (${now.join(',')} after ${first.join(',')})`)
})

t.test('a Redis that comes up a moment after a refused connection is still in time for the start', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  await redis.stop() // its port is known, nothing listens there yet
  const up = await checkedUpstream(t)
  const lines: Array<{ msg: string, level: number }> = []
  const stream = { write: (line: string) => { lines.push(JSON.parse(line) as { msg: string, level: number }) } }
  const config = parseConfig({
    server: { host: '127.0.0.1', port: 0 },
    rateLimit: { store: 'redis', redis: redis.url, timeout: '3s' },
    routes: [{ name: 'limited', prefix: '/limited', upstream: `${up.url}/l`, rateLimit: { max: 5, window: '1m' } }]
  }, { env: {} })
  let reachableAtStart = false
  const starting = startServer(config, { handleSignals: false, logger: { level: 'info', stream } }).then((gw) => {
    t.teardown(() => gw.close())
    reachableAtStart = lines.some((l) => l.msg.startsWith('rate-limit store reachable again'))
    return gw
  })
  t.ok(await waitFor(() => lines.some((l) => l.msg.startsWith('rate-limit store unreachable')), 8_000), 'the first connection was refused (an error event)')
  await redis.start()
  const gw = await starting
  t.ok(reachableAtStart, 'the start waited for Redis past the error: connected when the gateway is ready')
  t.notOk(lines.some((l) => /no connection at start/.test(JSON.stringify(l))), 'not given up at the first error')
  const res = await fetch(`${gw.url}/limited/x`)
  await res.text()
  t.equal(res.status, 200)
  t.match(res.headers.get('ratelimit'), /r=4/, 'counted in Redis')
})

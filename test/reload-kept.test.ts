/**
 * What a live reload keeps besides pools and counters (issue 17 review): the health-check limiter
 * (one per process) and the log of a kept upstream set (it follows the generation serving). Real
 * servers on 127.0.0.1; bounded polls, no timings.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../src/config.js'
import { startServer } from '../src/server.js'
import { SharedObjects } from '../plugins/core/shared.js'
import { CheckLimiter } from '../plugins/upstream/health-check.js'
import type { RawConfig } from './helper.js'
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

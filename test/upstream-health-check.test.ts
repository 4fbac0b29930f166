/**
 * Active health checks on their own (plugins/upstream/health-check.ts), against real HTTP servers
 * on 127.0.0.1: a healthy one, one switched to 500, one that accepts and never answers, a closed
 * port, a 10 MB body, slow targets behind a limiter of one, an https target with a self-signed
 * certificate, and stop(). Waits are bounded polls; nothing asserts how long something took. The
 * limiter's queue and skip rules on a test clock.
 */
import t, { type Test } from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { ActiveHealthChecker, CheckLimiter, MAX_CHECK_BODY, jitterDelay, reasonOf, type HealthCheckOptions, type HealthCheckTls } from '../plugins/upstream/health-check.js'

interface Origin {
  url: string
  /** Requests received, in order. */
  requests: Array<{ method: string, url: string, userAgent: string | undefined }>
  opened: number
  open: number
}

/** A real server on port 0 (https with `tls`), closed (connections too) at the end of the test. */
async function origin (t: Test, handler: (req: IncomingMessage, res: ServerResponse) => void, tls?: { key: Buffer, cert: Buffer }): Promise<Origin> {
  const o: Origin = { url: '', requests: [], opened: 0, open: 0 }
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    o.requests.push({ method: req.method ?? '', url: req.url ?? '', userAgent: req.headers['user-agent'] })
    handler(req, res)
  }
  const server = tls === undefined ? createServer(onRequest) : createHttpsServer(tls, onRequest)
  server.on(tls === undefined ? 'connection' : 'secureConnection', (socket) => {
    o.opened++
    o.open++
    socket.on('close', () => { o.open-- })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  o.url = `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return o
}

/** A port nothing listens on (one that was listening a moment ago). */
async function closedPort (): Promise<string> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  await new Promise((resolve) => server.close(resolve))
  return `http://127.0.0.1:${port}`
}

/** Polls `done` every 10 ms for at most `ms`; whether it came true. */
async function waitFor (done: () => boolean, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(10)) if (done()) return true
  return done()
}

const base: HealthCheckOptions = { path: '/healthz', intervalMs: 80, timeoutMs: 70, healthyThreshold: 2, unhealthyThreshold: 3, expectStatus: [200] }

interface Change { i: number, healthy: boolean, reason: string }

function checker (t: Test, origins: string[], options: Partial<HealthCheckOptions> = {}, limiter = new CheckLimiter(16), onChange?: (c: Change) => void, tls?: HealthCheckTls): { hc: ActiveHealthChecker, changes: Change[] } {
  const changes: Change[] = []
  const hc = new ActiveHealthChecker(origins, { ...base, ...options }, limiter, (i, healthy, reason) => {
    const c = { i, healthy, reason }
    changes.push(c)
    onChange?.(c)
  }, tls)
  t.teardown(async () => { await hc.stop() })
  return { hc, changes }
}

t.test('a healthy target stays healthy and is asked GET on the path with the checker\'s user-agent', async (t) => {
  const up = await origin(t, (req, res) => res.end('ok'))
  // A timeout no loaded machine reaches (the first check also compiles undici's HTTP parser), so
  // that no check is aborted and the connection count below means keep-alive.
  const { hc, changes } = checker(t, [up.url], { timeoutMs: 5000 })
  t.equal(hc.isHealthy(0), true, 'healthy before the first check')
  hc.start()
  t.ok(await waitFor(() => up.requests.length >= 4), 'four checks arrive')
  t.same(up.requests[0], { method: 'GET', url: '/healthz', userAgent: 'portcullis-health-check' })
  t.ok(up.requests.every((r) => r.method === 'GET' && r.url === '/healthz'), 'every check the same')
  t.equal(hc.isHealthy(0), true)
  t.same(changes, [], 'no change reported')
  t.equal(up.opened, 1, `one kept-alive connection served all ${up.requests.length} checks`)
})

t.test('a target answering 500: out after exactly unhealthyThreshold failures, back after exactly healthyThreshold passes', async (t) => {
  let status = 200
  let failed = 0
  let passed = 0
  const up = await origin(t, (req, res) => {
    if (status === 500) failed++
    else passed++
    res.statusCode = status
    res.end()
  })
  const seen: Array<Change & { failed: number, passed: number }> = []
  const { hc } = checker(t, [up.url], { unhealthyThreshold: 3, healthyThreshold: 2 }, undefined, (c) => seen.push({ ...c, failed, passed }))
  hc.start()
  t.ok(await waitFor(() => up.requests.length >= 2), 'checks pass first')
  status = 500
  passed = 0
  t.ok(await waitFor(() => seen.length === 1), 'reported unhealthy')
  t.same(seen[0], { i: 0, healthy: false, reason: 'status 500', failed: 3, passed: 0 }, 'after the third 500, not before')
  t.equal(hc.isHealthy(0), false)
  status = 200
  t.ok(await waitFor(() => seen.length === 2), 'reported healthy again')
  t.same(seen[1], { i: 0, healthy: true, reason: 'status 200', failed: 3, passed: 2 }, 'after the second 200')
  t.equal(hc.isHealthy(0), true)
  t.ok(await waitFor(() => passed >= 5), 'more passes')
  t.equal(seen.length, 2, 'no further change while it passes')
})

t.test('a target that accepts and never answers: out by timeout', async (t) => {
  const up = await origin(t, () => {})
  const { hc, changes } = checker(t, [up.url], { unhealthyThreshold: 2, intervalMs: 100, timeoutMs: 50 }, undefined)
  hc.start()
  t.ok(await waitFor(() => changes.length === 1), 'reported')
  t.same(changes, [{ i: 0, healthy: false, reason: 'timeout' }])
  t.equal(up.requests.length, 2, 'two checks reached it, each timed out')
  t.equal(hc.isHealthy(0), false)
})

t.test('a closed port: out, connection refused; the other target of the checker is not affected', async (t) => {
  const up = await origin(t, (req, res) => res.end())
  const { hc, changes } = checker(t, [await closedPort(), up.url], { unhealthyThreshold: 1 })
  hc.start()
  t.ok(await waitFor(() => changes.length === 1), 'reported')
  t.same(changes, [{ i: 0, healthy: false, reason: 'connection refused' }])
  t.ok(await waitFor(() => up.requests.length >= 3), 'the live target keeps being checked')
  t.equal(hc.isHealthy(0), false)
  t.equal(hc.isHealthy(1), true)
  t.equal(changes.length, 1)
})

t.test('expectStatus: 204 expected passes, 200 then fails', async (t) => {
  const noContent = await origin(t, (req, res) => { res.statusCode = 204; res.end() })
  const ok = await origin(t, (req, res) => res.end('ok'))
  const { hc, changes } = checker(t, [noContent.url, ok.url], { expectStatus: [204], unhealthyThreshold: 2 })
  hc.start()
  t.ok(await waitFor(() => changes.length === 1 && noContent.requests.length >= 4), 'the 200 target is reported, the 204 one checked')
  t.same(changes, [{ i: 1, healthy: false, reason: 'status 200' }])
  t.equal(hc.isHealthy(0), true, '204 passes')
  t.equal(hc.isHealthy(1), false, '200 is not in expectStatus')
})

t.test('a 10 MB body is not read: the response is aborted after at most 64 KB, the status still counts', async (t) => {
  const total = 10 * 1024 * 1024
  const chunk = Buffer.alloc(64 * 1024, 'x')
  const written: number[] = []
  const finished: boolean[] = []
  function big (declared: boolean) {
    return (req: IncomingMessage, res: ServerResponse): void => {
      if (declared) res.setHeader('content-length', total)
      let sent = 0
      const more = (): void => {
        while (sent < total && !res.destroyed) {
          sent += chunk.length
          if (!res.write(chunk)) return
        }
        if (sent >= total) res.end()
      }
      res.on('drain', more)
      res.on('close', () => { written.push(sent); finished.push(res.writableFinished) })
      more()
    }
  }
  const chunked = await origin(t, big(false))
  const sized = await origin(t, big(true))
  // A timeout long enough to read all 10 MB over loopback: only the 64 KB cap stops the reading.
  const { hc, changes } = checker(t, [chunked.url, sized.url], { intervalMs: 2500, timeoutMs: 2000 })
  hc.start()
  t.ok(await waitFor(() => written.length >= 2), 'both responses closed')
  t.ok(written.every((n) => n < total), `never all 10 MB written (bytes handed to the socket: ${written.join(', ')})`)
  t.same(finished, [false, false], 'neither response finished: the checker aborted both')
  t.same(changes, [], 'status 200 passes whatever the body')
  t.equal(hc.isHealthy(0) && hc.isHealthy(1), true)
  t.equal(MAX_CHECK_BODY, 65536)
})

t.test('a body that trickles (a byte every 10 ms, never idle for long): timeoutMs covers the whole check', async (t) => {
  const up = await origin(t, (req, res) => {
    res.writeHead(200)
    const drip = setInterval(() => res.write('x'), 10)
    res.on('close', () => clearInterval(drip))
  })
  const { hc, changes } = checker(t, [up.url], { unhealthyThreshold: 2, intervalMs: 100, timeoutMs: 60 })
  hc.start()
  t.ok(await waitFor(() => changes.length === 1), 'reported')
  t.same(changes, [{ i: 0, healthy: false, reason: 'timeout' }])
  t.equal(hc.isHealthy(0), false)
})

t.test('a limiter of one: three slow targets are never checked at the same time', async (t) => {
  let inFlight = 0
  let most = 0
  const slow = (req: IncomingMessage, res: ServerResponse): void => {
    inFlight++
    most = Math.max(most, inFlight)
    setTimeout(() => { inFlight--; res.end() }, 20)
  }
  const ups = [await origin(t, slow), await origin(t, slow), await origin(t, slow)]
  const limiter = new CheckLimiter(1)
  // A timeout far above the 20 ms answer: a check the client gave up on would free the slot while
  // the server still counts it in flight.
  const { hc, changes } = checker(t, ups.map((u) => u.url), { intervalMs: 150, timeoutMs: 2000 }, limiter)
  hc.start()
  t.ok(await waitFor(() => ups.every((u) => u.requests.length >= 3)), 'every target checked three times')
  t.equal(most, 1, 'at most one check at the servers at once')
  t.same(changes, [])
  t.ok(limiter.active <= 1)
})

t.test('stop(): no further checks, in-flight checks aborted, no connection left open', async (t) => {
  const ok = await origin(t, (req, res) => res.end('ok'))
  const hung = await origin(t, () => {})
  const limiter = new CheckLimiter(4)
  const { hc } = checker(t, [ok.url, hung.url], { intervalMs: 60, timeoutMs: 50 }, limiter)
  hc.start()
  t.ok(await waitFor(() => ok.requests.length >= 2 && hung.requests.length >= 1), 'both checked')
  t.ok(await waitFor(() => hung.open === 1), 'a check hangs on the silent target')
  await hc.stop()
  t.equal(limiter.active, 0, 'no slot held')
  t.equal(limiter.queued, 0, 'none queued')
  const counts = [ok.requests.length, hung.requests.length]
  await sleep(300)
  t.same([ok.requests.length, hung.requests.length], counts, 'no request after stop()')
  t.ok(await waitFor(() => ok.open === 0 && hung.open === 0, 2000), 'every connection closed')
  t.same([ok.open, hung.open], [0, 0])
  await hc.stop()
  hc.start()
  await sleep(100)
  t.same([ok.requests.length, hung.requests.length], counts, 'stop() twice is fine; a stopped checker does not start again')
})

t.test('stop() aborts a check in flight instead of waiting for its timeout', async (t) => {
  const hung = await origin(t, () => {})
  const { hc, changes } = checker(t, [hung.url], { intervalMs: 6000, timeoutMs: 5000, unhealthyThreshold: 1 })
  hc.start()
  t.ok(await waitFor(() => hung.requests.length === 1), 'the check is in flight')
  const outcome = await Promise.race([hc.stop().then(() => 'stopped'), sleep(3000).then(() => 'still waiting')])
  t.equal(outcome, 'stopped', 'stop() resolved well before the 5 s timeout')
  t.ok(await waitFor(() => hung.open === 0, 2000), 'its connection closed')
  t.same(changes, [], 'an aborted check is not a failure')
})

t.test('CheckLimiter: FIFO slots, a waiter past its wait is skipped, an aborted one leaves the queue', async (t) => {
  let now = 0
  const limiter = new CheckLimiter(1, () => now)
  const signal = new AbortController().signal
  t.equal(await limiter.acquire(100, signal), true, 'a free slot at once')
  const order: string[] = []
  const b = limiter.acquire(100, signal).then((g) => { order.push(`b:${g}`) })
  now = 10
  const c = limiter.acquire(100, signal).then((g) => { order.push(`c:${g}`) })
  const gone = new AbortController()
  const d = limiter.acquire(100, gone.signal).then((g) => { order.push(`d:${g}`) })
  t.equal(limiter.queued, 3)
  gone.abort()
  await d
  t.same(order, ['d:false'], 'aborted while waiting: skipped at once')
  t.equal(limiter.queued, 2, 'and out of the queue')
  now = 105
  limiter.release()
  await Promise.all([b, c])
  t.same(order, ['d:false', 'b:false', 'c:true'], 'b waited 105 ms > 100: skipped; c (95 ms) gets the slot')
  t.equal(limiter.active, 1)
  limiter.release()
  t.equal(limiter.active, 0, 'released with nobody waiting: free')
  const aborted = new AbortController()
  aborted.abort()
  t.equal(await limiter.acquire(100, aborted.signal), false, 'an aborted signal gets no slot')
  t.equal(limiter.active, 0)
  t.throws(() => new CheckLimiter(0), RangeError)
})

t.test('jitter: first round within 10 % of the interval, then interval ± 10 %', async (t) => {
  t.equal(jitterDelay(1000, true, 0), 0)
  t.ok(jitterDelay(1000, true, 0.9999) < 100)
  t.equal(jitterDelay(1000, false, 0), 900)
  t.ok(jitterDelay(1000, false, 0.9999) < 1100)
  t.ok(jitterDelay(1000, false, 0.5) === 1000)
  const firsts = new Set(Array.from({ length: 20 }, () => jitterDelay(1000, true)))
  t.ok(firsts.size > 1, 'targets do not share one delay')
})

t.test('reasons are short words, never a message or a stack', async (t) => {
  t.equal(reasonOf(Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:80'), { code: 'ECONNREFUSED' })), 'connection refused')
  t.equal(reasonOf({ code: 'UND_ERR_HEADERS_TIMEOUT' }), 'timeout')
  t.equal(reasonOf({ code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }), 'TLS: DEPTH_ZERO_SELF_SIGNED_CERT')
  t.equal(reasonOf({ code: 'HPE_INVALID_HEADER_TOKEN' }), 'bad response')
  t.equal(reasonOf({ code: 'EWHATEVER' }), 'error EWHATEVER')
  t.equal(reasonOf(new Error('secret\n    at x')), 'request failed')
  t.equal(reasonOf(null), 'request failed')
})

t.test('bad options are refused when the checker is built', async (t) => {
  const limiter = new CheckLimiter(1)
  const build = (o: Partial<HealthCheckOptions>) => () => new ActiveHealthChecker(['http://127.0.0.1:1'], { ...base, ...o }, limiter, () => {})
  t.throws(build({ path: 'healthz' }), /path/)
  t.throws(build({ intervalMs: 0 }), /intervalMs/)
  t.throws(build({ timeoutMs: Number.NaN }), /timeoutMs/)
  t.throws(build({ healthyThreshold: 0 }), /healthyThreshold/)
  t.throws(build({ unhealthyThreshold: 1.5 }), /unhealthyThreshold/)
  t.throws(build({ expectStatus: [] }), /expectStatus/)
})

t.test('https: the route\'s CA is trusted, and without it a self-signed certificate fails the check before any request', async (t) => {
  // Not test/helper.ts's requireCommand: that module loads the whole gateway, this file only the checker.
  if (spawnSync('openssl', ['version']).status !== 0) {
    if (process.env.CI === 'true') t.fail('openssl is not installed (required in CI)')
    else t.comment('SKIPPED: openssl is not installed: apt-get install openssl')
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-hc-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'
  ], { stdio: 'ignore' })
  const cert = readFileSync(join(dir, 'cert.pem'))
  const up = await origin(t, (req, res) => res.end('ok'), { key: readFileSync(join(dir, 'key.pem')), cert })
  // A timeout no TLS handshake on a loaded machine reaches: with the base 70 ms a slow handshake can
  // time out before the certificate is refused, and the reason is then not the certificate's code
  // (this assertion failed once in ~14 runs on a loaded 2-core machine).
  const slow = { intervalMs: 300, timeoutMs: 250 }
  const trusted = checker(t, [up.url], slow, undefined, undefined, { rejectUnauthorized: true, ca: cert })
  trusted.hc.start()
  t.ok(await waitFor(() => up.requests.length >= 3), 'with tls.ca the checks reach the server')
  t.same(trusted.changes, [])
  await trusted.hc.stop()
  const before = up.requests.length
  const strict = checker(t, [up.url], { ...slow, unhealthyThreshold: 1 }, undefined, undefined, { rejectUnauthorized: true })
  strict.hc.start()
  t.ok(await waitFor(() => strict.changes.length === 1), 'without it: reported')
  t.same(strict.changes, [{ i: 0, healthy: false, reason: 'TLS: DEPTH_ZERO_SELF_SIGNED_CERT' }], 'the certificate problem, by its code')
  t.equal(up.requests.length, before, 'and no request was sent')
  const lax = checker(t, [up.url], slow, undefined, undefined, { rejectUnauthorized: false })
  lax.hc.start()
  t.ok(await waitFor(() => up.requests.length >= before + 2), 'rejectUnauthorized: false accepts it')
  t.same(lax.changes, [])
})

t.test('no pile-up: while a target\'s check is pending its next rounds are skipped, not queued', async (t) => {
  const hung = await origin(t, () => {})
  const { hc, changes } = checker(t, [hung.url], { intervalMs: 30, timeoutMs: 5000 })
  hc.start()
  t.ok(await waitFor(() => hc.skippedRounds >= 5), 'five rounds skipped')
  t.equal(hung.requests.length, 1, 'one request at the server, still unanswered')
  t.equal(hung.open, 1, 'on one connection')
  t.same(changes, [], 'a skipped round is neither a pass nor a failure')
})

t.test('CheckLimiter: a full queue skips the round at once', async (t) => {
  const limiter = new CheckLimiter(1, () => 0, 1)
  const signal = new AbortController().signal
  t.equal(await limiter.acquire(100, signal), true, 'the slot')
  const queued = limiter.acquire(100, signal)
  t.equal(await limiter.acquire(100, signal), false, 'a second waiter does not fit in a queue of one')
  t.equal(limiter.skipped, 1, 'counted')
  limiter.release()
  t.equal(await queued, true, 'the queued one gets the slot')
  limiter.release()
  t.equal(limiter.active, 0)
  t.throws(() => limiter.release(), /without a slot/, 'releasing a slot nobody holds is a bug, said so')
  t.throws(() => new CheckLimiter(1, () => 0, -1), RangeError)
})

t.test('a checker whose limiter refuses (slot taken, no queue) skips its rounds: no request, no change', async (t) => {
  const up = await origin(t, (req, res) => res.end('ok'))
  const limiter = new CheckLimiter(1, undefined, 0)
  const held = new AbortController()
  t.equal(await limiter.acquire(1000, held.signal), true, 'the only slot is taken elsewhere')
  const { hc, changes } = checker(t, [up.url], { intervalMs: 30 }, limiter)
  hc.start()
  t.ok(await waitFor(() => hc.skippedRounds >= 3 && limiter.skipped >= 3), 'rounds skipped, by the checker and the limiter alike')
  t.equal(up.requests.length, 0, 'nothing sent')
  t.same(changes, [])
  limiter.release()
  t.ok(await waitFor(() => up.requests.length >= 1), 'with the slot free, checks run again')
})

/** Active handles of two kinds, as Node counts them (unref'd idle sockets are not among them). */
function handles (): { sockets: number, timers: number } {
  const info = process.getActiveResourcesInfo()
  return { sockets: info.filter((r) => r === 'TCPSocketWrap' || r === 'TLSWrap').length, timers: info.filter((r) => r === 'Timeout').length }
}

t.test('stop(): a check waiting for a limiter slot leaves the queue and is never sent; no timer or socket remains', async (t) => {
  const ok = await origin(t, (req, res) => res.end('ok'))
  const baseline = handles()
  const limiter = new CheckLimiter(1)
  const held = new AbortController()
  t.equal(await limiter.acquire(1000, held.signal), true, 'the only slot is taken elsewhere')
  const { hc } = checker(t, [ok.url, ok.url], { intervalMs: 40 }, limiter)
  hc.start()
  t.ok(await waitFor(() => limiter.queued === 2), 'both targets wait for it')
  t.ok(handles().timers > baseline.timers, 'the rounds\' timers are counted while it runs')
  await hc.stop()
  t.equal(limiter.queued, 0, 'out of the queue')
  limiter.release()
  await sleep(200)
  t.equal(ok.requests.length, 0, 'no check was ever sent')
  t.equal(ok.opened, 0, 'nor a connection opened')
  const running = checker(t, [ok.url], { intervalMs: 40 })
  running.hc.start()
  t.ok(await waitFor(() => ok.requests.length >= 2), 'a second checker runs')
  await running.hc.stop()
  t.ok(await waitFor(() => ok.open === 0, 2000), 'its connection closed at the server')
  t.same(handles(), baseline, 'no timer and no socket left in the process')
})

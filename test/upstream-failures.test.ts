/**
 * What the client sees when the upstream fails, and that the gateway keeps serving after each
 * failure: refused (502), silent (504 within the route timeout), reset mid-body (an aborted
 * response, never a clean 200), retries only where they are safe, and https upstreams whose
 * certificate is checked unless the route says otherwise. No response leaks an address or errno.
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer as createHttpsServer } from 'node:https'
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { call, freePort, requireCommand, startTestGateway, startUpstream, type CallResult } from './helper.js'

/** A 5xx problem+json that names nothing internal. */
function assertOpaqueProblem (t: Test, res: CallResult, status: number, type: string, port: number): void {
  t.equal(res.status, status, `status ${status}`)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.match(res.json, { type: `urn:portcullis:problem:${type}`, status, title: String, detail: String, instance: String, requestId: String })
  const text = res.body.toString()
  for (const leak of ['127.0.0.1', String(port), 'ECONN', 'errno', 'syscall', 'UND_ERR', 'Error:', ' at ', 'stack', 'cert', 'CERT', 'self-signed', 'self signed']) {
    t.notOk(text.includes(leak), `the body does not mention "${leak}"`)
  }
}

/** A gateway with a healthy route beside the one under test, to show it keeps serving. */
async function gatewayWith (t: Test, route: Record<string, unknown>): Promise<{ gw: string, healthy: () => Promise<void> }> {
  const good = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'under-test', prefix: '/api', ...route }, { name: 'good', prefix: '/good', upstream: good.origin }]
  })
  const healthy = async (): Promise<void> => {
    const before = good.requests.length
    const res = await call(`${gw}/good/ping`)
    t.equal(res.status, 200, 'the gateway keeps serving')
    t.equal(good.requests.length, before + 1)
  }
  return { gw, healthy }
}

/** A TCP server that accepts each connection and drops it at once, counting them. */
async function droppingServer (t: Test): Promise<{ port: number, connections: () => number }> {
  let count = 0
  const server = createNetServer((socket) => { count++; socket.destroy() })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return { port: (server.address() as AddressInfo).port, connections: () => count }
}

t.test('a refused connection is 502 with nothing internal in the body', async (t) => {
  const port = await freePort() // free a moment ago: nothing listens there
  const { gw, healthy } = await gatewayWith(t, { upstream: `http://127.0.0.1:${port}/v1`, retries: 0 })
  for (const method of ['GET', 'POST']) {
    const res = await call(`${gw}/api/people?secret=1`, { method, ...(method === 'POST' ? { body: '{}' } : {}) })
    assertOpaqueProblem(t, res, 502, 'bad-gateway', port)
    t.equal((res.json as { instance: string }).instance, '/api/people', 'instance without the query string')
    await healthy()
  }
})

t.test('an upstream that does not answer is 504 within the route timeout', async (t) => {
  const sockets: Socket[] = []
  const up = await startUpstream(t, () => { /* never answers */ })
  up.server.on('connection', (s: Socket) => sockets.push(s))
  const { gw, healthy } = await gatewayWith(t, { upstream: up.origin, timeout: '300ms' })
  const started = performance.now()
  const res = await call(`${gw}/api/slow`)
  const elapsed = performance.now() - started
  assertOpaqueProblem(t, res, 504, 'gateway-timeout', up.port)
  t.ok(elapsed < 5_000, `answered without hanging (${Math.round(elapsed)} ms)`)
  t.equal(up.requests.length, 1, 'a timed-out request is not retried')
  await healthy()
})

t.test('an upstream that stalls inside its body aborts the response', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 1000 })
    res.write('x'.repeat(100)) // …and nothing more
  })
  const { gw, healthy } = await gatewayWith(t, { upstream: up.origin, timeout: '300ms' })
  const started = performance.now()
  await t.rejects(call(`${gw}/api/stall`), /aborted|socket hang up|ECONNRESET/, 'the client sees a broken response')
  t.ok(performance.now() - started < 5_000, 'without hanging')
  await healthy()
})

t.test('an upstream that resets mid-body gives the client an aborted response, never a clean 200', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    const chunked = req.url?.includes('chunked') === true
    res.writeHead(200, chunked ? { 'content-type': 'text/plain' } : { 'content-type': 'text/plain', 'content-length': 100_000 })
    res.write('y'.repeat(10_000), () => { setTimeout(() => res.socket?.destroy(), 20) })
  })
  const { gw, healthy } = await gatewayWith(t, { upstream: up.origin })
  for (const path of ['/api/reset', '/api/reset?chunked']) {
    let outcome: string
    try {
      const res = await call(`${gw}${path}`)
      outcome = `a complete ${res.status} with ${res.body.length} bytes`
    } catch (err) {
      outcome = `aborted: ${(err as Error).message}`
    }
    t.match(outcome, /^aborted/, `${path}: the client sees an aborted response (${outcome})`)
    await healthy()
  }
})

t.test('retries: never for POST, at most `retries` for GET on connection failure, never on a status', async (t) => {
  const dropping = await droppingServer(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [
      { name: 'twice', prefix: '/twice', upstream: `http://127.0.0.1:${dropping.port}`, retries: 2 },
      { name: 'never', prefix: '/never', upstream: `http://127.0.0.1:${dropping.port}`, retries: 0 }
    ]
  })
  let before = dropping.connections()
  assertOpaqueProblem(t, await call(`${gw}/twice/x`), 502, 'bad-gateway', dropping.port)
  t.equal(dropping.connections() - before, 3, 'GET with retries: 2 → tried 3 times')

  before = dropping.connections()
  t.equal((await call(`${gw}/twice/x`, { method: 'HEAD' })).status, 502, 'HEAD: 502 (and no body, being HEAD)')
  t.equal(dropping.connections() - before, 3, 'HEAD is retried like GET')

  for (const method of ['POST', 'PATCH']) {
    before = dropping.connections()
    const res = await call(`${gw}/twice/x`, { method, headers: { 'content-type': 'application/json' }, body: '{"charge":100}' })
    t.equal(res.status, 502)
    t.equal(dropping.connections() - before, 1, `${method} with a body is never retried`)
  }
  before = dropping.connections()
  t.equal((await call(`${gw}/twice/x`, { method: 'POST' })).status, 502)
  t.equal(dropping.connections() - before, 1, 'POST without a body is never retried either')

  before = dropping.connections()
  t.equal((await call(`${gw}/never/x`)).status, 502)
  t.equal(dropping.connections() - before, 1, 'retries: 0 → one try')

  // A 503 is an answer, not a connection failure: passed on as it is, never retried.
  const busy = await startUpstream(t, (_req, res) => { res.writeHead(503, { 'retry-after': '1', 'content-type': 'text/plain' }); res.end('busy') })
  const { url: gw2 } = await startTestGateway(t, { routes: [{ name: 'busy', prefix: '/busy', upstream: busy.origin, retries: 5 }] })
  const res = await call(`${gw2}/busy/x`)
  t.equal(res.status, 503, 'the upstream\'s 503 reaches the client')
  t.equal(res.body.toString(), 'busy', 'with the upstream\'s own body')
  t.equal(res.headers['retry-after'], '1')
  t.equal(busy.requests.length, 1, 'a 503 is never retried')
})

t.test('https upstreams: a self-signed certificate is refused unless the route trusts it', async (t) => {
  if (!requireCommand(t, 'openssl', 'apt-get install openssl')) return
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-keyout', key, '-out', cert,
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'
  ], { stdio: 'ignore' })

  let hits = 0
  const server = createHttpsServer({ key: readFileSync(key), cert: readFileSync(cert) }, (req, res) => {
    hits++
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ secure: true, url: req.url }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const port = (server.address() as AddressInfo).port
  const upstream = `https://127.0.0.1:${port}/v1`

  const { url: gw } = await startTestGateway(t, {
    routes: [
      { name: 'default', prefix: '/default', upstream },
      { name: 'insecure', prefix: '/insecure', upstream, tls: { insecureSkipVerify: true } },
      { name: 'pinned', prefix: '/pinned', upstream, tls: { ca: cert } }
    ]
  })
  const refused = await call(`${gw}/default/x`)
  assertOpaqueProblem(t, refused, 502, 'bad-gateway', port)
  t.equal(hits, 0, 'by default the certificate is verified, and this one fails: no request was sent')

  const insecure = await call(`${gw}/insecure/x?y=1`)
  t.equal(insecure.status, 200, 'tls.insecureSkipVerify: true accepts it')
  t.same(insecure.json, { secure: true, url: '/v1/x?y=1' })

  const pinned = await call(`${gw}/pinned/x`)
  t.equal(pinned.status, 200, 'tls.ca naming the certificate accepts it')
  t.same(pinned.json, { secure: true, url: '/v1/x' })
  t.equal(hits, 2)
})

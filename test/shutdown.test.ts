/**
 * Graceful shutdown of the real CLI process: with requests in flight to a slow upstream, SIGTERM
 * stops new connections, lets every in-flight request finish with its 200, closes kept-alive
 * connections, and exits 0. /readyz is 503 while draining.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { Agent, createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { startTestGateway, startUpstream, transpileProject } from './helper.js'

interface Gateway { child: ChildProcess, url: string, output: () => string, exited: Promise<[number | null, NodeJS.Signals | null]> }

/** Runs `portcullis start --config FILE` as its own process and waits for it to listen. */
async function startCli (t: Test, configYaml: string): Promise<Gateway> {
  const dir = transpileProject(t)
  const config = join(dir, 'gateway.yaml')
  writeFileSync(config, configYaml)
  const child = spawn(process.execPath, [join(dir, 'src', 'cli.js'), 'start', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let out = ''
  child.stdout?.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { out += d.toString() })
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not start:\n${out}`)), 20_000)
    const look = (): void => {
      const m = /"msg":"portcullis listening"/.test(out) ? /"url":"(http:\/\/[^"]+)"/.exec(out) : null
      if (m !== null) { clearTimeout(timer); resolve(m[1]) }
    }
    child.stdout?.on('data', look)
    exited.then(([code]) => { clearTimeout(timer); reject(new Error(`the gateway exited ${String(code)} before listening:\n${out}`)) }, reject)
  })
  return { child, url, output: () => out, exited }
}

interface Result { status: number, body: string, headers: IncomingMessage['headers'] }

function get (url: string, agent: Agent | false): Promise<Result> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** Whether a new TCP connection to the gateway is refused. */
function refused (url: string): Promise<boolean> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname)
    socket.once('connect', () => { socket.destroy(); resolve(false) })
    socket.once('error', () => resolve(true))
  })
}

t.test('SIGTERM with requests in flight: all complete, new connections refused, exit 0', async (t) => {
  // The upstream holds every response until the test releases it: "in flight" without timing.
  const held: Array<{ res: ServerResponse, url: string }> = []
  const up = await startUpstream(t, (req, res) => { held.push({ res, url: req.url ?? '' }) })
  const release = (count = held.length): void => {
    for (const { res, url } of held.splice(0, count)) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ done: url }))
    }
  }
  t.teardown(() => release())

  const gw = await startCli(t, `
server: { host: 127.0.0.1, port: 0, shutdownGrace: 10s }
logging: { level: info }
routes:
  - name: slow
    prefix: /slow
    upstream: ${up.origin}/v1
`)
  t.equal((await get(`${gw.url}/readyz`, false)).status, 200, 'ready before the signal')

  // Kept-alive connections, as real clients use: the gateway must close them itself once drained.
  const keepAlive = new Agent({ keepAlive: true, maxSockets: 10 })
  const first = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => { keepAlive.destroy(); first.destroy() })
  const inFlight = [get(`${gw.url}/slow/0`, first)]
  for (let i = 1; i < 6; i++) inFlight.push(get(`${gw.url}/slow/${i}`, i % 2 === 0 ? keepAlive : false))
  while (held.length < 6) await new Promise((resolve) => setTimeout(resolve, 10))

  gw.child.kill('SIGTERM')
  let closed = false
  for (let i = 0; i < 200 && !closed; i++) {
    closed = await refused(gw.url)
    if (!closed) await new Promise((resolve) => setTimeout(resolve, 25))
  }
  t.ok(closed, 'new connections are refused while draining')
  t.equal(gw.child.exitCode, null, 'the process waits for the requests in flight')

  // The first request finishes, and tells its kept-alive client not to reuse the connection.
  release(1)
  const firstResult = await inFlight[0]
  t.equal(firstResult.status, 200)
  t.equal(firstResult.headers.connection, 'close', 'a response finished while draining closes its connection')
  t.equal(gw.child.exitCode, null, 'still draining')

  release()
  const results = await Promise.all(inFlight)
  results.forEach((r, i) => {
    t.equal(r.status, 200, `in-flight request ${i} completed with 200`)
    t.same(JSON.parse(r.body), { done: `/v1/${i}` }, `in-flight request ${i} got its whole body`)
  })

  const started = performance.now()
  const [code, signal] = await gw.exited
  t.equal(signal, null, 'not killed by a signal')
  t.equal(code, 0, 'exit code 0')
  t.ok(performance.now() - started < 5_000, 'exits once drained, without waiting for idle kept-alive connections to time out')
  t.notOk(/"level":(50|60)/.test(gw.output()), 'no error logged while draining')
})

t.test('SIGINT drains the same way; an idle gateway exits 0 at once', async (t) => {
  const up = await startUpstream(t)
  const gw = await startCli(t, `
server: { host: 127.0.0.1, port: 0 }
logging: { level: info }
routes: [{ name: r, prefix: /r, upstream: "${up.origin}" }]
`)
  const agent = new Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  t.equal((await get(`${gw.url}/r/x`, agent)).status, 200, 'one request leaves a kept-alive connection open')
  const started = performance.now()
  gw.child.kill('SIGINT')
  const [code] = await gw.exited
  t.equal(code, 0, 'exit code 0')
  t.ok(performance.now() - started < 5_000, 'an idle kept-alive connection does not hold the exit')
})

t.test('while draining, /readyz is 503 and what arrives on an open connection is refused in the error contract', async (t) => {
  // Over the network the drain is seen as refused connections (above); the readiness answer
  // itself is checked in process, with a request held in flight so that the drain lasts.
  const held: ServerResponse[] = []
  const up = await startUpstream(t, (_req, res) => { held.push(res) })
  const { app, url } = await startTestGateway(t, { routes: [{ name: 'slow', prefix: '/slow', upstream: up.origin }] })
  t.same(await app.readiness.check(), { ready: true, reasons: {} }, 'ready before closing')
  const pending = get(`${url}/slow/x`, false)
  while (held.length < 1) await new Promise((resolve) => setTimeout(resolve, 10))
  const closing = app.close()
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(await app.readiness.check(), { ready: false, reasons: { gateway: 'draining' } }, 'draining is not ready')
  // What /readyz and any other route answer now, on a connection that is still open: a second
  // listener feeding the same router stands in for one (the gateway's own listener is closed).
  const side = createServer((req, res) => { app.routing(req, res) })
  side.listen(0, '127.0.0.1')
  await once(side, 'listening')
  t.teardown(() => { side.close() })
  const sideUrl = `http://127.0.0.1:${(side.address() as AddressInfo).port}`
  const answer = async (path: string): Promise<{ status: number, type: string, body: Record<string, unknown>, connection: string }> => {
    const res = await get(`${sideUrl}${path}`, false)
    return { status: res.status, type: String(res.headers['content-type']), body: JSON.parse(res.body) as Record<string, unknown>, connection: String(res.headers.connection) }
  }
  const readyz = await answer('/readyz')
  t.equal(readyz.status, 503, '/readyz: 503')
  t.match(readyz.type, /^application\/problem\+json/)
  t.match(readyz.body, { type: 'urn:portcullis:problem:unavailable', status: 503, checks: { gateway: 'draining' } })
  const other = await answer('/slow/y')
  t.equal(other.status, 503, 'a proxied route: 503')
  t.match(other.type, /^application\/problem\+json/, 'in the error contract, not Fastify\'s own 503 body')
  t.equal(other.connection, 'close')
  t.equal((await answer('/healthz')).status, 200, '/healthz still says the process is alive')
  t.equal(up.requests.length, 1, 'the refused request never reached the upstream')
  held[0].end('done')
  t.equal((await pending).status, 200, 'the held request completes')
  await closing
})

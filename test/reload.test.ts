/**
 * Live reload (issue 17 part 3): SIGHUP, `portcullis reload --pid-file`, `reload()`. The gateway
 * runs as a real process where signals matter (the CLI, transpiled once for this file) and
 * in-process (startServer) where a test needs the objects; upstreams are real servers on port 0
 * that count their TCP connections.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { createServer, request as httpRequest, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { stringify } from 'yaml'
import { parseConfig } from '../src/config.js'
import { startServer } from '../src/server.js'
import { Coalescer, configChanges, keepRestartOnly, readConfig, ReloadRefused } from '../src/reload.js'
import { SharedObjects } from '../plugins/core/shared.js'
import { transpileProject, type RawConfig } from './helper.js'
import { sendRaw } from './raw-http.js'
import { startCli as startProcess, type Cli, type LogLine } from './cli-process.js'

const CLI = join(transpileProject(t), 'src/cli.js')

// --- upstreams that say who they are and count their connections --------------------------------

interface Upstream { name: string, url: string, connections: () => number, open: () => number, requests: () => number, server: Server }

async function startNamed (t: Test, name: string, delayMs = 0): Promise<Upstream> {
  let connections = 0
  let open = 0
  let requests = 0
  const server = createServer((req, res) => {
    requests++
    req.resume()
    req.on('end', () => {
      const answer = (): void => {
        const body = JSON.stringify({ up: name, path: req.url })
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
        res.end(body)
      }
      if (delayMs > 0 && req.url?.includes('slow') === true) setTimeout(answer, delayMs)
      else answer()
    })
  })
  server.keepAliveTimeout = 60_000
  server.on('connection', (socket) => {
    connections++
    open++
    socket.once('close', () => { open-- })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { name, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, connections: () => connections, open: () => open, requests: () => requests, server }
}

// --- the CLI as a process -------------------------------------------------------------------------

const startCli = (t: Test, args: string[]): Cli => startProcess(t, CLI, args)

function folder (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-reload-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

const BASE = { server: { host: '127.0.0.1', port: 0, shutdownGrace: '5s' }, logging: { level: 'info', accessLog: false } }

/** Table one: /api → A, /extra → B, /stable → C. Table two: /api → B, no /extra, /stable → C. */
function tables (a: Upstream, b: Upstream, c: Upstream): [RawConfig, RawConfig] {
  const stable = { name: 'stable', prefix: '/stable', upstream: `${c.url}/c` }
  return [
    { ...BASE, routes: [{ name: 'api', prefix: '/api', upstream: `${a.url}/a` }, { name: 'extra', prefix: '/extra', upstream: `${b.url}/x` }, stable] },
    { ...BASE, routes: [{ name: 'api', prefix: '/api', upstream: `${b.url}/b` }, stable] }
  ]
}

interface Answer { status: number, body: string }

/** One request on a fresh connection (bounded by a timeout). */
function fresh (url: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d })
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.once('error', reject)
    })
    req.once('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')))
    req.end()
  })
}

async function keptAlive (pool: Pool, path: string): Promise<Answer> {
  const res = await pool.request({ method: 'GET', path, headersTimeout: 10_000, bodyTimeout: 10_000 })
  return { status: res.statusCode, body: await res.body.text() }
}

/** Whether an answer to `path` is one table one or table two gives (never a 404 gap, never a mix). */
function fromATable (path: string, answer: Answer): string | null {
  if (path.startsWith('/api/')) {
    if (answer.status !== 200) return `${path}: ${answer.status} ${answer.body.slice(0, 120)}`
    const { up, path: seen } = JSON.parse(answer.body) as { up: string, path: string }
    const rest = path.slice('/api'.length)
    if ((up === 'A' && seen === `/a${rest}`) || (up === 'B' && seen === `/b${rest}`)) return null
    return `${path}: a mix: ${answer.body}`
  }
  if (path.startsWith('/extra/')) {
    if (answer.status === 404 && answer.body.includes('"status":404')) return null // table two: no such route
    if (answer.status === 200 && (JSON.parse(answer.body) as { up: string }).up === 'B') return null
    return `${path}: ${answer.status} ${answer.body.slice(0, 120)}`
  }
  if (answer.status === 200 && (JSON.parse(answer.body) as { up: string }).up === 'C') return null
  return `${path}: ${answer.status} ${answer.body.slice(0, 120)}`
}

/**
 * A paced load until `stop()`: every 6 ms one request on a kept-alive connection and one on a
 * new connection, at most 32 in flight, at most 12,000 in all; each answer checked by `check`.
 */
function load (base: string, check: (path: string, answer: Answer) => string | null): { stop: () => Promise<{ sent: number, failures: string[], byUp: Record<string, number>, seconds: number }> } {
  const pool = new Pool(base, { connections: 8 })
  const failures: string[] = []
  const byUp: Record<string, number> = {}
  let sent = 0
  let inFlight = 0
  let n = 0
  const pending = new Set<Promise<void>>()
  const paths = ['/api/p', '/extra/e', '/stable/s']
  const one = (viaPool: boolean): void => {
    if (inFlight >= 32 || sent >= 12_000) return
    const path = `${paths[n % paths.length]}${n++}`
    sent++
    inFlight++
    const p = (viaPool ? keptAlive(pool, path) : fresh(base + path)).then((answer) => {
      const problem = check(path, answer)
      if (problem !== null) failures.push(problem)
      else if (answer.status === 200) {
        const up = (JSON.parse(answer.body) as { up: string }).up
        byUp[up] = (byUp[up] ?? 0) + 1
      }
    }, (err: Error) => { failures.push(`${path}: ${err.message}`) }).finally(() => { inFlight--; pending.delete(p) })
    pending.add(p)
  }
  const started = performance.now()
  const timer = setInterval(() => { one(true); one(false) }, 6)
  return {
    async stop () {
      clearInterval(timer)
      const seconds = (performance.now() - started) / 1000
      await Promise.all([...pending])
      await pool.close()
      return { sent, failures, byUp, seconds }
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// --- the pieces -------------------------------------------------------------------------------------

t.test('Coalescer: never two runs at once; requests during a run are one more run', async (t) => {
  let running = 0
  let most = 0
  let runs = 0
  const c = new Coalescer(async () => {
    running++
    most = Math.max(most, running)
    runs++
    await sleep(30)
    running--
  })
  await Promise.all(Array.from({ length: 20 }, () => c.request()))
  t.equal(most, 1, 'one at a time')
  t.equal(runs, 2, '20 requests: the run under way and one more')
  await c.request()
  t.equal(runs, 3, 'a later request runs again')
  await c.stop()
  await c.request()
  t.equal(runs, 3, 'nothing after stop()')
})

t.test('SharedObjects: refcounted by lease, disposed of when the last one lets go', async (t) => {
  const shared = new SharedObjects()
  const disposed: string[] = []
  const one = shared.lease()
  const two = shared.lease()
  const a1 = one.acquire('a', () => ({ id: 'a' }), (v) => { disposed.push(v.id) })
  t.equal(one.acquire('a', () => ({ id: 'other' })), a1, 'the same lease asking twice: the same object')
  t.equal(two.acquire('a', () => ({ id: 'other' })), a1, 'another lease: the same object')
  two.acquire('b', () => ({ id: 'b' }), (v) => { disposed.push(v.id) })
  await one.release()
  t.same(disposed, [], 'still used by the other lease')
  await one.release()
  t.same(disposed, [], 'releasing twice counts once')
  await two.release()
  t.same(disposed.sort(), ['a', 'b'], 'disposed of with the last lease')
  t.equal(shared.size, 0)
  t.throws(() => two.acquire('c', () => 1), /released/, 'a released lease takes nothing more')
})

t.test('configChanges and keepRestartOnly', async (t) => {
  const one = parseConfig({ server: { port: 8080 }, routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9/a' }, { name: 'b', prefix: '/b', upstream: 'http://127.0.0.1:9/b' }] }, { env: {} })
  const two = parseConfig({
    server: { port: 9090, maxHeaderSize: '8kb', bodyLimit: '2mb' },
    routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9/a', timeout: '5s' }, { name: 'c', prefix: '/c', upstream: 'http://127.0.0.1:9/c' }]
  }, { env: {} })
  const changes = configChanges(one, two)
  t.same(changes, { added: ['c'], removed: ['b'], changed: ['a'], needsRestart: ['server.port', 'server.maxHeaderSize'], gatewayChanged: true })
  const kept = keepRestartOnly(one, two)
  t.equal(kept.server.port, 8080, 'server.port keeps its running value')
  t.equal(kept.server.maxHeaderSize, one.server.maxHeaderSize)
  t.equal(kept.server.bodyLimit, '2mb', 'a reloadable key takes the new value')
  t.ok(Object.isFrozen(kept) && Object.isFrozen(kept.server), 'frozen like a loaded config')
  t.same(configChanges(one, one), { added: [], removed: [], changed: [], needsRestart: [], gatewayChanged: false }, 'nothing changed')
})

t.test('readConfig refuses with every problem: syntax, schema, a missing file, a huge file, garbage', async (t) => {
  const dir = folder(t)
  const file = join(dir, 'g.yaml')
  const refused = async (content: string | Buffer | null): Promise<string[]> => {
    if (content === null) rmSync(file, { force: true })
    else writeFileSync(file, content)
    try {
      await readConfig(file)
    } catch (err) {
      if (err instanceof ReloadRefused) return err.problems
      throw err
    }
    return []
  }
  t.match((await refused('routes: [\n'))[0], /g\.yaml:\d+:\d+: not valid YAML/, 'a YAML syntax error, located')
  const schema = await refused(stringify({ routes: [{ name: 'a', prefix: 'nope', upstream: 'http://127.0.0.1:9/a' }, { name: 'b', prefix: '/b', upstream: 'http://127.0.0.1:9/b', timeout: 'soon' }] }))
  t.ok(schema.some((p) => p.startsWith('routes[0].prefix')) && schema.some((p) => p.startsWith('routes[1].timeout')), `every path: ${schema.join(' | ')}`)
  t.match((await refused(null))[0], /cannot read the config file .*ENOENT/, 'a file that disappeared')
  t.match((await refused(Buffer.alloc(5 * 1024 * 1024, 'a')))[0], /more than a reload reads/, 'a 5 MB file is not read')
  const garbage = await refused(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256)))
  t.ok(garbage.length > 0, `garbage: refused (${garbage[0]?.slice(0, 80) ?? ''})`)
  writeFileSync(file, stringify({ routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9/a', validate: [{ method: 'POST', path: '/', body: './missing.json' }] }] }))
  await t.rejects(readConfig(file), ReloadRefused, 'validation schemas are loaded too, as `portcullis validate` does')
})

// --- in process -------------------------------------------------------------------------------------

t.test('in flight on the old config, new requests on the new; unchanged pools and counters carry over', async (t) => {
  const [a, b, c, d] = await Promise.all([startNamed(t, 'A', 1_500), startNamed(t, 'B'), startNamed(t, 'C'), startNamed(t, 'D')])
  const [one, two] = tables(a, b, c)
  const limited = { name: 'limited', prefix: '/limited', upstream: `${d.url}/l`, rateLimit: { max: 5, window: '1m', by: 'ip' } }
  const first = parseConfig({ ...one, routes: [...(one.routes as object[]), limited] }, { env: {} })
  const second = parseConfig({ ...two, routes: [...(two.routes as object[]), limited] }, { env: {} })
  const gw = await startServer(first, { handleSignals: false, logger: false })
  t.teardown(() => gw.close())
  const base = gw.url
  const pool = new Pool(base, { connections: 1 })
  t.teardown(() => pool.close())

  t.equal((await keptAlive(pool, '/stable/1')).status, 200)
  t.equal(c.connections(), 1, 'the stable upstream: one connection')
  for (let i = 0; i < 3; i++) t.equal((await fresh(`${base}/limited/${i}`)).status, 200, `limited: request ${i + 1} of 5`)

  const slow = fresh(`${base}/api/slow`) // held 1.5 s by A
  while (a.requests() === 0) await sleep(10)
  const firstApp = gw.app
  const outcome = await gw.reload(second)
  t.same(outcome, { ok: true, generation: 2 })
  t.not(gw.app, firstApp, 'a new generation serves')
  t.match(JSON.parse((await keptAlive(pool, '/api/after')).body), { up: 'B', path: '/b/after' }, 'a new request, on the same kept-alive connection: the new table')
  t.equal((await fresh(`${base}/extra/gone`)).status, 404, 'the removed route: 404')
  t.match(JSON.parse((await slow).body), { up: 'A', path: '/a/slow' }, 'the request in flight finished on the old table')

  t.equal((await keptAlive(pool, '/stable/2')).status, 200)
  t.equal(c.connections(), 1, 'the unchanged upstream kept its pool: no new connection')
  for (let i = 3; i < 5; i++) t.equal((await fresh(`${base}/limited/${i}`)).status, 200, `limited: request ${i + 1} of 5, counted across the reload`)
  t.equal((await fresh(`${base}/limited/6`)).status, 429, 'the 6th: 429')

  // Back to table one, twice more: still one connection to C, and the limit still spent.
  t.same(await gw.reload(first), { ok: true, generation: 3 })
  t.same(await gw.reload(second), { ok: true, generation: 4 })
  t.equal((await keptAlive(pool, '/stable/3')).status, 200)
  t.equal(c.connections(), 1, 'three reloads: still the first connection')
  t.equal((await fresh(`${base}/limited/7`)).status, 429, 'still limited')

  // A changed limit is a new counter.
  const raised = parseConfig({ ...two, routes: [...(two.routes as object[]), { ...limited, rateLimit: { ...limited.rateLimit, max: 6 } }] }, { env: {} })
  await gw.reload(raised)
  t.equal((await fresh(`${base}/limited/8`)).status, 200, 'max: 6 is another limit: its own counter')

  // A reload the gateway cannot build (a plugin file that is not there) keeps the running one.
  const broken = parseConfig({ ...two, routes: [...(two.routes as object[]), { name: 'p', prefix: '/p', upstream: `${c.url}/p`, plugins: ['./no-such-plugin.js'] }] }, { env: {} })
  const failed = await gw.reload(broken)
  t.equal(failed.ok, false, 'refused')
  t.equal(failed.generation, 5, 'generation unchanged')
  t.equal((await fresh(`${base}/readyz`)).status, 200, 'still ready')
  t.equal((await keptAlive(pool, '/stable/4')).status, 200, 'still serving')
})

t.test('an unchanged route keeps its upstream set (health, ejections, breakers); a changed one gets a new one', async (t) => {
  const [c, d] = await Promise.all([startNamed(t, 'C'), startNamed(t, 'D')])
  const checked = { name: 'checked', prefix: '/checked', upstream: [`${c.url}/c`, `${d.url}/c`], healthCheck: { path: '/health', interval: '10s' } }
  const other = (timeout: string): RawConfig => ({ name: 'other', prefix: '/other', upstream: `${d.url}/o`, timeout })
  const config = (extra: object, otherTimeout = '30s'): Readonly<ReturnType<typeof parseConfig>> =>
    parseConfig({ ...BASE, routes: [{ ...checked, ...extra }, other(otherTimeout)] }, { env: {} })
  const gw = await startServer(config({}), { handleSignals: false, logger: false })
  t.teardown(() => gw.close())
  const first = gw.app.upstreams.get('checked')
  await gw.reload(config({}, '20s'))
  t.equal(gw.app.upstreams.get('checked'), first, 'another route changed: this one keeps its set, its health state and its check rounds')
  const otherSet = gw.app.upstreams.get('other')
  await gw.reload(config({ healthCheck: { path: '/health', interval: '5s' } }, '20s'))
  t.not(gw.app.upstreams.get('checked'), first, 'its healthCheck changed: a new set')
  t.equal(gw.app.upstreams.get('other'), otherSet, 'a route whose timeout alone changed keeps its set (the pool is new: its timeouts changed)')
  t.equal((await fresh(`${gw.url}/checked/x`)).status, 200, 'serving')
})

t.test('reload() without a config file is refused; close() during a reload is safe', async (t) => {
  const c = await startNamed(t, 'C')
  const config = parseConfig({ ...BASE, routes: [{ name: 'stable', prefix: '/stable', upstream: `${c.url}/c` }] }, { env: {} })
  const gw = await startServer(config, { handleSignals: false, logger: false })
  const outcome = await gw.reload()
  t.equal(outcome.ok, false)
  t.match(outcome.problems, [/no config file/])
  const during = gw.reload(config)
  await gw.close()
  t.match(await during, { generation: 1 }, 'the reload under way did not swap in a closing gateway')
  t.equal(gw.server.listening, false, 'closed')
})

t.test('watch: a changed file is reloaded, an unchanged rewrite is not; metrics never reset', async (t) => {
  const [a, b, c] = await Promise.all([startNamed(t, 'A'), startNamed(t, 'B'), startNamed(t, 'C')])
  const [one, two] = tables(a, b, c)
  const dir = folder(t)
  const file = join(dir, 'gateway.yaml')
  const withMetrics = (raw: RawConfig): RawConfig => ({ ...raw, server: { ...(raw.server as object), metrics: { enabled: true } } })
  writeFileSync(file, stringify(withMetrics(one)))
  const gw = await startServer(await readConfig(file), { handleSignals: false, logger: false, configFile: file, watch: true })
  t.teardown(() => gw.close())
  for (let i = 0; i < 3; i++) t.equal((await fresh(`${gw.url}/api/${i}`)).status, 200)
  const apiCount = async (): Promise<number> => {
    const text = (await fresh(`${gw.url}/metrics`)).body
    const line = text.split('\n').find((l) => l.startsWith('portcullis_requests_total{') && l.includes('route="api"') && l.includes('status_class="2xx"'))
    return Number(line?.split(' ').pop() ?? 0)
  }
  t.equal(await apiCount(), 3, 'three requests counted')

  writeFileSync(file, stringify(withMetrics(two)))
  for (let i = 0; i < 100 && gw.generation === 1; i++) await sleep(50)
  t.equal(gw.generation, 2, 'the changed file was reloaded')
  t.match(JSON.parse((await fresh(`${gw.url}/api/x`)).body), { up: 'B' }, 'the new table serves')
  t.equal(await apiCount(), 4, 'the counter went on from 3: one registry across generations')

  writeFileSync(file, stringify(withMetrics(two)))
  await sleep(1_000)
  t.equal(gw.generation, 2, 'the same content written again: no reload')
})

t.test('an aborted request frees the old generation at once; a stalled one holds it for shutdownGrace at most', async (t) => {
  const [a, b, c] = await Promise.all([startNamed(t, 'A', 30_000), startNamed(t, 'B'), startNamed(t, 'C')])
  const [one, two] = tables(a, b, c)
  const lines: Array<{ msg: string, generation?: number, unfinished?: number }> = []
  const stream = { write: (line: string) => { lines.push(JSON.parse(line) as typeof lines[number]) } }
  const grace = (raw: RawConfig): Readonly<ReturnType<typeof parseConfig>> => parseConfig({ ...raw, server: { ...(raw.server as object), shutdownGrace: '1s' } }, { env: {} })
  const gw = await startServer(grace(one), { handleSignals: false, logger: { level: 'info', stream } })
  t.teardown(() => gw.close())
  const closedLine = async (generation: number): Promise<{ unfinished?: number }> => {
    for (let i = 0; i < 200; i++) {
      const line = lines.find((l) => l.msg === 'old generation closed' && l.generation === generation)
      if (line !== undefined) return line
      await sleep(25)
    }
    throw new Error(`generation ${generation} was not closed`)
  }

  // Aborted: the client leaves while A holds the answer; the upstream request is aborted too.
  const aborted = httpRequest(`${gw.url}/api/slow`, { agent: false })
  aborted.on('error', () => {})
  aborted.end()
  while (a.requests() === 0) await sleep(10)
  aborted.destroy()
  for (let i = 0; i < 200 && a.open() > 0; i++) await sleep(25)
  t.equal(a.open(), 0, 'the upstream request was aborted with it: no connection to A held')
  await gw.reload(grace(two))
  t.equal((await closedLine(1)).unfinished, 0, 'the aborted request counted as finished: generation 1 closed with nothing left')

  // Stalled: a body that never comes holds generation 2 until the grace (1 s), no longer.
  const stalled = httpRequest(`${gw.url}/api/upload`, { method: 'POST', agent: false, headers: { 'content-length': '10' } })
  stalled.on('error', () => {})
  stalled.write('x')
  await sleep(200)
  await gw.reload(grace(one))
  t.equal((await closedLine(2)).unfinished, 1, 'the stalled request was still in flight when the grace ran out')
  t.match(JSON.parse((await fresh(`${gw.url}/api/after`)).body), { up: 'A' }, 'generation 3 serves')
  stalled.destroy()
})

t.test('through the front, after a reload: malformed heads, header floods, Expect: 100-continue, slow heads', async (t) => {
  const c = await startNamed(t, 'C')
  const raw = (extra: object): Readonly<ReturnType<typeof parseConfig>> => parseConfig({
    ...BASE,
    server: { ...BASE.server, maxHeaders: 20, timeouts: { headers: '1s' } },
    routes: [{ name: 'stable', prefix: '/stable', upstream: `${c.url}/c`, ...extra }]
  }, { env: {} })
  const gw = await startServer(raw({}), { handleSignals: false, logger: false })
  t.teardown(() => gw.close())
  await gw.reload(raw({ methods: ['GET', 'POST'], rateLimit: { max: 1, window: '1m' } }))
  t.equal(gw.generation, 2)
  const port = (gw.server.address() as AddressInfo).port
  const before = c.requests()

  const bad = await sendRaw(port, 'GET /stable/x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n')
  t.equal(bad.status, 400, 'a malformed head: 400 (the generation\'s clientErrorHandler)')
  t.match(bad.headers['content-type'], /problem\+json/)

  const flood = await sendRaw(port, 'GET /stable/x HTTP/1.1\r\nHost: a\r\n' + Array.from({ length: 25 }, (_, i) => `x-h${i}: v\r\n`).join('') + 'Connection: close\r\n\r\n')
  t.equal(flood.status, 431, 'more than server.maxHeaders: 431')
  t.equal(gw.server.maxHeadersCount, 21, 'the front keeps one header line more than server.maxHeaders, as client-limits set it')

  const accepted = await sendRaw(port, 'POST /stable/up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi')
  t.equal(accepted.status, 100, 'Expect: 100-continue on an accepted request: 100 first')
  t.match(accepted.body, /HTTP\/1\.1 200 /, 'then the upstream\'s 200')
  const refused = await sendRaw(port, 'POST /stable/up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n')
  t.equal(refused.status, 429, 'a refused one (the limit of 1 is spent): its final answer, no 100')
  t.equal(refused.headers.connection, 'close', 'and the connection closes (the body never came)')

  const slow = await sendRaw(port, 'GET /stable/x HTTP/1.1\r\nHost: a\r\n')
  t.equal(slow.status, 408, 'a head that never ends: 408 after server.timeouts.headers (the front\'s timer)')
  t.equal(c.requests() - before, 1, 'only the accepted request reached the upstream')
})

// --- the CLI --------------------------------------------------------------------------------------

t.test('under load: ten reloads alternating two tables, an invalid file twice, a SIGHUP storm → no failed request', async (t) => {
  const [a, b, c] = await Promise.all([startNamed(t, 'A'), startNamed(t, 'B'), startNamed(t, 'C')])
  const [one, two] = tables(a, b, c)
  const dir = folder(t)
  const file = join(dir, 'gateway.yaml')
  const pidFile = join(dir, 'portcullis.pid')
  writeFileSync(file, stringify(one))
  const cli = startCli(t, ['start', file, '--pid-file', pidFile])
  const up = await cli.waitFor((l) => l.msg === 'portcullis listening', 'listening')
  const base = up.url as string
  t.equal(readFileSync(pidFile, 'utf8'), `${cli.child.pid ?? ''}\n`, 'the pid file holds the pid')
  const reloaded = (generation: number): Promise<LogLine> => cli.waitFor((l) => l.msg.startsWith('config reloaded') && l.generation === generation, `generation ${generation}`)
  const refusedCount = (): number => cli.lines.filter((l) => l.msg.startsWith('reload refused')).length

  const running = load(base, fromATable)
  await sleep(1_000)
  let generation = 1
  for (let i = 0; i < 10; i++) {
    writeFileSync(file, stringify(i % 2 === 0 ? two : one))
    if (i % 2 === 0) cli.child.kill('SIGHUP')
    else {
      // `portcullis reload --pid-file F`, as an operator runs it.
      const reload = spawn(process.execPath, [CLI, 'reload', '--pid-file', pidFile], { stdio: 'ignore' })
      const [code] = await once(reload, 'exit') as [number]
      t.equal(code, 0, 'portcullis reload: exit 0')
    }
    const line = await reloaded(++generation)
    t.same([line.added, line.removed, line.changed], i % 2 === 0 ? [[], ['extra'], ['api']] : [['extra'], [], ['api']], `reload ${i + 1}: what changed`)
    if (i === 4) {
      // An invalid file mid-run, twice: a YAML syntax error, then schema errors in two places.
      writeFileSync(file, 'routes: [\n  - name: x\n')
      cli.child.kill('SIGHUP')
      await cli.waitFor((l) => l.msg.startsWith('reload refused') && refusedCount() === 1, 'the syntax error')
      writeFileSync(file, stringify({ ...one, routes: [{ name: 'api', prefix: 'api', upstream: `${a.url}/a` }, { name: 'stable', prefix: '/stable', upstream: `${c.url}/c`, timeout: 'soon' }] }))
      cli.child.kill('SIGHUP')
      await cli.waitFor(() => refusedCount() === 2, 'the schema errors')
      const schema = cli.lines.filter((l) => l.msg.startsWith('reload refused'))[1]
      t.ok(schema.problems?.some((p) => p.startsWith('routes[0].prefix')) === true && schema.problems.some((p) => p.startsWith('routes[1].timeout')), `every path in one line: ${(schema.problems ?? []).join(' | ')}`)
      t.equal((await fresh(`${base}/readyz`)).status, 200, 'readiness unchanged')
      t.equal(cli.lines.filter((l) => l.msg.startsWith('config reloaded')).length, generation - 1, 'nothing was swapped in')
    }
    await sleep(600)
  }
  // A storm: 20 SIGHUPs at once, the file unchanged. How many reloads they make depends on when
  // the child's event loop reads them (1–2 on an idle machine, 5 once on a loaded CI machine: a
  // reload of an unchanged file can end between two signals); what holds whatever the timing is
  // that no two run at once. The coalescing itself is the Coalescer test's, deterministically.
  const before = cli.lines.filter((l) => l.msg.startsWith('config reloaded')).length
  for (let i = 0; i < 20; i++) cli.child.kill('SIGHUP')
  await reloaded(generation + 1)
  await sleep(1_000)
  const storm = cli.lines.filter((l) => l.msg.startsWith('config reloaded')).slice(before)
  t.ok(storm.length >= 1 && storm.length <= 20, `20 SIGHUPs at once: ${storm.length} reload(s)`)
  // Two reloads at once would both be "the running generation + 1".
  t.same(storm.map((l) => l.generation).sort((x, y) => (x ?? 0) - (y ?? 0)), storm.map((_, i) => generation + 1 + i), 'each a generation of its own')
  // Spread over 100 ms: never two at once either.
  generation += storm.length
  const spreadFrom = cli.lines.filter((l) => l.msg.startsWith('config reloaded')).length
  for (let i = 0; i < 20; i++) { cli.child.kill('SIGHUP'); await sleep(5) }
  await reloaded(generation + 1)
  await sleep(1_000)
  const spread = cli.lines.filter((l) => l.msg.startsWith('config reloaded')).slice(spreadFrom)
  t.ok(spread.length >= 1 && spread.length <= 20, `20 SIGHUPs in ~100 ms: ${spread.length} reload(s)`)
  t.same(spread.map((l) => l.generation).sort((x, y) => (x ?? 0) - (y ?? 0)), spread.map((_, i) => generation + 1 + i), 'one after the other, each a generation of its own')

  const { sent, failures, byUp, seconds } = await running.stop()
  t.same(failures, [], `${sent} requests in ${seconds.toFixed(1)} s, none failed and each answered by one table`)
  t.ok(sent >= 1_000, `a real load: ${sent} requests`)
  t.ok((byUp.A ?? 0) > 0 && (byUp.B ?? 0) > 0 && (byUp.C ?? 0) > 0, `both tables answered: ${JSON.stringify(byUp)}`)
  t.ok(cli.lines.filter((l) => l.level >= 50).every((l) => l.msg.startsWith('reload refused')), 'no error logged but the two refusals')

  cli.child.kill('SIGTERM')
  t.equal((await cli.exited).code, 0, 'SIGTERM: exit 0')
  t.notOk(existsSync(pidFile), 'the pid file is removed on exit')
})

t.test('hostile files: garbage, huge, gone — each refused, logged, the running config serving', async (t) => {
  const c = await startNamed(t, 'C')
  const dir = folder(t)
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify({ ...BASE, routes: [{ name: 'stable', prefix: '/stable', upstream: `${c.url}/c` }] }))
  const cli = startCli(t, ['start', '-c', file])
  const base = (await cli.waitFor((l) => l.msg === 'portcullis listening', 'listening')).url as string
  const cases: Array<[string, () => void, RegExp]> = [
    ['garbage', () => { writeFileSync(file, Buffer.from(Array.from({ length: 65536 }, (_, i) => (i * 7919 + 13) % 256))) }, /./],
    ['a 6 MB file', () => { writeFileSync(file, 'routes: []\n' + '#'.repeat(6 * 1024 * 1024)) }, /more than a reload reads/],
    ['a file that is gone', () => { rmSync(file) }, /cannot read the config file .*ENOENT/]
  ]
  for (const [i, [what, damage, reason]] of cases.entries()) {
    damage()
    cli.child.kill('SIGHUP')
    const refusals = (): LogLine[] => cli.lines.filter((x) => x.msg.startsWith('reload refused'))
    await cli.waitFor(() => refusals().length === i + 1, what)
    const line = refusals()[i]
    t.match(line.problems?.[0], reason, `${what}: refused (${(line.problems?.[0] ?? '').slice(0, 80)})`)
    t.equal((await fresh(`${base}/readyz`)).status, 200, `${what}: still ready`)
    t.match(JSON.parse((await fresh(`${base}/stable/x`)).body), { up: 'C' }, `${what}: still serving`)
  }
  t.notOk(cli.lines.some((l) => l.msg.startsWith('config reloaded')), 'nothing swapped in')
  cli.child.kill('SIGTERM')
  t.equal((await cli.exited).code, 0)
})

t.test('SIGTERM right after SIGHUP: the request in flight completes, exit 0', async (t) => {
  const [a, b, c] = await Promise.all([startNamed(t, 'A', 1_000), startNamed(t, 'B'), startNamed(t, 'C')])
  const [one, two] = tables(a, b, c)
  const dir = folder(t)
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify(one))
  const cli = startCli(t, ['start', file])
  const base = (await cli.waitFor((l) => l.msg === 'portcullis listening', 'listening')).url as string
  const slow = fresh(`${base}/api/slow`)
  while (a.requests() === 0) await sleep(10)
  writeFileSync(file, stringify(two))
  cli.child.kill('SIGHUP')
  cli.child.kill('SIGTERM')
  const answer = await slow
  t.equal(answer.status, 200, 'the request in flight completed')
  t.match(JSON.parse(answer.body), { up: 'A' }, 'on the table it started with')
  const { code, signal } = await cli.exited
  t.same({ code, signal }, { code: 0, signal: null }, 'drained, exit 0')
})

t.test('--workers 2: SIGHUP to the primary reloads every worker, with no failed request', async (t) => {
  const [a, b, c] = await Promise.all([startNamed(t, 'A'), startNamed(t, 'B'), startNamed(t, 'C')])
  const [one, two] = tables(a, b, c)
  const dir = folder(t)
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify(one))
  const cli = startCli(t, ['start', file, '--workers', '2'])
  const up = await cli.waitFor((l) => l.role === 'primary' && l.msg === 'portcullis listening', 'primary listening')
  const base = up.url as string
  const running = load(base, fromATable)
  await sleep(1_000)
  for (let i = 0; i < 4; i++) {
    writeFileSync(file, stringify(i % 2 === 0 ? two : one))
    cli.child.kill('SIGHUP')
    const generation = i + 2
    await cli.waitFor((l) => cli.lines.filter((x) => x.msg.startsWith('config reloaded') && x.generation === generation).length === 2, `both workers at generation ${generation}`)
    await sleep(700)
  }
  // An invalid file: one refusal per worker, both still serving.
  writeFileSync(file, 'routes: [\n')
  cli.child.kill('SIGHUP')
  await cli.waitFor(() => cli.lines.filter((l) => l.msg.startsWith('reload refused')).length === 2, 'each worker refuses')
  const pids = new Set(cli.lines.filter((l) => l.msg.startsWith('reload refused')).map((l) => l.pid))
  t.equal(pids.size, 2, 'one line per worker')
  const { sent, failures, byUp, seconds } = await running.stop()
  t.same(failures, [], `${sent} requests in ${seconds.toFixed(1)} s through two workers, none failed`)
  t.ok((byUp.A ?? 0) > 0 && (byUp.B ?? 0) > 0, `both tables answered: ${JSON.stringify(byUp)}`)
  t.match(JSON.parse((await fresh(`${base}/api/last`)).body), { up: 'A' }, 'the last valid table (table one) serves')
  cli.child.kill('SIGTERM')
  t.equal((await cli.exited).code, 0, 'SIGTERM: exit 0')
})

t.test('portcullis reload: refuses a missing, stale or malformed pid file', async (t) => {
  const dir = folder(t)
  const run = async (args: string[]): Promise<{ code: number, stderr: string }> => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
    const [code] = await once(child, 'exit') as [number]
    return { code, stderr }
  }
  const stale = join(dir, 'stale.pid')
  writeFileSync(stale, '999999999\n')
  const bad = join(dir, 'bad.pid')
  writeFileSync(bad, '12; rm -rf /\n')
  const [none, missing, gone, malformed] = await Promise.all([
    run(['reload']), run(['reload', '--pid-file', join(dir, 'missing.pid')]), run(['reload', '--pid-file', stale]), run(['reload', '--pid-file', bad])
  ])
  t.equal(none.code, 2, 'no --pid-file: a usage error')
  t.match(none.stderr, /reload needs --pid-file/)
  t.equal(missing.code, 1)
  t.match(missing.stderr, /cannot read .*missing\.pid: ENOENT/)
  t.equal(gone.code, 1)
  t.match(gone.stderr, /no process 999999999/)
  t.equal(malformed.code, 1)
  t.match(malformed.stderr, /does not hold a process id/)
})

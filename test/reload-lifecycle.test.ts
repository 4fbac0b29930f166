/**
 * Live reload's lifecycle edges (issue 17 review): what happens at server.shutdownGrace to the
 * requests an old generation (or a stopping gateway) still holds, and a pid file that cannot be
 * written. Real servers on 127.0.0.1, port 0; waits are bounded polls, never tight timings.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { createServer, request as httpRequest, type ClientRequest, type IncomingMessage, type Server } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { parseConfig } from '../src/config.js'
import { startServer } from '../src/server.js'
import { freePort, transpileProject, type RawConfig } from './helper.js'
import { waitFor } from './fault-helpers.js'
import { startCli } from './cli-process.js'

interface Held { url: string, open: () => number, requests: () => number }

/** An upstream that never answers /slow, answers /late after 500 ms and anything else at once; counts its open connections. */
async function holdingUpstream (t: Test): Promise<Held> {
  let open = 0
  let requests = 0
  const server: Server = createServer((req, res) => {
    requests++
    req.resume()
    if (req.url?.includes('slow') === true) return
    if (req.url?.includes('late') === true) setTimeout(() => { res.end('{"ok":true}') }, 500)
    else res.end('{"ok":true}')
  })
  server.on('connection', (socket) => { open++; socket.once('close', () => { open-- }) })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, open: () => open, requests: () => requests }
}

interface Line { msg: string, level: number, generation?: number, generations?: number[], cut?: number, unfinished?: number }

function logStream (): { lines: Line[], stream: { write: (line: string) => void } } {
  const lines: Line[] = []
  return { lines, stream: { write: (line: string) => { lines.push(JSON.parse(line) as Line) } } }
}

const config = (up: string, extra: RawConfig = {}): ReturnType<typeof parseConfig> => parseConfig({
  server: { host: '127.0.0.1', port: 0, shutdownGrace: '1s' },
  logging: { level: 'info', accessLog: false },
  routes: [{ name: 'api', prefix: '/api', upstream: `${up}/a`, methods: ['GET', 'POST'] }],
  ...extra
}, { env: {} })

/** A client request left open: one held by the upstream, or an upload whose body never comes. */
function hold (url: string, upload: boolean): { req: ClientRequest, closed: () => boolean } {
  let closed = false
  const req = httpRequest(url, { agent: false, method: upload ? 'POST' : 'GET', headers: upload ? { 'content-length': '100000' } : {} })
  req.on('error', () => {})
  req.on('close', () => { closed = true })
  req.on('socket', (socket) => { socket.once('close', () => { closed = true }) })
  if (upload) req.write('x'.repeat(1000))
  else req.end()
  return { req, closed: () => closed }
}

t.test('a reload: at shutdownGrace the old generation\'s requests still open are cut, counted, then it closes', async (t) => {
  const up = await holdingUpstream(t)
  const { lines, stream } = logStream()
  const gw = await startServer(config(up.url), { handleSignals: false, logger: { level: 'info', stream } })
  t.teardown(() => gw.close())
  const held = hold(`${gw.url}/api/slow`, false)
  const upload = hold(`${gw.url}/api/upload`, true)
  t.ok(await waitFor(() => up.requests() >= 1 && up.open() >= 1, 10_000), 'the held request reached the upstream')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.same(await gw.reload(config(up.url, { server: { host: '127.0.0.1', port: 0, shutdownGrace: '1s', bodyLimit: '2mb' } })), { ok: true, generation: 2 })
  const closedLine = (): Line | undefined => lines.find((l) => l.msg === 'old generation closed' && l.generation === 1)
  t.ok(await waitFor(() => closedLine() !== undefined, 20_000), 'generation 1 closed after the grace')
  t.equal(closedLine()?.unfinished, 2, 'two requests were still open at the deadline')
  const cutLine = lines.find((l) => l.cut !== undefined)
  t.match(cutLine, { level: 40, cut: 2, generations: [1] }, 'a warning counts the requests cut')
  t.ok(lines.indexOf(cutLine as Line) < lines.indexOf(closedLine() as Line), 'cut before the close')
  t.ok(await waitFor(() => held.closed() && upload.closed(), 10_000), 'both clients\' connections were closed by the gateway')
  t.ok(await waitFor(() => up.open() === 0, 10_000), 'the upstream request was ended with it: no connection to the upstream held')
  const after = await fetch(`${gw.url}/api/after`)
  t.equal(after.status, 200, 'generation 2 serves')
  await after.text()
})

t.test('close() without signal handlers keeps shutdownGrace too: what is left is cut, then everything closes', async (t) => {
  const up = await holdingUpstream(t)
  const { lines, stream } = logStream()
  const gw = await startServer(config(up.url), { handleSignals: false, logger: { level: 'info', stream } })
  const held = hold(`${gw.url}/api/slow`, false)
  const upload = hold(`${gw.url}/api/upload`, true)
  t.ok(await waitFor(() => up.requests() >= 1, 10_000), 'the held request reached the upstream')
  await new Promise((resolve) => setTimeout(resolve, 100))
  let timer: NodeJS.Timeout | undefined
  const outcome = await Promise.race([
    gw.close().then(() => 'closed'),
    new Promise((resolve) => { timer = setTimeout(resolve, 30_000, 'still waiting after 30 s (shutdownGrace is 1 s)') })
  ])
  clearTimeout(timer)
  t.equal(outcome, 'closed', 'close() resolved')
  t.match(lines.find((l) => l.cut !== undefined), { level: 40, cut: 2 }, 'the requests cut are counted')
  t.equal(gw.server.listening, false, 'the front is closed')
  t.ok(await waitFor(() => held.closed() && upload.closed(), 10_000), 'the clients\' connections are closed')
  t.ok(await waitFor(() => up.open() === 0, 10_000), 'nothing held at the upstream')
})

t.test('a request that finishes within the grace is not cut', async (t) => {
  const up = await holdingUpstream(t)
  const { lines, stream } = logStream()
  const gw = await startServer(config(up.url, { server: { host: '127.0.0.1', port: 0, shutdownGrace: '20s' } }), { handleSignals: false, logger: { level: 'info', stream } })
  const late = httpRequest(`${gw.url}/api/late`, { agent: false })
  late.on('error', () => {})
  late.end()
  const answered = once(late, 'response')
  t.ok(await waitFor(() => up.requests() >= 1, 10_000), 'the request reached the upstream')
  const closing = gw.close()
  const [res] = await answered as [IncomingMessage]
  res.resume()
  t.equal(res.statusCode, 200, 'the request in flight completed during the drain')
  await closing
  t.notOk(lines.some((l) => l.cut !== undefined), 'nothing cut')
})

t.test('a pid file that cannot be written: startServer rejects in words and leaves nothing listening', async (t) => {
  const up = await holdingUpstream(t)
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-pid-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const port = await freePort()
  const pidFile = join(dir, 'missing', 'portcullis.pid')
  await t.rejects(startServer(config(up.url), { handleSignals: false, logger: false, port, pidFile }), { message: `cannot write the pid file ${pidFile}: ENOENT` })
  const probe = createNetServer()
  probe.listen(port, '127.0.0.1')
  const [outcome] = await Promise.race([once(probe, 'listening').then(() => ['free']), once(probe, 'error').then(([err]) => [(err as NodeJS.ErrnoException).code])])
  probe.close()
  t.equal(outcome, 'free', 'the port is free again: the front was closed')
})

/** The CLI (transpiled), a held upstream and a config file for it in a folder of its own. */
async function cliSetup (t: Test): Promise<{ cli: string, up: Held, dir: string, file: string }> {
  const up = await holdingUpstream(t)
  const cli = join(transpileProject(t), 'src/cli.js')
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cli-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify({ server: { host: '127.0.0.1', port: 0, shutdownGrace: '1s' }, logging: { level: 'info', accessLog: false }, routes: [{ name: 'api', prefix: '/api', upstream: `${up.url}/a` }] }))
  return { cli, up, dir, file }
}

t.test('portcullis start --pid-file in a missing folder: exit 1 with the reason, single process and --workers', async (t) => {
  const { cli, dir, file } = await cliSetup(t)
  const pidFile = join(dir, 'missing', 'p.pid')
  for (const extra of [[], ['--workers', '2']]) {
    const child = spawn(process.execPath, [cli, 'start', file, '--pid-file', pidFile, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    child.stdout.resume()
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 60_000)
    const [code] = await once(child, 'exit') as [number | null]
    clearTimeout(timer)
    t.equal(code, 1, `${extra.join(' ') || 'single process'}: exit 1`)
    t.match(stderr, `portcullis: cannot start: cannot write the pid file ${pidFile}: ENOENT`, 'the reason in words')
    t.notMatch(stderr, /\n\s+at /, 'no stack trace')
  }
  t.notOk(existsSync(pidFile))
})

t.test('SIGTERM with a request that outlives shutdownGrace: it is cut at the grace, logged, exit 1', async (t) => {
  const { cli, up, file } = await cliSetup(t)
  const gw = startCli(t, cli, ['start', file])
  const base = (await gw.waitFor((l) => l.msg === 'portcullis listening', 'listening')).url as string
  const held = hold(`${base}/api/slow`, false)
  t.ok(await waitFor(() => up.requests() >= 1, 10_000), 'the request reached the upstream')
  gw.child.kill('SIGTERM')
  const { code } = await gw.exited
  t.equal(code, 1, 'exit 1: a request was cut')
  t.ok(gw.lines.some((l) => (l as { cut?: number }).cut === 1 && l.level === 40), 'the cut is logged')
  t.ok(await waitFor(() => held.closed(), 10_000), 'the client\'s connection is closed')
})

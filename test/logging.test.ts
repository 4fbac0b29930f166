/**
 * The gateway's own logger (src/logging.ts): the access line it formats itself is the JSON pino
 * would write, lines are buffered yet never lost (close, process exit), and request loggers only
 * become pino children when a request logs at an enabled level. Real gateways, real upstreams,
 * a real log file.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t from 'tap'
import pino from 'pino'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { FLUSH_BYTES, FLUSH_INTERVAL_MS, LazyRequestLogger, LineBuffer, formatAccessLine, lazyChildLoggerFactory, type AccessFields } from '../src/logging.js'
import { call, startUpstream, transpileProject, type T } from './helper.js'

function tempDir (t: T): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-logging-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

function linesOf (file: string): Array<Record<string, unknown>> {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>)
}

/** What pino itself writes for the same fields through a request child logger. */
function pinoLine (fields: AccessFields, time: number): string {
  let out = ''
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { out += chunk.toString(); cb() } })
  const logger = pino({ timestamp: () => `,"time":${time}` }, sink)
  const { reqId, ...rest } = fields
  logger.child({ reqId }).info(rest, 'request completed')
  return out
}

t.test('formatAccessLine writes exactly what pino writes, hostile paths included', async (t) => {
  const base: AccessFields = {
    reqId: 'b3a9c1e2-0f5d-4e7a-9d61-2c7a1f9e8b40',
    method: 'GET',
    ip: '127.0.0.1',
    route: 'people',
    path: '/api/people/1',
    status: 200,
    ms: 1.25,
    upstreamMs: 0.5,
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736'
  }
  const paths = [
    '/api/people/1', '/api/"quoted"', '/api/back\\slash', '/api/\u0001\u001f\u007f', '/api/caf\u00e9/\u00ff',
    '/api/%22%5C', '/api/\u2028\u2029', '/api/' + 'x'.repeat(5000)
  ]
  for (const [i, path] of paths.entries()) {
    const fields = { ...base, path }
    const ours = formatAccessLine(fields, 1795780000000)
    const theirs = pinoLine(fields, 1795780000000)
    t.equal(ours, theirs, `same line for paths[${i}]`)
    t.same(JSON.parse(ours), { level: 30, time: 1795780000000, pid: process.pid, hostname: hostname(), ...fields, msg: 'request completed' })
  }
  // A lone surrogate: pino writes it raw (invalid UTF-8 on the wire); the line escapes it.
  const lone = formatAccessLine({ ...base, path: '/api/\ud800' }, 1)
  t.ok(lone.includes('"path":"/api/\\ud800"'), 'escaped as \\ud800')
  t.equal((JSON.parse(lone) as { path: string }).path, '/api/\ud800', 'and reads back as the same string')
  const nulls = { ...base, route: null, upstreamMs: null, traceId: null, status: 404 }
  t.equal(formatAccessLine(nulls, 5), pinoLine(nulls, 5), 'null route, upstream time and trace id')
  // Every field that can need escaping, one at a time (the plain line is built another way).
  const odd: Array<Partial<AccessFields>> = [
    { traceId: null }, { upstreamMs: null }, { ip: null as unknown as string }, { ip: '::ffff:127.0.0.1' }, { reqId: 'a"b' },
    { method: 'G\\ET' }, { route: 'caf\u00e9' }, { route: 'a"b' }, { traceId: 'x\u0000' }, { path: '' }, { path: '/~!*()' }
  ]
  for (const [i, change] of odd.entries()) {
    const fields = { ...base, ...change }
    t.equal(formatAccessLine(fields, 7), pinoLine(fields, 7), `same line for odd[${i}]`)
  }
})

t.test('LineBuffer: batches of at most PIPE_BUF bytes, in order, a long line alone, pass-through after close', async (t) => {
  const writes: string[] = []
  const buffer = new LineBuffer({ write: (chunk: string) => writes.push(chunk) }, 60_000)
  t.teardown(() => { buffer.close() })
  const lines: string[] = []
  for (let i = 0; i < 300; i++) {
    // ASCII, two-byte and three-byte characters: batches are measured in bytes, not characters.
    const line = JSON.stringify({ i, pad: (i % 3 === 0 ? 'a' : i % 3 === 1 ? '\u00e9' : '\u20ac').repeat(50 + (i % 40)) }) + '\n'
    lines.push(line)
    buffer.write(line)
  }
  const long = 'x'.repeat(9000) + '\n'
  buffer.write(long)
  lines.push(long)
  buffer.flush()
  t.equal(writes.join(''), lines.join(''), 'every line, in order')
  t.ok(writes.length > 10 && writes.length < 100, `batched: ${writes.length} writes for 301 lines`)
  for (const w of writes) {
    if (w === long) continue
    t.ok(Buffer.byteLength(w) <= 4096, 'no batch over PIPE_BUF')
  }
  t.ok(writes.includes(long), 'the long line is written on its own')
  t.ok(writes.slice(0, -2).every((w) => Buffer.byteLength(w) >= FLUSH_BYTES - 400), 'full batches until the end')
  buffer.close()
  const before = writes.length
  buffer.write('after\n')
  t.equal(writes.length, before + 1)
  t.equal(writes[writes.length - 1], 'after\n', 'written at once after close')
})

t.test('LazyRequestLogger makes the pino child only when a line is logged at an enabled level', async (t) => {
  let out = ''
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { out += chunk.toString(); cb() } })
  let children = 0
  const parent = pino({ level: 'info', redact: { paths: ['headers.authorization'], censor: '[redacted]' }, onChild: () => { children++ } }, sink)

  const log = lazyChildLoggerFactory(parent, { reqId: 'r-1' }, {})
  t.ok(log instanceof LazyRequestLogger)
  log.debug({ detail: 1 }, 'not at info')
  log.trace('nor this')
  t.equal(children, 0, 'disabled levels never make the child')
  t.equal(out, '')
  t.equal(log.level, 'info')
  t.equal(log.isLevelEnabled('debug'), false)
  t.equal(log.isLevelEnabled('warn'), true)

  log.warn({ headers: { authorization: 'Bearer secret' } }, 'first line')
  log.info('second line')
  t.equal(children, 1, 'one child, made on the first enabled line, then reused')
  const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
  t.match(lines[0], { level: 40, reqId: 'r-1', msg: 'first line', headers: { authorization: '[redacted]' } }, 'bindings and redaction as a pino child')
  t.match(lines[1], { level: 30, reqId: 'r-1', msg: 'second line' })

  const grandchild = log.child({ plugin: 'x' })
  grandchild.info('from a child')
  t.match(JSON.parse(out.trim().split('\n')[2]), { reqId: 'r-1', plugin: 'x', msg: 'from a child' })

  // A route with its own level gets a real child at once (Fastify passes the level).
  const eager = lazyChildLoggerFactory(parent, { reqId: 'r-2' }, { level: 'debug' })
  t.notOk(eager instanceof LazyRequestLogger)
  t.equal(eager.level, 'debug')
})

t.test('the gateway\'s own logger: one access line per request, buffered, flushed on a timer and on close', async (t) => {
  const up = await startUpstream(t)
  const dir = tempDir(t)
  const file = join(dir, 'gateway.log')
  const config = parseConfig({
    server: { host: '127.0.0.1', port: 0 },
    logging: { level: 'info' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  const app = await buildGateway(config, { logDestination: file })
  let closed = false
  t.teardown(async () => { if (!closed) await app.close() })
  const url = await app.listen({ host: '127.0.0.1', port: 0 })

  const res = await call(`${url}/api/people/7?token=secret`, { headers: { 'x-request-id': 'log-test-1' } })
  t.equal(res.status, 200)
  // A quiet gateway: the line waits for the flush timer, not for a full buffer.
  const deadline = Date.now() + 20 * FLUSH_INTERVAL_MS
  let access = linesOf(file).filter((l) => l.msg === 'request completed')
  while (access.length === 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    access = linesOf(file).filter((l) => l.msg === 'request completed')
  }
  t.equal(access.length, 1, 'the line appears without more traffic')
  t.match(access[0], { level: 30, reqId: 'log-test-1', method: 'GET', ip: '127.0.0.1', route: 'people', path: '/api/people/7', status: 200, traceId: /^[0-9a-f]{32}$/ })
  t.type(access[0].ms, 'number')
  t.type(access[0].upstreamMs, 'number')
  t.notOk(JSON.stringify(access[0]).includes('secret'), 'never the query string')

  // pino's logger.flush(cb) writes the buffer and calls back.
  app.log.warn('flushed on demand')
  await new Promise<void>((resolve) => { (app.log as unknown as { flush: (cb: () => void) => void }).flush(resolve) })
  t.ok(linesOf(file).some((l) => l.msg === 'flushed on demand'), 'logger.flush(cb) calls back once the line is written')

  // A level raised at run time silences the access line, as it would any pino info line.
  app.log.level = 'warn'
  t.equal((await call(`${url}/api/people/8`, { headers: { 'x-request-id': 'at-warn' } })).status, 200)
  await new Promise((resolve) => setTimeout(resolve, 100)) // the access line is due when the response finishes
  app.log.level = 'info'

  // Under load the lines gather in the buffer; 200 requests, then close: every line is there.
  for (let i = 0; i < 200; i++) {
    const r = await call(`${url}/api/people/${i}`, { headers: { 'x-request-id': `burst-${i}` } })
    t.equal(r.status, 200)
  }
  const missing = await call(`${url}/nowhere`)
  t.equal(missing.status, 404)
  await app.close()
  closed = true
  const after = linesOf(file)
  const burst = after.filter((l) => typeof l.reqId === 'string' && (l.reqId).startsWith('burst-') && l.msg === 'request completed')
  t.equal(burst.length, 200, 'all 200 access lines written by close')
  t.same(burst.map((l) => l.reqId), Array.from({ length: 200 }, (_, i) => `burst-${i}`), 'in order')
  t.ok(after.some((l) => l.msg === 'request completed' && l.status === 404 && l.route === null), 'unmatched requests are logged too')
  t.notOk(after.some((l) => l.reqId === 'at-warn'), 'no access line while the level was warn')
  // After close the logger writes through: a line logged now is in the file at once.
  app.log.info('after close')
  t.ok(linesOf(file).some((l) => l.msg === 'after close'), 'no buffering after close')
})

t.test('a process that exits (process.exit, a crash) still writes its buffered lines', async (t) => {
  const up = await startUpstream(t)
  const out = transpileProject(t)
  const dir = tempDir(t)
  const file = join(dir, 'gateway.log')
  const script = join(out, 'exit-script.mjs')
  writeFileSync(script, `
    import { buildGateway } from './src/app.js'
    import { parseConfig } from './src/config.js'
    const config = parseConfig({ logging: { level: 'info' }, routes: [{ name: 'people', prefix: '/api/people', upstream: process.argv[2] }] })
    const app = await buildGateway(config, { logDestination: process.argv[3] })
    const url = await app.listen({ host: '127.0.0.1', port: 0 })
    for (let i = 0; i < 5; i++) { const r = await fetch(url + '/api/people/' + i, { headers: { 'x-request-id': 'exit-' + i } }); await r.text() }
    app.log.warn('last words')
    if (process.argv[4] === 'throw') setImmediate(() => { throw new Error('boom') })
    else process.exit(3)
  `)
  for (const how of ['exit', 'throw']) {
    rmSync(file, { force: true })
    const child = spawn(process.execPath, [script, `${up.origin}/people`, file, how], { stdio: ['ignore', 'ignore', 'pipe'] })
    const [code] = await once(child, 'exit') as [number | null]
    t.equal(code, how === 'exit' ? 3 : 1, `${how}: the process ended as asked`)
    const lines = linesOf(file)
    t.equal(lines.filter((l) => l.msg === 'request completed').length, 5, `${how}: every access line was written`)
    t.ok(lines.some((l) => l.msg === 'last words'), `${how}: and the last line`)
  }
})

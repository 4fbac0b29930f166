/**
 * The fault matrix: client faults (abort during the head, during a buffered, streamed or chunked
 * body, while queued for an upstream connection, while waiting for the upstream's headers, in the
 * middle of the response) crossed with upstream faults (refused, reset after accepting / after the
 * head / mid-response, hung, an invalid status, an oversized response head), over real sockets,
 * against the gateway as a real child process (`portcullis start`), so that an uncaught exception
 * really ends it and the cell sees it.
 *
 * After every cell: the process is alive; no upstream request is left unfinished (within 2 s, far
 * less than the routes' timeouts, so only the gateway letting go can empty it); the next ordinary
 * request on the same route is a 200; exactly one log line says how the cell's request ended (its
 * access line, or the line saying the client or the upstream broke it off), found by X-Request-Id.
 * A cell whose request never got past its head expects no line at all (no request was formed).
 *
 * Also: the reproduction from the "Hostile clients" issue (two chunked uploads on a route with
 * `connections: 1`, the second closed) and its 129-uploads variant on a public route with the
 * default settings (130 sockets), with buffering on (the default) and off.
 */
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { call, transpileProject, type CallResult } from './helper.js'
import {
  outcomeLines, rawClient, sleep, startFaultUpstream, startGatewayProcess, waitFor,
  type Behaviour, type FaultUpstream, type GatewayProcess, type LogLine
} from './fault-helpers.js'

/** How long the upstream may still hold a request after a cell: far below every route's timeout but `short`'s. */
const SETTLE_MS = 2_000

// --- the gateway's routes ------------------------------------------------------------------------

type RouteName = 'buf' | 'stream' | 'short' | 'one' | 'one-short' | 'one-stream' | 'pub' | 'pub-stream'

const PREFIX: Record<RouteName, string> = {
  buf: '/buf', // request buffering on (the default)
  stream: '/stream', // requestBuffering: false
  short: '/short', // a 500 ms route timeout, for the hung upstream
  one: '/api/one', // connections: 1, defaults otherwise (the issue's route)
  'one-short': '/api/one-short', // connections: 1, 1 s timeout
  'one-stream': '/api/one-stream', // connections: 1, requestBuffering: false
  pub: '/api/pub', // a public route with every default
  'pub-stream': '/api/pub-stream' // the same with requestBuffering: false
}

function gatewayConfig (origin: string): Record<string, unknown> {
  // The timeouts of the routes a cell aborts on are 10 s or more: an upstream request that is
  // still open SETTLE_MS after the abort was not let go by the gateway (the timeout did not fire yet).
  return {
    server: { host: '127.0.0.1', port: 0, shutdownGrace: '1s' },
    logging: { level: 'info' },
    routes: [
      { name: 'buf', prefix: PREFIX.buf, upstream: origin, retries: 0, timeout: '10s' },
      { name: 'stream', prefix: PREFIX.stream, upstream: origin, retries: 0, timeout: '10s', requestBuffering: false, bodyLimit: '8mb' },
      { name: 'short', prefix: PREFIX.short, upstream: origin, retries: 0, timeout: '500ms' },
      { name: 'one', prefix: PREFIX.one, upstream: origin, connections: 1 },
      { name: 'one-short', prefix: PREFIX['one-short'], upstream: origin, connections: 1, timeout: '1s' },
      { name: 'one-stream', prefix: PREFIX['one-stream'], upstream: origin, connections: 1, requestBuffering: false },
      { name: 'pub', prefix: PREFIX.pub, upstream: origin },
      { name: 'pub-stream', prefix: PREFIX['pub-stream'], upstream: origin, requestBuffering: false }
    ]
  }
}

// --- the cells -----------------------------------------------------------------------------------

interface Ctx {
  t: Test
  gw: GatewayProcess
  up: FaultUpstream
  /** The cell's request id (sent as X-Request-Id, and the last segment of its path). */
  id: string
  /** `${PREFIX[route]}/${behaviour}/${id}` */
  path: (behaviour: Behaviour | string) => string
}

/** What the client of a cell saw. */
type Seen = { kind: 'response', res: CallResult } | { kind: 'aborted', detail: string } | { kind: 'client-left' }

type UpstreamFault = 'ok' | 'refused' | 'reset-accept' | 'reset-head' | 'reset-mid' | 'hung' | 'invalid-status' | 'oversized-head' | 'hold'

interface Cell {
  client: string
  upstream: UpstreamFault
  route: RouteName
  run: (c: Ctx) => Promise<Seen>
  /** The client's answer: a status (problem+json when ≥ 500), or an aborted response. */
  expect?: { status: number } | { aborted: true }
  /** Whether the cell's request reaches the upstream: true = exactly once, false = never. */
  reaches?: boolean
  /** 'access' = one access line with expect.status; 'outcome' = one line saying how it ended; 'none' = no line names it. */
  log: 'access' | 'outcome' | 'none'
}

/** The upstream path behaviour that produces each upstream fault (refused and reset-accept are set on the upstream). */
const BEHAVIOUR: Record<UpstreamFault, Behaviour> = {
  ok: 'ok',
  refused: 'ok',
  'reset-accept': 'ok',
  'reset-head': 'reset-head',
  'reset-mid': 'reset-mid',
  hung: 'hang',
  'invalid-status': 'status999',
  'oversized-head': 'bighead',
  hold: 'hold'
}

/** A complete request with node:http; an aborted response is reported, not thrown. */
function ordinary (method: string, body?: Buffer): (c: Ctx, behaviour: Behaviour) => Promise<Seen> {
  return async (c, behaviour) => {
    try {
      const res = await call(`${c.gw.url}${c.path(behaviour)}`, {
        method,
        headers: { 'x-request-id': c.id, ...(body === undefined ? {} : { 'content-type': 'application/octet-stream' }) },
        ...(body === undefined ? {} : { body })
      })
      return { kind: 'response', res }
    } catch (err) {
      return { kind: 'aborted', detail: (err as Error).message }
    }
  }
}

function head (method: string, path: string, id: string, framing: string): string {
  return `${method} ${path} HTTP/1.1\r\nHost: gw.test\r\nX-Request-Id: ${id}\r\nContent-Type: application/octet-stream\r\n${framing}\r\n`
}

/** Sends a head and part of a body, waits (for the upstream to hear of it, when `reached`), then leaves. */
async function bodyAbort (c: Ctx, behaviour: Behaviour, framing: { length: number, sent: number } | 'chunked', reached: boolean): Promise<Seen> {
  const client = await rawClient(c.gw.port)
  if (framing === 'chunked') {
    await client.write(head('POST', c.path(behaviour), c.id, 'Transfer-Encoding: chunked\r\n') + '1\r\nx\r\n')
    await client.write('4000\r\n' + 'z'.repeat(0x4000) + '\r\n')
  } else {
    await client.write(head('POST', c.path(behaviour), c.id, `Content-Length: ${framing.length}\r\n`))
    await client.write(Buffer.alloc(framing.sent, 97))
  }
  if (reached) await waitFor(() => c.up.seen.has(c.id), 2_000)
  else await sleep(300)
  client.abort()
  return { kind: 'client-left' }
}

/** The whole request sent; the client leaves once the upstream has it (and is not answering). */
async function headersWaitAbort (c: Ctx, method: 'GET' | 'POST'): Promise<Seen> {
  const client = await rawClient(c.gw.port)
  const body = method === 'POST' ? Buffer.alloc(100_000, 98) : Buffer.alloc(0)
  await client.write(head(method, c.path('hang'), c.id, method === 'POST' ? `Content-Length: ${body.length}\r\n` : ''))
  if (body.length > 0) await client.write(body)
  c.t.ok(await waitFor(() => c.up.seen.has(c.id), 3_000), 'the upstream has the request before the client leaves')
  await sleep(100)
  client.abort()
  return { kind: 'client-left' }
}

/** The client reads 100 KB of a slow, large response, then leaves. */
async function midResponseAbort (c: Ctx): Promise<Seen> {
  const client = await rawClient(c.gw.port)
  await client.write(head('GET', c.path('slow-body'), c.id, ''))
  c.t.ok(await waitFor(() => client.bytesReceived() >= 100_000, 5_000), 'the response was flowing before the client left')
  client.abort()
  return { kind: 'client-left' }
}

/**
 * Route `connections: 1`: a holder request takes the one connection (the upstream `holdWith`:
 * `hold` streams until released, `hang` never answers), the cell's request waits for it, and its
 * client leaves while queued; then the holder ends (`end`, `reset` mid-body, or the route timeout).
 */
function queuedAbort (holdWith: 'hold' | 'hang', release: 'end' | 'reset' | 'timeout'): (c: Ctx) => Promise<Seen> {
  return async (c) => {
    const holderId = `${c.id}-holder`
    const holder = call(`${c.gw.url}${c.path(holdWith).replace(c.id, holderId)}`, { headers: { 'x-request-id': holderId } }).catch((err: Error) => err)
    c.t.ok(await waitFor(() => c.up.seen.has(holderId), 3_000), 'the holder has the one upstream connection')
    const client = await rawClient(c.gw.port)
    await client.write(head('GET', c.path('ok'), c.id, ''))
    await sleep(300)
    c.t.notOk(c.up.seen.has(c.id), 'the queued request is waiting (not at the upstream)')
    client.abort()
    await sleep(100)
    if (release !== 'timeout') c.up.release(holderId, release)
    await holder // a 200, an aborted response or (timeout) a 504: the holder is not what is tested
    return { kind: 'client-left' }
  }
}

const CL_SMALL = { length: 1_000, sent: 500 }
const CL_LARGE = { length: 2 * 1024 * 1024, sent: 256 * 1024 }

/** A complete client, crossed with every upstream fault, on the buffered route (GET) and the streaming route (a 200 KB POST). */
function completeClientCells (): Cell[] {
  const rows: Array<[UpstreamFault, Cell['expect'], boolean | undefined]> = [
    ['ok', { status: 200 }, true],
    ['refused', { status: 502 }, false],
    ['reset-accept', { status: 502 }, false],
    ['reset-head', { status: 502 }, true],
    ['reset-mid', { aborted: true }, true],
    ['invalid-status', { status: 502 }, true],
    ['oversized-head', { status: 502 }, true]
  ]
  const cells: Cell[] = []
  for (const [fault, expect, reaches] of rows) {
    const log = expect !== undefined && 'status' in expect ? 'access' : 'outcome'
    cells.push({ client: 'complete GET', upstream: fault, route: 'buf', run: (c) => ordinary('GET')(c, BEHAVIOUR[fault]), expect, reaches, log })
    cells.push({ client: 'complete 200 KB POST (streaming route)', upstream: fault, route: 'stream', run: (c) => ordinary('POST', Buffer.alloc(200_000, 99))(c, BEHAVIOUR[fault]), expect, reaches, log })
  }
  cells.push({ client: 'complete GET', upstream: 'hung', route: 'short', run: (c) => ordinary('GET')(c, 'hang'), expect: { status: 504 }, reaches: true, log: 'access' })
  cells.push({ client: 'complete 1 KB POST', upstream: 'hung', route: 'short', run: (c) => ordinary('POST', Buffer.alloc(1_000, 99))(c, 'hang'), expect: { status: 504 }, reaches: true, log: 'access' })
  return cells
}

const CELLS: Cell[] = [
  ...completeClientCells(),
  {
    client: 'abort during the head',
    upstream: 'ok',
    route: 'buf',
    run: async (c) => {
      const client = await rawClient(c.gw.port)
      await client.write(`POST ${c.path('ok')} HTTP/1.1\r\nHost: gw.test\r\nX-Request-Id: ${c.id}\r\nContent-Le`)
      await sleep(200)
      client.abort()
      return { kind: 'client-left' }
    },
    reaches: false,
    log: 'none'
  },
  { client: 'abort during a small Content-Length body (buffered)', upstream: 'ok', route: 'buf', run: (c) => bodyAbort(c, 'ok', CL_SMALL, false), reaches: false, log: 'outcome' },
  { client: 'abort during a chunked body (buffered)', upstream: 'ok', route: 'buf', run: (c) => bodyAbort(c, 'ok', 'chunked', false), reaches: false, log: 'outcome' },
  { client: 'abort during a large Content-Length body (buffered, spilled to a file)', upstream: 'ok', route: 'buf', run: (c) => bodyAbort(c, 'ok', { length: 900_000, sent: 300_000 }, false), reaches: false, log: 'outcome' },
  ...(['ok', 'hung', 'reset-head'] as const).flatMap((fault): Cell[] => [
    { client: 'abort during a large Content-Length body (streamed)', upstream: fault, route: 'stream', run: (c) => bodyAbort(c, BEHAVIOUR[fault], CL_LARGE, true), log: 'outcome' },
    { client: 'abort during a chunked body (streamed)', upstream: fault, route: 'stream', run: (c) => bodyAbort(c, BEHAVIOUR[fault], 'chunked', true), log: 'outcome' }
  ]),
  { client: 'abort while waiting for upstream headers (GET)', upstream: 'hung', route: 'buf', run: (c) => headersWaitAbort(c, 'GET'), reaches: true, log: 'outcome' },
  { client: 'abort while waiting for upstream headers (100 KB POST, streamed)', upstream: 'hung', route: 'stream', run: (c) => headersWaitAbort(c, 'POST'), reaches: true, log: 'outcome' },
  { client: 'abort mid-response', upstream: 'ok', route: 'buf', run: midResponseAbort, reaches: true, log: 'outcome' },
  { client: 'abort while queued for the one connection', upstream: 'hold', route: 'one', run: queuedAbort('hold', 'end'), reaches: false, log: 'outcome' },
  { client: 'abort while queued for the one connection', upstream: 'reset-mid', route: 'one', run: queuedAbort('hold', 'reset'), reaches: false, log: 'outcome' },
  { client: 'abort while queued for the one connection', upstream: 'hung', route: 'one-short', run: queuedAbort('hang', 'timeout'), reaches: false, log: 'outcome' },
  { client: 'abort while queued for the one connection (streaming route)', upstream: 'hold', route: 'one-stream', run: queuedAbort('hold', 'end'), reaches: false, log: 'outcome' }
]

// --- the checks ----------------------------------------------------------------------------------

const LEAKS = (port: number): RegExp[] => [new RegExp(`127\\.0\\.0\\.1:${port}`), new RegExp(`\\b${port}\\b`), /ECONN|EPIPE|UND_ERR|errno|syscall/, /\n\s+at /, /Error:/]

function assertAnswer (t: Test, seen: Seen, expect: NonNullable<Cell['expect']>, upstreamPort: number): void {
  if ('aborted' in expect) {
    t.equal(seen.kind, 'aborted', `the client sees an aborted response (${seen.kind === 'response' ? `got a complete ${seen.res.status}` : seen.kind})`)
    return
  }
  if (seen.kind !== 'response') { t.fail(`expected a ${expect.status}, the client saw: ${seen.kind === 'aborted' ? `aborted (${seen.detail})` : seen.kind}`); return }
  const { res } = seen
  t.equal(res.status, expect.status, `the client gets ${expect.status}`)
  if (expect.status >= 400) {
    t.match(res.headers['content-type'], /^application\/problem\+json/, 'as problem+json')
    t.match(res.json, { status: expect.status, type: String, title: String }, 'a problem body')
    const text = res.body.toString('latin1')
    for (const leak of LEAKS(upstreamPort)) t.notMatch(text, leak, `the body leaks nothing internal (${String(leak)})`)
  }
}

/** Lines of requests other than `except`, logged from index `from`, that say how a request ended. */
function windowOutcomes (lines: readonly LogLine[], from: number, except: ReadonlySet<string>): LogLine[] {
  const window = lines.slice(from).filter((l) => typeof l.reqId === 'string' && !except.has(l.reqId))
  const ids = [...new Set(window.map((l) => l.reqId as string))]
  return ids.flatMap((id) => outcomeLines(window, id))
}

t.test('fault matrix', async (t) => {
  const up = await startFaultUpstream(t)
  const build = transpileProject(t)
  const config = gatewayConfig(up.origin)
  let gw = await startGatewayProcess(t, config, build)
  /** The gateway, restarted when a cell killed it, so that every later cell is still measured. */
  const gateway = async (): Promise<GatewayProcess> => {
    if (!gw.alive()) gw = await startGatewayProcess(t, config, build)
    return gw
  }
  let n = 0
  const newId = (): string => `fm${++n}-${randomBytes(4).toString('hex')}`

  /** The checks every cell ends with; `check` looks at the log lines (the next request's id given). */
  const afterCell = async (t: Test, g: GatewayProcess, route: RouteName, from: { log: number, bad: number }, check: (nextId: string) => Promise<void>): Promise<void> => {
    const emptied = await waitFor(() => up.inFlight().length === 0, SETTLE_MS)
    t.ok(emptied, `no upstream request is left unfinished within ${SETTLE_MS} ms (unfinished: ${up.inFlight().join(', ') || 'none'})`)
    if (!g.alive()) { t.fail(g.death()); return }
    t.pass('the gateway process is alive')
    const nextId = newId()
    let next: CallResult | Error
    try { next = await call(`${g.url}${PREFIX[route]}/ok/${nextId}`, { headers: { 'x-request-id': nextId } }) } catch (err) { next = err as Error }
    t.equal(next instanceof Error ? `error: ${next.message}` : next.status, 200, 'the next ordinary request on the same route is a 200')
    await waitFor(() => g.lines.some((l) => l.reqId === nextId), 2_000)
    await sleep(150) // anything logged late about the cell's requests is in by now
    t.same(g.badLines.slice(from.bad), [], 'every line the gateway logged during the cell is valid JSON')
    const errors = g.lines.slice(from.log).filter((l) => typeof l.level === 'number' && l.level >= 50)
    t.same(errors.map((l) => l.msg), [], 'nothing logged at error or fatal level (close-with-grace logs an uncaught exception there)')
    await check(nextId)
    if (!g.alive()) t.fail(g.death())
  }

  for (const cell of CELLS) {
    const name = `client ${cell.client} × upstream ${cell.upstream} [route ${cell.route}]`
    await t.test(name, async (t) => {
      const g = await gateway()
      const id = newId()
      const logFrom = g.lines.length
      const badFrom = g.badLines.length
      const c: Ctx = { t, gw: g, up, id, path: (b) => `${PREFIX[cell.route]}/${b}/${id}` }
      if (cell.upstream === 'refused') await up.refuse()
      if (cell.upstream === 'reset-accept') await up.resetNextConnection()
      let seen: Seen
      try {
        seen = await cell.run(c)
      } finally {
        await up.accept()
        up.clearFaults()
      }
      if (cell.expect !== undefined) assertAnswer(t, seen, cell.expect, up.port)
      if (cell.reaches === true) t.equal(up.seen.get(id) ?? 0, 1, 'the request reached the upstream exactly once')
      if (cell.reaches === false) t.equal(up.seen.get(id) ?? 0, 0, 'the request never reached the upstream')
      await afterCell(t, g, cell.route, { log: logFrom, bad: badFrom }, async () => {
        const lines = g.lines.slice(logFrom)
        if (cell.log === 'none') {
          t.same(lines.filter((l) => JSON.stringify(l).includes(id)), [], 'no log line names a request that never got past its head')
          return
        }
        const outcome = outcomeLines(lines, id)
        t.equal(outcome.length, 1, `exactly one log line says how the request ended (got ${outcome.length}: ${JSON.stringify(outcome.map((l) => l.msg))}; all its lines: ${JSON.stringify(lines.filter((l) => l.reqId === id).map((l) => l.msg))})`)
        if (cell.log === 'access' && cell.expect !== undefined && 'status' in cell.expect) {
          t.match(outcome[0], { msg: /^request (completed|errored)$/, status: cell.expect.status }, `the access line says ${cell.expect.status}`)
        }
      })
    })
  }

  // The issue's reproduction, byte for byte: two chunked uploads on a route with connections: 1,
  // the second one closed. Then the first one closed too (it holds the connection when streamed).
  for (const route of ['one', 'one-stream'] as const) {
    await t.test(`client two chunked uploads, the second closed (connections: 1, the issue's reproduction) × upstream ok [route ${route}]`, async (t) => {
      const g = await gateway()
      const logFrom = g.lines.length
      const badFrom = g.badLines.length
      const bytes = `POST ${PREFIX[route]}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n`
      const first = await rawClient(g.port)
      await first.write(bytes)
      await sleep(200)
      const second = await rawClient(g.port)
      await second.write(bytes)
      await sleep(300)
      second.abort()
      await sleep(300)
      t.ok(g.alive(), g.alive() ? 'the gateway survives the second upload being closed' : g.death())
      first.abort()
      await afterCell(t, g, route, { log: logFrom, bad: badFrom }, async (nextId) => {
        const outcomes = windowOutcomes(g.lines, logFrom, new Set([nextId]))
        t.equal(outcomes.length, 2, `one line for each of the two uploads (got ${JSON.stringify(outcomes.map((l) => [l.reqId, l.msg]))})`)
        t.equal(new Set(outcomes.map((l) => l.reqId)).size, outcomes.length, 'one per request')
      })
    })
  }

  // 129 chunked uploads on a public route with the default settings (128 upstream connections
  // per URL): 130 sockets, then all closed. Bounded: 130 sockets, a few seconds.
  for (const route of ['pub', 'pub-stream'] as const) {
    await t.test(`client 130 chunked uploads, all closed × upstream ok [route ${route}${route === 'pub' ? ', all defaults' : ', requestBuffering: false'}]`, async (t) => {
      const g = await gateway()
      const logFrom = g.lines.length
      const badFrom = g.badLines.length
      const ids = Array.from({ length: 130 }, () => newId())
      const clients = await Promise.all(ids.map(async (id) => {
        const client = await rawClient(g.port)
        await client.write(`POST ${PREFIX[route]}/ok/${id} HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${id}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n`)
        return client
      }))
      await sleep(route === 'pub-stream' ? 0 : 500)
      if (route === 'pub-stream') await waitFor(() => up.inFlight().length >= 128, 3_000)
      const reached = ids.filter((id) => up.seen.has(id)).length
      t.comment(`${reached} of 130 uploads reached the upstream before the clients left`)
      if (route === 'pub') t.equal(reached, 0, 'buffering on: no unfinished upload reached the upstream')
      for (const client of clients) client.abort()
      await sleep(300)
      t.ok(g.alive(), g.alive() ? 'the gateway survives 130 closed uploads' : g.death())
      await afterCell(t, g, route, { log: logFrom, bad: badFrom }, async () => {
        const lines = g.lines.slice(logFrom)
        const wrong = ids.filter((id) => outcomeLines(lines, id).length !== 1)
        t.equal(wrong.length, 0, `each of the 130 uploads has exactly one line saying how it ended (${wrong.length} do not; e.g. ${wrong[0] ?? '-'}: ${JSON.stringify(lines.filter((l) => l.reqId === wrong[0]).map((l) => l.msg))})`)
      })
    })
  }
})

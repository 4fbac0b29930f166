/**
 * What a live reload's generations share besides the pools themselves: a route's connection
 * slots and queue (routes[].connections, maxPending), and the request-buffering budget and
 * folder (server.requestBufferTotal, requestBufferDir). During the overlap of two generations the
 * upstream sees no more than `connections` requests at once, the queue bound is one bound, and
 * an upload received across the reload reaches the upstream intact. Upstreams are real servers
 * on port 0 that hold each request until the test answers it and count what they have at once.
 */
import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { parseConfig } from '../src/config.js'
import { startServer, type RunningGateway } from '../src/server.js'
import { SharedObjects } from '../plugins/core/shared.js'
import { call, type CallResult, type RawConfig } from './helper.js'
import { waitFor } from './fault-helpers.js'

interface HoldingUpstream {
  url: string
  /** Paths the upstream has received, in order. */
  seen: string[]
  /** Requests it holds now, and the most it ever held at once. */
  holding: () => number
  most: () => number
  /** Answers the held request for `path` (200, the body's length and SHA-256). */
  answer: (path: string) => void
  holds: (path: string) => boolean
}

async function holdingUpstream (t: Test): Promise<HoldingUpstream> {
  const held = new Map<string, () => void>()
  const seen: string[] = []
  let most = 0
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = req.url ?? '/'
    seen.push(path)
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    held.set(path, () => {
      const body = Buffer.concat(chunks)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ path, bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') }))
    })
    most = Math.max(most, held.size)
    res.on('close', () => { held.delete(path) })
  })
  server.keepAliveTimeout = 60_000
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    holding: () => held.size,
    most: () => most,
    holds: (path) => held.has(path),
    answer: (path) => {
      const answer = held.get(path)
      if (answer === undefined) throw new Error(`the upstream holds no request for ${path}`)
      held.delete(path)
      answer()
    }
  }
}

const BASE = { server: { host: '127.0.0.1', port: 0, shutdownGrace: '30s' }, logging: { level: 'silent', accessLog: false } }

async function started (t: Test, raw: RawConfig, shared = new SharedObjects()): Promise<RunningGateway> {
  const gw = await startServer(parseConfig(raw, { env: {} }), { handleSignals: false, shared })
  t.teardown(() => gw.close())
  return gw
}

/**
 * The slots of route `route`'s pool (white box, only to wait for a request to be queued: from
 * outside a queued request and one still on its way look alike).
 */
function slotsOf (shared: SharedObjects, route: string): { active: number, waitingCount: number } {
  const entries = (shared as unknown as { entries: Map<string, { value: unknown }> }).entries
  for (const [key, entry] of entries) if (key.startsWith(`pool ${JSON.stringify(route)} `)) return entry.value as { active: number, waitingCount: number }
  throw new Error(`no pool for ${route}`)
}

function problem (t: Test, res: CallResult, status: number, retryAfter = true): void {
  t.equal(res.status, status, `status ${status}`)
  t.match(String(res.headers['content-type']), /^application\/problem\+json/, 'problem+json')
  if (retryAfter) t.ok(res.headers['retry-after'] !== undefined, 'with Retry-After')
}

t.test('connections and maxPending hold across a reload: one cap and one queue for both generations, each woken by the other\'s releases', async (t) => {
  const up = await holdingUpstream(t)
  const api = { name: 'api', prefix: '/api', upstream: `${up.url}/u`, connections: 2, maxPending: 2, queueTimeout: '60s', timeout: '60s', retries: 0 }
  const other = { name: 'other', prefix: '/other', upstream: `${up.url}/o` }
  const shared = new SharedObjects()
  const gw = await started(t, { ...BASE, routes: [api] }, shared)
  const get = (path: string): Promise<CallResult> => call(`${gw.url}/api${path}`)
  const slots = slotsOf(shared, 'api')

  // Generation 1: two requests on the two connections, a third queued, and an upload whose body
  // is still arriving (it asks for a slot once its body is complete, after the reload).
  const a = get('/a')
  const b = get('/b')
  t.ok(await waitFor(() => up.holding() === 2, 10_000), 'the upstream holds a and b')
  const c = get('/c')
  t.ok(await waitFor(() => slots.waitingCount === 1, 10_000), 'c waits in generation 1')
  const body = new PassThrough()
  const f = call(`${gw.url}/api/f`, { method: 'POST', headers: { 'content-length': '10' }, body })
  body.write('12345')

  const outcome = await gw.reload(parseConfig({ ...BASE, routes: [api, other] }, { env: {} }))
  t.same(outcome, { ok: true, generation: 2 }, 'generation 2 serves')
  t.equal(slotsOf(shared, 'api'), slots, 'the route\'s pool and its slots are the ones generation 1 uses')

  // Generation 2: the connections are generation 1's, so d waits; the queue is full with c and d.
  const d = get('/d')
  t.ok(await waitFor(() => slots.waitingCount === 2, 10_000), 'd waits in generation 2, behind c')
  problem(t, await get('/e'), 503)
  t.equal(up.seen.length, 2, 'nothing more reached the upstream')

  up.answer('/u/a') // generation 1's slot goes to generation 1's c
  t.match((await a).json, { path: '/u/a' })
  t.ok(await waitFor(() => up.seen.includes('/u/c'), 10_000), 'c reached the upstream')
  body.end('67890') // f, generation 1's, now queues behind d, generation 2's
  t.ok(await waitFor(() => slots.waitingCount === 2, 10_000), 'f waits behind d')
  up.answer('/u/b') // generation 1's slot goes to generation 2's d
  t.match((await b).json, { path: '/u/b' })
  t.ok(await waitFor(() => up.seen.includes('/u/d'), 10_000), 'd reached the upstream')
  up.answer('/u/d') // generation 2's slot goes to generation 1's f
  t.match((await d).json, { path: '/u/d' })
  t.ok(await waitFor(() => up.seen.includes('/u/f'), 10_000), 'f reached the upstream')
  up.answer('/u/c')
  up.answer('/u/f')
  t.match((await c).json, { path: '/u/c' })
  t.match((await f).json, { path: '/u/f', bytes: 10, sha256: createHash('sha256').update('1234567890').digest('hex') }, 'f\'s body arrived whole')
  t.same(up.seen, ['/u/a', '/u/b', '/u/c', '/u/d', '/u/f'], 'in queue order; e never reached the upstream')
  t.equal(up.most(), 2, 'the upstream never had more than connections (2) at once')
  t.ok(await waitFor(() => slots.active === 0 && slots.waitingCount === 0, 10_000), 'every slot given back')

  // Generation 2 alone afterwards: the cap is still 2.
  const late = [get('/g'), get('/h'), get('/i')]
  t.ok(await waitFor(() => up.holding() === 2 && slots.waitingCount === 1, 10_000), 'two at the upstream, one waiting')
  for (const path of ['/u/g', '/u/h']) up.answer(path)
  t.ok(await waitFor(() => up.holding() === 1, 10_000), 'the third one is sent')
  up.answer('/u/i')
  t.same((await Promise.all(late)).map((r) => r.status), [200, 200, 200])
})

t.test('generation 1 retiring with a request still queued takes only its own out of the shared queue', async (t) => {
  const up = await holdingUpstream(t)
  const api = { name: 'api', prefix: '/api', upstream: `${up.url}/u`, connections: 1, maxPending: 4, queueTimeout: '60s', timeout: '60s', retries: 0 }
  const shared = new SharedObjects()
  const gw = await started(t, { ...BASE, server: { ...BASE.server, shutdownGrace: '1s' }, routes: [api] }, shared)
  const slots = slotsOf(shared, 'api')
  const outcome = async (path: string): Promise<number | 'closed'> => await call(`${gw.url}/api${path}`).then((r) => r.status, () => 'closed' as const)
  const a = outcome('/a')
  t.ok(await waitFor(() => up.holding() === 1, 10_000), 'a is at the upstream')
  const b = outcome('/b')
  t.ok(await waitFor(() => slots.waitingCount === 1, 10_000), 'b waits in generation 1')
  await gw.reload(parseConfig({ ...BASE, routes: [api, { name: 'other', prefix: '/other', upstream: `${up.url}/o` }] }, { env: {} }))
  const c = outcome('/c')
  t.ok(await waitFor(() => slots.waitingCount === 2, 10_000), 'c waits in generation 2')
  // Generation 1 retires after its grace (1 s): its requests are answered or cut (b: 503 or its
  // connection closed; a: perhaps aborted, which frees its slot), and c, generation 2's, is served.
  t.ok([503, 'closed'].includes(await b), 'b is refused')
  t.ok(await waitFor(() => slots.waitingCount <= 1, 10_000), 'b has left the queue')
  if (up.holds('/u/a')) up.answer('/u/a')
  await a
  t.ok(await waitFor(() => up.seen.includes('/u/c'), 10_000), 'c gets the slot')
  up.answer('/u/c')
  t.equal(await c, 200)
  t.notOk(up.seen.includes('/u/b'), 'b never reached the upstream')
  t.ok(await waitFor(() => slots.active === 0 && slots.waitingCount === 0, 10_000), 'every slot given back')
})

t.test('hostile: a client that leaves while queued in generation 1 frees its place for generation 2 and never reaches the upstream', async (t) => {
  const up = await holdingUpstream(t)
  const api = { name: 'api', prefix: '/api', upstream: `${up.url}/u`, connections: 1, maxPending: 1, queueTimeout: '60s', timeout: '60s', retries: 0 }
  const shared = new SharedObjects()
  const gw = await started(t, { ...BASE, routes: [api] }, shared)
  const slots = slotsOf(shared, 'api')
  const a = call(`${gw.url}/api/a`)
  t.ok(await waitFor(() => up.holding() === 1, 10_000), 'a is at the upstream')
  const leaver = connect(Number(new URL(gw.url).port), '127.0.0.1')
  leaver.on('error', () => {})
  await once(leaver, 'connect')
  leaver.write('GET /api/b HTTP/1.1\r\nhost: gateway\r\n\r\n')
  t.ok(await waitFor(() => slots.waitingCount === 1, 10_000), 'b waits in generation 1')
  await gw.reload(parseConfig({ ...BASE, routes: [api, { name: 'other', prefix: '/other', upstream: `${up.url}/o` }] }, { env: {} }))
  problem(t, await call(`${gw.url}/api/c`), 503)
  leaver.destroy()
  t.ok(await waitFor(() => slots.waitingCount === 0, 10_000), 'b has left the queue')
  const d = call(`${gw.url}/api/d`)
  t.ok(await waitFor(() => slots.waitingCount === 1, 10_000), 'd, generation 2\'s, takes the freed place')
  up.answer('/u/a')
  t.equal((await a).status, 200)
  t.ok(await waitFor(() => up.holding() === 1, 10_000), 'd is at the upstream')
  up.answer('/u/d')
  t.equal((await d).status, 200)
  t.same(up.seen, ['/u/a', '/u/d'], 'b and c never reached the upstream')
})

t.test('request buffering across a reload: one budget for both generations, and an upload received across it arrives whole', async (t) => {
  const up = await holdingUpstream(t)
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-reload-buffers-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const files = (): string[] => readdirSync(dir).flatMap((d) => readdirSync(join(dir, d)).map((f) => join(dir, d, f)))
  const spooled = (): number => files().reduce((sum, f) => sum + statSync(f).size, 0)
  const server = { ...BASE.server, requestBuffer: '1kb', requestBufferTotal: '64kb', requestBufferDir: dir }
  const api = { name: 'api', prefix: '/api', upstream: `${up.url}/u`, timeout: '60s' }
  const lines: Array<{ msg: string, generation?: number }> = []
  const stream = { write: (line: string) => { lines.push(JSON.parse(line) as typeof lines[number]) } }
  const gw = await startServer(parseConfig({ ...BASE, server, routes: [api] }, { env: {} }), { handleSignals: false, logger: { level: 'info', stream } })
  t.teardown(() => gw.close())
  const put = (path: string, body: Buffer | PassThrough, size: number): Promise<CallResult> =>
    call(`${gw.url}/api${path}`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) }, body })

  // Generation 1 receives 40 KB of a 48 KB upload: past requestBuffer, so into a file.
  const size = 48 * 1024
  const sent = 40 * 1024
  const upload = Buffer.alloc(size)
  for (let i = 0; i < size; i++) upload[i] = (i * 7) % 251
  const body = new PassThrough()
  const big = put('/big', body, size)
  body.write(upload.subarray(0, sent))
  t.ok(await waitFor(() => spooled() === sent, 10_000), '40 KB spooled to a file')

  t.same(await gw.reload(parseConfig({ ...BASE, server, routes: [api, { name: 'other', prefix: '/other', upstream: `${up.url}/o` }] }, { env: {} })), { ok: true, generation: 2 })
  // Generation 2 has the same 64 KB budget, 40 KB of it held by generation 1's upload.
  problem(t, await put('/second', Buffer.alloc(sent, 1), sent), 503)
  t.notOk(up.seen.includes('/u/second'), 'the refused upload never reached the upstream')

  // Generation 1's upload goes on after the reload and reaches the upstream whole.
  body.end(upload.subarray(sent))
  t.ok(await waitFor(() => up.seen.includes('/u/big'), 10_000), 'the upload reached the upstream')
  up.answer('/u/big')
  const res = await big
  t.equal(res.status, 200)
  t.match(res.json, { bytes: size, sha256: createHash('sha256').update(upload).digest('hex') }, 'every byte, in order')
  t.ok(await waitFor(() => files().length === 0, 10_000), 'its file is removed after the request')

  // Generation 1 closes (nothing left in it): the folder is generation 2's too, and stays.
  t.ok(await waitFor(() => lines.some((l) => l.msg === 'old generation closed' && l.generation === 1), 10_000), 'generation 1 closed')
  t.equal(readdirSync(dir).length, 1, 'the spool folder is still there')
  const again = new PassThrough()
  const second = put('/again', again, sent)
  again.write(Buffer.alloc(sent - 1, 2))
  t.ok(await waitFor(() => spooled() === sent - 1, 10_000), 'generation 2 spools into it')
  // The budget is one and whole again: 40 KB held leaves no room for another 40 KB.
  problem(t, await put('/third', Buffer.alloc(sent, 3), sent), 503)
  again.end(Buffer.alloc(1, 2))
  t.ok(await waitFor(() => up.seen.includes('/u/again'), 10_000), 'the second upload reached the upstream')
  up.answer('/u/again')
  t.match((await second).json, { bytes: sent })
  await gw.close()
  t.same(readdirSync(dir), [], 'the folder is removed when the last generation closes')
})

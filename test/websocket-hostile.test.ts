/**
 * WebSocket tunnels under a hostile or unlucky peer, on raw sockets both sides (the test reads
 * every byte the gateway passes): shutdown, reload and closeAll while a handshake waits for the
 * upstream; a close the gateway starts while a frame is under way (the close frame only ever
 * between frames); a side that drops or resets mid-frame; an upstream that does not read (the
 * gateway's buffers stay bounded); another listener on the upgrade socket; an upgrade with a body
 * on an ordinary route; no hook of the websocket plugin on the other routes.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createHash, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { Duplex } from 'node:stream'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import { parseConfig } from '../src/config.js'
import { startServer } from '../src/server.js'
import { startTestGateway, startUpstream, type RawConfig } from './helper.js'
import { waitFor } from './fault-helpers.js'
import { sendRaw } from './raw-http.js'
import { EARLY_BYTES_LIMIT } from '../plugins/websocket/websocket.js'
import { Tunnel } from '../plugins/websocket/tunnel.js'
import { FrameTracker } from '../plugins/websocket/frames.js'

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
/** Every wait in this file: long enough for a loaded 2-core machine, short of the test's timeout. */
const WAIT = 15_000

/** One upgraded connection on the raw upstream: every byte it got, and whether it closed. */
interface UpstreamSide { socket: Socket, bytes: () => Buffer, closed: boolean, ended: boolean }

interface RawUpstream {
  origin: string
  sides: UpstreamSide[]
  /** Upgrade requests that reached it (accepted or still held). */
  upgrades: number
  connections: () => Promise<number>
  /** Accepts the held upgrades (those whose socket is still open). */
  release: () => void
}

/**
 * An upstream that speaks just enough WebSocket: a 101 with the right Sec-WebSocket-Accept, then
 * it records what arrives and never answers a frame. `hold`: upgrades wait for release().
 * `read: false`: it never reads after the 101 (a peer that does not keep up).
 */
async function rawUpstream (t: Test, options: { hold?: boolean, read?: boolean } = {}): Promise<RawUpstream> {
  const server = createServer((_req, res) => { res.end('plain') })
  const sides: UpstreamSide[] = []
  const held: Array<() => void> = []
  const up: RawUpstream = {
    origin: '',
    sides,
    upgrades: 0,
    connections: async () => await new Promise((resolve) => server.getConnections((_e, n) => resolve(n))),
    release: () => { for (const accept of held.splice(0)) accept() }
  }
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    up.upgrades++
    socket.on('error', () => {})
    socket.on('end', () => { socket.end() }) // the server allows half-open sockets: a peer closes when the other side does
    const accept = (): void => {
      if (socket.destroyed) return
      const key = String(req.headers['sec-websocket-key'])
      const chunks: Buffer[] = head.length > 0 ? [head] : []
      const side: UpstreamSide = { socket, bytes: () => Buffer.concat(chunks), closed: false, ended: false }
      sides.push(side)
      socket.on('close', () => { side.closed = true })
      socket.on('end', () => { side.ended = true })
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${createHash('sha1').update(key + GUID).digest('base64')}\r\n\r\n`)
      if (options.read === false) { socket.pause(); return }
      socket.on('data', (d: Buffer) => chunks.push(d))
    }
    if (options.hold === true) held.push(accept)
    else accept()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  up.origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.teardown(async () => {
    server.closeAllConnections()
    for (const side of sides) side.socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return up
}

/** A client on a raw socket: every byte the gateway sent it, and whether the connection closed. */
interface RawClient { socket: Socket, bytes: () => Buffer, closed: () => boolean, ended: () => boolean }

/** `halfOpen`: the client does not end its side when the gateway ends its own (it keeps quiet instead). */
async function rawClient (t: Test, port: number, halfOpen = false): Promise<RawClient> {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: halfOpen })
  socket.on('error', () => {})
  t.teardown(() => { socket.destroy() })
  const chunks: Buffer[] = []
  let closed = false
  let ended = false
  socket.on('data', (d: Buffer) => chunks.push(d))
  socket.on('end', () => { ended = true })
  socket.on('close', () => { closed = true })
  await once(socket, 'connect')
  socket.write(`GET /ws/x HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`)
  return { socket, bytes: () => Buffer.concat(chunks), closed: () => closed, ended: () => ended }
}

/** The bytes after the answer's head (the tunnel's), once the head is in; null before. */
function afterHead (bytes: Buffer): Buffer | null {
  const at = bytes.indexOf('\r\n\r\n')
  return at === -1 ? null : bytes.subarray(at + 4)
}

async function opened (t: Test, port: number, halfOpen = false): Promise<RawClient> {
  const client = await rawClient(t, port, halfOpen)
  t.ok(await waitFor(() => afterHead(client.bytes()) !== null, WAIT), 'the 101 arrived')
  t.match(client.bytes().toString('latin1'), /^HTTP\/1\.1 101 /)
  return client
}

/** A frame's header announcing `length` payload bytes (binary, FIN), masked when from a client. */
function frameHeader (length: number, masked: boolean): Buffer {
  const len = length < 126 ? [length] : length < 65536 ? [126, length >> 8, length & 0xff] : [127, 0, 0, 0, 0, (length >>> 24) & 0xff, (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff]
  const header = Buffer.from([0x82, (masked ? 0x80 : 0) | len[0], ...len.slice(1)])
  return masked ? Buffer.concat([header, Buffer.from([1, 2, 3, 4])]) : header
}

/** A whole frame (the mask key 1,2,3,4 when masked: the payload is masked with it). */
function frame (payload: Buffer, masked: boolean): Buffer {
  const body = masked ? Buffer.from(payload.map((b, i) => b ^ (i % 4 + 1))) : payload
  return Buffer.concat([frameHeader(payload.length, masked), body])
}

interface Frame { opcode: number, payload: Buffer }

/** RFC 6455 frames in `bytes`, unmasked, and what is left after the last whole one. */
function parseFrames (bytes: Buffer): { frames: Frame[], rest: Buffer } {
  const frames: Frame[] = []
  let i = 0
  for (;;) {
    if (bytes.length - i < 2) break
    const masked = (bytes[i + 1] & 0x80) !== 0
    const len7 = bytes[i + 1] & 0x7f
    const extra = len7 === 126 ? 2 : len7 === 127 ? 8 : 0
    const headerSize = 2 + extra + (masked ? 4 : 0)
    if (bytes.length - i < headerSize) break
    const length = len7 === 126 ? bytes.readUInt16BE(i + 2) : len7 === 127 ? Number(bytes.readBigUInt64BE(i + 2)) : len7
    if (bytes.length - i - headerSize < length) break
    const key = bytes.subarray(i + 2 + extra, i + 2 + extra + 4)
    const raw = bytes.subarray(i + headerSize, i + headerSize + length)
    frames.push({ opcode: bytes[i] & 0x0f, payload: masked ? Buffer.from(raw.map((b, j) => b ^ key[j % 4])) : Buffer.from(raw) })
    i += headerSize + length
  }
  return { frames, rest: bytes.subarray(i) }
}

/** Polls (bounded) until the upstream has no TCP connection open. */
async function noConnections (up: RawUpstream): Promise<boolean> {
  const deadline = Date.now() + WAIT
  while (Date.now() < deadline) {
    if (await up.connections() === 0) return true
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return false
}

function closeCode (f: Frame | undefined): number { return f === undefined || f.opcode !== 8 ? -1 : f.payload.readUInt16BE(0) }

async function gateway (t: Test, origin: string, websocket: RawConfig | true = true, extra: RawConfig = {}, routeExtra: RawConfig = {}): Promise<{ app: FastifyInstance, port: number }> {
  const { app, url } = await startTestGateway(t, { ...extra, routes: [{ name: 'chat', prefix: '/ws', upstream: `${origin}/socket`, websocket, ...routeExtra }, ...((extra.routes as unknown[] | undefined) ?? [])] })
  return { app, port: Number(new URL(url).port) }
}

function answer (client: RawClient): { status: number, contentType: string, body: string } {
  const text = client.bytes().toString('latin1')
  const at = text.indexOf('\r\n\r\n')
  return { status: Number(/^HTTP\/1\.1 ([0-9]{3}) /.exec(text)?.[1] ?? 0), contentType: /content-type: ([^\r]*)/i.exec(text)?.[1] ?? '', body: at === -1 ? '' : text.slice(at + 4) }
}

async function assertShuttingDown (t: Test, client: RawClient): Promise<void> {
  t.ok(await waitFor(() => client.closed(), WAIT), 'the client\'s connection closed')
  const res = answer(client)
  if (res.status === 0) { t.pass('its socket was closed'); return }
  t.equal(res.status, 503, '503')
  t.match(res.contentType, /^application\/problem\+json/)
  t.match(JSON.parse(res.body), { status: 503, detail: /shutting down/ })
}

// --- handshakes in progress when the gateway closes ----------------------------------------------

t.test('closeAll gives up a handshake still waiting for the upstream: the client gets 503 at once, no tunnel opens later, new upgrades get 503', async (t) => {
  const up = await rawUpstream(t, { hold: true })
  const { app, port } = await gateway(t, up.origin, true, {}, { timeout: '60s' })
  const client = await rawClient(t, port)
  t.ok(await waitFor(() => up.upgrades === 1, WAIT), 'the handshake reached the upstream, which holds it')
  t.equal(app.websockets?.open(), 1)
  let done = false
  const closing = app.websockets?.closeAll().then(() => { done = true })
  t.ok(await waitFor(() => done, WAIT), 'closeAll resolved while the upstream still held the handshake (not after routes[].timeout)')
  await closing
  await assertShuttingDown(t, client)
  up.release()
  t.ok(await waitFor(() => app.websockets?.open() === 0, WAIT), 'nothing open')
  t.ok(await waitFor(() => up.sides.every((s) => s.closed), WAIT), 'an upstream that answers late has its connection closed')
  t.ok(await noConnections(up), 'no upstream connection left (the pool\'s idle one goes after its keep-alive)')
  const late = await sendRaw(port, `GET /ws/y HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`)
  t.equal(late.status, 503, 'an upgrade after closeAll: 503')
  t.equal(up.upgrades, 1, 'and never at the upstream')
})

t.test('app.close() with a handshake waiting for the upstream finishes without waiting for it', async (t) => {
  const up = await rawUpstream(t, { hold: true })
  const { app, port } = await gateway(t, up.origin, true, {}, { timeout: '60s' })
  const client = await rawClient(t, port)
  t.ok(await waitFor(() => up.upgrades === 1, WAIT))
  let done = false
  const closing = app.close().then(() => { done = true })
  t.ok(await waitFor(() => done, WAIT), 'closed while the upstream still held the handshake')
  await closing
  await assertShuttingDown(t, client)
  up.release()
  t.ok(await waitFor(() => up.sides.every((s) => s.closed), WAIT))
})

t.test('reload: the retiring generation gives up its waiting handshake after the grace, and no tunnel opens on it', async (t) => {
  const up = await rawUpstream(t, { hold: true })
  const config = parseConfig({ logging: { level: 'silent' }, server: { shutdownGrace: '1s' }, routes: [{ name: 'chat', prefix: '/ws', upstream: `${up.origin}/s`, websocket: true, timeout: '60s' }] }, { env: {} })
  const gw = await startServer(config, { handleSignals: false, logger: false })
  t.teardown(() => gw.close())
  const old = gw.app
  const client = await rawClient(t, Number(new URL(gw.url).port))
  t.ok(await waitFor(() => up.upgrades === 1, WAIT))
  t.same(await gw.reload(config), { ok: true, generation: 2 })
  await assertShuttingDown(t, client)
  up.release()
  t.ok(await waitFor(() => old.websockets?.open() === 0, WAIT), 'nothing open on the old generation')
  t.ok(await waitFor(() => up.sides.every((s) => s.closed), WAIT), 'the late 101\'s connection is closed')
})

// --- a close the gateway starts while a frame is under way --------------------------------------

t.test('frame tracker: feedToBoundary stops where the frame under way ends, across split headers and zero-length frames', async (t) => {
  const tracker = new FrameTracker()
  t.equal(tracker.feedToBoundary(Buffer.from([0x81])), 0, 'between frames: nothing to feed')
  const a = frame(randomBytes(300), true)
  const b = frame(Buffer.alloc(0), true)
  tracker.feed(a.subarray(0, 3)) // inside the 16-bit length
  t.equal(tracker.feedToBoundary(a.subarray(3, 100)), -1, 'the frame goes on past this chunk')
  t.equal(tracker.feedToBoundary(Buffer.concat([a.subarray(100), b])), a.length - 100, 'it ends inside the next chunk: that many of its bytes')
  t.ok(tracker.atBoundary())
  tracker.feed(b.subarray(0, 1))
  t.equal(tracker.feedToBoundary(b.subarray(1)), b.length - 1, 'a zero-length frame ends with its header')
  t.ok(tracker.atBoundary())
})

t.test('shutdown mid-frame: the rest of the frame passes, then the close frame — never inside the frame — and nothing after it', async (t) => {
  const up = await rawUpstream(t)
  const { app, port } = await gateway(t, up.origin)
  const client = await opened(t, port)
  t.ok(await waitFor(() => up.sides.length === 1, WAIT))
  const payload = randomBytes(1000)
  const whole = frame(payload, true)
  const cut = 6 + 300
  client.socket.write(whole.subarray(0, cut))
  t.ok(await waitFor(() => up.sides[0].bytes().length === cut, WAIT), 'the header and 300 bytes passed')
  const closing = app.websockets?.closeAll()
  // The rest of the frame, then one more frame: the gateway reads them after its close began.
  client.socket.write(Buffer.concat([whole.subarray(cut), frame(Buffer.from('after the close'), true)]))
  t.ok(await waitFor(() => up.sides[0].ended || up.sides[0].closed, WAIT), 'the upstream connection ends')
  const { frames, rest } = parseFrames(up.sides[0].bytes())
  t.equal(frames.length, 2, 'two frames')
  t.ok(frames[0]?.payload.equals(payload), 'the frame whole and unchanged')
  t.equal(closeCode(frames[1]), 1001, 'then the gateway\'s 1001')
  t.equal(rest.length, 0, 'nothing after it')
  t.equal(up.sides[0].closed || up.sides[0].ended, true)
  const down = parseFrames(afterHead(client.bytes()) ?? Buffer.alloc(0))
  t.equal(closeCode(down.frames[0]), 1001, 'the client got 1001 (the stream toward it was between frames)')
  client.socket.end()
  up.sides[0].socket.end()
  await closing
  t.equal(app.websockets?.open(), 0)
})

t.test('shutdown mid-frame, the frame never ends: after the bounded wait the upstream connection is closed, with no close frame in the payload', async (t) => {
  const up = await rawUpstream(t)
  const { app, port } = await gateway(t, up.origin)
  const client = await opened(t, port, true) // it neither finishes the frame nor leaves
  t.ok(await waitFor(() => up.sides.length === 1, WAIT))
  const sent = frame(randomBytes(1000), true).subarray(0, 6 + 300)
  client.socket.write(sent)
  t.ok(await waitFor(() => up.sides[0].bytes().length === sent.length, WAIT))
  let done = false
  const closing = app.websockets?.closeAll().then(() => { done = true })
  t.ok(await waitFor(() => client.ended(), WAIT), 'the client, between frames, gets its close frame and FIN')
  t.ok(await waitFor(() => up.sides[0].closed, WAIT), 'the upstream connection is closed once the wait for the frame\'s end runs out')
  t.ok(up.sides[0].bytes().equals(sent), 'it got exactly the bytes the client sent: no close frame spliced into the payload')
  t.equal(closeCode(parseFrames(afterHead(client.bytes()) ?? Buffer.alloc(0)).frames[0]), 1001, 'after its 1001')
  client.socket.end()
  t.ok(await waitFor(() => done, WAIT), 'closeAll resolves')
  await closing
})

t.test('idle timeout mid-frame: the upstream gets no close frame inside the payload; the connection is closed', async (t) => {
  const up = await rawUpstream(t)
  const { app, port } = await gateway(t, up.origin, { idleTimeout: '300ms' })
  const client = await opened(t, port, true)
  t.ok(await waitFor(() => up.sides.length === 1, WAIT))
  const sent = frame(randomBytes(70_000), true).subarray(0, 14 + 1000) // a 64-bit length header
  client.socket.write(sent)
  t.ok(await waitFor(() => up.sides[0].closed, WAIT), 'closed after the idle timeout and the bounded wait')
  t.ok(up.sides[0].bytes().equals(sent), 'exactly what the client sent')
  t.equal(closeCode(parseFrames(afterHead(client.bytes()) ?? Buffer.alloc(0)).frames[0]), 1001, 'the client, between frames, got 1001')
  client.socket.destroy()
  t.ok(await waitFor(() => app.websockets?.open() === 0, WAIT), 'nothing open')
})

t.test('the upstream drops mid-frame: the client gets no 1014 inside the payload, its connection is closed; a client reset mid-frame likewise', async (t) => {
  const up = await rawUpstream(t)
  const { app, port } = await gateway(t, up.origin)
  const client = await opened(t, port)
  t.ok(await waitFor(() => up.sides.length === 1, WAIT))
  const partial = frame(randomBytes(500), false).subarray(0, 4 + 100)
  up.sides[0].socket.write(partial)
  t.ok(await waitFor(() => afterHead(client.bytes())?.length === partial.length, WAIT))
  up.sides[0].socket.destroy()
  t.ok(await waitFor(() => client.closed(), WAIT), 'the client\'s connection is closed')
  t.ok(afterHead(client.bytes())?.equals(partial), 'exactly what the upstream sent, no close frame after the cut')

  const other = await opened(t, port)
  t.ok(await waitFor(() => up.sides.length === 2, WAIT))
  const sent = frame(randomBytes(500), true).subarray(0, 8 + 100)
  other.socket.write(sent)
  t.ok(await waitFor(() => up.sides[1].bytes().length === sent.length, WAIT))
  other.socket.resetAndDestroy()
  t.ok(await waitFor(() => up.sides[1].closed, WAIT), 'the upstream connection is closed')
  t.ok(up.sides[1].bytes().equals(sent), 'exactly what the client sent, no 1001 after the cut')
  t.ok(await waitFor(() => app.websockets?.open() === 0, WAIT), 'no tunnel left')
  t.ok(await noConnections(up), 'no upstream connection left')
})

t.test('a side that resets while the gateway waits for its frame to end: the other side is closed, no close frame spliced', async (t) => {
  const up = await rawUpstream(t)
  const { app, port } = await gateway(t, up.origin, true, { server: { shutdownGrace: '20s' } })
  const client = await opened(t, port)
  t.ok(await waitFor(() => up.sides.length === 1, WAIT))
  const sent = frame(randomBytes(1000), true).subarray(0, 8 + 10)
  client.socket.write(sent)
  t.ok(await waitFor(() => up.sides[0].bytes().length === sent.length, WAIT))
  const closing = app.websockets?.closeAll()
  client.socket.resetAndDestroy()
  t.ok(await waitFor(() => up.sides[0].closed, WAIT), 'the upstream connection is closed')
  t.ok(up.sides[0].bytes().equals(sent), 'exactly what the client sent')
  await closing
  t.equal(app.websockets?.open(), 0)
})

// --- backpressure ---------------------------------------------------------------------------------

const silent = { info () {}, warn () {}, error () {}, debug () {}, trace () {}, fatal () {}, child () { return silent }, level: 'silent', silent () {} } as unknown as FastifyBaseLogger

/** A Duplex whose writes are never acknowledged (a peer that does not read), readable by push(). */
function stuckPeer (): Duplex {
  return new Duplex({ read () {}, write (_chunk, _enc, _cb) {}, writableHighWaterMark: 1024 })
}

t.test('tunnel start: early bytes that fill the upstream\'s buffer keep the client paused until it drains', async (t) => {
  const client = new Duplex({ read () {}, write (_chunk, _enc, cb) { cb() } })
  const upstream = stuckPeer()
  const counters = { open: 1, bytesUp: 0, bytesDown: 0 }
  const tunnel = new Tunnel(client, upstream, { idleTimeoutMs: 60_000, closeWaitMs: 100, boundaryWaitMs: 50, counters, log: silent, onClosed: () => {} })
  tunnel.start([Buffer.alloc(4096)])
  t.equal(upstream.writableLength, 4096, 'the early bytes wait in the upstream\'s buffer')
  t.ok(client.isPaused(), 'the client is not read meanwhile')
  for (let i = 0; i < 8; i++) client.push(Buffer.alloc(64 * 1024))
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(upstream.writableLength, 4096, 'nothing more was taken from the client')
  t.equal(counters.bytesUp, 4096)
  client.destroy()
  upstream.destroy()
})

t.test('an upstream that does not read: a client that floods fills the kernel\'s buffers, not the gateway\'s memory', async (t) => {
  const up = await rawUpstream(t, { read: false })
  // A client that leaves is noticed once the gateway reads it again: the idle timeout bounds that here.
  const { app, port } = await gateway(t, up.origin, { idleTimeout: '5s' }, { server: { shutdownGrace: '2s' } })
  // Frames sent before the 101 too, up to the early limit: they go first, into a peer that is not reading.
  const client = await rawClient(t, port)
  client.socket.write(Buffer.alloc(EARLY_BYTES_LIMIT - 1024))
  t.ok(await waitFor(() => afterHead(client.bytes()) !== null, WAIT), '101')
  const chunk = Buffer.alloc(256 * 1024)
  let written = 0
  let stalled = false
  // Bounded: at most 256 MB, or until the client's writes stop draining for a second.
  while (written < 256 * 1024 * 1024) {
    written += chunk.length
    if (client.socket.write(chunk)) continue
    let drained = false
    client.socket.once('drain', () => { drained = true })
    if (!(await waitFor(() => drained, 1_000))) { stalled = true; break }
  }
  t.ok(stalled, `the client stalled after ${Math.round(written / 1024)} KB: backpressure reached it`)
  const tunnels = (app.websockets as unknown as { tunnels: Set<Tunnel> }).tunnels
  t.equal(tunnels.size, 1)
  for (const tunnel of tunnels) {
    t.ok(tunnel.upstream.writableLength <= EARLY_BYTES_LIMIT + 2 * 64 * 1024, `the gateway holds ${tunnel.upstream.writableLength} bytes for the upstream`)
    t.ok(tunnel.client.readableLength <= 2 * 64 * 1024, `and ${tunnel.client.readableLength} read from the client`)
  }
  client.socket.destroy()
  t.ok(await waitFor(() => app.websockets?.open() === 0, 2 * WAIT), 'closed, nothing left')
})

// --- the upgrade socket, the listener, the hooks --------------------------------------------------

t.test('another listener\'s data and end handlers on the upgrade socket survive the 101 (only the gateway\'s own are removed)', async (t) => {
  const up = await rawUpstream(t)
  const { app, port } = await gateway(t, up.origin)
  const seen: Buffer[] = []
  let ended = false
  app.server.on('upgrade', (_req: IncomingMessage, socket: Socket) => {
    socket.on('data', (d: Buffer) => seen.push(d))
    socket.on('end', () => { ended = true })
  })
  const client = await opened(t, port)
  t.ok(await waitFor(() => up.sides.length === 1, WAIT))
  const message = frame(Buffer.from('after the 101'), true)
  client.socket.write(message)
  t.ok(await waitFor(() => up.sides[0].bytes().equals(message), WAIT), 'the frame reached the upstream')
  t.ok(Buffer.concat(seen).includes(message), 'the other listener saw it too')
  client.socket.end()
  t.ok(await waitFor(() => ended, WAIT), 'and the client\'s FIN')
})

t.test('an upgrade with a body is 400 problem+json on any route, before routing: an ordinary route would have sent it without its body', async (t) => {
  const up = await rawUpstream(t)
  const plain = await startUpstream(t)
  const { port } = await gateway(t, up.origin, true, { routes: [{ name: 'plain', prefix: '/plain', upstream: `${plain.origin}/p`, methods: ['GET', 'POST'] }] })
  for (const [method, path] of [['POST', '/plain/x'], ['GET', '/plain/x'], ['GET', '/ws/x'], ['GET', '/nowhere']]) {
    const res = await sendRaw(port, `${method} ${path} HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Request-Id: mine-1\r\nContent-Length: 5\r\n\r\nhello`)
    t.equal(res.status, 400, `${method} ${path}: 400`)
    t.match(res.headers['content-type'], /^application\/problem\+json/)
    t.match(JSON.parse(res.body), { status: 400, type: 'urn:portcullis:problem:bad-request', detail: /must not have a body/, instance: path, requestId: 'mine-1' })
    t.equal(res.headers['x-request-id'], 'mine-1')
    t.equal(res.headers['x-content-type-options'], 'nosniff', 'with the security headers')
    t.equal(res.headers.connection, 'close')
  }
  t.equal(plain.requests.length, 0, 'the ordinary route\'s upstream saw none')
  t.equal(up.upgrades, 0)
})

t.test('only websocket routes have a hook of the websocket plugin; the other requests meet none', async (t) => {
  const up = await rawUpstream(t)
  const plain = await startUpstream(t)
  const { app } = await gateway(t, up.origin, true, { routes: [{ name: 'plain', prefix: '/plain', upstream: `${plain.origin}/p` }] })
  const print = app.printRoutes({ includeHooks: true, commonPrefix: false })
  /** The onRequest hooks printed under a route's first line. */
  const onRequest = (path: string): string[] => {
    const found = new RegExp(`${path} \\([^)]*\\)\\n[^\\n]*\\(onRequest\\) (\\[[^\\]]*\\])`).exec(print)
    return found === null ? [] : JSON.parse(found[1]) as string[]
  }
  const ws = onRequest('/ws')
  const other = onRequest('/plain')
  const health = onRequest('/healthz')
  t.ok(ws.includes('websocketRouteHook()'), `the websocket route: ${ws.join(', ')}`)
  t.ok(other.length > 0 && health.length > 0, 'the other routes\' hooks were found')
  t.same(other.filter((h) => !ws.includes(h) || /websocket|upgrade/i.test(h)), [], `an ordinary route: ${other.join(', ')} — none of the websocket plugin's`)
  t.same(health.filter((h) => /websocket|upgrade/i.test(h)), [], 'nor the gateway\'s own endpoints')
})

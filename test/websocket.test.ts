/**
 * WebSocket routes (routes[].websocket) against a real `ws` server as the upstream: the upgrade
 * passes the route's pipeline (401/403/429 never reach the upstream, identity headers and
 * X-Request-Id do), subprotocols and permessage-deflate negotiated end to end, frames echoed
 * untouched (5 MB with backpressure), close codes both ways, the idle timeout, the cap, shutdown's
 * 1001, 1,000 tunnels with no socket left; and what a hostile client sends: a body, a bad key or
 * version, a slow head, an abort mid-handshake, frames before the 101.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import { ConfigError, parseConfig } from '../src/config.js'
import { startTestGateway, startUpstream, type RawConfig } from './helper.js'
import { buildGateway } from '../src/app.js'
import fp from 'fastify-plugin'
import { hsToken, SECRET } from './auth-helper.js'
import { sendRaw } from './raw-http.js'
import { FrameTracker, closeFrame } from '../plugins/websocket/frames.js'
import { EARLY_BYTES_LIMIT } from '../plugins/websocket/websocket.js'

interface WsUpstream {
  server: Server
  wss: WebSocketServer
  origin: string
  /** The head of every upgrade request that reached the upstream (accepted or not). */
  upgrades: IncomingHttpHeaders[]
  /** Every connection the upstream accepted, with the close code it saw. */
  sockets: WebSocket[]
  closes: number[]
  /** Open TCP connections on the upstream now. */
  connections: () => Promise<number>
}

interface WsUpstreamOptions {
  perMessageDeflate?: boolean
  /** Answer the upgrade with this status instead of accepting it. */
  refuse?: number
  /** Called before the upstream accepts (a delay, say). */
  beforeAccept?: (req: IncomingMessage) => Promise<void>
  onConnection?: (ws: WebSocket) => void
}

async function wsUpstream (t: Test, options: WsUpstreamOptions = {}): Promise<WsUpstream> {
  const server = createServer((_req, res) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('plain http') })
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 16 * 1024 * 1024,
    perMessageDeflate: options.perMessageDeflate === true,
    handleProtocols: (offered) => offered.has('chat.v2') ? 'chat.v2' : false
  })
  const upgrades: IncomingHttpHeaders[] = []
  const sockets: WebSocket[] = []
  const closes: number[] = []
  server.on('upgrade', (req: IncomingMessage, socket, head) => {
    upgrades.push(req.headers)
    socket.on('error', () => {})
    if (options.refuse !== undefined) {
      socket.end(`HTTP/1.1 ${options.refuse} Nope\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope`)
      return
    }
    const accept = (): void => {
      if (socket.destroyed) return
      wss.handleUpgrade(req, socket, head, (ws) => {
        sockets.push(ws)
        ws.on('close', (code) => { closes.push(code) })
        if (options.onConnection !== undefined) options.onConnection(ws)
        else ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
      })
    }
    if (options.beforeAccept === undefined) accept()
    else options.beforeAccept(req).then(accept, () => socket.destroy())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  t.teardown(async () => {
    for (const ws of sockets) ws.terminate()
    wss.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const connections = async (): Promise<number> => await new Promise((resolve) => server.getConnections((_e, n) => resolve(n)))
  return { server, wss, origin: `http://127.0.0.1:${port}`, upgrades, sockets, closes, connections }
}

function route (origin: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: 'chat', prefix: '/ws', upstream: `${origin}/socket`, websocket: true, ...extra }
}

async function gateway (t: Test, up: WsUpstream, routeExtra: Record<string, unknown> = {}, extra: RawConfig = {}): Promise<{ app: FastifyInstance, url: string, ws: string, port: number }> {
  const { app, url } = await startTestGateway(t, { ...extra, routes: [route(up.origin, routeExtra), ...((extra.routes as unknown[] | undefined) ?? [])] })
  return { app, url, ws: url.replace(/^http/, 'ws'), port: Number(new URL(url).port) }
}

interface Refusal { status: number, headers: IncomingHttpHeaders, body: string }

/** Opens a WebSocket; resolves with it once open, or with the HTTP answer that refused it. */
async function open (address: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}): Promise<WebSocket | Refusal> {
  const { protocols, ...rest } = options
  const ws = new WebSocket(address, protocols, { perMessageDeflate: false, ...rest })
  return await new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws))
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }))
    })
    ws.once('error', reject)
  })
}

async function opened (t: Test, address: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}): Promise<WebSocket> {
  const ws = await open(address, options)
  if (!(ws instanceof WebSocket)) throw new Error(`refused: ${ws.status} ${ws.body}`)
  t.teardown(() => { ws.terminate() })
  return ws
}

async function refused (address: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}): Promise<Refusal> {
  const res = await open(address, options)
  if (res instanceof WebSocket) { res.terminate(); throw new Error('the upgrade was accepted') }
  return res
}

async function echo (ws: WebSocket, data: string | Buffer): Promise<{ data: RawData, binary: boolean }> {
  const reply = once(ws, 'message') as Promise<[RawData, boolean]>
  ws.send(data)
  const [got, binary] = await reply
  return { data: got, binary }
}

async function closed (ws: WebSocket): Promise<number> {
  if (ws.readyState === WebSocket.CLOSED) throw new Error('already closed')
  const [code] = await once(ws, 'close') as [number, Buffer]
  return code
}

/** Polls until `probe` is true (the test's own timeout bounds it); no timing is asserted. */
async function until (probe: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await probe())) await new Promise((resolve) => setTimeout(resolve, 20))
}

function assertProblem (t: Test, res: { status: number, headers: Record<string, unknown>, body: string }, status: number, type: string): void {
  t.equal(res.status, status, `status ${status}`)
  t.match(String(res.headers['content-type']), /^application\/problem\+json/, 'problem+json')
  t.match(JSON.parse(res.body), { status, type: `urn:portcullis:problem:${type}` })
}

/** A raw handshake (what ws would never send), on a socket the test reads itself. */
function handshake (path: string, headers: Record<string, string> = {}): string {
  const all: Record<string, string> = {
    host: 'gateway',
    connection: 'Upgrade',
    upgrade: 'websocket',
    'sec-websocket-version': '13',
    'sec-websocket-key': randomBytes(16).toString('base64'),
    ...headers
  }
  return `GET ${path} HTTP/1.1\r\n${Object.entries(all).filter(([, v]) => v !== '').map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`
}

/** An upstream that holds every upgrade until `release()`; `reached` resolves when the first arrives. */
async function heldUpstream (t: Test): Promise<{ up: WsUpstream, reached: Promise<void>, release: () => void }> {
  let arrived: () => void = () => {}
  const reached = new Promise<void>((resolve) => { arrived = resolve })
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const up = await wsUpstream(t, { beforeAccept: async () => { arrived(); await held } })
  return { up, reached, release }
}

/** A connection to the gateway that has sent `bytes`. */
async function rawSocket (port: number, bytes: string): Promise<Socket> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write(bytes)
  return socket
}

/** A masked client text frame. */
function clientFrame (text: string): Buffer {
  const payload = Buffer.from(text)
  const mask = randomBytes(4)
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked])
}

t.test('text, binary and a 5 MB frame echo untouched; subprotocol and permessage-deflate negotiated end to end', async (t) => {
  const up = await wsUpstream(t, { perMessageDeflate: true })
  const { ws: base, app } = await gateway(t, up)
  let handshakeId = ''
  const ws = new WebSocket(`${base}/ws/room?x=1`, ['chat.v1', 'chat.v2'], { perMessageDeflate: true, maxPayload: 16 * 1024 * 1024 })
  ws.once('upgrade', (res) => { handshakeId = String(res.headers['x-request-id']) })
  await once(ws, 'open')
  t.teardown(() => { ws.terminate() })
  t.equal(ws.protocol, 'chat.v2', 'the upstream chose the subprotocol')
  t.match(ws.extensions, /^permessage-deflate/, 'the client agreed permessage-deflate with the upstream')
  t.match(String(up.upgrades[0]['sec-websocket-extensions']), /permessage-deflate/, 'the offer reached the upstream')
  t.equal(up.upgrades[0]['x-request-id'], handshakeId, 'the upstream and the client see the same X-Request-Id')
  t.equal(up.upgrades[0].upgrade, 'websocket')
  t.equal(up.upgrades[0]['x-forwarded-for'], '127.0.0.1')
  const text = await echo(ws, 'héllo')
  t.equal(text.data.toString(), 'héllo')
  t.equal(text.binary, false, 'a text frame stays text')
  const bytes = randomBytes(1024)
  const bin = await echo(ws, bytes)
  t.equal(bin.binary, true)
  t.same(Buffer.from(bin.data as Buffer), bytes)
  const big = randomBytes(5 * 1024 * 1024)
  const large = await echo(ws, big)
  t.equal((large.data as Buffer).length, big.length, '5 MB back')
  t.ok(Buffer.from(large.data as Buffer).equals(big), '5 MB unchanged')
  t.equal(app.websockets?.open(), 1)
  ws.close(1000)
  await closed(ws)
  await until(() => app.websockets?.open() === 0)
  t.ok(up.upgrades.length === 1)
})

t.test('the upgrade passes auth, scopes and the rate limit: 401, 403 and 429 are problem+json, never a 101, and never reach the upstream', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base } = await gateway(t, up, {
    auth: ['jwt'],
    scopes: { GET: ['chat:read'] },
    rateLimit: { max: 3, window: '1m', by: 'ip' }
  }, { jwt: { algorithms: ['HS256'], secret: SECRET } })
  const none = await refused(`${base}/ws/room`)
  assertProblem(t, { ...none, headers: none.headers as Record<string, unknown> }, 401, 'unauthorized')
  t.match(String(none.headers['www-authenticate']), /^Bearer/)
  t.equal(none.headers.connection, 'close', 'the refusal closes the connection')
  const noScope = await refused(`${base}/ws/room`, { headers: { authorization: `Bearer ${hsToken({ sub: 'eve', scope: 'other' })}` } })
  assertProblem(t, { ...noScope, headers: noScope.headers as Record<string, unknown> }, 403, 'forbidden')
  t.equal(up.upgrades.length, 0, 'the upstream saw neither')
  const token = hsToken({ sub: 'alice', scope: 'chat:read' })
  const ws = await opened(t, `${base}/ws/room`, {
    headers: { authorization: `Bearer ${token}`, 'x-authenticated-user': 'admin', 'x-authenticated-scopes': 'admin', 'X-Authenticated_User': 'root' }
  })
  t.equal((await echo(ws, 'in')).data.toString(), 'in')
  const seen = up.upgrades[0]
  t.equal(seen['x-authenticated-user'], 'alice', 'identity header set by the gateway')
  t.equal(seen['x-authenticated-scopes'], 'chat:read', 'client-sent copy replaced')
  t.equal(seen['x-authenticated_user'], undefined, 'underscore spelling dropped')
  t.match(String(seen.traceparent ?? ''), /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, 'trace context sent')
  const limited = await refused(`${base}/ws/room`, { headers: { authorization: `Bearer ${token}` } })
  assertProblem(t, { ...limited, headers: limited.headers as Record<string, unknown> }, 429, 'rate-limited')
  t.match(String(limited.headers['retry-after']), /^[0-9]+$/)
  t.equal(up.upgrades.length, 1, 'only the accepted upgrade reached the upstream')
})

t.test('hostile: a page on another origin cannot open a tunnel with the user\'s cookie (cross-site WebSocket hijacking): 403 before the upstream', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, port } = await gateway(t, up, { auth: ['jwt'] }, { jwt: { algorithms: ['HS256'], secret: SECRET, cookie: 'session' } })
  const cookie = `session=${hsToken({ sub: 'alice', scope: '' })}`
  // What a browser sends from https://evil.example: the user's cookie, and the page's Origin.
  for (const origin of ['https://evil.example', 'null', `http://127.0.0.1:${port}.evil.example`, `http://127.0.0.1:${port + 1}`, 'https://127.0.0.1']) {
    const res = await refused(`${base}/ws/room`, { headers: { cookie }, origin })
    assertProblem(t, { ...res, headers: res.headers as Record<string, unknown> }, 403, 'forbidden')
    t.match(res.body, /Origin/, `${origin}: refused, and why`)
  }
  t.equal(up.upgrades.length, 0, 'no cross-origin upgrade reached the upstream')
  // The page's own origin (Origin naming the Host asked for), and a client without Origin (not a browser).
  t.equal((await echo(await opened(t, `${base}/ws/room`, { headers: { cookie }, origin: `http://127.0.0.1:${port}` }), 'same')).data.toString(), 'same')
  t.equal((await echo(await opened(t, `${base}/ws/room`, { headers: { cookie }, origin: `HTTP://127.0.0.1:${port}` }), 'case')).data.toString(), 'case')
  t.equal((await echo(await opened(t, `${base}/ws/room`, { headers: { cookie } }), 'cli')).data.toString(), 'cli')
  t.equal(up.upgrades.length, 3)
})

t.test('websocket.origins, else routes[].cors.origins, lists the other pages that may open a tunnel', async (t) => {
  const up = await wsUpstream(t)
  const { ws: listed } = await gateway(t, up, { websocket: { origins: ['https://app.example.com'] } })
  t.equal((await echo(await opened(t, `${listed}/ws/a`, { origin: 'https://app.example.com' }), 'ok')).data.toString(), 'ok')
  t.equal((await refused(`${listed}/ws/a`, { origin: 'https://other.example.com' })).status, 403)
  const { ws: cors } = await gateway(t, up, { cors: { origins: ['https://spa.example.com'] } })
  t.equal((await echo(await opened(t, `${cors}/ws/a`, { origin: 'https://spa.example.com' }), 'cors')).data.toString(), 'cors')
  t.equal((await refused(`${cors}/ws/a`, { origin: 'https://app.example.com' })).status, 403)
  const { ws: any } = await gateway(t, up, { websocket: { origins: ['*'] } })
  t.equal((await echo(await opened(t, `${any}/ws/a`, { origin: 'https://anywhere.example' }), 'any')).data.toString(), 'any')
  t.equal(up.upgrades.length, 3, 'only the allowed ones reached the upstream')
})

t.test('close codes pass both ways; an upstream that drops gives the client 1014', async (t) => {
  let serverSide: WebSocket | null = null
  const up = await wsUpstream(t, { onConnection: (ws) => { serverSide = ws; ws.on('message', (d) => { if (d.toString() === 'bye') ws.close(4001, 'upstream says bye'); if (d.toString() === 'drop') ws.terminate() }) } })
  const { ws: base, app } = await gateway(t, up)

  const a = await opened(t, `${base}/ws/a`)
  const aClosed = new Promise<[number, string]>((resolve) => a.once('close', (code, reason) => resolve([code, reason.toString()])))
  a.send('bye')
  t.same(await aClosed, [4001, 'upstream says bye'], 'the upstream\'s close frame reaches the client untouched')

  const b = await opened(t, `${base}/ws/b`)
  await until(() => up.sockets.length === 2)
  const bServer = serverSide as unknown as WebSocket
  const upstreamSaw = new Promise<[number, string]>((resolve) => bServer.once('close', (code, reason) => resolve([code, reason.toString()])))
  b.close(4002, 'client says bye')
  t.same(await upstreamSaw, [4002, 'client says bye'], 'the client\'s close frame reaches the upstream untouched')
  await closed(b).catch(() => {})

  const c = await opened(t, `${base}/ws/c`)
  const cClosed = closed(c)
  c.send('drop')
  t.equal(await cClosed, 1014, 'TCP drop of the upstream: the client gets 1014 (bad gateway)')
  await until(() => app.websockets?.open() === 0)
  await until(async () => await up.connections() === 0)
})

t.test('idle timeout: no byte either way closes both sides with 1001', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, app } = await gateway(t, up, { websocket: { idleTimeout: '300ms' } })
  const ws = await opened(t, `${base}/ws/idle`)
  t.equal((await echo(ws, 'still here')).data.toString(), 'still here')
  t.equal(await closed(ws), 1001, 'the client gets 1001')
  await until(() => up.closes.length === 1)
  t.same(up.closes, [1001], 'the upstream gets 1001')
  await until(() => app.websockets?.open() === 0)
})

t.test('the per-route cap: one tunnel too many gets 503 with Retry-After, before the upstream', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, app } = await gateway(t, up, { websocket: { maxConnections: 2 } })
  const a = await opened(t, `${base}/ws/1`)
  await opened(t, `${base}/ws/2`)
  const third = await refused(`${base}/ws/3`)
  assertProblem(t, { ...third, headers: third.headers as Record<string, unknown> }, 503, 'unavailable')
  t.equal(third.headers['retry-after'], '1')
  t.equal(up.upgrades.length, 2, 'the upstream saw two upgrades')
  a.close()
  await until(() => app.websockets?.open() === 1)
  await opened(t, `${base}/ws/4`)
  t.equal(up.upgrades.length, 3, 'a closed tunnel frees its place')
})

t.test('shutdown: app.close() sends 1001 to both sides of every open tunnel and leaves no socket', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, app } = await gateway(t, up)
  const clients = await Promise.all([1, 2, 3].map(async (i) => await opened(t, `${base}/ws/${i}`)))
  const codes = Promise.all(clients.map(closed))
  await app.close()
  t.same(await codes, [1001, 1001, 1001], 'every client got 1001')
  await until(() => up.closes.length === 3)
  t.same(up.closes, [1001, 1001, 1001], 'every upstream connection got 1001')
  await until(async () => await up.connections() === 0)
  t.equal(app.websockets?.open(), 0)
})

t.test('1,000 concurrent tunnels opened and closed: no socket left on the gateway or the upstream', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, app } = await gateway(t, up, { websocket: { maxConnections: 1000 } })
  const clients: WebSocket[] = []
  for (let batch = 0; batch < 10; batch++) {
    clients.push(...await Promise.all(Array.from({ length: 100 }, async (_, i) => await opened(t, `${base}/ws/${batch * 100 + i}`))))
  }
  t.equal(app.websockets?.open(), 1000, '1,000 tunnels open at once')
  t.equal(await up.connections(), 1000, '1,000 upstream connections')
  const replies = await Promise.all(clients.map(async (ws, i) => (await echo(ws, `m${i}`)).data.toString()))
  t.ok(replies.every((r, i) => r === `m${i}`), 'each tunnel echoes its own message')
  await Promise.all(clients.map(async (ws, i) => { const done = closed(ws); ws.close(i % 2 === 0 ? 1000 : 4000); await done }))
  await until(() => app.websockets?.open() === 0)
  await until(async () => await up.connections() === 0)
  await until(async () => await new Promise<boolean>((resolve) => app.server.getConnections((_e, n) => resolve(n === 0))))
  t.pass('no socket left on either side')
})

t.test('a tunnel outlives server.timeouts.request and keepAlive; only its idle timeout applies', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, app } = await gateway(t, up, {}, { server: { timeouts: { headers: '200ms', request: '400ms', keepAlive: '400ms' } } })
  const ws = await opened(t, `${base}/ws/long`)
  for (let i = 0; i < 8; i++) {
    await new Promise((resolve) => setTimeout(resolve, 150))
    t.equal((await echo(ws, `tick ${i}`)).data.toString(), `tick ${i}`)
  }
  t.equal(ws.readyState, WebSocket.OPEN, 'open after 3× the request timeout')
  t.equal(app.websockets?.open(), 1)
})

t.test('no route: 404 problem+json, then the connection closes', async (t) => {
  const up = await wsUpstream(t)
  const { port } = await gateway(t, up)
  const res = await sendRaw(port, handshake('/nowhere'))
  assertProblem(t, res, 404, 'not-found')
  t.equal(res.headers.connection, 'close')
  t.equal(up.upgrades.length, 0)
})

t.test('an upgrade on a route without websocket is proxied as an ordinary request, without its Upgrade header', async (t) => {
  const up = await wsUpstream(t)
  const plain = await startUpstream(t)
  const { port } = await gateway(t, up, {}, { routes: [{ name: 'plain', prefix: '/plain', upstream: `${plain.origin}/p` }] })
  const res = await sendRaw(port, handshake('/plain/x'))
  t.equal(res.status, 200)
  t.equal(res.headers.connection, 'close')
  t.equal(plain.requests.length, 1)
  t.equal(plain.requests[0].headers.upgrade, undefined, 'Upgrade is hop-by-hop: not forwarded')
  const h2c = await sendRaw(port, handshake('/ws/x', { upgrade: 'h2c', 'sec-websocket-key': '', 'sec-websocket-version': '' }))
  t.equal(h2c.status, 200, 'another protocol on a websocket route: an ordinary request')
  t.match(h2c.body, /plain http/, 'the upstream\'s plain answer')
  t.equal(up.upgrades.length, 0)
})

t.test('the upstream refuses the upgrade or cannot be reached: 502 problem+json', async (t) => {
  const up = await wsUpstream(t, { refuse: 403 })
  const { ws: base } = await gateway(t, up)
  const res = await refused(`${base}/ws/x`)
  assertProblem(t, { ...res, headers: res.headers as Record<string, unknown> }, 502, 'bad-gateway')
  t.equal(up.upgrades.length, 1)
  const port = (up.server.address() as AddressInfo).port
  up.server.closeAllConnections()
  await new Promise((resolve) => up.server.close(resolve))
  const { ws: base2 } = await startTestGateway(t, { routes: [route(`http://127.0.0.1:${port}`)] }).then(({ url }) => ({ ws: url.replace(/^http/, 'ws') }))
  const gone = await refused(`${base2}/ws/x`)
  assertProblem(t, { ...gone, headers: gone.headers as Record<string, unknown> }, 502, 'bad-gateway')
  t.notMatch(gone.body, /ECONNREFUSED|127\.0\.0\.1/, 'no address or errno in the answer')
})

t.test('hostile: a body, a bad key, a bad version — 400, never at the upstream', async (t) => {
  const up = await wsUpstream(t)
  const { port } = await gateway(t, up)
  const withBody = await sendRaw(port, handshake('/ws/x', { 'content-length': '5' }) + 'hello')
  assertProblem(t, withBody, 400, 'bad-request')
  t.match(JSON.parse(withBody.body).detail, /must not have a body/)
  const chunked = await sendRaw(port, handshake('/ws/x', { 'transfer-encoding': 'chunked' }) + '5\r\nhello\r\n0\r\n\r\n')
  assertProblem(t, chunked, 400, 'bad-request')
  const badKey = await sendRaw(port, handshake('/ws/x', { 'sec-websocket-key': 'short' }))
  assertProblem(t, badKey, 400, 'bad-request')
  const noKey = await sendRaw(port, handshake('/ws/x', { 'sec-websocket-key': '' }))
  assertProblem(t, noKey, 400, 'bad-request')
  const badVersion = await sendRaw(port, handshake('/ws/x', { 'sec-websocket-version': '8' }))
  assertProblem(t, badVersion, 400, 'bad-request')
  t.equal(badVersion.headers['sec-websocket-version'], '13', 'the version the gateway speaks')
  t.equal(up.upgrades.length, 0, 'none reached the upstream')
})

t.test('hostile: a slow upgrade head meets server.timeouts.headers; nothing reaches the upstream', async (t) => {
  const up = await wsUpstream(t)
  const { port } = await gateway(t, up, {}, { server: { timeouts: { headers: '300ms', request: '1s' } } })
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  socket.write('GET /ws/x HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\n')
  await once(socket, 'close')
  t.match(Buffer.concat(chunks).toString(), /^(HTTP\/1\.1 408 |$)/, 'a 408, or the connection closed')
  t.equal(up.upgrades.length, 0)
})

t.test('hostile: a client that leaves mid-handshake holds no upstream socket', async (t) => {
  const { up, reached, release } = await heldUpstream(t)
  const { port, app } = await gateway(t, up)
  const socket = await rawSocket(port, handshake('/ws/x'))
  await reached
  t.equal(app.websockets?.open(), 1, 'the handshake counts against the cap')
  socket.destroy()
  await until(() => app.websockets?.open() === 0)
  release()
  await until(async () => await up.connections() === 0)
  // The held upstream may still accept (it sees the gateway's FIN only once it reads): the gateway opened nothing.
  t.equal(app.websockets?.open(), 0, 'no tunnel was opened')
  await until(() => up.sockets.every((ws) => ws.readyState === WebSocket.CLOSED))
})

t.test('hostile: a client that leaves while the pipeline still decides never reaches the upstream', async (t) => {
  const up = await wsUpstream(t)
  // A slow stage of the route's pipeline (a plugin given in code): the client leaves during it.
  const slow = async (scope: FastifyInstance): Promise<void> => {
    scope.addHook('onRequest', async () => { await new Promise((resolve) => setTimeout(resolve, 300)) })
  }
  const app = await buildGateway(parseConfig({ logging: { level: 'silent' }, routes: [route(up.origin)] }), { plugins: [{ plugin: fp(slow), name: 'slow' }] })
  t.teardown(() => app.close())
  const port = Number(new URL(await app.listen({ host: '127.0.0.1', port: 0 })).port)
  for (const leave of ['destroy', 'end'] as const) {
    const socket = await rawSocket(port, handshake('/ws/slow'))
    await new Promise((resolve) => setTimeout(resolve, 50))
    if (leave === 'destroy') socket.destroy()
    else socket.end()
    await new Promise((resolve) => setTimeout(resolve, 500))
    t.equal(up.upgrades.length, 0, `${leave}: the handshake was not sent`)
    t.equal(app.websockets?.open(), 0, `${leave}: nothing held against the cap`)
  }
  const ws = await opened(t, `ws://127.0.0.1:${port}/ws/slow`)
  t.equal((await echo(ws, 'next')).data.toString(), 'next', 'the next client is served')
})

t.test('hostile: more than 64 KB before the 101 closes the client and gives the handshake up; an upstream with no 101 in time is 504', async (t) => {
  const { up, reached, release } = await heldUpstream(t)
  const { port, app, ws: base } = await gateway(t, up, { timeout: '500ms' })
  const socket = await rawSocket(port, handshake('/ws/x'))
  await reached
  socket.write(Buffer.alloc(EARLY_BYTES_LIMIT + 1))
  await once(socket, 'close')
  await until(() => app.websockets?.open() === 0)
  t.pass('the flooding client was closed and its handshake given up')
  const slow = await refused(`${base}/ws/y`)
  assertProblem(t, { ...slow, headers: slow.headers as Record<string, unknown> }, 504, 'gateway-timeout')
  release()
  await until(async () => await up.connections() === 0)
  // The held upstream may still accept (it sees the gateway's FIN only once it reads): the gateway opened nothing.
  t.equal(app.websockets?.open(), 0, 'no tunnel was opened')
  await until(() => up.sockets.every((ws) => ws.readyState === WebSocket.CLOSED))
})

t.test('hostile: a handshake queued behind the route\'s busy connections is bounded by routes[].timeout too: 504, and nothing held', async (t) => {
  const { up, reached, release } = await heldUpstream(t)
  const { port, app, ws: base } = await gateway(t, up, { timeout: '500ms', connections: 1 })
  const first = await rawSocket(port, handshake('/ws/first'))
  await reached // the route's one connection carries a handshake the upstream holds
  const queued = await refused(`${base}/ws/queued`)
  assertProblem(t, { ...queued, headers: queued.headers as Record<string, unknown> }, 504, 'gateway-timeout')
  first.destroy()
  await until(() => app.websockets?.open() === 0)
  release()
  await until(async () => await up.connections() === 0)
  // The held upstream may still accept (it sees the gateway's FIN only once it reads): the gateway opened nothing.
  t.equal(app.websockets?.open(), 0, 'no tunnel was opened for either')
  await until(() => up.sockets.every((ws) => ws.readyState === WebSocket.CLOSED))
})

t.test('hostile: frames sent before the 101 reach the upstream only after it accepted, and never after a refusal', async (t) => {
  const messages: string[] = []
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const up = await wsUpstream(t, {
    beforeAccept: async () => { await held },
    onConnection: (ws) => { ws.on('message', (d) => { messages.push(d.toString()) }) }
  })
  const { port } = await gateway(t, up, { auth: ['jwt'] }, { jwt: { algorithms: ['HS256'], secret: SECRET } })
  const token = hsToken({ sub: 'alice' })
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  const got: Buffer[] = []
  socket.on('data', (d: Buffer) => got.push(d))
  socket.write(handshake('/ws/x', { authorization: `Bearer ${token}` }) + clientFrame('early-1').toString('latin1'), 'latin1')
  await until(() => up.upgrades.length === 1)
  socket.write(clientFrame('early-2'))
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(messages, [], 'nothing before the upstream accepted')
  release()
  await until(() => messages.length === 2)
  t.same(messages, ['early-1', 'early-2'], 'in order, once accepted')
  t.match(Buffer.concat(got).toString('latin1'), /^HTTP\/1\.1 101 /)
  socket.destroy()

  const refusedSocket = connect(port, '127.0.0.1')
  refusedSocket.on('error', () => {})
  await once(refusedSocket, 'connect')
  const answer: Buffer[] = []
  refusedSocket.on('data', (d: Buffer) => answer.push(d))
  refusedSocket.write(handshake('/ws/x') + clientFrame('never').toString('latin1'), 'latin1')
  await once(refusedSocket, 'close')
  t.match(Buffer.concat(answer).toString(), /^HTTP\/1\.1 401 /)
  t.equal(up.upgrades.length, 1, 'the refused upgrade and its frame never reached the upstream')
})

t.test('metrics: open tunnels, upgrades by status, bytes each way', async (t) => {
  const up = await wsUpstream(t)
  const { ws: base, url } = await gateway(t, up, { websocket: { maxConnections: 1 } })
  const ws = await opened(t, `${base}/ws/m`)
  await echo(ws, 'x'.repeat(100))
  const busy = await refused(`${base}/ws/m`)
  t.equal(busy.status, 503)
  const text = await (await fetch(`${url}/metrics`)).text()
  t.match(text, /portcullis_websocket_tunnels_open\{route="chat"\} 1/)
  t.match(text, /portcullis_websocket_upgrades_total\{route="chat",status="101"\} 1/)
  t.match(text, /portcullis_websocket_upgrades_total\{route="chat",status="503"\} 1/)
  const bytes = (direction: string): number => Number(new RegExp(`portcullis_websocket_bytes_total\\{route="chat",direction="${direction}"\\} ([0-9]+)`).exec(text)?.[1])
  t.ok(bytes('upstream') >= 106, 'client → upstream: the frame, masked')
  t.ok(bytes('downstream') >= 102, 'upstream → client: the echo')
  t.match(text, /portcullis_requests_total\{route="chat",method="GET",status_class="1xx"\} 1/, 'the 101 is one request, over once the head is out')
  t.match(text, /portcullis_requests_in_flight 1\n/, 'only the scrape itself is in flight while the tunnel is open')
})

t.test('config: a websocket route must allow GET; the object form takes idleTimeout and maxConnections', async (t) => {
  const base = { name: 'chat', prefix: '/ws', upstream: 'http://127.0.0.1:9/x' }
  t.throws(() => parseConfig({ routes: [{ ...base, websocket: true, methods: ['POST'] }] }), { name: 'ConfigError', message: /routes\[0\]\.methods: a websocket route must allow GET/ })
  t.throws(() => parseConfig({ routes: [{ ...base, websocket: { idleTimeout: 'soon' } }] }), ConfigError)
  t.throws(() => parseConfig({ routes: [{ ...base, websocket: { maxConnections: 0 } }] }), ConfigError)
  t.throws(() => parseConfig({ routes: [{ ...base, websocket: { other: 1 } }] }), ConfigError)
  t.equal(parseConfig({ routes: [{ ...base, websocket: { idleTimeout: '5m' } }] }).routes[0].websocket && true, true)
  t.equal(parseConfig({ routes: [base] }).routes[0].websocket, false, 'off by default')
})

t.test('frame tracker: boundaries across split headers and 16/64-bit lengths; close frames masked toward a server', async (t) => {
  const tracker = new FrameTracker()
  const frames = Buffer.concat([
    Buffer.from([0x82, 126, 0x01, 0x00]), Buffer.alloc(256),
    Buffer.from([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]), Buffer.alloc(65536),
    clientFrame('hi')
  ])
  // Fed one byte at a time, then in 7-byte slices: the boundaries are the frames' ends, nothing else.
  const ends = [4 + 256, 4 + 256 + 10 + 65536, frames.length]
  for (const step of [1, 7]) {
    const seen: number[] = []
    for (let i = 0; i < frames.length; i += step) {
      tracker.feed(frames.subarray(i, Math.min(frames.length, i + step)))
      if (tracker.atBoundary()) seen.push(Math.min(frames.length, i + step))
    }
    t.same(seen, step === 1 ? ends : ends.filter((e) => e % 7 === 0 || e === frames.length), `boundaries, ${step}-byte slices`)
  }
  t.notOk(tracker.closeSeen)
  const close = closeFrame(1001, true)
  tracker.feed(close.subarray(0, 3))
  t.notOk(tracker.atBoundary(), 'inside a close frame\'s header')
  tracker.feed(close.subarray(3))
  t.ok(tracker.closeSeen, 'a close frame passed')
  t.ok(tracker.atBoundary())
  const unmasked = closeFrame(1014, false)
  t.same([...unmasked], [0x88, 2, 0x03, 0xf6])
  const masked = closeFrame(1001, true)
  t.equal(masked[1] & 0x80, 0x80, 'masked')
  t.equal(((masked[6] ^ masked[2]) << 8) | (masked[7] ^ masked[3]), 1001)
})

t.test('the listener is a plain function of the app: another server may hand it an upgrade', async (t) => {
  const up = await wsUpstream(t)
  const { app } = await gateway(t, up)
  const front = createServer()
  front.on('upgrade', (req, socket, head) => { app.server.emit('upgrade', req, socket, head) })
  front.listen(0, '127.0.0.1')
  await once(front, 'listening')
  t.teardown(() => { front.closeAllConnections(); front.close() })
  const ws = await opened(t, `ws://127.0.0.1:${(front.address() as AddressInfo).port}/ws/front`)
  t.equal((await echo(ws, 'via another server')).data.toString(), 'via another server')
  const code = closed(ws)
  await app.websockets?.closeAll(1001)
  t.equal(await code, 1001, 'closeAll(1001) reaches it')
})

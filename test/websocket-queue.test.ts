/**
 * WebSocket handshakes count against the route's connections, maxPending and queueTimeout as
 * ordinary requests do: a handshake takes a connection slot until the upstream's 101 (or its
 * refusal), the next ones wait in the same queue, and past maxPending the answer is 503 with
 * Retry-After at once — a flood of upgrades never queues inside the connection pool. A client
 * that leaves while queued never reaches the upstream. The upstream is a real `ws` server that
 * holds the handshakes the test names until it lets them go.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import WebSocket, { WebSocketServer } from 'ws'
import { readAll, startTestGateway } from './helper.js'
import { waitFor } from './fault-helpers.js'

interface QueueUpstream {
  origin: string
  /** The path of every handshake that reached the upstream, in order. */
  paths: string[]
  /** Handshakes the upstream has and has not answered yet, and the most it ever had at once. */
  pending: () => number
  most: () => number
  /** Answers the held handshake of `path`: 101, or `status`. */
  answer: (path: string, status?: number) => void
  sockets: WebSocket[]
}

/** A `ws` upstream that holds every handshake until the test answers it. */
async function queueUpstream (t: Test): Promise<QueueUpstream> {
  const server = createServer((_req, res) => { res.writeHead(200); res.end('plain http') })
  const wss = new WebSocketServer({ noServer: true })
  const paths: string[] = []
  const held = new Map<string, (status?: number) => void>()
  const sockets: WebSocket[] = []
  let most = 0
  server.on('upgrade', (req: IncomingMessage, socket, head) => {
    const path = req.url ?? '/'
    paths.push(path)
    socket.on('error', () => {})
    socket.once('close', () => { held.delete(path) })
    held.set(path, (status) => {
      if (socket.destroyed) return
      if (status !== undefined) {
        socket.end(`HTTP/1.1 ${status} Nope\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope`)
        return
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        sockets.push(ws)
        ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
      })
    })
    most = Math.max(most, held.size)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const ws of sockets) ws.terminate()
    wss.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    paths,
    pending: () => held.size,
    most: () => most,
    answer: (path, status) => {
      const answer = held.get(path)
      if (answer === undefined) throw new Error(`the upstream holds no handshake for ${path}`)
      held.delete(path)
      answer(status)
    },
    sockets
  }
}

async function gateway (t: Test, up: QueueUpstream, extra: Record<string, unknown>): Promise<{ app: FastifyInstance, ws: string, port: number }> {
  const { app, url } = await startTestGateway(t, {
    routes: [{ name: 'chat', prefix: '/ws', upstream: `${up.origin}/socket`, websocket: true, connections: 1, maxPending: 1, timeout: '60s', queueTimeout: '60s', ...extra }]
  })
  t.teardown(() => app.close())
  return { app, ws: url.replace(/^http/, 'ws'), port: Number(new URL(url).port) }
}

interface Refusal { status: number, headers: IncomingHttpHeaders, body: string }

/** Opens a WebSocket; resolves with it once open, or with the HTTP answer that refused it. */
async function open (t: Test, address: string): Promise<WebSocket | Refusal> {
  const ws = new WebSocket(address, { perMessageDeflate: false })
  t.teardown(() => { ws.terminate() })
  const accepted = once(ws, 'open').then(() => ws)
  const refused = once(ws, 'unexpected-response').then(async (args) => {
    const res = args[1] as IncomingMessage
    return { status: res.statusCode ?? 0, headers: res.headers, body: (await readAll(res)).toString() }
  })
  // The one that loses stays pending, or rejects with the socket's error: never unhandled.
  accepted.catch(() => {})
  refused.catch(() => {})
  return await Promise.race([accepted, refused])
}

function assertBusy (t: Test, res: WebSocket | Refusal, what: string): void {
  if (res instanceof WebSocket) { t.fail(`${what}: the upgrade was accepted`); return }
  t.equal(res.status, 503, `${what}: 503`)
  t.match(String(res.headers['content-type']), /^application\/problem\+json/, `${what}: problem+json`)
  t.equal(res.headers['retry-after'], '1', `${what}: Retry-After`)
  t.match(JSON.parse(res.body), { status: 503, type: 'urn:portcullis:problem:unavailable' })
}

async function echoes (t: Test, ws: WebSocket | Refusal, text: string): Promise<void> {
  if (!(ws instanceof WebSocket)) { t.fail(`${text}: refused with ${ws.status}`); return }
  const reply = once(ws, 'message')
  ws.send(text)
  const [data] = await reply as [Buffer]
  t.equal(data.toString(), text, `${text}: the tunnel echoes`)
}

/** A raw handshake on a socket the test holds (and may drop). */
async function rawHandshake (port: number, path: string): Promise<Socket> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write(`GET ${path} HTTP/1.1\r\nhost: gateway\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: ${randomBytes(16).toString('base64')}\r\n\r\n`)
  return socket
}

t.test('connections: 1, maxPending: 1 — one handshake at the upstream, one queued, the rest 503 at once; the slot passes on at the 101 and at a refusal', async (t) => {
  const up = await queueUpstream(t)
  const { app, ws } = await gateway(t, up, {})
  const first = open(t, `${ws}/ws/first`)
  t.ok(await waitFor(() => up.pending() === 1, 10_000), 'the first handshake is at the upstream')
  const second = open(t, `${ws}/ws/second`)
  t.ok(await waitFor(() => app.websockets?.open() === 2, 10_000), 'the second one has passed the pipeline and waits')
  // A flood: every handshake past the one queued is refused at once, none reaches the upstream.
  const flood = await Promise.all(Array.from({ length: 8 }, async (_, i) => await open(t, `${ws}/ws/flood${i}`)))
  for (const [i, res] of flood.entries()) assertBusy(t, res, `flood ${i}`)
  t.same(up.paths, ['/socket/first'], 'only the first reached the upstream')

  up.answer('/socket/first') // its 101 gives the slot to the second
  await echoes(t, await first, 'first')
  t.ok(await waitFor(() => up.pending() === 1, 10_000), 'the second handshake is at the upstream')
  const third = open(t, `${ws}/ws/third`)
  t.ok(await waitFor(() => app.websockets?.open() === 3, 10_000), 'the third one waits (the open tunnel holds no slot)')
  up.answer('/socket/second', 403) // a refusal gives the slot on too
  const refused = await second
  t.equal((refused as Refusal).status, 502, 'the refused handshake is 502')
  t.ok(await waitFor(() => up.pending() === 1, 10_000), 'the third handshake is at the upstream')
  up.answer('/socket/third')
  await echoes(t, await third, 'third')
  t.same(up.paths, ['/socket/first', '/socket/second', '/socket/third'], 'in queue order')
  t.equal(up.most(), 1, 'the upstream never had more than one handshake at once')
})

t.test('hostile: a client that leaves while its handshake is queued never reaches the upstream, and holds no place', async (t) => {
  const up = await queueUpstream(t)
  const { app, ws, port } = await gateway(t, up, {})
  const first = open(t, `${ws}/ws/first`)
  t.ok(await waitFor(() => up.pending() === 1, 10_000), 'the first handshake is at the upstream')
  for (const leave of ['destroy', 'end'] as const) {
    const socket = await rawHandshake(port, `/ws/${leave}`)
    t.ok(await waitFor(() => app.websockets?.open() === 2, 10_000), `${leave}: queued`)
    if (leave === 'destroy') socket.destroy()
    else socket.end()
    t.ok(await waitFor(() => app.websockets?.open() === 1, 10_000), `${leave}: given up`)
  }
  // Its place is free: with maxPending 1, another handshake can wait again.
  const next = open(t, `${ws}/ws/next`)
  t.ok(await waitFor(() => app.websockets?.open() === 2, 10_000), 'the next one queues in the freed place')
  up.answer('/socket/first')
  await echoes(t, await first, 'first')
  t.ok(await waitFor(() => up.pending() === 1, 10_000), 'the next handshake is at the upstream')
  up.answer('/socket/next')
  await echoes(t, await next, 'next')
  t.same(up.paths, ['/socket/first', '/socket/next'], 'the clients that left never reached the upstream')
})

t.test('hostile: a handshake that waits longer than queueTimeout is 503 with Retry-After, and never reaches the upstream', async (t) => {
  const up = await queueUpstream(t)
  const { app, ws } = await gateway(t, up, { queueTimeout: '300ms' })
  const first = open(t, `${ws}/ws/first`)
  t.ok(await waitFor(() => up.pending() === 1, 10_000), 'the first handshake is at the upstream')
  assertBusy(t, await open(t, `${ws}/ws/late`), 'queued past queueTimeout')
  t.ok(await waitFor(() => app.websockets?.open() === 1, 10_000), 'nothing of it is held')
  up.answer('/socket/first')
  await echoes(t, await first, 'first')
  t.same(up.paths, ['/socket/first'], 'the late one never reached the upstream')
})

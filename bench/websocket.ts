/**
 * WebSocket tunnels: Portcullis (routes[].websocket: bytes passed, frames untouched) beside
 * @fastify/http-proxy's `websocket: true` (which terminates the client's WebSocket with `ws` and
 * opens another to the upstream, decoding and re-encoding every message). Each proxy runs in a
 * process of its own in front of one `ws` echo upstream (a third process); this process is the
 * client: CONNS connections, WINDOW messages of 1 KB in flight on each, MESSAGES echoed per round.
 * Rounds alternate the two proxies (paired), and each figure is the median over the rounds with
 * its range: the proxy process's CPU ms per 10,000 messages echoed (user + system, from
 * process.cpuUsage inside it) and messages per second.
 *
 *   node --import=@swc-node/register/esm-register bench/websocket.ts [--rounds 5] [--messages 20000] [--conns 50]
 */
import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import WebSocket, { WebSocketServer } from 'ws'
import { median, round } from './lib.js'

const SELF = fileURLToPath(import.meta.url)
type Role = 'upstream' | 'portcullis' | 'http-proxy'

interface Ready { port: number }
interface Cpu { cpu: number }

/** The child side: serve, report the port, answer `cpu` with process.cpuUsage in ms. */
async function serve (role: Role, upstreamPort: number): Promise<void> {
  let port: number
  if (role === 'upstream') {
    const server = createServer()
    const wss = new WebSocketServer({ server, maxPayload: 1 << 20 })
    wss.on('connection', (ws) => { ws.on('message', (data, binary) => { ws.send(data, { binary }) }) })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    port = (server.address() as AddressInfo).port
  } else if (role === 'portcullis') {
    const { parseConfig } = await import('../src/config.js')
    const { buildGateway } = await import('../src/app.js')
    const app = await buildGateway(parseConfig({
      logging: { level: 'silent' },
      server: { metrics: { enabled: false } },
      routes: [{ name: 'ws', prefix: '/ws', upstream: `http://127.0.0.1:${upstreamPort}/ws`, websocket: { maxConnections: 10_000 } }]
    }))
    await app.listen({ host: '127.0.0.1', port: 0 })
    port = (app.server.address() as AddressInfo).port
  } else {
    const { default: Fastify } = await import('fastify')
    const { default: proxy } = await import('@fastify/http-proxy')
    const app = Fastify({ logger: false })
    await app.register(proxy, { upstream: `http://127.0.0.1:${upstreamPort}`, prefix: '/ws', rewritePrefix: '/ws', websocket: true })
    await app.listen({ host: '127.0.0.1', port: 0 })
    port = (app.server.address() as AddressInfo).port
  }
  process.on('message', (m) => {
    if (m !== 'cpu') return
    const { user, system } = process.cpuUsage()
    process.send?.({ cpu: (user + system) / 1000 } satisfies Cpu)
  })
  process.send?.({ port } satisfies Ready)
}

async function start (role: Role, upstreamPort = 0): Promise<{ child: ChildProcess, port: number }> {
  const child = fork(SELF, ['--serve', role, '--upstream', String(upstreamPort)], { execArgv: process.execArgv })
  const [msg] = await once(child, 'message') as [Ready]
  return { child, port: msg.port }
}

async function cpuOf (child: ChildProcess): Promise<number> {
  const answer = once(child, 'message') as Promise<[Cpu]>
  child.send('cpu')
  return (await answer)[0].cpu
}

/** Opens `conns` sockets, echoes `messages` 1 KB binary messages with `window` in flight on each; ms taken. */
async function round1 (port: number, conns: number, messages: number, window: number): Promise<number> {
  const sockets = await Promise.all(Array.from({ length: conns }, async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { perMessageDeflate: false })
    await once(ws, 'open')
    return ws
  }))
  const payload = Buffer.alloc(1024, 7)
  const perSocket = Math.ceil(messages / conns)
  const started = performance.now()
  await Promise.all(sockets.map(async (ws) => {
    let sent = 0
    let received = 0
    await new Promise<void>((resolve) => {
      ws.on('message', () => {
        received++
        if (received === perSocket) resolve()
        else if (sent < perSocket) { sent++; ws.send(payload) }
      })
      for (; sent < Math.min(window, perSocket); sent++) ws.send(payload)
    })
  }))
  const ms = performance.now() - started
  await Promise.all(sockets.map(async (ws) => { const closed = once(ws, 'close'); ws.close(); await closed }))
  return ms
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      serve: { type: 'string' },
      upstream: { type: 'string', default: '0' },
      rounds: { type: 'string', default: '5' },
      messages: { type: 'string', default: '20000' },
      conns: { type: 'string', default: '50' },
      window: { type: 'string', default: '8' }
    }
  })
  if (values.serve !== undefined) { await serve(values.serve as Role, Number(values.upstream)); return }
  const rounds = Number(values.rounds)
  const messages = Number(values.messages)
  const conns = Number(values.conns)
  const window = Number(values.window)
  const upstream = await start('upstream')
  const proxies = { portcullis: await start('portcullis', upstream.port), 'http-proxy': await start('http-proxy', upstream.port) }
  const results: Record<string, { cpu: number[], rate: number[] }> = { portcullis: { cpu: [], rate: [] }, 'http-proxy': { cpu: [], rate: [] } }
  // A warm-up round each, not counted.
  for (const p of Object.values(proxies)) await round1(p.port, conns, Math.min(messages, 5000), window)
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? ['portcullis', 'http-proxy'] as const : ['http-proxy', 'portcullis'] as const
    for (const name of order) {
      const p = proxies[name]
      const before = await cpuOf(p.child)
      const ms = await round1(p.port, conns, messages, window)
      const cpu = await cpuOf(p.child) - before
      results[name].cpu.push(cpu / messages * 10_000)
      results[name].rate.push(messages / ms * 1000)
    }
  }
  const line = (name: string): string => {
    const { cpu, rate } = results[name]
    return `${name.padEnd(11)} CPU ms / 10k messages ${round(median(cpu), 0)} (${round(Math.min(...cpu), 0)}–${round(Math.max(...cpu), 0)})` +
      `   messages/s ${round(median(rate), 0)} (${round(Math.min(...rate), 0)}–${round(Math.max(...rate), 0)})`
  }
  console.log(`${rounds} paired rounds of ${messages} × 1 KB echoed, ${conns} connections, ${window} in flight each`)
  console.log(line('portcullis'))
  console.log(line('http-proxy'))
  const ratios = results.portcullis.cpu.map((c, i) => c / results['http-proxy'].cpu[i])
  console.log(`CPU ratio portcullis / http-proxy, per round: ${ratios.map((x) => round(x, 2)).join(' ')} (median ${round(median(ratios), 2)})`)
  for (const p of [upstream, ...Object.values(proxies)]) p.child.kill()
}

await main()

/**
 * Helpers for test/fault-matrix.test.ts: the gateway as a real child process (so an uncaught
 * exception really ends it), an upstream whose faults are chosen per request, raw-socket clients
 * that stop where a fault needs them to, and the gateway's JSON log lines by request id.
 * Real sockets on 127.0.0.1 only.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { transpileProject, type T } from './helper.js'

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` every 20 ms until it is true or `ms` have passed; returns its last value. */
export async function waitFor (check: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (check()) return true
    if (Date.now() >= deadline) return false
    await sleep(20)
  }
}

// --- the gateway, as `portcullis start` in a child process ---------------------------------------

export interface LogLine { [field: string]: unknown, msg?: string, reqId?: string, status?: number, level?: number }

export interface GatewayProcess {
  child: ChildProcess
  url: string
  port: number
  /** Every JSON line the process wrote to stdout so far. */
  lines: LogLine[]
  /** Lines of stdout that are not valid JSON (a log line must always be one). */
  badLines: string[]
  /** stdout and stderr as text (stack traces of a crash land in stderr). */
  output: () => string
  alive: () => boolean
  /** A description of how it ended (exit code / signal and the tail of its output). */
  death: () => string
  stop: () => Promise<void>
}

/**
 * `portcullis start --config FILE` from the current sources (transpiled once per test file into a
 * temp folder) with `config` written as JSON; resolves when it logs `portcullis listening`.
 */
export async function startGatewayProcess (t: T, config: Record<string, unknown>, build?: string): Promise<GatewayProcess> {
  const dir = build ?? transpileProject(t)
  const file = join(dir, `gateway-${Date.now()}-${Math.random().toString(36).slice(2)}.json`)
  writeFileSync(file, JSON.stringify(config, null, 2))
  const child = spawn(process.execPath, [join(dir, 'src', 'cli.js'), 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let pending = ''
  const lines: LogLine[] = []
  const badLines: string[] = []
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d
    pending += d
    let nl: number
    while ((nl = pending.indexOf('\n')) !== -1) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      try { lines.push(JSON.parse(line) as LogLine) } catch { badLines.push(line) }
    }
  })
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { out += d })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  exited.catch(() => {})
  const alive = (): boolean => child.exitCode === null && child.signalCode === null
  const stop = async (): Promise<void> => {
    if (!alive()) return
    child.kill('SIGKILL')
    await exited
  }
  t.teardown(stop)
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not start within 20 s:\n${out}`)), 20_000)
    const look = (): void => {
      const line = lines.find((l) => l.msg === 'portcullis listening')
      if (line !== undefined) { clearTimeout(timer); child.stdout?.off('data', look); resolve(line.url as string) }
    }
    child.stdout?.on('data', look)
    exited.then(([code, signal]) => { clearTimeout(timer); reject(new Error(`the gateway exited (${String(code)}, ${String(signal)}) before listening:\n${out}`)) }, reject)
  })
  return {
    child,
    url,
    port: Number(new URL(url).port),
    lines,
    badLines,
    output: () => out,
    alive,
    death: () => `the gateway process ended (exit ${String(child.exitCode)}, signal ${String(child.signalCode)}); last output:\n${out.slice(-3000)}`,
    stop
  }
}

/** The access line of a request: what Fastify logs when its response finished (src/app.ts AccessLog). */
export const ACCESS_MESSAGES = new Set(['request completed', 'request errored'])

/**
 * The lines that say how a request ended: its access line, or a line saying the client or the
 * upstream broke the exchange off (the forwarder's "client closed the connection…", "upstream
 * response aborted"). Details logged beside an access line ("upstream request failed", with the
 * code) are not counted: one request, one line saying what happened to it.
 */
export function outcomeLines (lines: readonly LogLine[], reqId: string): LogLine[] {
  return lines.filter((l) => l.reqId === reqId && typeof l.msg === 'string' &&
    (ACCESS_MESSAGES.has(l.msg) || /client (closed|went away|aborted|disconnected)|aborted/i.test(l.msg)))
}

// --- the upstream --------------------------------------------------------------------------------

/**
 * What the upstream does with a request, chosen by the first segment of its path
 * (`/<behaviour>/<id>`); the id is the last segment.
 */
export type Behaviour =
  | 'ok' // read the whole body, answer 200 JSON { bytes }
  | 'reset-head' // destroy the connection as soon as the head has arrived, body unread
  | 'reset-mid' // read the body, send 200 with Content-Length 100 000 and 10 000 bytes, then destroy
  | 'hang' // read the body, never answer
  | 'slow-body' // read the body, then stream 16 KB every 20 ms, up to 10 MB
  | 'hold' // read the body, send 200 and a byte every 100 ms until release(id, 'end' | 'reset')
  | 'status999' // read the body, answer `HTTP/1.1 999 Weird` on the raw socket
  | 'bighead' // read the body, answer a 200 with 100 KB of header fields on the raw socket

export interface FaultUpstream {
  port: number
  origin: string
  /** Requests received, by id (the last path segment). */
  seen: Map<string, number>
  /** Requests that arrived and whose response has not finished or been cut off, by id. */
  inFlight: () => string[]
  /** Open sockets with no unfinished request (keep-alive idle). */
  idleSockets: () => number
  /** Stop listening (connections are refused); idle kept-alive sockets are closed. */
  refuse: () => Promise<void>
  /** Listen again on the same port. */
  accept: () => Promise<void>
  /** The next connection is destroyed as soon as it is accepted (idle kept-alive sockets closed first). */
  resetNextConnection: () => Promise<void>
  clearFaults: () => void
  /** Ends a `hold` response: completes it, or destroys its connection mid-body. */
  release: (id: string, how?: 'end' | 'reset') => void
  close: () => Promise<void>
}

export async function startFaultUpstream (t: T): Promise<FaultUpstream> {
  const seen = new Map<string, number>()
  const inFlight = new Map<ServerResponse, string>()
  const busy = new Map<Socket, number>()
  const sockets = new Set<Socket>()
  const holds = new Map<string, (how: 'end' | 'reset') => void>()
  let resetNext = false

  const readBody = (req: IncomingMessage, then: (bytes: number) => void): void => {
    let bytes = 0
    req.on('data', (c: Buffer) => { bytes += c.length })
    req.on('end', () => then(bytes))
    req.on('error', () => {})
  }

  const http = createServer((req, res) => {
    const parts = (req.url ?? '/').split('?')[0].split('/').filter((p) => p !== '')
    const behaviour = (parts[0] ?? 'ok') as Behaviour
    const id = parts.at(-1) ?? ''
    seen.set(id, (seen.get(id) ?? 0) + 1)
    inFlight.set(res, id)
    const socket = req.socket
    busy.set(socket, (busy.get(socket) ?? 0) + 1)
    let settled = false
    const settle = (): void => {
      if (settled) return
      settled = true
      inFlight.delete(res)
      busy.set(socket, (busy.get(socket) ?? 1) - 1)
    }
    res.once('finish', settle)
    res.once('close', settle)
    switch (behaviour) {
      case 'reset-head':
        socket.destroy()
        return
      case 'reset-mid':
        readBody(req, () => {
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 100_000 })
          res.write('y'.repeat(10_000), () => { setTimeout(() => socket.destroy(), 20) })
        })
        return
      case 'hang':
        readBody(req, () => {})
        return
      case 'slow-body':
        readBody(req, () => {
          res.writeHead(200, { 'content-type': 'application/octet-stream' })
          const chunk = Buffer.alloc(16 * 1024, 120)
          let sent = 0
          const timer = setInterval(() => {
            if (res.destroyed || sent >= 640) { clearInterval(timer); if (!res.destroyed) res.end(); return }
            sent++
            res.write(chunk)
          }, 20)
          res.once('close', () => clearInterval(timer))
        })
        return
      case 'hold':
        readBody(req, () => {
          res.writeHead(200, { 'content-type': 'text/plain' })
          res.write('h')
          const timer = setInterval(() => { if (!res.destroyed) res.write('h') }, 100)
          const end = (how: 'end' | 'reset'): void => {
            clearInterval(timer)
            holds.delete(id)
            if (how === 'reset') socket.destroy()
            else if (!res.destroyed) res.end('.')
          }
          holds.set(id, end)
          res.once('close', () => { clearInterval(timer); holds.delete(id) })
        })
        return
      case 'status999':
        readBody(req, () => {
          socket.end('HTTP/1.1 999 Weird\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nweird')
        })
        return
      case 'bighead':
        readBody(req, () => {
          const fields = Array.from({ length: 100 }, (_, i) => `X-Big-${i}: ${'b'.repeat(1000)}\r\n`).join('')
          socket.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n${fields}Content-Length: 2\r\nConnection: close\r\n\r\nok`)
        })
        return
      default:
        readBody(req, (bytes) => {
          const text = JSON.stringify({ ok: true, bytes, url: req.url })
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
          res.end(text)
        })
    }
  })
  http.keepAliveTimeout = 60_000
  http.requestTimeout = 0
  http.headersTimeout = 60_000
  // Listening (on a port nobody uses) sets up node:http's connection tracking; the sockets
  // themselves arrive through `front`, which can stop listening and start again on its port.
  http.listen(0, '127.0.0.1')
  await once(http, 'listening')

  const onConnection = (socket: Socket): void => {
    if (resetNext) { resetNext = false; socket.destroy(); return }
    sockets.add(socket)
    socket.once('close', () => { sockets.delete(socket); busy.delete(socket) })
    http.emit('connection', socket)
  }
  let front: NetServer = createNetServer(onConnection)
  front.listen(0, '127.0.0.1')
  await once(front, 'listening')
  const port = (front.address() as AddressInfo).port
  let listening = true

  const closeIdle = async (): Promise<void> => {
    for (const s of sockets) if ((busy.get(s) ?? 0) === 0) s.destroy()
    await sleep(50) // let the gateway's pool see the closes
  }
  const upstream: FaultUpstream = {
    port,
    origin: `http://127.0.0.1:${port}`,
    seen,
    inFlight: () => [...inFlight.values()],
    idleSockets: () => [...sockets].filter((s) => (busy.get(s) ?? 0) === 0).length,
    refuse: async () => {
      if (!listening) return
      listening = false
      await new Promise<void>((resolve) => { front.close(() => resolve()); setTimeout(resolve, 100) })
      await closeIdle()
    },
    accept: async () => {
      if (listening) return
      front = createNetServer(onConnection)
      front.listen(port, '127.0.0.1')
      await once(front, 'listening')
      listening = true
    },
    resetNextConnection: async () => { await closeIdle(); resetNext = true },
    clearFaults: () => { resetNext = false },
    release: (id, how = 'end') => { holds.get(id)?.(how) },
    close: async () => {
      for (const end of holds.values()) end('reset')
      for (const s of sockets) s.destroy()
      if (listening) front.close()
      http.closeAllConnections()
      await new Promise<void>((resolve) => http.close(() => resolve()))
    }
  }
  t.teardown(() => upstream.close())
  return upstream
}

// --- raw clients ---------------------------------------------------------------------------------

export interface RawClient {
  socket: Socket
  /** Everything received so far (latin1). */
  received: () => string
  bytesReceived: () => number
  closed: Promise<void>
  isClosed: () => boolean
  write: (data: string | Buffer) => Promise<void>
  /** Close abruptly (the client goes away). */
  abort: () => void
}

export async function rawClient (port: number): Promise<RawClient> {
  const socket = connect(port, '127.0.0.1')
  socket.setNoDelay(true)
  let text = ''
  let bytes = 0
  let isClosed = false
  socket.on('data', (d: Buffer) => { bytes += d.length; if (text.length < 200_000) text += d.toString('latin1') })
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) => socket.once('close', () => { isClosed = true; resolve() }))
  await once(socket, 'connect')
  return {
    socket,
    received: () => text,
    bytesReceived: () => bytes,
    closed,
    isClosed: () => isClosed,
    write: (data) => new Promise<void>((resolve) => {
      if (socket.destroyed) { resolve(); return }
      socket.write(data, () => resolve())
    }),
    abort: () => { socket.destroy() }
  }
}

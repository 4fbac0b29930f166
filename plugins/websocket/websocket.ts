/**
 * WebSocket routes (routes[].websocket) through the same pipeline as every request.
 *
 * Node emits 'upgrade', not 'request', for a request with an Upgrade header, so Fastify's hooks
 * never see it by themselves. The listener here does what @fastify/websocket does: it gives the
 * request a ServerResponse on its socket and hands both to Fastify's router (`app.routing`), so
 * the upgrade meets every gateway and route stage as a GET — IP filter, authentication, scopes,
 * rate limits, request id, tracing, identity headers — and a refusal is an ordinary answer on that
 * socket (401/403/429… problem+json, `Connection: close`), never a 101. Only a websocket route's
 * handler opens the upstream: `Forwarder.upgrade` (src/forward.ts) sends the handshake to the
 * target the route's UpstreamSet picks, with the headers any forwarded request gets; the
 * upstream's 101 goes to the client with its Sec-WebSocket-Accept/Protocol/Extensions, then a
 * Tunnel passes the bytes.
 *
 * An upgrade request on a route without `websocket`, or for another protocol (h2c), or not a GET,
 * is proxied as an ordinary request without its Upgrade header, as it was before there was an
 * 'upgrade' listener, and its connection closes after the answer. An upgrade request with a body
 * is refused (400): Node does not read the body of an upgrade request, so it could not be passed on.
 */
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { ERRORS, GatewayError, problemType } from '../../schemas/errors.js'
import { PROBLEM_CONTENT_TYPE, type Problem } from '../../schemas/problem.js'
import { originAllowed, type WebSocketSettings } from '../../schemas/websocket.js'
import { closeAfterResponse, routeNameOf } from '../core/fastify-internals.js'
import { requestId } from '../core/request-id.js'
import { hasBody } from '../validation/json-body.js'
import { lingerAfterClientError } from '../edge/lingering-close.js'
import { GOING_AWAY, Tunnel, type TunnelCounters } from './tunnel.js'

/** Bytes a client may send after its upgrade request and before the 101; more, and its socket is destroyed. */
export const EARLY_BYTES_LIMIT = 64 * 1024

/** The upgrade a raw request came with (set by the listener, read by the hook and the route handler). */
export interface UpgradeState {
  socket: Duplex
  /** What the client sent after its request head, in order: passed on only once the upstream accepted. */
  early: Buffer[]
  earlySize: number
  /** The client sent FIN before an answer. */
  ended: boolean
  /** The Fastify request (set on a websocket route, by `websocketRouteHook`): its route names the metrics label. */
  request: FastifyRequest | null
  tunnel: boolean
  /** The listener's own 'data' and 'end' listeners on the socket, removed (and only they) when the tunnel takes it. */
  onData: (chunk: Buffer) => void
  onEnd: () => void
}

const kUpgrade = Symbol('portcullis.upgrade')
type UpgradeRequest = IncomingMessage & { [kUpgrade]?: UpgradeState }

/** What one route's upgrades and tunnels add up to (read by /metrics at scrape time). */
export interface WebSocketRouteStats extends TunnelCounters {
  route: string
  /** Upgrade requests answered, by status (`101`, `401`, … `aborted`: the client left first). */
  upgrades: Map<string, number>
}

/** `app.websockets`: the gateway's open tunnels. */
export interface WebSocketGateway {
  /** Tunnels open now (handshakes with the upstream included). */
  open: () => number
  /**
   * Closes every tunnel: a close frame with `code` (default 1001) to each side between frames (a
   * frame under way passes first, for at most 1 s, else that side is destroyed), then FIN; what has
   * not closed within the wait (half of server.shutdownGrace, at most 5 s) is destroyed. Handshakes
   * still waiting for the upstream are given up (their clients get 503). Resolves when every
   * tunnel is gone. New upgrades are refused (503) from the call on.
   */
  closeAll: (code?: number) => Promise<void>
  /** Per route: open tunnels, upgrades by status, bytes each way. */
  stats: () => Iterable<WebSocketRouteStats>
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The gateway's WebSocket tunnels (plugins/websocket); undefined when no route has `websocket`. */
    websockets: WebSockets | undefined
  }
}

/** Status labels an upgrade can be counted under; anything else counts as `other`. */
const STATUS_LABELS = new Set(['101', '400', '401', '403', '404', '405', '408', '413', '429', '431', '500', '502', '503', '504'])

/** The longest a close the gateway starts waits for a frame under way to end (TunnelOptions.boundaryWaitMs). */
export const BOUNDARY_WAIT_MS = 1_000

const SHUTTING_DOWN = 'The gateway is shutting down; retry on a new connection.'

export class WebSockets implements WebSocketGateway {
  private readonly tunnels = new Set<Tunnel>()
  private readonly routes = new Map<string, WebSocketRouteStats>()
  /** Handshakes waiting for the upstream, each with what gives it up (closeAll calls them). */
  private readonly handshakes = new Set<() => void>()
  private closing = false
  private waiters: Array<() => void> = []

  /** @param closeWaitMs how long the sides of a tunnel get to finish a close the gateway started. */
  constructor (private readonly closeWaitMs: number) {}

  open (): number { return this.tunnels.size + this.handshakes.size }

  stats (): Iterable<WebSocketRouteStats> { return this.routes.values() }

  async closeAll (code = GOING_AWAY): Promise<void> {
    this.closing = true
    for (const cancel of [...this.handshakes]) cancel()
    for (const tunnel of this.tunnels) tunnel.close(code, 'gateway closing')
    if (this.open() === 0) return
    await new Promise<void>((resolve) => { this.waiters.push(resolve) })
  }

  /** A route's counters; names come from route definitions, never from the request. */
  route (name: string): WebSocketRouteStats {
    let stats = this.routes.get(name)
    if (stats === undefined) {
      stats = { route: name, open: 0, bytesUp: 0, bytesDown: 0, upgrades: new Map() }
      this.routes.set(name, stats)
    }
    return stats
  }

  counted (route: string, status: string): void {
    const upgrades = this.route(route).upgrades
    const label = STATUS_LABELS.has(status) || status === 'aborted' ? status : 'other'
    upgrades.set(label, (upgrades.get(label) ?? 0) + 1)
  }

  private settle (): void {
    if (this.open() !== 0) return
    const waiters = this.waiters
    this.waiters = []
    for (const resolve of waiters) resolve()
  }

  /**
   * The handler of a websocket route for an upgrade request that passed the pipeline: checks the
   * handshake and the route's cap, asks the upstream, then answers its 101 and opens the tunnel —
   * or answers problem+json.
   */
  tunnel (request: FastifyRequest, reply: FastifyReply, state: UpgradeState, route: string, settings: WebSocketSettings, upgrade: UpgradeFn): void {
    if (this.closing) {
      reply.send(new GatewayError('GW_ERR_UNAVAILABLE', SHUTTING_DOWN))
      return
    }
    const version = request.headers['sec-websocket-version']
    if (version !== '13') {
      reply.send(new GatewayError('GW_ERR_BAD_REQUEST', 'Sec-WebSocket-Version must be 13.', { headers: { 'sec-websocket-version': '13' } }))
      return
    }
    const key = request.headers['sec-websocket-key']
    if (typeof key !== 'string' || !/^[A-Za-z0-9+/]{21}[AQgw]==$/.test(key)) {
      reply.send(new GatewayError('GW_ERR_BAD_REQUEST', 'Sec-WebSocket-Key must be 16 bytes in base64.'))
      return
    }
    if (!originAllowed(request.headers.origin, request.headers.host, settings.origins)) {
      reply.send(new GatewayError('GW_ERR_FORBIDDEN', 'This WebSocket upgrade comes from a page whose Origin the route does not allow.'))
      return
    }
    const counters = this.route(route)
    if (counters.open >= settings.maxConnections) {
      request.log.warn({ route, maxConnections: settings.maxConnections }, 'websocket tunnels of this route at their cap')
      reply.send(new GatewayError('GW_ERR_UNAVAILABLE', 'Too many WebSocket connections on this route; retry shortly.', { headers: { 'retry-after': '1' } }))
      return
    }
    counters.open++
    const res = reply.raw
    // Until the upstream answers, the handshake is held (against the cap, and in open()). It ends
    // once: the upstream's answer, the client leaving, or closeAll giving it up.
    let held = true
    let giveUp = (): void => {}
    const release = (): boolean => {
      if (!held) return false
      held = false
      counters.open--
      this.handshakes.delete(cancel)
      res.removeListener('close', onClientGone)
      state.socket.removeListener('end', onClientGone)
      this.settle()
      return true
    }
    // The client left (or sent FIN) during the handshake: it is given up, nothing is held.
    function onClientGone (): void {
      if (!release()) return
      giveUp()
      state.socket.destroy()
    }
    // closeAll: the handshake is given up and the client told so (or its socket closed).
    const cancel = (): void => {
      if (!release()) return
      giveUp()
      if (!res.headersSent && !res.destroyed) reply.send(new GatewayError('GW_ERR_UNAVAILABLE', SHUTTING_DOWN))
      else state.socket.destroy()
    }
    this.handshakes.add(cancel)
    giveUp = upgrade(request, reply, {
      accepted: (status, headers, upstream) => {
        if (!release()) { upstream.destroy(); return }
        if (state.ended || res.destroyed || this.closing) {
          upstream.destroy()
          if (!res.destroyed) reply.send(new GatewayError('GW_ERR_UNAVAILABLE', SHUTTING_DOWN))
          return
        }
        headers.push('connection', 'Upgrade', 'upgrade', 'websocket')
        try {
          res.writeHead(status, headers)
        } catch (err) {
          // A header value Node refuses to send: nothing of the upstream's answer is passed on.
          upstream.destroy()
          reply.send(new GatewayError('GW_ERR_BAD_GATEWAY', 'The upstream answered with an invalid header.', { cause: err }))
          return
        }
        reply.hijack()
        state.tunnel = true
        res.end()
        // The socket is the tunnel's from here: nothing of the client's is read before the 101 is
        // out. Only the listener's own listeners go; others' (another plugin's) stay.
        const socket = state.socket
        socket.removeListener('data', state.onData)
        socket.removeListener('end', state.onEnd)
        const tunnel = new Tunnel(socket, upstream, {
          idleTimeoutMs: settings.idleTimeoutMs,
          closeWaitMs: this.closeWaitMs,
          boundaryWaitMs: Math.min(BOUNDARY_WAIT_MS, this.closeWaitMs / 2),
          counters,
          log: request.log,
          onClosed: (t) => {
            this.tunnels.delete(t)
            counters.open--
            this.settle()
          }
        })
        counters.open++ // the tunnel's place, in place of the handshake's
        this.tunnels.add(tunnel)
        tunnel.start(state.early)
        state.early = []
      },
      refused: (err) => {
        // After closeAll or the client's leaving (a timeout that fires later) there is nobody to tell.
        if (release() && !res.destroyed) reply.send(err)
      }
    })
    if (held) {
      res.once('close', onClientGone)
      state.socket.once('end', onClientGone)
      if (state.ended) onClientGone()
    }
  }
}

/** `Forwarder.upgrade`, as the route handler gets it (plugins never import src/). */
export type UpgradeFn = (request: FastifyRequest, reply: FastifyReply, handlers: {
  accepted: (status: number, headers: string[], socket: Duplex) => void
  refused: (err: GatewayError) => void
}) => () => void

/** The upgrade state of a request that came through the 'upgrade' listener, else undefined. */
function upgradeOf (request: FastifyRequest): UpgradeState | undefined {
  return (request.raw as UpgradeRequest)[kUpgrade]
}

/** A WebSocket opening handshake (RFC 6455 §4.1): GET with `Upgrade: websocket`. */
function asksForWebSocket (request: FastifyRequest): boolean {
  const upgrade = request.headers.upgrade
  return request.raw.method === 'GET' && typeof upgrade === 'string' && upgrade.toLowerCase().split(',').some((p) => p.trim() === 'websocket')
}

/**
 * A websocket route's handler: an upgrade request that asks for a WebSocket gets a tunnel (or a
 * refusal); anything else is forwarded as usual by `forward`.
 */
export function websocketHandler (route: string, settings: WebSocketSettings, upgrade: UpgradeFn, forward: (request: FastifyRequest, reply: FastifyReply) => void) {
  return function websocketRoute (request: FastifyRequest, reply: FastifyReply): void {
    const state = upgradeOf(request)
    const websockets = request.server.websockets
    if (state === undefined || websockets === undefined || !asksForWebSocket(request)) { forward(request, reply); return }
    websockets.tunnel(request, reply, state, route, settings, upgrade)
  }
}

/**
 * onRequest, first in each websocket route's scope (src/route.ts), and only there: an upgrade
 * request's route names its metrics label. A request on any other route meets no hook of this plugin.
 */
export function websocketRouteHook (request: FastifyRequest, _reply: FastifyReply, done: () => void): void {
  const state = upgradeOf(request)
  if (state !== undefined) state.request = request
  done()
}

export interface WebSocketPluginOptions {
  /** How long the sides of a closing tunnel get (from server.shutdownGrace). */
  closeWaitMs: number
  /** After a refusal, how long and how much of what the client still sends is read and dropped. */
  lingering: { timeMs: number, bytes: number }
  /** The security headers (securityHeaders), for the answer the listener writes itself. */
  securityHeaders: ReadonlyArray<readonly [string, string]>
}

const BODY_REFUSED = 'An upgrade request must not have a body.'

/**
 * The 400 for an upgrade request with a body, written by the listener before routing: Node does
 * not read the body of an upgrade request, so no route could pass it on (an ordinary route would
 * forward the request without it) — as a request Node's parser refuses, it is answered on the
 * socket, problem+json with its X-Request-Id and the security headers.
 */
function bodyRefusal (req: IncomingMessage, id: string, headers: WebSocketPluginOptions['securityHeaders']): string {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  const { title, status } = ERRORS.GW_ERR_BAD_REQUEST
  const problem: Problem = { type: problemType('GW_ERR_BAD_REQUEST'), title, status, detail: BODY_REFUSED, instance: q === -1 ? url : url.slice(0, q), requestId: id }
  const body = JSON.stringify(problem)
  return `HTTP/1.1 ${status} ${title}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${id}\r\n${headers.map(([name, value]) => `${name}: ${value}\r\n`).join('')}Connection: close\r\n\r\n${body}`
}

/**
 * The 'upgrade' listener, a plain function of the app: any server may call it with a request of
 * its own (live reload forwards the listening server's events to the current app), so nothing here
 * assumes `socket.server` is `app.server`.
 */
export function upgradeListener (app: FastifyInstance, options: Pick<WebSocketPluginOptions, 'lingering' | 'securityHeaders'>): (req: IncomingMessage, socket: Duplex, head: Buffer) => void {
  const { lingering } = options
  return function onUpgrade (req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => { socket.destroy() })
    if (hasBody(req.headers)) {
      const id = requestId(req)
      app.log.info({ reqId: id }, 'upgrade request with a body refused')
      app.websockets?.counted('unmatched', '400')
      lingerAfterClientError(socket, bodyRefusal(req, id, options.securityHeaders), lingering)
      return
    }
    const state: UpgradeState = {
      socket,
      early: head.length > 0 ? [head] : [],
      earlySize: head.length,
      ended: false,
      request: null,
      tunnel: false,
      // Read on (bounded) while the pipeline and the upstream decide, so a client that leaves is seen.
      onData: (chunk: Buffer) => {
        state.earlySize += chunk.length
        if (state.earlySize > EARLY_BYTES_LIMIT) { socket.destroy(); return }
        state.early.push(chunk)
      },
      onEnd: () => { state.ended = true }
    }
    ;(req as UpgradeRequest)[kUpgrade] = state
    socket.on('data', state.onData)
    socket.on('end', state.onEnd)
    const res = new ServerResponse(req)
    closeAfterResponse(res) // the answer (other than a 101) is the last thing on this connection
    res.assignSocket(socket as never)
    res.once('finish', () => {
      const websockets = app.websockets
      if (websockets !== undefined) websockets.counted(labelOf(state), state.tunnel ? '101' : String(res.statusCode))
      if (state.tunnel) {
        // The 101 is out and the socket is the tunnel's: the response is over. Node emits a
        // response's 'close' when its socket closes, which this one will not do for as long as the
        // tunnel lasts; the observers (metrics, tracing) end the request on it.
        res.detachSocket(socket as never)
        res.emit('close')
        return
      }
      // The answer was the last thing on this connection: FIN, then a bounded read of what still comes.
      lingerAfterClientError(socket, '', lingering)
    })
    res.once('close', () => {
      if (!res.writableFinished) app.websockets?.counted(labelOf(state), 'aborted')
    })
    try {
      app.routing(req, res)
    } catch (err) {
      app.log.warn({ err }, 'upgrade request could not be routed')
      socket.destroy()
    }
  }
}

function labelOf (state: UpgradeState): string {
  return (state.request === null ? undefined : routeNameOf(state.request)) ?? 'unmatched'
}

async function websocketPlugin (app: FastifyInstance, opts: WebSocketPluginOptions): Promise<void> {
  const websockets = new WebSockets(opts.closeWaitMs)
  app.decorate('websockets', websockets)
  // No hook on the app: the listener decides what it can before routing (a body), and only the
  // websocket routes' scopes have websocketRouteHook, so other requests pay nothing for this plugin.
  const listener = upgradeListener(app, opts)
  app.server.on('upgrade', listener)
  // Open tunnels get their 1001 as the gateway starts to close, before the server waits for its sockets.
  app.addHook('preClose', async () => { await websockets.closeAll(GOING_AWAY) })
  app.addHook('onClose', (_app, done) => { app.server.removeListener('upgrade', listener); done() })
}

export default fp(websocketPlugin, { name: 'portcullis-websocket', fastify: '5.x' })

/**
 * `routes[].websocket`: a route's upgrade requests become tunnels to its upstream after they pass
 * the route's whole pipeline (plugins/websocket, docs/websockets.md).
 */
import Type from 'typebox'
import { Duration, parseDuration } from './common.js'

export const WEBSOCKET_DEFAULTS = { idleTimeout: '60s', maxConnections: 1000 } as const

export const WebSocketSchema = Type.Object({
  idleTimeout: Duration({ default: WEBSOCKET_DEFAULTS.idleTimeout, description: 'a tunnel with no byte either way for this long is closed (a 1001 close frame to each side when it is between frames)' }),
  maxConnections: Type.Integer({ minimum: 1, maximum: 1_000_000, default: WEBSOCKET_DEFAULTS.maxConnections, description: 'most tunnels of this route open at once (handshakes included); one more upgrade → 503 with Retry-After, before the upstream' })
}, { additionalProperties: false })

export const routeWebSocketProperties = {
  websocket: Type.Union([Type.Boolean(), WebSocketSchema], {
    default: false,
    description: `WebSocket tunnels: true (idleTimeout ${WEBSOCKET_DEFAULTS.idleTimeout}, maxConnections ${WEBSOCKET_DEFAULTS.maxConnections}) or { idleTimeout, maxConnections }. An upgrade request passes the route's whole pipeline as a GET, then the upstream's 101 and the frames pass untouched both ways (docs/websockets.md); false: an Upgrade header is ignored and the request is proxied as any other`
  })
}

/** A route's websocket settings, defaults applied; null when the route has none. */
export interface WebSocketSettings { idleTimeoutMs: number, maxConnections: number }

export function websocketSettings (value: boolean | { idleTimeout?: string, maxConnections?: number } | undefined): WebSocketSettings | null {
  if (value === undefined || value === false) return null
  const given = value === true ? {} : value
  return {
    idleTimeoutMs: parseDuration(given.idleTimeout ?? WEBSOCKET_DEFAULTS.idleTimeout),
    maxConnections: given.maxConnections ?? WEBSOCKET_DEFAULTS.maxConnections
  }
}

/** A websocket route must allow GET (an upgrade is a GET, RFC 6455 §4.1). */
export function checkWebSocketSemantics (route: { websocket?: unknown, methods: readonly string[] }, at: string, problems: string[]): void {
  if (route.websocket === undefined || route.websocket === false) return
  if (!route.methods.includes('GET')) problems.push(`${at}.methods: a websocket route must allow GET (the upgrade request is a GET)`)
}

/**
 * `routes[].websocket`: a route's upgrade requests become tunnels to its upstream after they pass
 * the route's whole pipeline (plugins/websocket, docs/websockets.md).
 */
import Type from 'typebox'
import { Duration, parseDuration } from './common.js'

export const WEBSOCKET_DEFAULTS = { idleTimeout: '60s', maxConnections: 1000 } as const

export const WebSocketSchema = Type.Object({
  idleTimeout: Duration({ default: WEBSOCKET_DEFAULTS.idleTimeout, description: 'a tunnel with no byte either way for this long is closed (a 1001 close frame to each side at the next frame boundary; a frame that does not end within 1 s: the connection of that side is closed)' }),
  maxConnections: Type.Integer({ minimum: 1, maximum: 1_000_000, default: WEBSOCKET_DEFAULTS.maxConnections, description: 'most tunnels of this route open at once (handshakes included); one more upgrade → 503 with Retry-After, before the upstream' }),
  origins: Type.Optional(Type.Array(Type.String({ pattern: '^(\\*|https?://[^/\\s]+)$' }), {
    uniqueItems: true,
    description: 'browser origins allowed to open a tunnel, exactly as browsers send them (https://app.example.com), or "*"; default: the page\'s own host (Origin naming the Host asked for) and routes[].cors.origins. An upgrade with another Origin is 403 before the upstream (cross-site WebSocket hijacking: a browser sends cookies with any page\'s upgrade); one without Origin (not a browser) passes'
  }))
}, { additionalProperties: false })

export const routeWebSocketProperties = {
  websocket: Type.Union([Type.Boolean(), WebSocketSchema], {
    default: false,
    description: `WebSocket tunnels: true (idleTimeout ${WEBSOCKET_DEFAULTS.idleTimeout}, maxConnections ${WEBSOCKET_DEFAULTS.maxConnections}) or { idleTimeout, maxConnections }. An upgrade request passes the route's whole pipeline as a GET, then the upstream's 101 and the frames pass untouched both ways (docs/websockets.md); false: an Upgrade header is ignored and the request is proxied as any other`
  })
}

/** A route's websocket settings, defaults applied; null when the route has none. */
export interface WebSocketSettings {
  idleTimeoutMs: number
  maxConnections: number
  /** Origins allowed besides the same-host one; `*` in it: any. */
  origins: ReadonlySet<string>
}

/** @param corsOrigins the route's routes[].cors.origins: allowed too when `origins` is not given. */
export function websocketSettings (value: boolean | { idleTimeout?: string, maxConnections?: number, origins?: readonly string[] } | undefined, corsOrigins: readonly string[] = []): WebSocketSettings | null {
  if (value === undefined || value === false) return null
  const given = value === true ? {} : value
  return {
    idleTimeoutMs: parseDuration(given.idleTimeout ?? WEBSOCKET_DEFAULTS.idleTimeout),
    maxConnections: given.maxConnections ?? WEBSOCKET_DEFAULTS.maxConnections,
    origins: new Set((given.origins ?? corsOrigins).map((o) => o.toLowerCase()))
  }
}

/**
 * Whether a browser page at `origin` may open a tunnel: no Origin (not a browser), the page's
 * own host (the Origin's host:port is the Host asked for), or a listed origin. Browsers send
 * cookies with an upgrade from any page and CORS does not apply to WebSockets, so without this a
 * page elsewhere could open a tunnel as a user whose session is a cookie (routes with jwt.cookie).
 */
export function originAllowed (origin: string | undefined, host: string | undefined, allowed: ReadonlySet<string>): boolean {
  if (origin === undefined) return true
  const o = origin.toLowerCase()
  if (allowed.has('*') || allowed.has(o)) return true
  const sep = o.indexOf('://')
  return sep !== -1 && host !== undefined && o.slice(sep + 3) === host.toLowerCase()
}

/** A websocket route must allow GET (an upgrade is a GET, RFC 6455 §4.1). */
export function checkWebSocketSemantics (route: { websocket?: unknown, methods: readonly string[] }, at: string, problems: string[]): void {
  if (route.websocket === undefined || route.websocket === false) return
  if (!route.methods.includes('GET')) problems.push(`${at}.methods: a websocket route must allow GET (the upgrade request is a GET)`)
}

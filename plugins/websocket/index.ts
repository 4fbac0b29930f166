/**
 * WebSocket routes: the 'upgrade' listener that sends upgrade requests through the pipeline, and
 * `app.websockets` (open tunnels, closeAll). Off (no listener: an Upgrade header is ignored, as
 * Node does without one) unless some route has `websocket`.
 */
import { gatewayStage } from '../core/stage.js'
import { parseDuration, parseSize } from '../../schemas/common.js'
import { websocketSettings } from '../../schemas/websocket.js'
import { securityHeaderValues } from '../edge/security-headers.js'
import websocketPlugin from './websocket.js'

export { websocketHandler, websocketRouteHook, type WebSocketGateway, type WebSocketRouteStats } from './websocket.js'

export const websockets = gatewayStage({
  name: 'websocket upgrades',
  key: 'routes[].websocket',
  phase: 'connection',
  setup: ({ config }) => {
    if (!config.routes.some((route) => websocketSettings(route.websocket) !== null)) return null
    return {
      // A closing tunnel's sides get half the shutdown grace (at most 5 s) to answer the close frame.
      closeWaitMs: Math.min(5_000, parseDuration(config.server.shutdownGrace) / 2),
      lingering: { timeMs: parseDuration(config.server.lingeringClose.time), bytes: parseSize(config.server.lingeringClose.size) },
      securityHeaders: Object.entries(securityHeaderValues(config.securityHeaders))
    }
  },
  plugin: websocketPlugin
})

/**
 * Edge protection: what a request meets before anyone asks who the client is. The limits that
 * Node's parser applies (head size, timeouts, body limit) are server options, set in src/app.ts.
 */
import { parseDuration, parseSize } from '../../schemas/common.js'
import { TRUST_BEARING_HEADERS } from '../../schemas/edge.js'
import { gatewayStage, routeStage } from '../core/stage.js'
import lingeringClosePlugin from './lingering-close.js'
import headerNamesPlugin from './header-names.js'
import clientLimitsPlugin from './client-limits.js'
import securityHeadersPlugin, { hiddenUpstreamHeaders, securityHeaderValues } from './security-headers.js'
import ipFilterPlugin from './ip-filter.js'
import corsPlugin, { CORS_RESPONSE_HEADERS } from './cors.js'
import pathGuardPlugin from './path-guard.js'
import { trustedPeer } from './trust.js'
import { hostGuardPlugin } from './host-match.js'

/** A refused request's body is read (bounded) before the close, so the client reads the refusal. */
export const lingeringClose = gatewayStage({
  name: 'lingering close',
  key: 'server.lingeringClose',
  phase: 'connection',
  setup: ({ config }) => ({ timeMs: parseDuration(config.server.lingeringClose.time), bytes: parseSize(config.server.lingeringClose.size) }),
  plugin: lingeringClosePlugin
})

/** Header names with `_`: dropped before the upstream (default), refused with 400, or allowed. */
export const headerNames = gatewayStage({
  name: 'header names',
  key: 'server.headersWithUnderscores',
  phase: 'onRequest',
  setup: ({ config }) => ({ mode: config.server.headersWithUnderscores }),
  plugin: headerNamesPlugin,
  forwarding: ({ mode }) => ({ underscoreHeaders: mode === 'allow' ? 'allow' : 'drop' })
})

/** X-Forwarded-* and the other trust-bearing headers pass only from a peer `server.trustProxy` trusts. */
export const trustedProxies = gatewayStage({
  name: 'trusted proxies',
  key: 'server.trustProxy',
  phase: 'handler',
  setup: ({ config }) => ({ trusted: trustedPeer(config.server.trustProxy) ?? (() => false) }),
  forwarding: ({ trusted }) => ({ trustBearing: { names: TRUST_BEARING_HEADERS, trusted } })
})

/** Header count (431) and transfer codings (501, 400) on every request. */
export const clientLimits = gatewayStage({
  name: 'client limits',
  key: 'server.maxHeaders',
  phase: 'onRequest',
  setup: ({ config }) => ({ maxHeaders: config.server.maxHeaders }),
  plugin: clientLimitsPlugin
})

/** HSTS, nosniff, frame options… on every answer; `server`/`x-powered-by` hidden from upstream answers. */
export const securityHeaders = gatewayStage({
  name: 'security headers',
  key: 'securityHeaders',
  phase: 'response',
  setup: ({ config }) => ({ config: config.securityHeaders }),
  plugin: securityHeadersPlugin,
  forwarding: ({ config }) => ({ responseHeaders: Object.entries(securityHeaderValues(config)), hideResponseHeaders: hiddenUpstreamHeaders(config) })
})

/** The route's prefix, spelled as configured; no dot segments, %2F, backslash, `;`, NUL or `#`. */
export const pathGuard = routeStage({
  name: 'path guard',
  key: 'routes[].prefix, routes[].allowInPath',
  phase: 'onRequest',
  setup: ({ route }) => ({ prefix: route.prefix, allow: route.allowInPath }),
  plugin: pathGuardPlugin
})

/** A route chosen by host: one Host header, and a trusted X-Forwarded-Host that agrees with it (400). */
export const hostGuard = routeStage({
  name: 'host guard',
  key: 'routes[].hosts',
  phase: 'onRequest',
  setup: ({ route }) => route.hosts.length === 0 ? null : {},
  plugin: hostGuardPlugin
})

/** IP allow/deny lists: the gateway's, then the route's. */
export const ipFilter = routeStage({
  name: 'IP filter',
  key: 'ipFilter, routes[].ipFilter',
  phase: 'onRequest',
  setup: ({ config, route }) => ({ filters: [config.ipFilter, route.ipFilter] }),
  plugin: ipFilterPlugin
})

/** CORS preflights answered by the gateway; the upstream's own CORS headers are dropped. */
export const cors = routeStage({
  name: 'CORS',
  key: 'routes[].cors',
  phase: 'onRequest',
  setup: ({ route }) => route.cors === undefined ? null : { cors: route.cors, methods: route.methods },
  plugin: corsPlugin,
  forwarding: () => ({ hideResponseHeaders: CORS_RESPONSE_HEADERS })
})

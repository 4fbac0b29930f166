/**
 * The pipeline: every stage a request meets, in order, and the config key that turns each on.
 * src/app.ts registers GATEWAY_STAGES once; src/route.ts registers ROUTE_STAGES in each route's
 * own scope, then forwards. Each stage lives in its concern's folder under plugins/ and has the
 * shape of plugins/core/stage.ts. Adding a built-in concern: its folder, one line here, its
 * tests and its docs (docs/plugins.md walks through it; plugins/load-shedding is the example).
 *
 *   client ─▶ [Node's parser: head size, header and request timeouts, body limit — server.*]
 *          ─▶ gateway stages (every request, before routing)
 *          ─▶ route stages (one encapsulated scope per routes[] entry)
 *          ─▶ forward (src/forward.ts: routes[].upstream, timeout, retries, connections, queue)
 *          ─▶ response headers ─▶ access log, metrics, trace
 */
import type { GatewayStage, RouteStage } from '../plugins/core/stage.js'
import * as core from '../plugins/core/index.js'
import * as edge from '../plugins/edge/index.js'
import * as auth from '../plugins/auth/index.js'
import * as rateLimit from '../plugins/rate-limit/index.js'
import * as validation from '../plugins/validation/index.js'
import * as observability from '../plugins/observability/index.js'
import * as extend from '../plugins/extend/index.js'
import { loadShedding } from '../plugins/load-shedding/index.js'
import * as upstream from '../plugins/upstream/index.js'
import * as websocket from '../plugins/websocket/index.js'

/** Registered once, on the gateway, in this order; they see every request (and the gateway's own endpoints). */
export const GATEWAY_STAGES: readonly GatewayStage[] = [
  edge.lingeringClose, //        server.lingeringClose      refused bodies are drained (bounded), so the refusal arrives
  edge.headerNames, //           server.headersWithUnderscores   drop | reject (400) | allow
  edge.clientLimits, //          server.maxHeaders          431; transfer codings 501/400
  edge.securityHeaders, //       securityHeaders            on every answer; server/x-powered-by hidden
  loadShedding, //               loadShedding.*             503 + Retry-After while overloaded
  core.problem, //               always                     problem+json for every refusal; 404/405
  core.requestId, //             always                     X-Request-Id
  observability.tracing, //      tracing.enabled            trace context, spans
  observability.metrics, //      server.metrics.enabled     Prometheus
  core.health, //                always                     /healthz, /readyz, drain
  websocket.websockets, //       routes[].websocket         upgrade requests through the pipeline; tunnels, closeAll
  upstream.targets, //           routes[].upstream, balance, healthCheck…   which target; health, ejection, breakers
  rateLimit.store, //            rateLimit                  memory or Redis counters
  auth.schemes, //               users, jwt, apiKeys        the schemes every route shares (JWKS cache, user table)
  auth.tokenEndpoint, //         tokenEndpoint              POST /auth/token
  edge.trustedProxies, //        server.trustProxy          (forwarding) who may send X-Forwarded-*
  auth.identity //               identityHeaders            (forwarding) identity headers to the upstream
]

/** Registered in each route's scope, in this order (a refusal at any stage ends the request there). */
export const ROUTE_STAGES: readonly RouteStage[] = [
  edge.pathGuard, //             routes[].prefix, allowInPath   400 on ambiguous spellings and non-path targets
  edge.hostGuard, //             routes[].hosts                 400 on a second Host, a disagreeing X-Forwarded-Host
  edge.ipFilter, //              ipFilter, routes[].ipFilter    403
  edge.cors, //                  routes[].cors                  preflights
  rateLimit.byIp, //             routes[].rateLimit             429; failed logins count here
  extend.pluginsBeforeAuth, //   routes[].plugins (at: beforeAuth), buildGateway({ plugins })
  auth.authenticate, //          routes[].auth                  401
  auth.authorize, //             routes[].scopes, require       403
  rateLimit.byConsumer, //       routes[].rateLimit             429 per consumer
  validation.validate, //        routes[].validate              400/413/415/422 (body read here)
  extend.pluginsAfterAuth //     routes[].plugins (at: afterAuth), buildGateway({ plugins })
]

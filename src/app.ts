/**
 * buildGateway(config): the whole gateway as a Fastify instance, ready to `listen` (or to
 * `inject` in tests). It does not listen; src/server.ts does. A user can `register` more
 * plugins on the returned instance before listening.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import { RESERVED_PATHS, type GatewayConfig } from '../schemas/config.js'
import { parseDuration, parseSize } from '../schemas/common.js'
import problem, { clientErrorResponse, sendProblem } from '../plugins/core/problem.js'
import requestIdPlugin, { requestId } from '../plugins/core/request-id.js'
import health from '../plugins/core/health.js'
import clientLimits from '../plugins/edge/client-limits.js'
import securityHeaders, { hiddenUpstreamHeaders, securityHeaderValues } from '../plugins/edge/security-headers.js'
import { CORS_RESPONSE_HEADERS } from '../plugins/edge/cors.js'
import loadShedding from '../plugins/edge/load-shedding.js'
import rateLimit from '../plugins/rate-limit/rate-limit.js'
import metricsPlugin, { GatewayMetrics } from '../plugins/observability/metrics.js'
import tracingPlugin, { Tracer, TRACE_HEADERS } from '../plugins/observability/tracing.js'
import tokenEndpoint from '../plugins/auth/token-endpoint.js'
import { identityHeaderSource, routeStripHeaders } from '../plugins/auth/identity.js'
import { createForwarder, type Forwarder } from './forward.js'
import { routeScope } from './route.js'
import type { Logger } from 'pino'
import { createGatewayLogger, formatAccessLine, lazyChildLoggerFactory, type LineBuffer } from './logging.js'
import { responseInFlight, routeNameOf } from '../plugins/core/fastify-internals.js'
import lingeringClose from '../plugins/edge/lingering-close.js'
import { BodyBuffers } from './body-buffer.js'
import { TRUST_BEARING_HEADERS } from '../schemas/edge.js'
import { GatewayError } from '../schemas/errors.js'
import { compile as compileTrust } from '@fastify/proxy-addr'

export interface BuildOptions {
  /** Fastify/pino logger options, or false. Default: JSON logs at `logging.level`, secrets redacted. */
  logger?: FastifyServerOptions['logger']
  /**
   * Where the gateway's own logger writes (when `logger` is not given): a file descriptor
   * (default 1, stdout) or a file path.
   */
  logDestination?: number | string
}

/** Header and field paths that never reach a log line. */
export const REDACT = [
  'req.headers.authorization', 'req.headers["proxy-authorization"]', 'req.headers.cookie', 'req.headers["x-api-key"]',
  'res.headers["set-cookie"]', 'headers.authorization', 'headers.cookie', 'headers["set-cookie"]', 'password', '*.password', '*.token'
]

declare module 'fastify' {
  interface FastifyInstance {
    /** The frozen config this gateway was built from. */
    gatewayConfig: Readonly<GatewayConfig>
  }
}

/** What sees every request from its start (metrics, tracing), with no hook on the routes. */
interface RequestObserver { start: (request: FastifyRequest, reply: FastifyReply) => void }

/**
 * Fastify's per-request log lines, replaced by one access line per request: method, route name,
 * path (never the query string, which may carry secrets), status, duration, upstream time and
 * trace id. Fastify calls it when the response finishes, proxied (hijacked) responses included,
 * so no onResponse hook is needed on the hot path. Its `incomingRequest` (called for every
 * request before any hook) starts the observers.
 */
class AccessLog extends LogController {
  /**
   * @param lines the gateway's own logger's buffer: the access line is formatted directly into it
   * (src/logging.ts), when `info` is enabled for the request's logger — checked per line, as
   * pino would, so a level changed at run time (`app.log.level`) applies. Without it (a logger given to buildGateway), the line goes
   * through `request.log` like any other.
   */
  constructor (
    private readonly enabled: boolean,
    private readonly observers: readonly RequestObserver[] = [],
    private readonly lines: LineBuffer | null = null
  ) {
    super({ disableRequestLogging: false })
  }

  override incomingRequest (request: FastifyRequest, reply: FastifyReply): void {
    for (const observer of this.observers) observer.start(request, reply)
  }

  override routeNotFound (): void {}

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (!this.enabled) return
    const url = request.raw.url ?? '/'
    const q = url.indexOf('?')
    // reqId first: the fields in formatAccessLine's order, built once (no copy for the fast path).
    const line = {
      reqId: request.id,
      method: request.method,
      // Undefined once the client's socket has closed: null keeps the line valid JSON.
      ip: request.ip ?? null,
      route: routeNameOf(request) ?? null,
      path: q === -1 ? url : url.slice(0, q),
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime * 100) / 100,
      upstreamMs: request.upstreamMs === undefined ? null : Math.round(request.upstreamMs * 100) / 100,
      traceId: request.trace?.traceId ?? null
    }
    if (this.lines !== null && !error) {
      if ((request.log as unknown as Logger).isLevelEnabled('info')) this.lines.write(formatAccessLine(line))
      return
    }
    // request.log carries reqId already.
    const { reqId: _, ...fields } = line
    if (error) request.log.warn({ ...fields, err: error }, 'request errored')
    else request.log.info(fields, 'request completed')
  }
}

/**
 * `server.trustProxy` for Fastify. A hop count N trusts the N nearest proxies, whoever they are
 * (Express semantics): Fastify 5.12 turned counts into "trust nothing", since a count cannot check
 * who the peer is. Use a count only when the gateway is reachable through those proxies alone;
 * a list of CIDRs is the safer choice.
 */
export function trustProxyOption (value: boolean | number | readonly string[]): FastifyServerOptions['trustProxy'] {
  if (typeof value === 'number') return (_address: string, hop: number) => hop < value
  return value as FastifyServerOptions['trustProxy']
}

/**
 * Whether a request's peer (the socket's address, not any header) is one `server.trustProxy`
 * trusts: the trust-bearing headers it sends are passed on (src/forward.ts). Null: none is.
 */
export function trustedPeer (value: boolean | number | readonly string[]): ((request: FastifyRequest) => boolean) | null {
  if (value === false) return null
  if (value === true || typeof value === 'number') return () => true
  const trust = compileTrust([...value])
  return (request) => trust(request.raw.socket?.remoteAddress ?? '', 0)
}

export async function buildGateway (config: Readonly<GatewayConfig>, options: BuildOptions = {}): Promise<FastifyInstance> {
  const { server, logging } = config
  const requestTimeout = parseDuration(server.timeouts.request)
  const longestRoute = Math.max(...config.routes.map((r) => parseDuration(r.timeout)))
  const tracer = config.tracing.enabled ? new Tracer(config.tracing) : null
  const metrics = config.server.metrics.enabled ? new GatewayMetrics(config) : null
  const securityResponseHeaders = Object.entries(securityHeaderValues(config.securityHeaders))
  // The gateway's own logger (unless given one): buffered, with the access line written directly.
  const own = options.logger === undefined && logging.level !== 'silent'
    ? createGatewayLogger({ level: logging.level, redact: REDACT, dest: options.logDestination })
    : null
  const app = Fastify({
    ...(own !== null
      ? { loggerInstance: own.logger as unknown as FastifyBaseLogger, childLoggerFactory: lazyChildLoggerFactory as unknown as FastifyServerOptions['childLoggerFactory'] }
      : { logger: options.logger ?? false }),
    logController: new AccessLog(logging.accessLog, [tracer, metrics].filter((o) => o !== null), own?.lines ?? null),
    genReqId: requestId,
    trustProxy: trustProxyOption(server.trustProxy),
    bodyLimit: parseSize(server.bodyLimit),
    requestTimeout,
    keepAliveTimeout: parseDuration(server.timeouts.keepAlive),
    // Socket inactivity: long enough for the slowest route to answer after the request arrived.
    connectionTimeout: requestTimeout + longestRoute,
    http: {
      maxHeaderSize: parseSize(server.maxHeaderSize),
      headersTimeout: parseDuration(server.timeouts.headers),
      // How often Node looks for heads and requests past their timeout (default 30 s, far longer
      // than the timeouts themselves): slow-loris sockets are closed within a second of theirs.
      connectionsCheckingInterval: Math.min(1000, parseDuration(server.timeouts.headers))
    },
    // plugins/core/health answers requests that arrive while draining (problem+json, /readyz 503).
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    exposeHeadRoutes: false,
    routerOptions: { maxParamLength: 2048 },
    // Malformed URLs (`/api/people/%zz`) and failed constraints: problem+json like everything else.
    frameworkErrors (error, request, reply) {
      // These are answered before any route (and its hooks): set the request id and the
      // security headers here.
      reply.header('x-request-id', request.id)
      for (const [name, value] of securityResponseHeaders) reply.header(name, value)
      sendProblem(reply, 'GW_ERR_BAD_REQUEST', error.code === 'FST_ERR_BAD_URL' ? 'The request URL is malformed.' : 'The request could not be routed.')
    },
    clientErrorHandler (err, socket) {
      // Bytes after a request that is still being answered (a body longer than its
      // Content-Length, say) are not answered ahead of it — the client would read the 400 as the
      // answer to its request: that answer goes out, then the connection closes.
      const pending = responseInFlight(socket)
      if (pending !== null && pending.req.complete) {
        if (!pending.headersSent) pending.shouldKeepAlive = false
        pending.once('close', () => { socket.end() })
        return
      }
      // Answered on the raw socket, before Fastify: the security headers are added here too.
      if (socket.writable && (pending === null || !pending.headersSent)) socket.end(clientErrorResponse(err, requestId({ headers: {} } as never), securityResponseHeaders))
      else socket.destroy()
    }
  })
  app.decorate('gatewayConfig', config)
  await app.register(lingeringClose, { timeMs: parseDuration(server.lingeringClose.time), bytes: parseSize(server.lingeringClose.size) })
  if (server.headersWithUnderscores === 'reject') {
    // nginx answers 400 too with `ignore_invalid_headers off` and underscores refused.
    app.addHook('onRequest', function refuseUnderscoreHeaders (request, _reply, done) {
      for (const name in request.raw.headers) {
        if (name.includes('_')) { done(new GatewayError('GW_ERR_BAD_REQUEST', 'Header names must not contain "_".')); return }
      }
      done()
    })
  }
  if (own !== null) app.addHook('onClose', (_app, done) => { own.close(); done() })
  app.decorateRequest('upstreamMs', undefined)
  app.decorateRequest('upstream', undefined)
  app.decorateRequest('identity', undefined)

  // Edge protection on every request, before any route's hooks: header count (431), security
  // headers, load shedding (503). The rate-limit store is shared by the routes' limiters.
  await app.register(clientLimits, { maxHeaders: server.maxHeaders })
  await app.register(securityHeaders, { config: config.securityHeaders })
  await app.register(loadShedding, { config: config.loadShedding, exempt: [...RESERVED_PATHS, server.metrics.path] })
  await app.register(problem, { routes: config.routes.map((r) => ({ prefix: r.prefix, methods: r.methods })) })
  await app.register(requestIdPlugin)
  if (tracer !== null) await app.register(tracingPlugin, { tracer })
  if (metrics !== null) await app.register(metricsPlugin, { metrics, host: server.host })
  await app.register(health)
  await app.register(rateLimit, { config: config.rateLimit })
  if (config.tokenEndpoint !== undefined) await app.register(tokenEndpoint, { config })

  const forwarders: Forwarder[] = []
  const buffers = new BodyBuffers(parseSize(server.requestBufferTotal), server.requestBufferDir)
  app.addHook('onClose', async () => {
    await Promise.all(forwarders.map((f) => f.close()))
    buffers.close()
  })
  const trustBearing = { names: TRUST_BEARING_HEADERS, trusted: trustedPeer(server.trustProxy) ?? (() => false) }
  const keepAliveTimeoutMs = Math.min(4_000, parseDuration(server.timeouts.keepAlive))
  const hideResponseHeaders = hiddenUpstreamHeaders(config.securityHeaders)
  const identityHeaders = identityHeaderSource(config)
  for (const route of config.routes) {
    const forwarder = createForwarder({
      upstreams: Array.isArray(route.upstream) ? route.upstream : [route.upstream],
      prefix: route.prefix,
      routeName: route.name,
      timeoutMs: parseDuration(route.timeout),
      retries: route.retries,
      connections: route.connections,
      maxPending: route.maxPending,
      queueTimeoutMs: parseDuration(route.queueTimeout),
      keepAliveTimeoutMs,
      tls: route.tls,
      hideResponseHeaders: route.cors === undefined ? hideResponseHeaders : [...hideResponseHeaders, ...CORS_RESPONSE_HEADERS],
      bodyLimit: parseSize(route.bodyLimit ?? server.bodyLimit),
      bufferBodyBytes: parseSize(server.requestBuffer),
      requestBuffering: route.requestBuffering,
      buffers,
      underscoreHeaders: server.headersWithUnderscores === 'allow' ? 'allow' : 'drop',
      trustBearing,
      // The client's trace headers are replaced by the gateway's own (request.upstream).
      // The client's copies of the identity headers never reach the upstream, on any route;
      // nor do the credentials routes[].forwardAuthorization keeps back.
      stripHeaders: [...(tracer === null ? [] : TRACE_HEADERS), ...routeStripHeaders(config, route)],
      bearerOnlyAuthorization: route.forwardAuthorization === 'bearer',
      // Pipeline stage 7: the identity headers, added at dispatch (plugins/auth/identity).
      identityHeaders,
      responseHeaders: securityResponseHeaders
    })
    forwarders.push(forwarder)
    await app.register(routeScope, { config, route, forwarder })
  }
  return app
}

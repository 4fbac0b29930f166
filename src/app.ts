/**
 * buildGateway(config): the whole gateway as a Fastify instance, ready to `listen` (or to
 * `inject` in tests). It does not listen; src/server.ts does. A user can `register` more
 * plugins on the returned instance before listening.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import type { Logger } from 'pino'
import { RESERVED_PATHS, type GatewayConfig } from '../schemas/config.js'
import { upstreamTargets } from '../schemas/upstream.js'
import { parseDuration, parseSize } from '../schemas/common.js'
import { clientErrorResponse, sendProblem } from '../plugins/core/problem.js'
import { requestId } from '../plugins/core/request-id.js'
import { securityHeaderValues } from '../plugins/edge/security-headers.js'
import { trustProxyOption } from '../plugins/edge/trust.js'
import { lingerAfterClientError } from '../plugins/edge/lingering-close.js'
import { hostsRouterConstraints } from '../plugins/edge/host-match.js'
import { closeAfterResponse, responseInFlight, routeNameOf } from '../plugins/core/fastify-internals.js'
import { SharedObjects, type Lease } from '../plugins/core/shared.js'
import { mergePolicy, registerStage, type GatewayContext, type RequestObserver, type RouteContext, type RoutePolicy } from '../plugins/core/stage.js'
import type { EmbeddedPlugin } from '../plugins/extend/index.js'
import { createForwarder, type Forwarder } from './forward.js'
import { BodyBuffers } from './body-buffer.js'
import { GATEWAY_STAGES, ROUTE_STAGES } from './pipeline.js'
import { routeScope } from './route.js'
import { createGatewayLogger, formatAccessLine, lazyChildLoggerFactory, type LineBuffer } from './logging.js'

export { trustProxyOption, trustedPeer } from '../plugins/edge/trust.js'

export interface BuildOptions {
  /** Fastify/pino logger options, or false. Default: JSON logs at `logging.level`, secrets redacted. */
  logger?: FastifyServerOptions['logger']
  /**
   * Where the gateway's own logger writes (when `logger` is not given): a file descriptor
   * (default 1, stdout) or a file path.
   */
  logDestination?: number | string
  /**
   * Your own plugins, registered in every route's scope at their place in the pipeline
   * (`beforeAuth`: they see, and may refuse, requests authentication would refuse; `afterAuth`,
   * the default: after authorization, limits and validation). A plugin registered with
   * `app.register` after buildGateway runs after every route's own onRequest stages instead; its
   * onResponse hook still sees every request, refused ones included (docs/plugins.md).
   */
  plugins?: readonly EmbeddedPlugin[]
  /**
   * What this gateway shares with the other generations of a live reload (src/reload.ts): pools,
   * rate-limit counters, metrics, kept by key and refcounted. Default: its own, disposed of at close.
   */
  shared?: SharedObjects
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
  // Private fields: Fastify deep-copies its options (lib/initial-config-validation.js) and would
  // walk everything the observers hold — the metrics registry, its per-route histograms.
  readonly #enabled: boolean
  readonly #observers: readonly RequestObserver[]
  readonly #lines: LineBuffer | null
  constructor (enabled: boolean, observers: readonly RequestObserver[] = [], lines: LineBuffer | null = null) {
    super({ disableRequestLogging: false })
    this.#enabled = enabled
    this.#observers = observers
    this.#lines = lines
  }

  override incomingRequest (request: FastifyRequest, reply: FastifyReply): void {
    for (const observer of this.#observers) observer.start(request, reply)
  }

  override routeNotFound (): void {}

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (!this.#enabled) return
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
    if (this.#lines !== null && !error) {
      if ((request.log as unknown as Logger).isLevelEnabled('info')) this.#lines.write(formatAccessLine(line))
      return
    }
    // request.log carries reqId already.
    const { reqId: _, ...fields } = line
    if (error) request.log.warn({ ...fields, err: error }, 'request errored')
    else request.log.info(fields, 'request completed')
  }
}

export async function buildGateway (config: Readonly<GatewayConfig>, options: BuildOptions = {}): Promise<FastifyInstance> {
  const shared = (options.shared ?? new SharedObjects()).lease()
  try {
    return await build(config, options, shared)
  } catch (err) {
    // A build that fails (a reload's, say) lets go of the pools and counters it took.
    await shared.release()
    throw err
  }
}

async function build (config: Readonly<GatewayConfig>, options: BuildOptions, shared: Lease): Promise<FastifyInstance> {
  const { server, logging } = config
  const requestTimeout = parseDuration(server.timeouts.request)
  const lingering = { timeMs: parseDuration(server.lingeringClose.time), bytes: parseSize(server.lingeringClose.size) }
  const longestRoute = Math.max(...config.routes.map((r) => parseDuration(r.timeout)))
  // The pipeline's gateway stages, set up once: null is a stage the config leaves off.
  const ctx: GatewayContext = { config, ownPaths: [...RESERVED_PATHS, server.metrics.path], plugins: options.plugins ?? [], shared }
  const stages = GATEWAY_STAGES.map((stage) => ({ stage, state: stage.setup(ctx) as unknown }))
  const observers: RequestObserver[] = []
  for (const { stage, state } of stages) if (state !== null && stage.observer !== undefined) observers.push(stage.observer(state))
  const securityResponseHeaders = Object.entries(securityHeaderValues(config.securityHeaders))
  // The gateway's own logger (unless given one): buffered, with the access line written directly.
  const own = options.logger === undefined && logging.level !== 'silent'
    ? createGatewayLogger({ level: logging.level, redact: REDACT, dest: options.logDestination })
    : null
  const app = Fastify({
    ...(own !== null
      ? { loggerInstance: own.logger as unknown as FastifyBaseLogger, childLoggerFactory: lazyChildLoggerFactory as unknown as FastifyServerOptions['childLoggerFactory'] }
      : { logger: options.logger ?? false }),
    logController: new AccessLog(logging.accessLog, observers, own?.lines ?? null),
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
      connectionsCheckingInterval: Math.min(1000, parseDuration(server.timeouts.headers)),
      // A missing Host is refused by plugins/edge/client-limits with a problem body instead.
      requireHostHeader: false
    },
    // plugins/core/health answers requests that arrive while draining (problem+json, /readyz 503).
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    exposeHeadRoutes: false,
    // routes[].hosts: the `hosts` constraint (plugins/edge/host-match.ts), only when a route has hosts.
    routerOptions: { maxParamLength: 2048, ...hostsRouterConstraints(config.routes) },
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
        if (!pending.headersSent) closeAfterResponse(pending)
        pending.once('close', () => { socket.end() })
        return
      }
      // Answered on the raw socket, before Fastify: the security headers are added here too.
      if (socket.writable && (pending === null || !pending.headersSent)) lingerAfterClientError(socket, clientErrorResponse(err, requestId({ headers: {} } as never), securityResponseHeaders), lingering)
      else socket.destroy()
    }
  })
  app.decorate('gatewayConfig', config)
  if (own !== null) app.addHook('onClose', (_app, done) => { own.close(); done() })
  app.decorateRequest('upstreamMs', undefined)
  app.decorateRequest('upstream', undefined)
  app.decorateRequest('identity', undefined)

  // Every request meets the gateway stages first, in pipeline order (src/pipeline.ts).
  for (const { stage, state } of stages) if (state !== null) await registerStage(app, stage, state)

  const forwarders: Forwarder[] = []
  // One budget and folder for buffered bodies across a live reload's generations (a reload does
  // not double the budget), the folder removed when the last one closes.
  const bufferTotal = parseSize(server.requestBufferTotal)
  const buffers = shared.acquire(`body buffers ${JSON.stringify([bufferTotal, server.requestBufferDir ?? null])}`, () => new BodyBuffers(bufferTotal, server.requestBufferDir), (b) => { b.close() })
  app.addHook('onClose', async () => {
    await Promise.all(forwarders.map((f) => f.close()))
    await shared.release()
  })
  const keepAliveTimeoutMs = Math.min(4_000, parseDuration(server.timeouts.keepAlive))
  for (const [index, route] of config.routes.entries()) {
    const routeCtx: RouteContext = { ...ctx, route, index }
    const routeStates = ROUTE_STAGES.map((stage) => stage.setup(routeCtx) as unknown)
    // The route's forwarding policy: what every stage that is on contributes (plugins/core/stage.ts).
    const contributions: Array<Partial<RoutePolicy>> = []
    for (const { stage, state } of stages) if (state !== null && stage.forwarding !== undefined) contributions.push(stage.forwarding(state, routeCtx))
    ROUTE_STAGES.forEach((stage, i) => { if (routeStates[i] !== null && stage.forwarding !== undefined) contributions.push(stage.forwarding(routeStates[i], routeCtx)) })
    const forwarder = createForwarder({
      upstreams: upstreamTargets(route.upstream).map((t) => t.url),
      targets: app.upstreams.get(route.name),
      retryOn: route.retryOn,
      tryTimeoutMs: route.tryTimeout === undefined ? undefined : parseDuration(route.tryTimeout),
      prefix: route.prefix,
      routeName: route.name,
      timeoutMs: parseDuration(route.timeout),
      retries: route.retries,
      connections: route.connections,
      maxPending: route.maxPending,
      queueTimeoutMs: parseDuration(route.queueTimeout),
      keepAliveTimeoutMs,
      tls: route.tls,
      bodyLimit: parseSize(route.bodyLimit ?? server.bodyLimit),
      bufferBodyBytes: parseSize(server.requestBuffer),
      requestBuffering: route.requestBuffering,
      buffers,
      shared,
      policy: mergePolicy(contributions)
    })
    forwarders.push(forwarder)
    await app.register(routeScope, { ctx: routeCtx, states: routeStates, forwarder })
  }
  return app
}

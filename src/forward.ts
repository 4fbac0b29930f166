/**
 * The forwarding engine, behind a narrow interface: `createForwarder(options)` once per route at
 * start, then `forward(request, reply, body?)` per request, `close()` at shutdown.
 *
 * It dispatches on one undici Pool per upstream URL and writes the upstream's response straight
 * into the raw Node response (no intermediate stream), which is what makes it faster than
 * @fastify/reply-from. Everything a gateway must get right about the hop lives here:
 *  - hop-by-hop headers and the ones the client names in `Connection` are dropped *before* the
 *    gateway's own headers are added, so a client cannot strip X-Forwarded-* or X-Request-Id;
 *  - refused connection → 502, no response within the route timeout → 504, and neither leaks
 *    an address or errno; an upstream that dies mid-body aborts the client response;
 *  - which target gets a request is the route's UpstreamSet's answer (plugins/upstream: balancing,
 *    health checks, ejection, circuit breakers); only idempotent, body-less requests are retried,
 *    on another target, on the route's retryOn conditions and within its retry budget (reply-from
 *    retries 503 ten times by default);
 *  - https upstreams verify certificates unless the route opts out.
 */
import { readFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { Transform, type Duplex, type Readable } from 'node:stream'
import { BodyBuffers, BuffersFull, bufferBody, type BufferedBody } from './body-buffer.js'
import { Pool, type Dispatcher } from 'undici'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../schemas/errors.js'
import { channels, publish, type UpstreamErrorEvent } from '../schemas/events.js'
import { replyHeaders, type OwnHeaders } from '../plugins/core/fastify-internals.js'
import { BodyTooLarge, hasBody, readBody, type BodyError } from '../plugins/validation/json-body.js'
import { hasBearerScheme } from '../plugins/auth/auth-common.js'
import { mergePolicy, type RoutePolicy } from '../plugins/core/stage.js'
import { UpstreamSet } from '../plugins/upstream/upstream-set.js'
import type { Lease } from '../plugins/core/shared.js'
import type { RetryOn } from '../schemas/upstream.js'

export interface ForwarderOptions {
  /**
   * Upstream URLs; all share the same path, which replaces `prefix`. Balanced round-robin, with
   * nothing taken out, unless `targets` is given.
   */
  upstreams: readonly string[]
  /** The route's targets with balancing, health and breakers (plugins/upstream); replaces `upstreams`. */
  targets?: UpstreamSet
  /** What is retried (routes[].retryOn); default connect-failure and reset. */
  retryOn?: readonly RetryOn[]
  /** Time one try has for the response headers, in ms (routes[].tryTimeout); default timeoutMs. */
  tryTimeoutMs?: number
  /** The route prefix that the upstream path replaces (`/api/people`). */
  prefix: string
  /** Response headers and inter-chunk body timeout. */
  timeoutMs: number
  retries: number
  connections: number
  /**
   * Requests that may wait for a free connection to one upstream URL; one more gets 503 with
   * Retry-After at once. Default 1024 (Envoy's max_pending_requests).
   */
  maxPending?: number
  /** Longest wait for a free upstream connection, in ms; then 503 with Retry-After. Default 5000. */
  queueTimeoutMs?: number
  keepAliveTimeoutMs?: number
  tls?: { insecureSkipVerify?: boolean, ca?: string }
  /** Largest streamed request body in bytes: a larger Content-Length → 413 before any byte is read. */
  bodyLimit: number
  /**
   * A body with a Content-Length up to this many bytes is read whole before the upstream request
   * starts, and sent with its head in one write; larger and chunked bodies are streamed. Default 0:
   * every body streamed. (For a small body, undici's stream-body path costs listeners, a writer
   * and a second write, and it is what tipped node-floor into V8's pretenuring cliff: bench/PROFILE.md.)
   */
  bufferBodyBytes?: number
  /**
   * Read every request body whole before the upstream is contacted (routes[].requestBuffering):
   * up to `bufferBodyBytes` in memory, the rest in a temporary file, counted against `buffers`.
   * Off, bodies larger than `bufferBodyBytes` and chunked ones are streamed, and the upstream
   * request is aborted the moment the client errors, times out or passes `bodyLimit`.
   */
  requestBuffering?: boolean
  /** The gateway's budget and folder for buffered bodies (required with requestBuffering). */
  buffers?: BodyBuffers
  /** The route's name, for events and logs. */
  routeName?: string
  /**
   * Where the pools come from when they are shared across live reloads (src/reload.ts): one pool
   * per route, origin and everything that shapes it, closed when the last gateway using it
   * closes. Without it the forwarder's pools are its own, closed by `close()`.
   */
  shared?: Lease
  /**
   * What the pipeline's stages ask of forwarding (headers never forwarded, identity headers,
   * response headers added or hidden…): merged from their contributions (plugins/core/stage.ts).
   */
  policy?: Partial<RoutePolicy>
}

/** What a forwarded request carries besides the client's own headers. */
export interface ForwardExtras {
  /** Replaces the request body (a validated, re-serialized JSON body). */
  body?: string | Buffer
  /** Content type of `body`. */
  contentType?: string
  /** Extra headers for the upstream (identity headers…), names lower-case. */
  headers?: ReadonlyArray<readonly [string, string]>
  /** More request headers (lower-case) not to forward on this request (e.g. a Basic `authorization`). */
  strip?: ReadonlySet<string>
}

export interface Forwarder {
  /**
   * Forwards the request; `extras` defaults to `request.upstream` (what the route's plugins set).
   * It answers through `reply` itself: the upstream's response (the reply is hijacked), or an
   * error (502, 504, 413…) sent to the route's error handler. No promise: use it as a route
   * handler that returns nothing.
   */
  forward: (request: FastifyRequest, reply: FastifyReply, extras?: ForwardExtras) => void
  /**
   * Asks the target the route's UpstreamSet picks to switch protocols (a WebSocket handshake, with
   * the headers `forward` would send), and reports its result to the set; the answer goes to
   * `handlers`, never to the reply. Returns what gives the handshake up (the client left).
   */
  upgrade: (request: FastifyRequest, reply: FastifyReply, handlers: UpgradeHandlers) => () => void
  close: () => Promise<void>
}

/** Request headers that describe one hop only (RFC 9110 §7.6.1) or that the gateway sets itself. */
const REQUEST_SKIP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings', 'expect',
  'host', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port',
  'x-forwarded-prefix', 'x-real-ip', 'x-request-id'
])
/** Response headers that describe one hop only. */
const RESPONSE_SKIP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'http2-settings', 'x-request-id'
])

/**
 * Headers the pipeline set with `reply.header()` before forwarding (RateLimit, CORS, security
 * headers…) go to the client with the upstream's response and replace the upstream's headers of
 * the same name (`vary` and `set-cookie` are merged instead) — except these, which describe the
 * upstream's body.
 */
const OWN_SKIP = new Set(['content-length', 'content-type', 'content-encoding', 'transfer-encoding', 'connection', 'keep-alive', 'x-request-id'])
const OWN_MERGE = new Set(['vary', 'set-cookie'])

/** Errors before any response byte, by retryOn condition. */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT'])
const RESETS = new Set(['ECONNRESET', 'UND_ERR_SOCKET', 'EPIPE', 'UND_ERR_CLOSED'])
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'GW_TRY_TIMEOUT'])

const NO_EXTRAS: ForwardExtras = Object.freeze({})

/**
 * One upstream URL's pool, and the gateway's own bound on what waits for it. The forwarder never
 * lets undici queue: at most `connections` requests (WebSocket handshakes included) are
 * dispatched to a pool at once, the rest wait here in order (at most `maxPending`, each at most
 * `queueTimeout`), so a client that gives up while waiting leaves the queue at once and never
 * reaches the upstream. Shared, with the pool, by every gateway generation that uses the pool
 * (a live reload's old and new one): one cap and one queue per pool, whichever generation asks.
 */
interface Slots {
  pool: Pool
  /** Requests dispatched to the pool and not finished. */
  active: number
  /** Requests waiting for one of them to finish, oldest first (a cancelled place holds null). */
  waiting: QueuePlace[]
  waitingCount: number
}

/** One upstream URL as one generation's route sees it: its place in the route's set, and the shared slots. */
interface Target {
  /** Its index in the route's UpstreamSet. */
  index: number
  /** The pool (the same as `slots.pool`: one load less on the dispatch). */
  pool: Pool
  host: string
  origin: string
  slots: Slots
}

/**
 * What waits in a queue: a forwarded request or a WebSocket handshake, of any generation. `wake`
 * gives it the slot just freed (false: its client is gone, the slot goes on); `refuse` answers it
 * without the upstream (shutdown).
 */
interface Waiter {
  readonly route: RouteState
  wake: () => boolean
  refuse: (err: GatewayError) => void
}

/** A place in a pool's queue; the request leaves it by emptying it (no search, no re-numbering). */
interface QueuePlace { request: Waiter | null }

/**
 * Gives a connection slot back and hands it to the oldest waiting request (of whichever
 * generation queued it).
 */
function releaseSlot (slots: Slots): void {
  const waiting = slots.waiting
  while (waiting.length > 0) {
    const next = (waiting.shift() as QueuePlace).request
    if (next === null) continue
    slots.waitingCount--
    // A loop, not a recursion through the gone waiter's release: a queue of clients that all
    // left is walked flat.
    if (next.wake()) return
  }
  slots.active--
}

/** 503 with Retry-After: no connection slot free and the queue full, or none freed in time. */
function busy (): GatewayError {
  return new GatewayError('GW_ERR_UNAVAILABLE', 'The upstream is busy; retry shortly.', { headers: { 'retry-after': '1' } })
}

/** How upstream `Location` values map back onto the gateway. */
interface Rewrite { prefix: string, basePath: string, origins: string[] }

export function createForwarder (options: ForwarderOptions): Forwarder {
  const ca = options.tls?.ca === undefined ? undefined : readFileSync(options.tls.ca)
  const routeName = options.routeName ?? options.prefix
  const set = options.targets ?? new UpstreamSet({
    route: routeName,
    targets: options.upstreams.map((url) => ({ url, weight: 1 })),
    balance: 'round-robin'
  })
  const targets: Target[] = set.targets.map(({ url: raw }, index) => {
    const url = new URL(raw)
    const poolOptions: Pool.Options = {
      connections: options.connections,
      pipelining: 1,
      keepAliveTimeout: options.keepAliveTimeoutMs ?? 4_000,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      connect: url.protocol === 'https:'
        ? { rejectUnauthorized: options.tls?.insecureSkipVerify !== true, ca, timeout: Math.min(options.timeoutMs, 10_000) }
        : { timeout: Math.min(options.timeoutMs, 10_000) }
    }
    const make = (): Slots => ({ pool: new Pool(url.origin, poolOptions), active: 0, waiting: [], waitingCount: 0 })
    // The key names the route (its pools are its own: `connections` is per route) and everything
    // that shapes the pool (the CA by its file name: a changed file needs a restart or a new name).
    const key = `pool ${JSON.stringify(routeName)} ${url.origin} ${JSON.stringify({ ...poolOptions, connect: { ...poolOptions.connect, ca: options.tls?.ca } })}`
    const slots = options.shared === undefined
      ? make()
      : options.shared.acquire(key, make, async (s) => { await s.pool.close() })
    return { index, pool: slots.pool, host: url.host, origin: url.origin, slots }
  })
  // The config check guarantees every URL of a balanced upstream has the same path.
  const basePath = new URL(set.targets[0].url).pathname.replace(/\/+$/, '')
  const prefix = options.prefix === '/' ? '' : options.prefix
  const rewrite: Rewrite = { prefix, basePath, origins: targets.map((t) => t.origin) }
  const retryOn = new Set<string>(options.retryOn ?? ['connect-failure', 'reset'])
  const given = mergePolicy([options.policy ?? {}])
  const skip = new Set([...REQUEST_SKIP, ...given.stripHeaders.map((h) => h.toLowerCase())])
  const trustBearing = new Set((given.trustBearing?.names ?? []).map((h) => h.toLowerCase()))
  for (const name of trustBearing) if (!skip.has(name)) skip.add(name)
  const policy: HeaderPolicy = {
    skip,
    trustBearing,
    trusted: given.trustBearing?.trusted ?? null,
    allowUnderscores: given.underscoreHeaders === 'allow',
    bearerOnly: given.bearerOnlyAuthorization,
    identity: given.identityHeaders ?? null
  }
  const fixed = given.responseHeaders.map(([name, value]) => [name.toLowerCase(), value] as const)
  // The upstream's values of the fixed headers are replaced: hidden, then ours appended.
  const hide = new Set([...RESPONSE_SKIP, ...given.hideResponseHeaders.map((h) => h.toLowerCase()), ...fixed.map(([name]) => name)])

  const route: RouteState = {
    options,
    draining: given.draining ?? null,
    rewrite,
    hide,
    fixed,
    policy,
    routeName,
    set,
    targets,
    retryConnectFailure: retryOn.has('connect-failure'),
    retryReset: retryOn.has('reset'),
    retryTimeout: retryOn.has('timeout'),
    retryStatuses: new Set([502, 503, 504].filter((status) => retryOn.has(String(status)))),
    tryTimeoutMs: options.tryTimeoutMs ?? 0,
    connections: options.connections,
    maxPending: options.maxPending ?? 1024,
    queueTimeoutMs: options.queueTimeoutMs ?? 5_000,
    timeoutMs: options.timeoutMs
  }
  const bufferBodyBytes = options.bufferBodyBytes ?? 0
  const buffering = options.requestBuffering === true && options.buffers !== undefined

  function upstreamPath (url: string): string {
    const rest = url.slice(prefix.length) // the route scope checked that the URL starts with the prefix as spelled
    return basePath === '' ? (rest === '' || rest[0] === '?' ? '/' + rest : rest) : basePath + rest
  }

  function forward (request: FastifyRequest, reply: FastifyReply, extras: ForwardExtras = request.upstream ?? NO_EXTRAS): void {
    const raw = request.raw
    const url = raw.url ?? '/'
    const path = upstreamPath(url)

    let body: Readable | string | Buffer | null = null
    if (extras.body !== undefined) {
      body = extras.body
    } else if (hasBody(raw.headers)) {
      const length = raw.headers['content-length']
      const bytes = length === undefined ? -1 : Number(length)
      if (bytes > options.bodyLimit) {
        reply.send(new GatewayError('GW_ERR_PAYLOAD_TOO_LARGE', `The request body is larger than ${options.bodyLimit} bytes.`))
        return
      }
      if (bytes !== -1 && bytes <= bufferBodyBytes) {
        new ForwardedRequest(route, request, reply, extras, path, null, true).readSmallBody(bytes, buffering ? options.buffers as BodyBuffers : null)
        return
      }
      if (buffering) {
        new ForwardedRequest(route, request, reply, extras, path, null, true).bufferBody(options.buffers as BodyBuffers)
        return
      }
      body = bytes === -1 ? limitBody(raw, options.bodyLimit) : raw
    }
    new ForwardedRequest(route, request, reply, extras, path, body, body !== null).send()
  }

  return {
    forward,
    upgrade (request, reply, handlers) {
      const upgrade = new UpgradeRequest(route, request, reply, upstreamPath(request.raw.url ?? '/'), handlers)
      upgrade.send()
      return upgrade.giveUp
    },
    async close () {
      // This generation's waiting requests only: the queue is shared with the other generations.
      for (const target of targets) {
        for (const place of target.slots.waiting) {
          if (place.request !== null && place.request.route === route) place.request.refuse(new GatewayError('GW_ERR_UNAVAILABLE', 'The gateway is shutting down.'))
        }
      }
      // Shared pools are closed by the gateway's lease, when no other generation uses them.
      if (options.shared === undefined) await Promise.all(targets.map(async (t) => { await t.pool.close() }))
    }
  }
}

/**
 * A streamed chunked body passes through a counter that fails the upload once it exceeds the
 * limit: at most `limit` bytes reach the upstream, whose request is then aborted (it never sees a
 * complete body). Its errors always have a listener: the forwarded request's, set at once.
 */
function limitBody (source: Readable, limit: number): Transform {
  let seen = 0
  const counter = new Transform({
    transform (chunk: Buffer, _encoding, callback) {
      seen += chunk.length
      if (seen > limit) callback(new BodyTooLargeError(limit))
      else callback(null, chunk)
    }
  })
  source.on('error', (err) => counter.destroy(err))
  // The client went away before the body ended: the counter fails, so the upstream request does.
  source.on('close', () => { if (!(source as unknown as { complete: boolean }).complete) counter.destroy(new Error('client closed the connection')) })
  return source.pipe(counter)
}

class BodyTooLargeError extends Error {
  readonly code = 'GW_BODY_TOO_LARGE'
  constructor (readonly limit: number) { super('request body too large') }
}

/** An upstream answered with a status retryOn names, and the request is tried again elsewhere. */
class RetryStatusError extends Error {
  readonly code = 'GW_RETRY_STATUS'
  constructor (readonly status: number) { super(`upstream status ${status}, retried`) }
}

/** The try timer's callback: a function of the request, not a closure per request. */
function onTryTimeout (request: ForwardedRequest): void { request.tryTimedOut() }

/** No response headers within routes[].tryTimeout. */
class TryTimeoutError extends Error {
  readonly code = 'GW_TRY_TIMEOUT'
  constructor () { super('no response headers within tryTimeout') }
}

/** An upstream answered with a status HTTP does not define (outside 100–599). */
class InvalidStatusError extends Error {
  readonly code = 'GW_INVALID_STATUS'
  constructor (readonly status: number) { super(`upstream status ${status}`) }
}

/** What a route never forwards from the client, fixed at start. */
interface HeaderPolicy {
  /** Never forwarded from the client (the trust-bearing names too: see `trusted`). */
  skip: ReadonlySet<string>
  /** Names in `skip` that a trusted peer may send after all. */
  trustBearing: ReadonlySet<string>
  /** Whether the request's peer is one server.trustProxy trusts; null: none is. */
  trusted: ((request: FastifyRequest) => boolean) | null
  allowUnderscores: boolean
  bearerOnly: boolean
  identity: ((request: FastifyRequest) => ReadonlyArray<readonly [string, string]> | undefined) | null
}

function isBearer (value: string): boolean {
  return value.length > 7 && hasBearerScheme(value)
}

/** Headers the gateway sets itself from the trusted chain: never the client's, trusted or not. */
const ALWAYS_OWN = new Set(['forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id', 'host'])

/**
 * Whether a client header is dropped by name: a hop-by-hop or gateway-set header, an identity
 * header, or a trust-bearing one from an untrusted peer — in every spelling an upstream could fold
 * onto those (`_` for `-`: WSGI servers map both to the same HTTP_* key).
 */
function dropped (name: string, request: FastifyRequest, policy: HeaderPolicy): boolean {
  let folded = name
  if (name.includes('_')) {
    if (!policy.allowUnderscores) return true
    folded = name.replaceAll('_', '-')
  }
  if (!policy.skip.has(folded)) return false
  if (!policy.trustBearing.has(folded) || ALWAYS_OWN.has(folded) || policy.trusted === null) return true
  // A trust-bearing header (rare): passed on only from a peer that server.trustProxy trusts.
  return !policy.trusted(request)
}

/** One pass over the client's headers; then the gateway's own. */
function upstreamHeaders (request: FastifyRequest, host: string, extras: ForwardExtras, policy: HeaderPolicy, buffered: number): string[] {
  const skip = policy.skip
  const incoming = request.raw.headers
  const named = connectionTokens(incoming.connection)
  const strip = extras.strip
  const replaceBody = extras.body !== undefined || buffered !== -1
  const out: string[] = []
  for (const name in incoming) {
    if ((skip.has(name) || name.includes('_')) && dropped(name, request, policy)) continue
    if ((named !== null && named.has(name)) || (strip !== undefined && strip.has(name))) continue
    if (replaceBody && (name === 'content-length' || (extras.body !== undefined && name === 'content-type'))) continue
    const value = incoming[name]
    if (value === undefined) continue
    if (name === 'authorization' && policy.bearerOnly && !isBearer(value as string)) continue
    if (typeof value === 'string') out.push(name, value)
    else for (const v of value) out.push(name, v)
  }
  out.push(
    'host', host,
    'x-forwarded-for', forwardedFor(request),
    'x-forwarded-proto', request.protocol,
    'x-forwarded-host', request.host,
    'x-request-id', request.id
  )
  if (extras.body !== undefined) {
    out.push('content-type', extras.contentType ?? 'application/json', 'content-length', String(Buffer.byteLength(extras.body)))
  } else if (buffered !== -1) {
    out.push('content-length', String(buffered))
  }
  if (extras.headers !== undefined) pushPairs(out, extras.headers)
  const identity = policy.identity === null ? undefined : policy.identity(request)
  if (identity !== undefined) pushPairs(out, identity)
  return out
}

/** Appends name/value pairs to a flat header list (indexed: no iterator per request). */
function pushPairs (out: string[], pairs: ReadonlyArray<readonly [string, string]>): void {
  for (let i = 0; i < pairs.length; i++) out.push(pairs[i][0], pairs[i][1])
}

function connectionTokens (value: string | undefined): Set<string> | null {
  if (value === undefined || value === '' || value === 'keep-alive' || value === 'close') return null
  const set = new Set<string>()
  for (const token of value.split(',')) {
    const name = token.trim().toLowerCase()
    if (name !== '') set.add(name)
  }
  return set
}

/**
 * The chain the upstream should believe: the addresses Fastify trusted (per server.trustProxy)
 * from the client to our peer. With trustProxy off this is just the peer's address.
 */
function forwardedFor (request: FastifyRequest): string {
  const ips = request.ips
  if (ips === undefined || ips.length <= 1) return request.ip
  let chain = ips[ips.length - 1]
  for (let i = ips.length - 2; i >= 0; i--) chain += ', ' + ips[i]
  return chain
}

function errorKind (err: Error): UpstreamErrorEvent['kind'] {
  const code = (err as { code?: string }).code ?? ''
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EHOSTUNREACH') return 'refused'
  if (code.includes('TIMEOUT') || code === 'ETIMEDOUT') return 'timeout'
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'EPIPE' || code === 'UND_ERR_CLOSED') return 'reset'
  if (code.startsWith('ERR_TLS') || code.includes('CERT') || code === 'DEPTH_ZERO_SELF_SIGNED_CERT') return 'tls'
  return 'other'
}

function upstreamError (err: Error, request: FastifyRequest, origin: string): GatewayError {
  if (err instanceof BodyTooLargeError) {
    return new GatewayError('GW_ERR_PAYLOAD_TOO_LARGE', `The request body is larger than ${err.limit} bytes.`)
  }
  const code = (err as { code?: string }).code ?? err.name
  request.log.warn({ code, upstream: origin }, 'upstream request failed')
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'GW_TRY_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT') {
    return new GatewayError('GW_ERR_GATEWAY_TIMEOUT', 'The upstream did not answer in time.', { cause: err })
  }
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' || code === 'UND_ERR_ABORTED' || code === 'ECONNABORTED') {
    return new GatewayError('GW_ERR_BAD_REQUEST', 'The request body ended before its declared length.', { cause: err })
  }
  if (err instanceof InvalidStatusError) {
    return new GatewayError('GW_ERR_BAD_GATEWAY', 'The upstream answered with an invalid status.', { cause: err })
  }
  return new GatewayError('GW_ERR_BAD_GATEWAY', 'The upstream could not be reached.', { cause: err })
}

/** The answer to a body that could not be buffered. */
function bodyError (err: BodyError): GatewayError {
  if (err instanceof BodyTooLarge) return new GatewayError('GW_ERR_PAYLOAD_TOO_LARGE', err.message)
  if (err instanceof BuffersFull || err.kind === 'io') {
    return new GatewayError('GW_ERR_UNAVAILABLE', err.message, { headers: { 'retry-after': '1' } })
  }
  return new GatewayError('GW_ERR_BAD_REQUEST', 'The request body ended before its declared length.')
}

/** What every request of one route shares, fixed at start. */
interface RouteState {
  options: ForwarderOptions
  /** True while the gateway drains (the health stage's contribution). */
  draining: (() => boolean) | null
  rewrite: Rewrite
  hide: ReadonlySet<string>
  fixed: ReadonlyArray<readonly [string, string]>
  policy: HeaderPolicy
  routeName: string
  set: UpstreamSet
  targets: readonly Target[]
  retryConnectFailure: boolean
  retryReset: boolean
  retryTimeout: boolean
  retryStatuses: ReadonlySet<number>
  /**
   * routes[].tryTimeout in ms, 0 when not set. Its own timer: undici runs headersTimeout on a
   * coarse clock (lib/util/timers.js: ticks of about 0.5 s), so a 300 ms try took 0.8–1 s.
   */
  tryTimeoutMs: number
  connections: number
  maxPending: number
  queueTimeoutMs: number
  /** routes[].timeout in ms: also the whole of a WebSocket handshake, queued or not (UpgradeRequest). */
  timeoutMs: number
}

/**
 * One forwarded request, and undici's dispatch handler for it (the raw-headers interface its
 * client speaks natively): the upstream's status and headers go to the client as soon as they
 * arrive, the body chunk by chunk with backpressure both ways. Per request it costs this object,
 * the header arrays and one closure (the client-close listener), five more for a small body it
 * reads first (readBody) — no promise (bench/PROFILE.md).
 */
class ForwardedRequest implements Dispatcher.DispatchHandler, Waiter {
  private started = false
  private done = false
  private abort: ((err?: Error) => void) | null = null
  private resume: (() => void) | null = null
  private attempt = 0
  /** routes[].tryTimeout's timer for the current try, and whether it fired before undici gave an abort. */
  private tryTimer: NodeJS.Timeout | null = null
  private tryExpired = false

  /** routes[].tryTimeout passed with no response headers: the try fails as a timeout (retried if retryOn says so). */
  tryTimedOut (): void {
    this.tryTimer = null
    if (this.started || this.done) return
    if (this.abort === null) this.tryExpired = true
    else this.abort(new TryTimeoutError())
  }

  private target: Target | null = null
  /** The target this request was dispatched to and has not finished with (for the set's in-flight count), else -1. */
  private onTarget = -1
  /** The target of the next try, chosen when the last one failed (-1: the balancer chooses). */
  private retryTo = -1
  /** The hash key for the balancer (computed once). */
  private key: string | null = null
  /** Holds one of target's `connections` slots. */
  private holding = false
  /** Its place in the target's queue (target.slots.waiting) while queued, else null. */
  private place: QueuePlace | null = null
  private queueTimer: NodeJS.Timeout | null = null
  /** A body buffered by bufferBody (memory or a file), given back when the request is over. */
  private buffered: BufferedBody | null = null
  /** Budget bytes held for a small body read whole (readSmallBody on a buffering route). */
  private held = 0
  private readonly res: ServerResponse
  private readonly startedAt = performance.now()
  private readonly attempts: number
  private readonly idempotent: boolean
  private readonly onClose: () => void

  constructor (
    readonly route: RouteState,
    private readonly request: FastifyRequest,
    private readonly reply: FastifyReply,
    private readonly extras: ForwardExtras,
    private readonly path: string,
    private body: Readable | string | Buffer | null,
    hasBody: boolean
  ) {
    this.res = reply.raw
    const method = request.raw.method
    this.idempotent = !hasBody && (method === 'GET' || method === 'HEAD' || method === 'OPTIONS')
    this.attempts = this.idempotent ? route.options.retries + 1 : 1
    // The client went away: leave the queue, or stop the upstream request.
    this.onClose = () => {
      if (this.done) return
      if (this.place !== null) {
        this.leaveQueue()
        this.finish()
        this.clientGone('while waiting for an upstream connection')
      } else if (this.abort !== null) {
        this.abort(new Error('client closed the connection'))
      }
    }
    // `on`: 'close' comes once, and finish() takes the listener off (`once` wraps it in two more objects).
    this.res.on('close', this.onClose)
    // A streamed body that fails (over the limit, the client gone) before undici reads it.
    if (body !== null && typeof body !== 'string' && !Buffer.isBuffer(body) && body !== request.raw) {
      body.on('error', (err) => {
        if (this.done) return
        if (this.place !== null) {
          this.leaveQueue()
          this.finish()
          if (!this.res.destroyed) this.reply.send(upstreamError(err, this.request, ''))
        } else if (this.abort !== null) {
          this.abort(err)
        }
      })
    }
  }

  /** Takes a connection slot on the next target, or waits for one; then dispatches. */
  send (): void {
    const set = this.route.set
    let index = this.retryTo
    if (index === -1) {
      set.requested()
      this.key = set.keyOf(this.request)
      index = set.pick(this.key)
      if (index === -1) {
        this.finish()
        this.refuse(new GatewayError('GW_ERR_UNAVAILABLE', 'No upstream target is available; retry shortly.', { headers: { 'retry-after': String(set.retryAfterSeconds()) } }))
        return
      }
    }
    const target = this.route.targets[index]
    this.target = target
    const slots = target.slots
    if (slots.active < this.route.connections) {
      slots.active++
      this.holding = true
      this.dispatchFromEvent(target)
      return
    }
    if (slots.waitingCount >= this.route.maxPending) {
      this.finish()
      this.refuse(busy())
      return
    }
    this.place = { request: this }
    slots.waiting.push(this.place)
    slots.waitingCount++
    this.queueTimer = setTimeout(() => {
      this.queueTimer = null
      if (this.place === null || this.done) return
      this.leaveQueue()
      this.finish()
      this.request.log.warn({ upstream: target.origin, waited: this.route.queueTimeoutMs }, 'no upstream connection became free in time')
      this.refuse(busy())
    }, this.route.queueTimeoutMs)
  }

  /**
   * @internal (releaseSlot) A slot is free: this request takes it. The release may come from
   * another generation's request: the slots are shared, the target is this request's own.
   */
  wake (): boolean {
    this.place = null
    if (this.queueTimer !== null) { clearTimeout(this.queueTimer); this.queueTimer = null }
    // The client is gone and its 'close' has not run yet (a generation's requests cut at once,
    // say): it does not take the slot, which releaseSlot hands to the next one.
    if (this.res.destroyed) { this.finish(); this.clientGone('while waiting for an upstream connection'); return false }
    this.holding = true
    this.dispatchFromEvent(this.target as Target)
    return true
  }

  private leaveQueue (): void {
    ;(this.place as QueuePlace).request = null
    ;(this.target as Target).slots.waitingCount--
    this.place = null
    if (this.queueTimer !== null) { clearTimeout(this.queueTimer); this.queueTimer = null }
  }

  /** Gives the connection slot back and hands it to the oldest waiting request. */
  private release (): void {
    if (!this.holding) return
    this.holding = false
    releaseSlot((this.target as Target).slots)
  }

  /** An answer from the gateway (503, shutdown) to a request that never reached the upstream. */
  refuse (err: GatewayError): void {
    if (this.place !== null) this.leaveQueue()
    this.finish()
    if (!this.res.destroyed) this.reply.send(err)
  }

  dispatch (target: Target): void {
    this.attempt++
    this.target = target
    this.abort = null
    this.onTarget = target.index
    this.route.set.dispatched(target.index)
    const buffered = this.buffered
    target.pool.dispatch({
      origin: target.origin,
      path: this.path,
      method: this.request.raw.method as Dispatcher.HttpMethod,
      headers: upstreamHeaders(this.request, target.host, this.extras, this.route.policy, buffered === null ? -1 : buffered.size),
      body: buffered === null ? this.body : (buffered.bytes ?? buffered.open()),
      idempotent: this.idempotent,
      blocking: false
    }, this)
    if (this.route.tryTimeoutMs > 0) this.tryTimer = setTimeout(onTryTimeout, this.route.tryTimeoutMs, this)
  }

  /**
   * A small body of known length: read whole (plugins/validation/json-body's reader), then dispatched as
   * one Buffer. A body that breaks off never reaches the upstream. With buffering on, its bytes
   * count against the gateway's budget while it is held.
   */
  readSmallBody (length: number, buffers: BodyBuffers | null): void {
    if (buffers !== null) {
      if (!buffers.reserve(length)) {
        this.finish()
        this.reply.send(bodyError(new BuffersFull()))
        return
      }
      this.held = length
    }
    readBody(this.request.raw, this.route.options.bodyLimit, (err, body) => {
      if (err === null) {
        this.body = body
        this.sendFromEvent()
      } else {
        this.bodyFailed(err)
      }
    })
  }

  /** Any other body on a buffering route: read whole (memory, then a file) before anything is sent. */
  bufferBody (buffers: BodyBuffers): void {
    const options = this.route.options
    bufferBody(this.request.raw, options.bodyLimit, options.bufferBodyBytes ?? 0, buffers, (err, body) => {
      if (err === null) {
        this.buffered = body
        this.sendFromEvent()
      } else {
        this.bodyFailed(err)
      }
    })
  }

  /** The body could not be read whole: the upstream was never contacted. */
  private bodyFailed (err: BodyError): void {
    this.finish()
    // The client went away or broke off its body: nobody to answer, one log line says so.
    if (this.res.destroyed) { this.clientGone('during its body'); return }
    this.reply.send(bodyError(err))
  }

  /**
   * A send or dispatch from an event (the body's end, a freed slot, a retry), not from the route
   * handler, where Fastify catches a throw: what a route's plugins set (a malformed
   * `request.identity`, say) must give the client an error answer, never an uncaught exception.
   */
  private sendFromEvent (): void {
    if (this.res.destroyed) { this.finish(); return }
    try {
      this.send()
    } catch (err) {
      this.fail(err as Error)
    }
  }

  private dispatchFromEvent (target: Target): void {
    try {
      this.dispatch(target)
    } catch (err) {
      this.fail(err as Error)
    }
  }

  /** The one log line of a request whose client left before any answer (no access line follows). */
  private clientGone (when: string): void {
    this.request.log.info({ route: this.route.routeName, status: null }, `client closed the connection ${when}; the upstream was not contacted`)
  }

  private fail (err: Error): void {
    this.finish()
    if (!this.res.destroyed) this.reply.send(err)
  }

  onConnect (abort: (err?: Error) => void): void {
    this.abort = abort
    if (this.tryExpired) { abort(new TryTimeoutError()); return }
    if (this.res.destroyed) abort(new Error('client closed the connection'))
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 100 || statusCode > 599) {
      // Not an HTTP status (RFC 9110 §15): the client gets 502, as from nginx.
      ;(this.abort as (err?: Error) => void)(new InvalidStatusError(statusCode))
      return false
    }
    if (statusCode < 200) return true // 1xx informational: wait for the final response
    this.clearTryTimer()
    const set = this.route.set
    const index = (this.target as Target).index
    set.result(index, statusCode)
    if (this.route.retryStatuses.has(statusCode) && this.retryPossible()) {
      // A 502/503/504 that retryOn names, and a try left: this response is dropped, the next
      // try goes to another target (the status is kept for the log line).
      ;(this.abort as (err?: Error) => void)(new RetryStatusError(statusCode))
      return false
    }
    const request = this.request
    const headers = responseHeaders(rawHeaders, request.id, this.route, replyHeaders(this.reply))
    // Draining (plugins/core/health): this response closes its connection, so the client does not
    // send another request on a connection the gateway is about to close.
    if (this.route.draining?.() === true) headers.push('connection', 'close')
    try {
      this.res.writeHead(statusCode, statusText, headers)
    } catch (err) {
      // A header value Node refuses to send: the upstream's response is not passed on (502).
      ;(this.abort as (err?: Error) => void)(err as Error)
      return false
    }
    this.started = true
    this.resume = resume
    request.upstreamMs = performance.now() - this.startedAt
    this.reply.hijack()
    return true
  }

  onData (chunk: Buffer): boolean {
    if (this.res.write(chunk)) return true
    // The client reads slower than the upstream sends: pause the upstream until it drains.
    this.res.once('drain', this.resume as () => void)
    return false
  }

  onComplete (): void {
    this.finish()
    this.res.end()
  }

  onError (err: Error): void {
    this.finish()
    const code = (err as { code?: string }).code ?? ''
    const target = this.target as Target
    const route = this.route
    if (err instanceof RetryStatusError) {
      this.retry(code)
      return
    }
    if (!this.started && !this.res.destroyed) {
      // No response from this target (not a client's fault): a failure of the target (the set may
      // eject it or open its breaker), retried on another target if retryOn names the condition.
      const condition = CONNECT_FAILURES.has(code) ? route.retryConnectFailure : RESETS.has(code) ? route.retryReset : TIMEOUTS.has(code) ? route.retryTimeout : null
      if (condition !== null || code.startsWith('ERR_TLS') || code.includes('CERT')) route.set.result(target.index, 0)
      if (condition === true && this.retryPossible()) {
        this.retry(code)
        return
      }
    } else if (!this.started) {
      route.set.abandoned(target.index)
    }
    const routeName = this.route.routeName
    publish(channels.upstreamError, () => ({ request: this.request, route: routeName, kind: errorKind(err) }))
    if (this.res.destroyed) {
      this.request.log.info({ code, upstream: target.origin }, 'client closed the connection before the response ended')
      return
    }
    if (this.started) {
      // The response has begun: nothing left but to abort it, so the client sees a broken
      // response and never a clean one.
      this.request.log.warn({ code, upstream: target.origin }, 'upstream response aborted')
      this.res.destroy()
      return
    }
    this.reply.send(upstreamError(err, this.request, target.origin))
  }

  private clearTryTimer (): void {
    this.tryExpired = false
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null }
  }

  /**
   * Whether a failed try may be tried again: tries left, the client still there, a target to try
   * (another one when there is one) and the retry budget agrees. Chooses that target.
   */
  private retryPossible (): boolean {
    if (this.attempt >= this.attempts || this.res.destroyed) return false
    const set = this.route.set
    const failed = (this.target as Target).index
    let index = set.pick(this.key ?? '', failed)
    if (index === -1 && set.available(failed)) index = failed // the only target left
    if (index === -1 || !set.mayRetry()) return false
    this.retryTo = index
    return true
  }

  private retry (code: string): void {
    this.request.log.debug({ attempt: this.attempt, code, upstream: (this.target as Target).origin, next: this.route.targets[this.retryTo].origin }, 'retrying upstream request')
    this.done = false
    this.res.on('close', this.onClose)
    this.sendFromEvent()
  }

  /** The request is over (answered, failed, or the client left): everything it held is given back. */
  private finish (): void {
    this.done = true
    this.clearTryTimer()
    if (this.onTarget !== -1) {
      this.route.set.done(this.onTarget)
      this.onTarget = -1
    }
    this.res.removeListener('close', this.onClose)
    this.release()
    // Only body-less requests are retried, so a held body is never needed again.
    if (this.buffered !== null) {
      this.buffered.release()
      this.buffered = null
    }
    if (this.held !== 0) {
      (this.route.options.buffers as BodyBuffers).release(this.held)
      this.held = 0
    }
  }
}

function responseHeaders (raw: Buffer[], requestId: string, route: RouteState, own: OwnHeaders): string[] {
  const { hide, rewrite } = route
  const out: string[] = []
  let named: Set<string> | null = null
  // One pass that decodes each name once (the hot loop of every response); the headers the
  // upstream names in its Connection header (rare) are dropped from the result afterwards.
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString('latin1').toLowerCase()
    if (name === 'connection') {
      named = connectionTokens(raw[i + 1].toString('latin1'))
      continue
    }
    if (hide.has(name)) continue
    if (own[name] !== undefined && Object.hasOwn(own, name) && !OWN_MERGE.has(name) && !OWN_SKIP.has(name)) continue // the gateway's value wins
    let value = raw[i + 1].toString('latin1')
    if (name === 'location') value = rewriteLocation(value, rewrite)
    out.push(name, value)
  }
  if (named !== null) {
    let kept = 0
    for (let i = 0; i < out.length; i += 2) {
      if (named.has(out[i])) continue
      out[kept++] = out[i]
      out[kept++] = out[i + 1]
    }
    out.length = kept
  }
  for (const name in own) {
    const value = own[name]
    if (value === undefined || OWN_SKIP.has(name)) continue
    if (Array.isArray(value)) for (const v of value) out.push(name, v)
    else out.push(name, String(value))
  }
  const fixed = route.fixed
  for (let i = 0; i < fixed.length; i++) if (own[fixed[i][0]] === undefined) out.push(fixed[i][0], fixed[i][1])
  out.push('x-request-id', requestId)
  return out
}

function onUpgradeTimeout (upgrade: UpgradeRequest): void { upgrade.timedOut() }
function onUpgradeQueueTimeout (upgrade: UpgradeRequest): void { upgrade.queueTimedOut() }

/** Where `Forwarder.upgrade` reports. */
export interface UpgradeHandlers {
  /**
   * The upstream switched protocols: its status (101) and headers for the client (filtered as a
   * response's: hop-by-hop and hidden ones dropped, the pipeline's own and X-Request-Id added;
   * Connection and Upgrade are the caller's to write), and its socket, the bytes it sent after its
   * head put back first.
   */
  accepted: (status: number, headers: string[], socket: Duplex) => void
  /** No tunnel: the answer for the client (502: refused or unreachable, 504: no answer in time, 503: no target). */
  refused: (err: GatewayError) => void
}

/** The upstream answered an upgrade with a final status instead of 101. */
class UpgradeRefusedError extends Error {
  readonly code = 'GW_UPGRADE_REFUSED'
  constructor (readonly status: number) { super(`upstream answered the upgrade with ${status}`) }
}

/**
 * One upgrade handshake on the target the route's set picks (no retry: the client can ask again).
 * It counts against the route's connections as a forwarded request does: it takes a slot, or
 * waits for one in the same queue (maxPending, queueTimeout: 503 with Retry-After), and holds it
 * until undici is done with it — the 101 (undici then detaches the socket from the pool) or the
 * refusal. The whole handshake, queued or not, is bounded by routes[].timeout.
 * undici's dispatch interface: a 101 arrives in onUpgrade with the socket, any other final status
 * in onHeaders (reported to the set as a response, then the request aborted).
 */
class UpgradeRequest implements Dispatcher.DispatchHandler, Waiter {
  private target = -1
  private abort: ((err?: Error) => void) | null = null
  private gone = false
  /** The client has its answer, or left: no handler is called any more. */
  private over = false
  /** Sent to the pool (counted by the set as dispatched). */
  private dispatched = false
  /** Holds one of the target's connection slots, until undici's last callback. */
  private holding = false
  /** Its place in the target's queue while waiting for a slot, else null. */
  private place: QueuePlace | null = null
  private queueTimer: NodeJS.Timeout | null = null
  private headers: string[] = []
  private readonly startedAt = performance.now()
  private timer: NodeJS.Timeout | null = null
  readonly giveUp = (): void => {
    if (this.over) return
    if (this.place !== null) {
      // Still waiting for a slot: it leaves the queue, and the upstream never sees it.
      this.leaveQueue()
      this.finish()
      this.request.log.info({ route: this.route.routeName, status: null }, 'client closed the connection while waiting for an upstream connection; the upstream was not contacted')
      return
    }
    this.gone = true
    if (this.abort !== null) this.abort(new Error('client closed the connection'))
  }

  constructor (
    readonly route: RouteState,
    private readonly request: FastifyRequest,
    private readonly reply: FastifyReply,
    private readonly path: string,
    private readonly handlers: UpgradeHandlers
  ) {}

  send (): void {
    const route = this.route
    const set = route.set
    set.requested()
    const index = set.pick(set.keyOf(this.request))
    if (index === -1) {
      this.over = true
      this.handlers.refused(new GatewayError('GW_ERR_UNAVAILABLE', 'No upstream target is available; retry shortly.', { headers: { 'retry-after': String(set.retryAfterSeconds()) } }))
      return
    }
    const target = route.targets[index]
    this.headers = upstreamHeaders(this.request, target.host, this.request.upstream ?? NO_EXTRAS, route.policy, -1)
    this.target = index
    // The pool's headersTimeout starts when the handshake is written; this timer bounds all of it,
    // the wait for a slot included (routes[].timeout in all).
    this.timer = setTimeout(onUpgradeTimeout, route.timeoutMs, this)
    const slots = target.slots
    if (slots.active < route.connections) {
      slots.active++
      this.dispatch()
      return
    }
    if (slots.waitingCount >= route.maxPending) {
      this.refuse(busy())
      return
    }
    this.place = { request: this }
    slots.waiting.push(this.place)
    slots.waitingCount++
    this.queueTimer = setTimeout(onUpgradeQueueTimeout, route.queueTimeoutMs, this)
  }

  /** @internal (releaseSlot) A slot is free: the handshake takes it. */
  wake (): boolean {
    this.place = null
    if (this.queueTimer !== null) { clearTimeout(this.queueTimer); this.queueTimer = null }
    this.dispatch()
    return true
  }

  private dispatch (): void {
    const target = this.route.targets[this.target]
    this.holding = true
    this.dispatched = true
    this.route.set.dispatched(this.target)
    target.pool.dispatch({ origin: target.origin, path: this.path, method: 'GET', headers: this.headers, upgrade: 'websocket', body: null }, this)
  }

  private leaveQueue (): void {
    ;(this.place as QueuePlace).request = null
    this.route.targets[this.target].slots.waitingCount--
    this.place = null
    if (this.queueTimer !== null) { clearTimeout(this.queueTimer); this.queueTimer = null }
  }

  /** undici is done with the handshake: its slot goes to the next waiting request. */
  private release (): void {
    if (!this.holding) return
    this.holding = false
    releaseSlot(this.route.targets[this.target].slots)
  }

  /** An answer from the gateway to a handshake that never reached the upstream (503: busy, shutting down). */
  refuse (err: GatewayError): void {
    if (this.place !== null) this.leaveQueue()
    if (this.finish()) this.handlers.refused(err)
  }

  /** @internal (onUpgradeQueueTimeout) No slot became free within queueTimeout: 503. */
  queueTimedOut (): void {
    this.queueTimer = null
    if (this.place === null || this.over) return
    this.request.log.warn({ upstream: this.route.targets[this.target].origin, waited: this.route.queueTimeoutMs }, 'no upstream connection became free in time')
    this.refuse(busy())
  }

  /** @internal (onUpgradeTimeout) The handshake took longer than the route's timeout: 504, and it is given up. */
  timedOut (): void {
    this.timer = null
    const queued = this.place !== null
    if (queued) this.leaveQueue()
    if (!this.finish()) return
    this.gone = true // a later onConnect aborts, a later 101's socket is destroyed
    if (!queued) this.route.set.result(this.target, 0)
    if (this.abort !== null) this.abort(new Error('upgrade timed out'))
    this.request.log.warn({ upstream: this.route.targets[this.target].origin, queued }, 'upstream did not answer the upgrade in time')
    this.handlers.refused(new GatewayError('GW_ERR_GATEWAY_TIMEOUT', 'The upstream did not answer in time.'))
  }

  private finish (): boolean {
    if (this.over) return false
    this.over = true
    if (this.timer !== null) { clearTimeout(this.timer); this.timer = null }
    if (this.dispatched) this.route.set.done(this.target)
    return true
  }

  onConnect (abort: (err?: Error) => void): void {
    this.abort = abort
    if (this.gone) abort(new Error('client closed the connection'))
  }

  onHeaders (statusCode: number): boolean {
    if (statusCode >= 100 && statusCode < 200) return true // 1xx other than 101: wait for the final answer
    const valid = statusCode >= 200 && statusCode <= 599
    this.route.set.result(this.target, valid ? statusCode : 0)
    ;(this.abort as (err?: Error) => void)(valid ? new UpgradeRefusedError(statusCode) : new InvalidStatusError(statusCode))
    return false
  }

  onUpgrade (statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex): void {
    this.release()
    if (!this.finish()) { socket.destroy(); return }
    this.route.set.result(this.target, statusCode)
    if (this.gone) { socket.destroy(); return }
    this.request.upstreamMs = performance.now() - this.startedAt
    const raw = (rawHeaders ?? []).map((h) => typeof h === 'string' ? Buffer.from(h, 'latin1') : h)
    this.handlers.accepted(statusCode, responseHeaders(raw, this.request.id, this.route, replyHeaders(this.reply)), socket)
  }

  onData (): boolean { return true }
  onComplete (): void { this.release() }

  onError (err: Error): void {
    this.release()
    if (!this.finish()) return
    const code = (err as { code?: string }).code ?? ''
    const origin = this.route.targets[this.target].origin
    if (this.gone) {
      this.route.set.abandoned(this.target)
      this.request.log.info({ code, upstream: origin }, 'client closed the connection during the upgrade')
      return
    }
    if (err instanceof UpgradeRefusedError) {
      this.request.log.warn({ upstream: origin, upstreamStatus: err.status }, 'upstream refused the upgrade')
      this.handlers.refused(new GatewayError('GW_ERR_BAD_GATEWAY', 'The upstream did not accept the WebSocket upgrade.', { cause: err }))
      return
    }
    if (!(err instanceof InvalidStatusError)) this.route.set.result(this.target, 0)
    publish(channels.upstreamError, () => ({ request: this.request, route: this.route.routeName, kind: errorKind(err) }))
    this.handlers.refused(upstreamError(err, this.request, origin))
  }
}

/**
 * Redirects from the upstream (DRF's APPEND_SLASH 301) must point back through the gateway:
 * a Location on the upstream's origin, or a path under its base path, is mapped onto the prefix.
 */
export function rewriteLocation (location: string, rewrite: Rewrite): string {
  let path = location
  if (!location.startsWith('/')) {
    // Absolute URL: only rewrite the upstream's own origin; other sites are left alone.
    const origin = rewrite.origins.find((o) => location.startsWith(o + '/') || location === o)
    if (origin === undefined) return location
    path = location.slice(origin.length) || '/'
  } else if (location.startsWith('//')) {
    return location
  }
  if (rewrite.basePath !== '' && path !== rewrite.basePath && !path.startsWith(rewrite.basePath + '/') && !path.startsWith(rewrite.basePath + '?')) {
    return location // outside the upstream's base path: not ours to map
  }
  const mapped = rewrite.prefix + path.slice(rewrite.basePath.length)
  return mapped === '' ? '/' : (mapped[0] === '/' ? mapped : '/' + mapped)
}

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * What the route's plugins add to the upstream request: identity headers, a validated body…
     * Set it as a new object (`request.upstream = { ...request.upstream, headers }`); undefined by default.
     */
    upstream: ForwardExtras | undefined
    /** Milliseconds from dispatch to the upstream's response headers (undefined if not proxied). */
    upstreamMs: number | undefined
  }
}

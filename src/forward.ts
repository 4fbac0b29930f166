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
 *  - only idempotent, body-less requests are retried, only on connection failures, and never on
 *    a status code (reply-from retries 503 ten times by default);
 *  - https upstreams verify certificates unless the route opts out.
 */
import { readFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { Transform, type Readable } from 'node:stream'
import { Pool, type Dispatcher } from 'undici'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../schemas/errors.js'
import { channels, publish, type UpstreamErrorEvent } from '../schemas/events.js'
import { replyHeaders, type OwnHeaders } from '../plugins/fastify-internals.js'
import { BodyTooLarge, hasBody, readBody } from '../plugins/json-body.js'
import { hasBearerScheme } from '../plugins/auth-common.js'

export interface ForwarderOptions {
  /** Upstream URLs; all share the same path, which replaces `prefix`. */
  upstreams: readonly string[]
  /** The route prefix that the upstream path replaces (`/api/people`). */
  prefix: string
  /** Response headers and inter-chunk body timeout. */
  timeoutMs: number
  retries: number
  connections: number
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
  /** The route's name, for events and logs. */
  routeName?: string
  /**
   * Request headers (lower-case) never forwarded from the client, on every request of the route:
   * the identity headers the gateway sets itself, so a client cannot spoof them.
   */
  stripHeaders?: readonly string[]
  /**
   * Forward the client's `Authorization` only when it is a Bearer token (routes[].forwardAuthorization:
   * bearer): Basic credentials never reach the upstream. Decided in the header pass itself, so a
   * public route needs no hook for it.
   */
  bearerOnlyAuthorization?: boolean
  /**
   * The gateway's identity headers for the request (plugins/identity), asked at each dispatch and
   * sent after the client's headers and `request.upstream`'s: what `request.identity` holds when
   * the request is forwarded.
   */
  identityHeaders?: (request: FastifyRequest) => ReadonlyArray<readonly [string, string]> | undefined
  /**
   * Upstream response headers (lower-case) never passed to the client, e.g. `server` and
   * `x-powered-by` (version leaks).
   */
  hideResponseHeaders?: readonly string[]
  /**
   * Headers (lower-case names) added to every proxied response in place of the upstream's
   * values, unless the pipeline set the same header with `reply.header()`: the security headers,
   * fixed at start instead of being set on every request.
   */
  responseHeaders?: ReadonlyArray<readonly [string, string]>
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

/** Connection failures after which a retry cannot have reached the upstream's application. */
const RETRYABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_SOCKET', 'EPIPE', 'UND_ERR_CLOSED'])

const NO_EXTRAS: ForwardExtras = Object.freeze({})

interface Target { pool: Pool, host: string, origin: string }

/** How upstream `Location` values map back onto the gateway. */
interface Rewrite { prefix: string, basePath: string, origins: string[] }

export function createForwarder (options: ForwarderOptions): Forwarder {
  const ca = options.tls?.ca === undefined ? undefined : readFileSync(options.tls.ca)
  const targets: Target[] = options.upstreams.map((raw) => {
    const url = new URL(raw)
    const pool = new Pool(url.origin, {
      connections: options.connections,
      pipelining: 1,
      keepAliveTimeout: options.keepAliveTimeoutMs ?? 4_000,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      connect: url.protocol === 'https:'
        ? { rejectUnauthorized: options.tls?.insecureSkipVerify !== true, ca, timeout: Math.min(options.timeoutMs, 10_000) }
        : { timeout: Math.min(options.timeoutMs, 10_000) }
    })
    return { pool, host: url.host, origin: url.origin }
  })
  // The config check guarantees every URL of a balanced upstream has the same path.
  const basePath = new URL(options.upstreams[0]).pathname.replace(/\/+$/, '')
  const prefix = options.prefix === '/' ? '' : options.prefix
  const rewrite: Rewrite = { prefix, basePath, origins: targets.map((t) => t.origin) }
  let next = 0

  function pick (): Target {
    const target = targets[next]
    next = (next + 1) % targets.length
    return target
  }

  const routeName = options.routeName ?? options.prefix
  const policy: HeaderPolicy = {
    skip: new Set([...REQUEST_SKIP, ...(options.stripHeaders ?? []).map((h) => h.toLowerCase())]),
    bearerOnly: options.bearerOnlyAuthorization === true,
    identity: options.identityHeaders ?? null
  }
  const fixed = (options.responseHeaders ?? []).map(([name, value]) => [name.toLowerCase(), value] as const)
  // The upstream's values of the fixed headers are replaced: hidden, then ours appended.
  const hide = new Set([...RESPONSE_SKIP, ...(options.hideResponseHeaders ?? []).map((h) => h.toLowerCase()), ...fixed.map(([name]) => name)])

  const route: RouteState = { options, rewrite, hide, fixed, policy, routeName, pick }
  const bufferBodyBytes = options.bufferBodyBytes ?? 0

  function forward (request: FastifyRequest, reply: FastifyReply, extras: ForwardExtras = request.upstream ?? NO_EXTRAS): void {
    const raw = request.raw
    const url = raw.url ?? '/'
    const rest = url.slice(prefix.length) // the route scope checked that the URL starts with the prefix as spelled
    const path = basePath === '' ? (rest === '' || rest[0] === '?' ? '/' + rest : rest) : basePath + rest

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
        new ForwardedRequest(route, request, reply, extras, path, null, true).readBody()
        return
      }
      body = bytes === -1 ? limitBody(raw, options.bodyLimit) : raw
    }
    new ForwardedRequest(route, request, reply, extras, path, body, body !== null).dispatch(pick())
  }

  return {
    forward,
    async close () {
      await Promise.all(targets.map((t) => t.pool.close()))
    }
  }
}

/** A chunked body passes through a counter that fails the upload once it exceeds the limit. */
function limitBody (source: Readable, limit: number): Readable {
  let seen = 0
  const counter = new Transform({
    transform (chunk: Buffer, _encoding, callback) {
      seen += chunk.length
      if (seen > limit) callback(new BodyTooLargeError(limit))
      else callback(null, chunk)
    }
  })
  source.on('error', (err) => counter.destroy(err))
  return source.pipe(counter)
}

class BodyTooLargeError extends Error {
  readonly code = 'GW_BODY_TOO_LARGE'
  constructor (readonly limit: number) { super('request body too large') }
}

/** What a route never forwards from the client, fixed at start. */
interface HeaderPolicy {
  skip: ReadonlySet<string>
  bearerOnly: boolean
  identity: ((request: FastifyRequest) => ReadonlyArray<readonly [string, string]> | undefined) | null
}

function isBearer (value: string): boolean {
  return value.length > 7 && hasBearerScheme(value)
}

/** One pass over the client's headers; then the gateway's own. */
function upstreamHeaders (request: FastifyRequest, host: string, extras: ForwardExtras, policy: HeaderPolicy): string[] {
  const skip = policy.skip
  const incoming = request.raw.headers
  const named = connectionTokens(incoming.connection)
  const strip = extras.strip
  const out: string[] = []
  for (const name in incoming) {
    if (skip.has(name) || (named !== null && named.has(name)) || (strip !== undefined && strip.has(name))) continue
    if (extras.body !== undefined && (name === 'content-length' || name === 'content-type')) continue
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
  }
  if (extras.headers !== undefined) for (const [k, v] of extras.headers) out.push(k, v)
  const identity = policy.identity === null ? undefined : policy.identity(request)
  if (identity !== undefined) for (const [k, v] of identity) out.push(k, v)
  return out
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
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT') {
    return new GatewayError('GW_ERR_GATEWAY_TIMEOUT', 'The upstream did not answer in time.', { cause: err })
  }
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' || code === 'UND_ERR_ABORTED' || code === 'ECONNABORTED') {
    return new GatewayError('GW_ERR_BAD_REQUEST', 'The request body ended before its declared length.', { cause: err })
  }
  return new GatewayError('GW_ERR_BAD_GATEWAY', 'The upstream could not be reached.', { cause: err })
}

/** What every request of one route shares, fixed at start. */
interface RouteState {
  options: ForwarderOptions
  rewrite: Rewrite
  hide: ReadonlySet<string>
  fixed: ReadonlyArray<readonly [string, string]>
  policy: HeaderPolicy
  routeName: string
  pick: () => Target
}

/**
 * One forwarded request, and undici's dispatch handler for it (the raw-headers interface its
 * client speaks natively): the upstream's status and headers go to the client as soon as they
 * arrive, the body chunk by chunk with backpressure both ways. Per request it costs this object,
 * the header arrays and one closure (the client-close listener), five more for a small body it
 * reads first (readBody) — no promise (bench/PROFILE.md).
 */
class ForwardedRequest implements Dispatcher.DispatchHandler {
  private started = false
  private done = false
  private abort: ((err?: Error) => void) | null = null
  private resume: (() => void) | null = null
  private attempt = 0
  private target: Target | null = null
  private readonly res: ServerResponse
  private readonly startedAt = performance.now()
  private readonly attempts: number
  private readonly idempotent: boolean
  private readonly onClose: () => void

  constructor (
    private readonly route: RouteState,
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
    // The client went away: stop the upstream request too.
    this.onClose = () => {
      if (!this.done && this.abort !== null) this.abort(new Error('client closed the connection'))
    }
    this.res.once('close', this.onClose)
  }

  dispatch (target: Target): void {
    this.attempt++
    this.target = target
    this.abort = null
    target.pool.dispatch({
      origin: target.origin,
      path: this.path,
      method: this.request.raw.method as Dispatcher.HttpMethod,
      headers: upstreamHeaders(this.request, target.host, this.extras, this.route.policy),
      body: this.body,
      idempotent: this.idempotent,
      blocking: false
    }, this)
  }

  /**
   * A small body of known length: read whole (plugins/json-body's reader), then dispatched as
   * one Buffer. A body that breaks off never reaches the upstream.
   */
  readBody (): void {
    readBody(this.request.raw, this.route.options.bodyLimit, (err, body) => {
      if (err === null) {
        this.body = body
        this.dispatchFromEvent()
        return
      }
      this.finish()
      // The client went away or broke off its body: the upstream was never contacted.
      if (this.res.destroyed) return
      this.reply.send(err instanceof BodyTooLarge
        ? new GatewayError('GW_ERR_PAYLOAD_TOO_LARGE', err.message)
        : new GatewayError('GW_ERR_BAD_REQUEST', 'The request body ended before its declared length.'))
    })
  }

  /**
   * A dispatch from an event (the body's end, a retry), not from the route handler, where Fastify
   * catches a throw: what a route's plugins set (a malformed `request.identity`, say) must give
   * the client an error answer, never an uncaught exception.
   */
  private dispatchFromEvent (): void {
    try {
      this.dispatch(this.route.pick())
    } catch (err) {
      this.finish()
      if (!this.res.destroyed) this.reply.send(err as Error)
    }
  }

  onConnect (abort: (err?: Error) => void): void {
    this.abort = abort
    if (this.res.destroyed) abort(new Error('client closed the connection'))
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true // 1xx informational: wait for the final response
    this.started = true
    this.resume = resume
    const request = this.request
    request.upstreamMs = performance.now() - this.startedAt
    this.reply.hijack()
    const headers = responseHeaders(rawHeaders, request.id, this.route, replyHeaders(this.reply))
    // Draining (plugins/health): this response closes its connection, so the client does not
    // send another request on a connection the gateway is about to close.
    if ((request.server as { readiness?: { state: string } }).readiness?.state === 'draining') this.res.shouldKeepAlive = false
    this.res.writeHead(statusCode, statusText, headers)
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
    if (!this.started && this.attempt < this.attempts && RETRYABLE.has(code) && !this.res.destroyed) {
      this.request.log.debug({ attempt: this.attempt, code }, 'retrying upstream request')
      this.done = false
      this.res.once('close', this.onClose)
      this.dispatchFromEvent()
      return
    }
    const routeName = this.route.routeName
    publish(channels.upstreamError, () => ({ route: routeName, kind: errorKind(err) }))
    if (this.started) {
      // The response has begun: nothing left but to abort it, so the client sees a broken
      // response and never a clean one.
      this.request.log.warn({ code, upstream: target.origin }, 'upstream response aborted')
      this.res.destroy()
      return
    }
    this.reply.send(upstreamError(err, this.request, target.origin))
  }

  private finish (): void {
    this.done = true
    this.res.removeListener('close', this.onClose)
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
  for (const [name, value] of route.fixed) if (own[name] === undefined) out.push(name, value)
  out.push('x-request-id', requestId)
  return out
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

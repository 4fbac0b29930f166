/**
 * Rate limiting on @fastify/rate-limit's counter store contract, in three pieces:
 *
 *  - the default export, registered once on the root: the counter store — memory
 *    (./memory-store.ts, an LRU per route, this gateway only) or Redis (ioredis, shared by every
 *    gateway instance, the same contract), with a bounded timeout, `onStoreError: allow | deny`,
 *    a warning when the store goes away and a /readyz check. Everything the limiters keep (the
 *    stores, the IPv6 key memo) hangs off the gateway's `rateLimitBackend`, so two gateways in
 *    one process share no counter;
 *  - `rateLimitEdge` (pipeline stage 3, before authentication) and `rateLimitConsumer` (stage 5,
 *    after it): each adds ONE onRequest callback hook to the route scope, at its place in the
 *    pipeline (the plugin's own per-route hooks would run after every scope-level hook — DESIGN
 *    pitfall 2). The hooks call the store themselves rather than through `createRateLimit()`:
 *    with the memory store a request is counted synchronously, without a promise;
 *  - `routeLimiter()` for a route the gateway answers itself (the token endpoint).
 *
 * Counters are keyed by route name + client, never by path, so every spelling of a path and
 * HEAD/GET share one bucket. `by: ip` and `by: header:NAME` count every request at stage 3, failed
 * logins included. `by: consumer` counts authenticated requests per subject at stage 5; requests
 * without an identity count against the client IP, and so do failed authentications: stage 3
 * refuses an IP whose bucket is spent before credentials are looked at, and a 401 is counted
 * against the IP when the response is sent.
 *
 * Response headers: draft-ietf-httpapi-ratelimit-headers-10 (the current draft), the structured
 * `RateLimit-Policy: "<route>";q=<max>;w=<window s>` and `RateLimit: "<route>";r=<remaining>;t=<reset s>`,
 * on every response of a limited route (proxied ones too); 429s add `Retry-After`.
 */
import { createHash } from 'node:crypto'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import fastifyRateLimit from '@fastify/rate-limit'
import { parseDuration } from '../../schemas/common.js'
import { parseLimitBy, type RateLimitStoreConfig, type RouteRateLimit } from '../../schemas/edge.js'
import { GatewayError } from '../../schemas/errors.js'
import { channels, publish } from '../../schemas/events.js'
import { LeaseStore } from './lease-store.js'
import { MemoryCounterStore, type CounterCallback, type CounterResult } from './memory-store.js'
import { RedisConnection, RedisCounterStore, type CounterStore } from './redis-store.js'
import type { Lease } from '../core/shared.js'

export interface RateLimitPluginOptions {
  config: RateLimitStoreConfig
  /** Where the memory stores are kept across live reloads (plugins/core/shared.ts). */
  shared: Lease
}

/** What the route-level limiters need from the root plugin. */
interface LimitBackend {
  onStoreError: 'allow' | 'deny'
  /**
   * The store of one route's limiters: the shared Redis store, or the route's memory store (an LRU
   * of its own, shared by the route's edge and consumer limiters, as Redis shares its keys). A
   * memory store outlives a live reload when the route keeps its name and its limit.
   */
  store: (route: string, limit: RouteRateLimit) => CounterStore
  /** Records a store failure (warning log, readiness) — the Redis backend only. */
  failed: (err: unknown, log: FastifyBaseLogger) => void
  /** Client addresses to counter keys, for this gateway's limiters. */
  ipKeys: IpKeys
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Set by the rate-limit plugin on the root; the route scopes inherit it. */
    rateLimitBackend: LimitBackend
  }
}

async function rateLimitPlugin (app: FastifyInstance, opts: RateLimitPluginOptions): Promise<void> {
  const { config } = opts
  const timeoutMs = parseDuration(config.timeout)
  let redis: RedisCounterStore | null = null
  if (config.store === 'redis' && config.redis !== undefined) {
    // The client is kept across live reloads while its connection settings stay the same.
    const target = config.redis
    const connection = opts.shared.acquire(`rate-limit redis ${JSON.stringify(target)} ${timeoutMs}`,
      () => new RedisConnection(target, timeoutMs), async (c) => { await c.close() })
    const store = new RedisCounterStore(connection, config.keyPrefix, timeoutMs, app.log, config.onStoreError)
    redis = store
    app.readiness.add('rateLimitStore', () => store.check())
    app.addHook('onReady', async () => {
      if (!await store.connected(Math.max(1000, timeoutMs * 4))) {
        store.down(new Error('no connection at start'))
      }
    })
    app.addHook('onClose', async () => { store.close() })
  }
  // Redis with leases: one lease table per route and limit (its edge and consumer limiters share it).
  const leaseStores = new Map<string, LeaseStore>()
  const leasesOf = (backend: RedisCounterStore, route: string, limit: RouteRateLimit): LeaseStore => {
    const key = `${JSON.stringify(route)} ${JSON.stringify(limit)}`
    let leases = leaseStores.get(key)
    if (leases === undefined) {
      leases = new LeaseStore(backend, { leaseMax: config.leaseMax, maxKeys: config.maxKeys })
      leaseStores.set(key, leases)
    }
    return leases
  }
  app.decorate('rateLimitBackend', {
    onStoreError: config.onStoreError,
    // Every limiter shares the one Redis client (its counters live in Redis, so a reload keeps
    // them anyway); in memory each route has its own LRU, kept by route name and limit.
    store (route: string, limit: RouteRateLimit) {
      if (redis !== null) return config.leaseMax > 1 ? leasesOf(redis, route, limit) : redis
      const key = `rate-limit ${config.maxKeys} ${JSON.stringify(route)} ${JSON.stringify(limit)}`
      return opts.shared.acquire(key, () => new MemoryCounterStore({ maxKeys: config.maxKeys }))
    },
    failed (err: unknown, log: FastifyBaseLogger) {
      if (redis !== null) redis.down(err)
      else log.warn({ err: (err as Error).message }, 'rate-limit store failed')
    },
    ipKeys: new IpKeys()
  } satisfies LimitBackend)
}

export default fp(rateLimitPlugin, { name: 'portcullis-rate-limit', fastify: '5.x', decorators: { fastify: ['readiness'] } })

// --- one route's limiter ---------------------------------------------------------------------

export interface RouteLimitOptions {
  /** The route's name: the counters' namespace and the policy name in the headers. */
  route: string
  limit: RouteRateLimit
}

interface MaybeIdentity { identity?: { subject?: string } | null }

const IPV6_KEYS_MAX = 4096

/**
 * The client's counter key: `ip` normalised (IPv4-mapped → IPv4, IPv6 → its /64). An IPv4
 * address (no `:`) is its own key; an IPv6 one costs @fastify/rate-limit two address objects to
 * normalise, so its key is remembered (a bounded few, emptied when full). One per gateway.
 */
export class IpKeys {
  private readonly ipv6 = new Map<string, string>()

  of (ip: string): string {
    if (!ip.includes(':')) return 'ip:' + ip
    let key = this.ipv6.get(ip)
    if (key === undefined) {
      key = 'ip:' + fastifyRateLimit.normalizeIP(ip)
      if (this.ipv6.size >= IPV6_KEYS_MAX) this.ipv6.clear()
      this.ipv6.set(ip, key)
    }
    return key
  }
}

function digest (value: string): string {
  return createHash('sha256').update(value).digest('base64url').slice(0, 24)
}

export interface RouteLimiter {
  /** Counts the request and refuses it (429) past the limit. */
  count: onRequestHookHandler
  /** Refuses the request (429) if its IP bucket is already spent, without counting it. */
  peek: onRequestHookHandler
  /** Counts a request against the client IP (a failed authentication); calls back when counted. */
  countIp: (request: FastifyRequest, done: () => void) => void
}

/**
 * A limiter for one route, on the store of the root plugin. The hooks are callback hooks that call
 * the store directly: with the memory store a request is counted synchronously, with no promise
 * (@fastify/rate-limit's `createRateLimit()` costs two async functions, three awaits and a
 * `request.routeOptions` copy per call, ≈ 2 µs — and a route with `by: consumer` calls it twice;
 * bench/PROFILE.md).
 */
export function routeLimiter (scope: FastifyInstance, opts: RouteLimitOptions): RouteLimiter {
  const { route, limit } = opts
  const backend = scope.rateLimitBackend
  const store = backend.store(route, limit)
  const ipKeys = backend.ipKeys
  const by = parseLimitBy(limit.by)
  const windowMs = parseDuration(limit.window)
  const max = limit.max
  const ns = route + '|'
  const keyOf = (request: FastifyRequest): string => {
    if (by.kind === 'consumer') {
      const subject = (request as MaybeIdentity).identity?.subject
      if (typeof subject === 'string' && subject !== '') return ns + 'c:' + (subject.length > 64 ? digest(subject) : subject)
    } else if (by.kind === 'header') {
      const value = request.headers[by.name]
      // Header values may be secrets (API keys): only a digest is stored.
      if (value !== undefined) return ns + 'h:' + digest(Array.isArray(value) ? value.join(',') : value)
    }
    return ns + ipKeys.of(request.ip)
  }
  const policy = `"${route}";q=${max};w=${Math.ceil(windowMs / 1000)}`
  const remainingIs = `"${route}";r=`
  // The memory store answers at once: asked directly, with no callback (no closures per request).
  const local = store instanceof MemoryCounterStore ? store : null

  /** The store's answer for one request: headers, and a 429 past the limit (or a store failure's treatment). */
  function settle (request: FastifyRequest, reply: FastifyReply, increment: boolean, err: Error | null, result: { current: number, ttl: number } | undefined, done: (err?: Error) => void): void {
    if (err !== null || result === undefined) {
      backend.failed(err ?? new Error('no reply from the rate-limit store'), request.log)
      if (backend.onStoreError === 'deny') {
        done(new GatewayError('GW_ERR_UNAVAILABLE', 'The rate limit cannot be checked right now; try again shortly.', { headers: { 'retry-after': '1' } }))
      } else {
        done()
      }
      return
    }
    const current = result.current
    const remaining = Math.max(0, max - current)
    const reset = Math.max(0, Math.ceil(result.ttl / 1000))
    reply.header('ratelimit-policy', policy)
    reply.header('ratelimit', remainingIs + remaining + ';t=' + reset)
    // A peek reports the bucket before this request: spent when nothing remains.
    if (increment ? current <= max : remaining > 0) { done(); return }
    publish(channels.rateLimited, () => ({ request, route, by: by.kind }))
    done(new GatewayError('GW_ERR_RATE_LIMITED', `Too many requests; retry in ${Math.max(1, reset)} s.`, {
      headers: { 'retry-after': String(Math.max(1, reset)) }
    }))
  }

  /**
   * One store call whose callback runs once. The memory store calls back synchronously, inside the
   * try: a throw from what the callback ran (settle, Fastify's `done`) must not be taken for a
   * store failure and call back a second time.
   */
  function callStore (increment: boolean, key: string, callback: CounterCallback): void {
    let settled = false
    const once: CounterCallback = (err, result) => {
      if (settled) return
      settled = true
      callback(err, result)
    }
    try {
      if (increment) store.incr(key, once, windowMs, max)
      else store.read(key, once, windowMs, max)
    } catch (err) {
      if (settled) throw err // Fastify answers a hook's throw as an error
      once(err as Error)
    }
  }

  function run (request: FastifyRequest, reply: FastifyReply, increment: boolean, done: (err?: Error) => void): void {
    const key = keyOf(request)
    if (local === null) {
      callStore(increment, key, (err, result) => { settle(request, reply, increment, err ?? null, result, done) })
      return
    }
    let result: CounterResult
    try {
      result = increment ? local.count(key, windowMs, max) : local.peek(key)
    } catch (err) {
      settle(request, reply, increment, err as Error, undefined, done)
      return
    }
    // Outside the try: a throw from what settle runs (Fastify's `done`) is not a store failure.
    settle(request, reply, increment, null, result, done)
  }

  return {
    count: function rateLimitCount (request, reply, done) { run(request, reply, true, done) },
    peek: function rateLimitPeek (request, reply, done) { run(request, reply, false, done) },
    countIp (request, done) {
      callStore(true, ns + ipKeys.of(request.ip), (err) => {
        if (err != null) backend.failed(err, request.log)
        done()
      })
    }
  }
}

/** Stage 3: limits by IP or header count every request here, before authentication. */
async function rateLimitEdgePlugin (scope: FastifyInstance, opts: RouteLimitOptions): Promise<void> {
  const limiter = routeLimiter(scope, opts)
  if (parseLimitBy(opts.limit.by).kind !== 'consumer') {
    scope.addHook('onRequest', limiter.count)
    return
  }
  // by: consumer — an IP whose bucket (failed logins, anonymous calls) is spent is refused
  // before its credentials are checked; a failed authentication is counted against it.
  scope.addHook('onRequest', limiter.peek)
  // Callback style: the hook runs on every response and almost never counts, so no promise for those.
  scope.addHook('onResponse', function countFailedLogin (request, reply, done) {
    if (reply.statusCode === 401 && (request as MaybeIdentity).identity == null) limiter.countIp(request, done)
    else done()
  })
}

/** Stage 5: `by: consumer` counts here, once authentication has set `request.identity`. */
async function rateLimitConsumerPlugin (scope: FastifyInstance, opts: RouteLimitOptions): Promise<void> {
  if (parseLimitBy(opts.limit.by).kind !== 'consumer') return
  scope.addHook('onRequest', routeLimiter(scope, opts).count)
}

export const rateLimitEdge = fp(rateLimitEdgePlugin, { name: 'portcullis-rate-limit-edge', fastify: '5.x', dependencies: ['portcullis-rate-limit'] })
export const rateLimitConsumer = fp(rateLimitConsumerPlugin, { name: 'portcullis-rate-limit-consumer', fastify: '5.x', dependencies: ['portcullis-rate-limit'] })

// --- scale-out warning -------------------------------------------------------------------------

interface ScaleView {
  rateLimit: { store: string }
  routes: ReadonlyArray<{ name: string, rateLimit?: { max: number } }>
}

/**
 * For `portcullis start --workers N` (and anything else that runs several processes): the warning
 * to log when limits would be counted per process, or null. With N processes on the memory store
 * a client gets up to N × max per window.
 */
export function rateLimitScaleWarning (config: ScaleView, processes: number): string | null {
  if (config.rateLimit.store !== 'memory' || processes <= 1) return null
  const limited = config.routes.filter((r) => r.rateLimit !== undefined).map((r) => r.name)
  if (limited.length === 0) return null
  return `rateLimit.store is memory: each of the ${processes} processes counts on its own, so a client may get up to ${processes} × max per window on ${limited.join(', ')}; set rateLimit.store: redis to share the counters`
}

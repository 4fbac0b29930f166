/**
 * The shared Redis counter store of the rate limiter, on ioredis, in three topologies: one server
 * (a URL), Redis Sentinel (`new Redis({ sentinels, name })`: ioredis asks the Sentinels where the
 * primary is and follows a failover) and Redis Cluster (`new Cluster(nodes)`: commands go to the
 * node that owns their key's slot). The store behaves the same in each: every call settles
 * within the store timeout, a failure is handed to `onStoreError`, /readyz reports it.
 *
 * Keys are `<keyPrefix>{<route>|<client>}`: the braces are a Redis Cluster hash tag, so only the
 * part that names the limit and the client picks the slot. Each script below touches one key,
 * so today the tag changes nothing but where a key lives; it keeps a future script that touches
 * several keys of one limit and client (a sliding window's two buckets) on one slot. A client
 * part holding a `}` (a consumer subject may) ends the tag early: still one slot per key.
 */
import { readFileSync } from 'node:fs'
import type { ConnectionOptions } from 'node:tls'
import type { FastifyBaseLogger } from 'fastify'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import type { RedisTopology } from '../../schemas/edge.js'
import type { CounterCallback } from './memory-store.js'

/**
 * INCRBY (1 a request, k for a lease's block: lease-store.ts), and start the window on the first
 * hit (or if the key somehow lost its expiry).
 */
const INCR_LUA = `
local current = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {current, ttl}`

/** The same numbers without counting. */
const READ_LUA = `
local current = redis.call('GET', KEYS[1])
if not current then return {0, 0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = 0 end
return {tonumber(current), ttl}`

type ScriptCallback = (err: Error | null | undefined, result?: [number, number]) => void

/** The two scripts, defined on a server/Sentinel client or on a Cluster (which routes them by key). */
interface CounterCommands {
  portcullisIncr: (key: string, windowMs: number, by: number, cb: ScriptCallback) => void
  portcullisRead: (key: string, cb: ScriptCallback) => void
}

type CounterClient = (Redis | Cluster) & CounterCommands

/** What `rateLimit.redis` says: a URL, or one of the topologies of schemas/edge.ts. */
export type RedisTarget = string | RedisTopology

export type RedisMode = 'server' | 'sentinel' | 'cluster'

function endpoint (hostPort: string): { host: string, port: number } {
  const colon = hostPort.lastIndexOf(':')
  return { host: hostPort.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: Number(hostPort.slice(colon + 1)) }
}

/** Reconnect backoff of every connection: 100 ms more a try, at most 1 s between tries. */
const backoff = (times: number): number => Math.min(times * 100, 1000)

/**
 * The ioredis client for a target. A dead store must not stall requests:
 *  - commands are not queued while disconnected (`enableOfflineQueue: false`: they fail at
 *    once), not retried (`maxRetriesPerRequest: 0`) and not replayed after a reconnect
 *    (`autoResendUnfulfilledCommands: false`); each has `commandTimeout`;
 *  - ioredis reconnects by itself (`retryStrategy`, `sentinelRetryStrategy`,
 *    `clusterRetryStrategy`: 100 ms more a try, at most 1 s), so limiting resumes without a restart;
 *  - Sentinel: a failover is followed when the connection to the old primary closes (it died, or
 *    Sentinel's reconfiguration closed its clients, as the Sentinel client guidelines say it does):
 *    ioredis asks the Sentinels again. `failoverDetector` (+switch-master subscriptions) stays off:
 *    its Sentinel connections have no error listener, so a dead Sentinel prints "[ioredis]
 *    Unhandled error event" on stderr every reconnect (redis/ioredis#1600, seen with 5.11.1). The
 *    Sentinels' own commands have the connect timeout;
 *  - Cluster: `retryDelayOnFailover` / `retryDelayOnClusterDown` / `maxRedirections` (ioredis'
 *    100 ms / 100 ms / 16) let a command follow MOVED and a node's failover, which can take
 *    longer than the store timeout: the store's own deadline (RedisCounterStore.deadline) bounds
 *    it. A node's connection reconnects with the same backoff, and the slot map is re-read every
 *    5 s (below).
 */
export function redisClient (target: RedisTarget, timeoutMs: number): { client: Redis | Cluster, mode: RedisMode } {
  const connectTimeout = Math.max(1000, timeoutMs * 4)
  const common: RedisOptions = {
    enableOfflineQueue: false,
    commandTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout,
    lazyConnect: false
  }
  if (typeof target === 'string') return { client: new Redis(target, { ...common, retryStrategy: backoff }), mode: 'server' }
  const tls = tlsOptions(target)
  const auth = { username: target.username, password: target.password }
  if (target.url !== undefined) {
    return { client: new Redis(target.url, { ...common, ...auth, ...(tls === undefined ? {} : { tls }), retryStrategy: backoff }), mode: 'server' }
  }
  if (target.sentinels !== undefined) {
    return {
      client: new Redis({
        ...common,
        ...auth,
        retryStrategy: backoff,
        sentinels: target.sentinels.map(endpoint),
        name: target.name,
        role: 'master',
        db: target.db,
        sentinelUsername: target.sentinelUsername,
        sentinelPassword: target.sentinelPassword,
        sentinelCommandTimeout: connectTimeout,
        sentinelRetryStrategy: backoff,
        failoverDetector: false,
        ...(tls === undefined ? {} : { tls, sentinelTLS: tls, enableTLSForSentinelMode: true })
      }),
      mode: 'sentinel'
    }
  }
  const options: ClusterOptions = {
    enableOfflineQueue: false,
    enableReadyCheck: true,
    scaleReads: 'master',
    clusterRetryStrategy: backoff,
    // A node that comes back (restarted with its nodes.conf, its slots unchanged) is reconnected
    // to: ioredis' default (null) drops its connection for good and waits for a MOVED that a
    // node owning the slots never sends, so /readyz stayed 503 (seen in test/redis-topologies).
    clusterNodeRetryStrategy: backoff,
    // The slot map is re-read every 5 s (ioredis documents 5000 as the default, but 5.11.1 does
    // not set it: without it the map changes only on MOVED and failures).
    slotsRefreshInterval: 5000,
    slotsRefreshTimeout: connectTimeout,
    redisOptions: {
      ...auth,
      commandTimeout: timeoutMs,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectTimeout,
      ...(tls === undefined ? {} : { tls })
    }
  }
  return { client: new Cluster((target.cluster ?? []).map(endpoint), options), mode: 'cluster' }
}

function tlsOptions (target: RedisTopology): ConnectionOptions | undefined {
  const tls = target.tls
  if (tls === undefined) return undefined
  let ca: Buffer | undefined
  if (tls.ca !== undefined) {
    try {
      ca = readFileSync(tls.ca)
    } catch (err) {
      throw new Error(`rateLimit.redis.tls.ca: cannot read ${tls.ca}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  return { rejectUnauthorized: !tls.insecureSkipVerify, ...(ca === undefined ? {} : { ca }), ...(tls.servername === undefined ? {} : { servername: tls.servername }) }
}

/**
 * The ioredis client of a target with the counter scripts defined (a Cluster client holds one
 * connection per node). One per process and connection settings: the rate-limit plugin leases it
 * from the shared objects under a key naming the target and the timeout, so a live reload that
 * keeps `rateLimit.redis` and `rateLimit.timeout` keeps the client and its connections; `close()`
 * runs when the last generation using it has closed.
 */
export class RedisConnection {
  readonly client: CounterClient
  readonly mode: RedisMode
  /** `rateLimit.redis.name` with Sentinel (for the words of a Sentinel problem). */
  readonly name: string
  /** Set when close() starts: what the client says after that is no news. */
  closing = false
  /** The client's last error since it was last ready (for `RedisCounterStore.connected`). */
  lastError: Error | null = null

  constructor (target: RedisTarget, timeoutMs: number) {
    const { client, mode } = redisClient(target, timeoutMs)
    this.client = client as CounterClient
    this.mode = mode
    this.name = typeof target === 'string' ? '' : target.name ?? ''
    this.client.defineCommand('portcullisIncr', { numberOfKeys: 1, lua: INCR_LUA })
    this.client.defineCommand('portcullisRead', { numberOfKeys: 1, lua: READ_LUA })
    // An 'error' event without a listener would crash the process (between two generations' stores too).
    const remember = (err: Error): void => { this.lastError = err }
    this.client.on('error', remember)
    if (mode === 'cluster') this.client.on('node error', remember)
    this.client.on('ready', () => { this.lastError = null })
  }

  async close (): Promise<void> {
    this.closing = true
    try {
      if (this.client.status === 'ready') await this.client.quit()
      else this.client.disconnect()
    } catch {
      this.client.disconnect()
    }
  }
}

/**
 * One gateway generation's view of a RedisConnection: its health as this generation's log and
 * /readyz say it, and the counter calls. See `redisClient` for how a dead or failing-over store is
 * kept from stalling requests. `close()` takes its listeners off the client, which it leaves open
 * for the generation after it (the lease closes it).
 */
export class RedisCounterStore implements CounterStore {
  readonly client: CounterClient
  readonly mode: RedisMode
  /** False after a failure, true again after a success or a reconnect. */
  healthy = true
  private closing = false
  /** The last thing the Sentinels said that was not an address (wrong name, refused, down). */
  private sentinelProblem: string | null = null
  private recheckAt = 0
  private readonly listeners: Array<[string, (...args: any[]) => void]>

  constructor (private readonly connection: RedisConnection, private readonly prefix: string, private readonly timeoutMs: number, private readonly log: FastifyBaseLogger, private readonly onStoreError: string) {
    this.client = connection.client
    this.mode = connection.mode
    const name = connection.name
    this.listeners = [
      ['error', (err: Error) => { this.down(err) }],
      ['close', () => { this.down(new Error('connection closed')) }],
      ['ready', () => { this.up() }]
    ]
    if (this.mode === 'sentinel') {
      this.listeners.push(['sentinelError', (err: Error) => {
        // Redis 7's Sentinel answers an unknown name with an error, older ones with null.
        this.sentinelProblem = /No such master with that name|invalid reply: null$/.test(err.message)
          ? `no Sentinel knows a primary named ${JSON.stringify(name)} (rateLimit.redis.name)`
          : err.message
      }])
    }
    if (this.mode === 'cluster') {
      // One node's failure: its slots' calls fail (onStoreError), the others' keep counting.
      this.listeners.push(['node error', (err: Error, node: string) => { this.down(new Error(`node ${node}: ${err.message}`)) }])
    }
    for (const [event, listener] of this.listeners) this.client.on(event, listener)
  }

  down (err: unknown): void {
    if (!this.healthy || this.closing || this.connection.closing) return
    this.healthy = false
    const detail = this.sentinelProblem === null ? {} : { sentinels: this.sentinelProblem }
    this.log.warn({ err: (err as Error).message, ...detail, topology: this.mode, onStoreError: this.onStoreError },
      this.onStoreError === 'allow'
        ? 'rate-limit store unreachable: requests pass without limits until it is back'
        : 'rate-limit store unreachable: limited routes answer 503 until it is back')
  }

  up (): void {
    if (this.healthy) return
    this.healthy = true
    this.sentinelProblem = null
    this.log.info({ topology: this.mode }, 'rate-limit store reachable again: limiting resumed')
  }

  /** The @fastify/rate-limit store contract (`CounterStore`): incr and read. */
  incr (key: string, cb: CounterCallback, timeWindow: number): void {
    this.incrBy(key, 1, cb, timeWindow)
  }

  /** Counts `by` at once (a lease's block): the result is the count after it. */
  incrBy (key: string, by: number, cb: CounterCallback, timeWindow: number): void {
    const settle = this.deadline(cb)
    this.client.portcullisIncr(this.prefix + '{' + key + '}', timeWindow, by, settle)
  }

  read (key: string, cb: CounterCallback): void {
    const settle = this.deadline(cb)
    this.client.portcullisRead(this.prefix + '{' + key + '}', settle)
  }

  /**
   * The callback of one call, settled once: by the reply, or by a timeout error after the store
   * timeout, whichever comes first. ioredis' own `commandTimeout` starts when a command is written
   * to a connection; a Cluster command can wait before that (retryDelayOnFailover, ×16
   * redirections: 1.6 s), so the bound is kept here, for every topology alike.
   */
  private deadline (cb: CounterCallback): ScriptCallback {
    let settled = false
    const timer = setTimeout(() => {
      settled = true
      cb(new Error(`no answer within ${this.timeoutMs} ms`))
    }, this.timeoutMs)
    return (err, result) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      this.settle(err, result, cb)
    }
  }

  private settle (err: Error | null | undefined, result: [number, number] | undefined, cb: CounterCallback): void {
    if (err != null || result === undefined) {
      cb(err ?? new Error('no reply'))
      return
    }
    if (!this.healthy) this.recovered()
    cb(null, { current: Number(result[0]), ttl: Number(result[1]) })
  }

  /**
   * A call succeeded while the store was marked down. One server or a Sentinel primary is one
   * connection: it is back. A Cluster may answer for some slots and not others, so the whole
   * check runs (at most once a second) before the recovery is announced.
   */
  private recovered (): void {
    if (this.mode !== 'cluster') { this.up(); return }
    const now = Date.now()
    if (now < this.recheckAt) return
    this.recheckAt = now + 1000
    this.check().catch(() => {})
  }

  /**
   * For /readyz. One server or Sentinel: a PING within the command timeout. Cluster: every
   * primary that owns slots answers a PING, and every slot has a primary.
   */
  async check (): Promise<string | null> {
    try {
      if (this.client instanceof Cluster) await this.checkCluster(this.client)
      else await this.client.ping()
      this.up()
      return null
    } catch (err) {
      this.down(err)
      return `unreachable (onStoreError: ${this.onStoreError})`
    }
  }

  private async checkCluster (cluster: Cluster): Promise<void> {
    if (cluster.status !== 'ready') throw new Error(`cluster ${cluster.status}`)
    const owners = new Set<string>()
    let covered = 0
    for (const nodes of cluster.slots) {
      if (nodes?.[0] === undefined) continue
      covered++
      owners.add(nodes[0])
    }
    if (covered < 16384) throw new Error(`${16384 - covered} of 16384 slots have no node`)
    const connected = new Map(cluster.nodes('master').map((node) => [`${node.options.host ?? ''}:${node.options.port ?? ''}`, node]))
    const missing = [...owners].filter((key) => !connected.has(key))
    if (missing.length > 0) throw new Error(`no connection to ${missing.join(', ')}`)
    await Promise.all([...owners].map(async (key) => await connected.get(key)?.ping()))
  }

  /** This generation stops listening; the client stays open for the next (RedisConnection.close ends it). */
  close (): void {
    this.closing = true
    for (const [event, listener] of this.listeners) this.client.off(event, listener)
  }

  /**
   * Wait (bounded) for the connection to be ready, so that a normal start serves with Redis ready.
   * Errors that waiting can heal do not end the wait: ioredis keeps retrying, and a Redis that
   * comes up a moment after a refused connection (or answers LOADING) is still in time. An error
   * that cannot heal (`lasting`: a wrong password, a certificate not trusted) ends it at once: the
   * returned promise rejects with an Error naming it, and the start fails with that message.
   */
  async connected (withinMs: number): Promise<boolean> {
    if (this.client.status === 'ready') return true
    const seen = this.connection.lastError === null ? null : lasting(this.connection.lastError)
    if (seen !== null) throw seen
    const client = this.client
    const events = this.mode === 'cluster' ? ['error', 'node error'] : ['error']
    return await new Promise<boolean>((resolve, reject) => {
      const done = (ready: boolean | Error): void => {
        clearTimeout(timer)
        client.off('ready', onReady)
        for (const event of events) client.off(event, onError)
        if (ready instanceof Error) reject(ready)
        else resolve(ready)
      }
      const onReady = (): void => { done(true) }
      const onError = (err: Error): void => {
        const cause = lasting(err)
        if (cause !== null) done(cause)
      }
      const timer = setTimeout(done, withinMs, false)
      client.on('ready', onReady)
      for (const event of events) client.on(event, onError)
    })
  }
}

/**
 * What no retry fixes: Redis refused the credentials (WRONGPASS, NOAUTH, "invalid password",
 * "ERR AUTH"), or TLS did not trust its certificate (Node's messages all say "certificate": "unable
 * to verify the first certificate", "self-signed certificate", "… does not match certificate's
 * altnames"). Also when it is the last error a Sentinel or Cluster client reports (`Last error:`,
 * `lastNodeError`). Refused, timed out or LOADING: null (Redis may be starting).
 */
function lasting (err: Error): Error | null {
  const texts = [err.message, (err as NodeJS.ErrnoException).code, (err as { lastNodeError?: Error }).lastNodeError?.message].filter((t): t is string => typeof t === 'string' && t !== '')
  if (!/\b(?:WRONGPASS|NOAUTH)\b|invalid (?:username-)?password|\bERR AUTH\b|certificate/i.test(texts.join(' '))) return null
  return new Error(`rateLimit.redis: ${texts.join(': ')} (waiting for Redis does not mend this)`)
}

/**
 * The counter store contract of @fastify/rate-limit (our MemoryCounterStore and RedisCounterStore):
 * the callback may run synchronously (memory) or later (Redis).
 */
export interface CounterStore {
  incr: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
  read: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
}

/**
 * The shared Redis counter store of the rate limiter (moved out of ./rate-limit.ts unchanged).
 */
import { once } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import { Redis } from 'ioredis'
import type { CounterCallback } from './memory-store.js'

/** INCR, and start the window on the first hit (or if the key somehow lost its expiry). */
const INCR_LUA = `
local current = redis.call('INCR', KEYS[1])
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

interface CounterClient extends Redis {
  portcullisIncr: (key: string, windowMs: number, cb: (err: Error | null | undefined, result?: [number, number]) => void) => void
  portcullisRead: (key: string, cb: (err: Error | null | undefined, result?: [number, number]) => void) => void
}

/**
 * One ioredis connection per gateway. A dead Redis must not stall requests: commands are not
 * queued while disconnected (they fail at once), every command has `commandTimeout`, and commands
 * cut off by a disconnect are not replayed later. ioredis reconnects by itself (backing off up to
 * 1 s), so limiting resumes when Redis is back, without a restart.
 */
export class RedisCounterStore implements CounterStore {
  readonly client: CounterClient
  /** False after a failure, true again after a success or a reconnect. */
  healthy = true
  private closing = false

  constructor (url: string, private readonly prefix: string, timeoutMs: number, private readonly log: FastifyBaseLogger, private readonly onStoreError: string) {
    this.client = new Redis(url, {
      enableOfflineQueue: false,
      commandTimeout: timeoutMs,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectTimeout: Math.max(1000, timeoutMs * 4),
      retryStrategy: (times) => Math.min(times * 100, 1000),
      lazyConnect: false
    }) as CounterClient
    this.client.defineCommand('portcullisIncr', { numberOfKeys: 1, lua: INCR_LUA })
    this.client.defineCommand('portcullisRead', { numberOfKeys: 1, lua: READ_LUA })
    // An 'error' event without a listener would crash the process.
    this.client.on('error', (err: Error) => { this.down(err) })
    this.client.on('close', () => { this.down(new Error('connection closed')) })
    this.client.on('ready', () => { this.up() })
  }

  down (err: unknown): void {
    if (!this.healthy || this.closing) return
    this.healthy = false
    this.log.warn({ err: (err as Error).message, onStoreError: this.onStoreError },
      this.onStoreError === 'allow'
        ? 'rate-limit store unreachable: requests pass without limits until it is back'
        : 'rate-limit store unreachable: limited routes answer 503 until it is back')
  }

  up (): void {
    if (this.healthy) return
    this.healthy = true
    this.log.info('rate-limit store reachable again: limiting resumed')
  }

  /** The @fastify/rate-limit store contract (`CounterStore`): incr and read. */
  incr (key: string, cb: CounterCallback, timeWindow: number): void {
    this.client.portcullisIncr(this.prefix + key, timeWindow, (err, result) => { this.settle(err, result, cb) })
  }

  read (key: string, cb: CounterCallback): void {
    this.client.portcullisRead(this.prefix + key, (err, result) => { this.settle(err, result, cb) })
  }

  private settle (err: Error | null | undefined, result: [number, number] | undefined, cb: CounterCallback): void {
    if (err != null || result === undefined) {
      cb(err ?? new Error('no reply'))
      return
    }
    if (!this.healthy) this.up()
    cb(null, { current: Number(result[0]), ttl: Number(result[1]) })
  }

  /** For /readyz: a PING within the command timeout. */
  async check (): Promise<string | null> {
    try {
      await this.client.ping()
      this.up()
      return null
    } catch (err) {
      this.down(err)
      return `unreachable (onStoreError: ${this.onStoreError})`
    }
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

  /** Wait (bounded) for the first connection, so that a normal start serves with Redis ready. */
  async connected (withinMs: number): Promise<boolean> {
    if (this.client.status === 'ready') return true
    const ac = new AbortController()
    const timer = setTimeout(() => { ac.abort() }, withinMs)
    try {
      await once(this.client, 'ready', { signal: ac.signal })
      return true
    } catch {
      return false
    } finally {
      clearTimeout(timer)
    }
  }
}

/**
 * The counter store contract of @fastify/rate-limit (our MemoryCounterStore and RedisCounterStore):
 * the callback may run synchronously (memory) or later (Redis).
 */
export interface CounterStore {
  incr: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
  read: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
}

/**
 * Local leases on the Redis counters (`rateLimit.leaseMax` > 1): most requests are answered in
 * this process, without a round trip, and the counts stay shared by every instance.
 *
 * Counting. An instance reserves a block of k counts of a key with one INCRBY (the store's
 * increment script) and admits from it locally: the block is the positions c − k + 1 … c of the
 * count c that Redis returned, each request takes the next one and is admitted when it is ≤ max,
 * exactly as if it had been counted in Redis. k starts at 1 in each window and doubles with each
 * renewal in it, up to min(leaseMax, ⌊max / 100⌋) (at least 1), and never beyond what Redis last
 * said was left (max − c). Positions are unique across instances (INCRBY is atomic), so no
 * instance ever admits more than max between them: the count in Redis is always ≥ the requests
 * admitted. What a lease can cost is under-admission: counts an instance reserved and did not use
 * before the window ended. Once any instance refuses (its next position is past max), its own
 * reservations are used up, and each other instance holds at most cap − 1 unused counts (a block
 * is reserved for a request that takes its first count), so the admitted requests of a key in a
 * window are ≥ min(requests, max − (instances − 1) × (cap − 1)). A lease dropped early (the table
 * full, a live reload) loses its unused counts too: at most cap − 1 each.
 *
 * Windows. A lease ends at the renewal's send time + the ttl Redis returned, never after the key
 * expires in Redis, so a count of a window is never used in the next one.
 *
 * Refusals are Redis' answers, as without leases: past max a request reserves 1 (k never exceeds
 * max − the count last seen) and is refused by the count Redis returns. So a count Redis lost (a
 * Cluster node restarted empty, a failover's unreplicated writes) is lost here too, and a store
 * that cannot answer gets `onStoreError`, not a remembered refusal.
 *
 * Peeks (`read`, the IP bucket of a `by: consumer` route before authentication): answered locally
 * when a held lease has an unused count ≤ max (not spent, exactly); otherwise a Redis answer of
 * the last READ_REUSE_MS that showed at most max / 2 is reused. That reuse is the one inexact
 * answer: for up to READ_REUSE_MS after other instances take a bucket from ≤ max / 2 to max, this
 * instance still lets its client through to authentication (where a failed login is counted,
 * exactly, and that count's answer replaces the reused one). Every request that reaches an
 * upstream is still counted, through a lease.
 *
 * The table is bounded (`maxKeys` keys per route, second-chance eviction): a client spreading over
 * many keys costs at most maxKeys entries, and each key a reservation of 1 until it is used.
 */
import type { CounterCallback, CounterResult } from './memory-store.js'
import type { CounterStore } from './redis-store.js'

/** The Redis store's calls a lease needs. */
export interface LeaseBackend {
  incrBy: (key: string, by: number, cb: CounterCallback, timeWindow: number) => void
  read: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void
}

/** How long a peek's Redis answer (the bucket at most half spent) is reused. */
export const READ_REUSE_MS = 1000

/** The share of max one reservation may take: ⌊max / 100⌋ (1 % per other instance at worst). */
const MAX_SHARE = 100

/** One key: the counts this instance holds, and what Redis last said about it. */
interface Lease {
  /** When this window ends as far as this instance may assume (ms since the epoch; 0: unknown). */
  end: number
  /** The unused reserved positions: next … last (none when next > last). */
  next: number
  last: number
  /** The highest count Redis returned in this window. */
  known: number
  /** The size of the last reservation in this window (0: none yet). */
  size: number
  /** When (send time) Redis last answered for this key. */
  seenAt: number
  /** Requests waiting for a reservation in flight (null: none in flight). */
  waiters: CounterCallback[] | null
  /** Used since the eviction hand last passed (second chance). */
  used: boolean
}

export interface LeaseStoreOptions {
  /** The most counts one reservation takes (rateLimit.leaseMax). */
  leaseMax: number
  /** Keys remembered (rateLimit.maxKeys). */
  maxKeys: number
}

export class LeaseStore implements CounterStore {
  private readonly leases = new Map<string, Lease>()
  /** Handed to the callbacks; read synchronously (the CounterStore contract). */
  private readonly result: CounterResult = { current: 0, ttl: 0 }
  private readonly leaseMax: number
  private readonly maxKeys: number

  constructor (private readonly backend: LeaseBackend, options: LeaseStoreOptions) {
    this.leaseMax = options.leaseMax
    this.maxKeys = options.maxKeys
  }

  get size (): number {
    return this.leases.size
  }

  incr (key: string, cb: CounterCallback, timeWindow: number, max: number): void {
    const now = Date.now()
    let lease = this.leases.get(key)
    if (lease === undefined) lease = this.add(key)
    else lease.used = true
    if (lease.waiters !== null) { lease.waiters.push(cb); return }
    if (lease.end > now) {
      if (lease.next <= lease.last) { this.answer(cb, lease.next++, lease.end - now); return }
    } else {
      this.restart(lease)
    }
    lease.waiters = [cb]
    this.reserve(key, lease, timeWindow, max)
  }

  read (key: string, cb: CounterCallback, timeWindow: number, max: number): void {
    const now = Date.now()
    let lease = this.leases.get(key)
    if (lease !== undefined) {
      lease.used = true
      if (lease.end > now) {
        // An unused count ≤ max held here: a request counted now would pass.
        if (lease.next <= lease.last && lease.next <= max) { this.answer(cb, lease.next - 1, lease.end - now); return }
      }
      if (now - lease.seenAt < READ_REUSE_MS && lease.known * 2 <= max) {
        this.answer(cb, lease.known, Math.max(0, lease.end - now))
        return
      }
    } else {
      lease = this.add(key)
    }
    const entry = lease
    const sentAt = now
    this.backend.read(key, (err, result) => {
      if (err === null && result !== undefined) {
        if (result.current === 0) {
          // No key in Redis: no window, and nothing held here can be valid.
          this.restart(entry)
        } else if (entry.waiters === null) {
          if (entry.end <= sentAt) this.restart(entry)
          entry.end = sentAt + result.ttl
          entry.known = Math.max(entry.known, result.current)
        }
        entry.seenAt = sentAt
      }
      cb(err, result)
    }, timeWindow, max)
  }

  /** Forgets what a key held in a window that has ended. */
  private restart (lease: Lease): void {
    lease.end = 0
    lease.next = 1
    lease.last = 0
    lease.known = 0
    lease.size = 0
  }

  /** The size of the next reservation of a key: doubling in a window, within the cap and what is left. */
  private blockSize (lease: Lease, max: number, waiting: number): number {
    const cap = Math.max(1, Math.min(this.leaseMax, Math.floor(max / MAX_SHARE)))
    const grown = Math.max(lease.size === 0 ? 1 : lease.size * 2, waiting)
    return Math.max(1, Math.min(grown, cap, max - lease.known))
  }

  /** Reserves a block for the key's waiters with one INCRBY, and hands it out when Redis answers. */
  private reserve (key: string, lease: Lease, timeWindow: number, max: number): void {
    const k = this.blockSize(lease, max, (lease.waiters as CounterCallback[]).length)
    const sentAt = Date.now()
    this.backend.incrBy(key, k, (err, result) => {
      const waiters = lease.waiters as CounterCallback[]
      lease.waiters = null
      if (err !== null || result === undefined) {
        settleAll(waiters, (cb) => { cb(err ?? new Error('no reply')) })
        return
      }
      const count = result.current
      lease.end = sentAt + result.ttl
      lease.known = count
      lease.size = k
      lease.seenAt = sentAt
      lease.next = count - k + 1
      lease.last = count
      const ttl = Math.max(0, lease.end - Date.now())
      // Past max every waiter is answered (refused beyond the block); below, the block's size.
      const served = count >= max ? waiters.length : Math.min(waiters.length, k)
      const rest = waiters.slice(served)
      // The rest (more waited than the block held) wait for the next block.
      if (rest.length > 0) {
        lease.waiters = rest
        this.reserve(key, lease, timeWindow, max)
      }
      settleAll(waiters.slice(0, served), (cb) => {
        if (lease.next <= lease.last) this.answer(cb, lease.next++, ttl)
        else this.answer(cb, lease.known + 1, ttl)
      })
    }, timeWindow)
  }

  private answer (cb: CounterCallback, current: number, ttl: number): void {
    const result = this.result
    result.current = current
    result.ttl = ttl
    cb(null, result)
  }

  /** A new key's entry; at capacity one is evicted first (second chance: a used one goes round again). */
  private add (key: string): Lease {
    const leases = this.leases
    if (leases.size >= this.maxKeys) {
      // Each pass over a used entry clears its mark, so this ends within size + 1 steps.
      for (const [name, lease] of leases) {
        leases.delete(name)
        if (!lease.used) break
        lease.used = false
        leases.set(name, lease)
      }
    }
    const lease: Lease = { end: 0, next: 1, last: 0, known: 0, size: 0, seenAt: -Infinity, waiters: null, used: false }
    leases.set(key, lease)
    return lease
  }
}

/** Calls back every waiter, even when one callback throws (the first throw is rethrown after). */
function settleAll (waiters: CounterCallback[], each: (cb: CounterCallback) => void): void {
  let failure: unknown = null
  for (const cb of waiters) {
    try {
      each(cb)
    } catch (err) {
      failure ??= err
    }
  }
  if (failure !== null) throw failure
}

/**
 * What a gateway keeps across a live reload (src/reload.ts): objects one generation of the gateway
 * hands to the next — connection pools, rate-limit counters, the metrics registry — keyed by
 * everything that shapes them, so an unchanged upstream keeps its pool and an unchanged limit
 * keeps its counters, and a changed one gets a fresh object.
 *
 * Each gateway takes a `Lease` on the process's `SharedObjects`; it `acquire`s what it uses and,
 * when it closes, releases everything at once. An object is disposed of (a pool closed, a Redis
 * client quit) when its last lease lets go, so closing an old generation never closes what the
 * new one still uses. A gateway built without one (tests, embedding) gets a registry of its own:
 * the same path, disposed of when it closes.
 */

interface Entry {
  value: unknown
  refs: number
  dispose: ((value: any) => void | Promise<void>) | undefined
}

/** Objects kept by key, each counted by the leases that use it. */
export class SharedObjects {
  private readonly entries = new Map<string, Entry>()

  /** A new user of the registry (one gateway generation). */
  lease (): Lease { return new Lease(this) }

  /** How many objects are kept (for tests and the reload log). */
  get size (): number { return this.entries.size }

  /** @internal (Lease) */
  get (key: string): unknown { return this.entries.get(key)?.value }

  /** @internal (Lease) */
  take<T> (key: string, make: () => T, dispose?: (value: T) => void | Promise<void>): T {
    let entry = this.entries.get(key)
    if (entry === undefined) {
      entry = { value: make(), refs: 0, dispose }
      this.entries.set(key, entry)
    }
    entry.refs++
    return entry.value as T
  }

  /** @internal (Lease) */
  async give (key: string): Promise<void> {
    const entry = this.entries.get(key)
    if (entry === undefined || --entry.refs > 0) return
    this.entries.delete(key)
    if (entry.dispose !== undefined) await entry.dispose(entry.value)
  }
}

/** One gateway's hold on shared objects: each key counted once, all released by `release()`. */
export class Lease {
  private readonly held = new Set<string>()
  private released = false
  constructor (private readonly registry: SharedObjects) {}

  /**
   * The object kept under `key`, made (and later disposed of by `dispose`) by the first lease
   * that asks. The key must name everything that shapes the object.
   */
  acquire<T> (key: string, make: () => T, dispose?: (value: T) => void | Promise<void>): T {
    if (this.released) throw new Error('this gateway has released its shared objects')
    if (this.held.has(key)) return this.registry.get(key) as T
    const value = this.registry.take(key, make, dispose)
    this.held.add(key)
    return value
  }

  /** Lets go of everything this lease holds; what nobody else holds is disposed of. */
  async release (): Promise<void> {
    if (this.released) return
    this.released = true
    const keys = [...this.held]
    this.held.clear()
    await Promise.all(keys.map(async (key) => { await this.registry.give(key) }))
  }
}

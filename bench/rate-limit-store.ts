/**
 * The memory rate-limit store (plugins/rate-limit/memory-store.ts) against @fastify/rate-limit's
 * LocalStore, on the same `incr` calls: 10 000 client keys in turn, into a store of 5 000 keys
 * (every call a new key and an eviction: an address flood) and of 50 000 keys (every call a known
 * key). Bounded loops; the last of 5 rounds is printed.
 *
 *   npx tsx bench/rate-limit-store.ts
 */
import { createRequire } from 'node:module'
import { MemoryCounterStore, type CounterCallback } from '../plugins/rate-limit/memory-store.js'

interface Store { incr: (key: string, cb: CounterCallback, timeWindow: number, max: number) => void }
// LocalStore is not public API (no exports map): loaded here and in the test only.
const LocalStore = createRequire(import.meta.url)('@fastify/rate-limit/store/LocalStore.js') as
  new (continueExceeding: boolean, exponentialBackoff: boolean, cache: number) => Store

const keys = Array.from({ length: 10_000 }, (_, i) => `people|ip:10.0.${i >> 8}.${i & 255}`)
const cb: CounterCallback = (err, r) => { if (r === undefined) throw err }
const RUNS = 2_000_000

function time (label: string, make: () => Store): void {
  let ns = 0
  for (let round = 0; round < 5; round++) {
    const store = make()
    const start = process.hrtime.bigint()
    for (let i = 0; i < RUNS; i++) store.incr(keys[i % keys.length], cb, 60_000, 100)
    ns = Number(process.hrtime.bigint() - start) / RUNS
  }
  console.log(`${label.padEnd(40)} ${ns.toFixed(0)} ns per incr`)
}

for (const cache of [5_000, 50_000]) {
  time(`memory-store, ${cache} keys`, () => new MemoryCounterStore({ maxKeys: cache }))
  time(`LocalStore, ${cache} keys`, () => new LocalStore(false, false, cache))
}

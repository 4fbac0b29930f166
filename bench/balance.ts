/**
 * ns per pick of each balancer with 2, 8 and 32 targets (weights 1, 2, 3, 1, 2, 3, …, and all
 * equal for the hash's second figure), all available, keys of 8 to 12 characters (IPv4
 * addresses): `node --import @swc-node/register/esm-register bench/balance.ts`. Each figure is the
 * median of 5 runs of 1,000,000 picks; the last line counts the garbage collections during all
 * the measured runs (0: a pick allocates nothing). The figures and what they decided are in
 * plugins/upstream/balance.ts.
 *
 * Then the consistent-hash alternative the module did not take, a ketama ring (160 points a
 * target, points ∝ weight, binary search, walking past points of unavailable targets), measured
 * the same way: its cost per pick, and how far its shares stray from the weights (exact arc
 * lengths of 32-bit space) next to rendezvous hashing's shares over 100,000 keys.
 */
import { PerformanceObserver } from 'node:perf_hooks'
import { createBalancer, hashString, type BalanceMode, type Balancer } from '../plugins/upstream/balance.js'

const PICKS = 1_000_000
const RUNS = 5
const KEYS = Array.from({ length: 1024 }, (_, i) => `10.${i >> 8}.${(i * 7) & 255}.${i & 255}`)

const collections: number[] = [] // start times of garbage collections
const observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) collections.push(e.startTime) })
observer.observe({ entryTypes: ['gc'] })
const measured: Array<[number, number]> = [] // the measured stretches, performance.now()

/** Median ns per pick of `balancer` over RUNS runs. */
function measure (balancer: Balancer, available: (i: number) => boolean): number {
  let sink = 0
  for (let i = 0; i < 200_000; i++) sink += balancer.pick(available, KEYS[i & 1023], -1) // warm-up
  const runs: number[] = []
  const from = performance.now()
  for (let r = 0; r < RUNS; r++) {
    const start = process.hrtime.bigint()
    for (let i = 0; i < PICKS; i++) sink += balancer.pick(available, KEYS[i & 1023], -1)
    runs.push(Number(process.hrtime.bigint() - start) / PICKS)
  }
  measured.push([from, performance.now()])
  if (sink < 0) console.log(sink)
  return runs.sort((a, b) => a - b)[RUNS >> 1]
}

/** Ketama: each target owns points on a 32-bit ring; a key goes to the first available point at or after its hash. */
class KetamaRing implements Balancer {
  readonly points: Uint32Array
  readonly owners: Uint8Array
  constructor (weights: readonly number[], perTarget = 160) {
    const total = weights.reduce((a, b) => a + b, 0)
    const entries: Array<[number, number]> = []
    weights.forEach((w, i) => {
      const count = Math.max(1, Math.round(perTarget * weights.length * w / total))
      for (let j = 0; j < count; j++) entries.push([hashString(`target-${i}-${j}`), i])
    })
    entries.sort((a, b) => a[0] - b[0])
    this.points = Uint32Array.from(entries, (e) => e[0])
    this.owners = Uint8Array.from(entries, (e) => e[1])
  }

  pick (available: (i: number) => boolean, key: string, exclude: number): number {
    const { points, owners } = this
    const h = hashString(key)
    let lo = 0
    let hi = points.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (points[mid] < h) lo = mid + 1
      else hi = mid
    }
    for (let step = 0; step < points.length; step++) {
      const owner = owners[(lo + step) % points.length]
      if (owner !== exclude && available(owner)) return owner
    }
    return -1
  }

  /** Each target's exact share of the ring. */
  shares (n: number): number[] {
    const share = new Array<number>(n).fill(0)
    const { points, owners } = this
    for (let j = 0; j < points.length; j++) {
      const from = j === 0 ? points[points.length - 1] - 2 ** 32 : points[j - 1]
      share[owners[j]] += (points[j] - from) / 2 ** 32
    }
    return share
  }
}

/** The largest |share - expected| / expected over the targets, in %. */
function worstError (shares: readonly number[], weights: readonly number[]): number {
  const total = weights.reduce((a, b) => a + b, 0)
  return Math.max(...shares.map((s, i) => Math.abs(s - weights[i] / total) / (weights[i] / total))) * 100
}

const all = (i: number): boolean => i >= 0
const modes: BalanceMode[] = ['round-robin', 'least-requests', 'hash']
for (const n of [2, 8, 32]) {
  const weights = Array.from({ length: n }, (_, i) => 1 + (i % 3))
  const inFlight = new Int32Array(n)
  const line = modes.map((mode) => `${mode} ${measure(createBalancer(mode, weights, (i) => inFlight[i], 42), all).toFixed(0)}`)
  line.push(`hash (equal weights) ${measure(createBalancer('hash', new Array<number>(n).fill(1), () => 0), all).toFixed(0)}`)
  line.push(`ketama ${measure(new KetamaRing(weights), all).toFixed(0)}`)
  line.push(`ketama, target 0 down ${measure(new KetamaRing(weights), (i) => i !== 0).toFixed(0)}`)
  console.log(`${n} targets, ns per pick: ${line.join(', ')}`)
}

for (const weights of [[1, 1, 1], [1, 2, 1], [1, 1, 1, 1, 1, 1, 1, 1]]) {
  const hrw = createBalancer('hash', weights, () => 0)
  const seen = new Array<number>(weights.length).fill(0)
  for (let i = 0; i < 100_000; i++) seen[hrw.pick(all, `user-${i}`, -1)]++
  const ketama = worstError(new KetamaRing(weights).shares(weights.length), weights)
  const ketama1000 = worstError(new KetamaRing(weights, 1000).shares(weights.length), weights)
  console.log(`weights ${weights.join(':')}, worst share error: rendezvous ${worstError(seen.map((s) => s / 100_000), weights).toFixed(1)} % (100,000 keys), ` +
    `ketama 160 points ${ketama.toFixed(1)} %, 1,000 points ${ketama1000.toFixed(1)} % (exact)`)
}

await new Promise((resolve) => setTimeout(resolve, 100)) // the observer's last entries
observer.disconnect()
const during = collections.filter((t) => measured.some(([from, to]) => t >= from && t <= to)).length
console.log(`garbage collections during ${(measured.length * RUNS * PICKS).toLocaleString('en')} measured picks: ${during}`)

/**
 * Which available target gets the next request. Targets are indexes 0..n-1 with integer weights;
 * `available(i)` says which may be chosen now (health, ejection, breaker: ./upstream-set.ts), so
 * a balancer never needs to be told that a target left or came back. A pick allocates nothing
 * and looks at each target at most a few times (n is a route's target list: at most 64).
 *
 * - round-robin: smooth weighted round-robin, nginx's (ngx_http_upstream_get_peer): each pick adds
 *   every available target's weight to its running score, takes the highest and takes the total
 *   back from it. Weights 5:1:1 give a a b a c a a — spread out, never a burst of one target.
 * - least-requests: power of two choices (Mitzenmacher; Envoy's LEAST_REQUEST): two different
 *   available targets drawn with probability ∝ weight, the one with fewer requests in flight per
 *   unit of weight ((inFlight + 1) / weight) wins.
 * - hash: rendezvous (highest random weight) hashing with weights: each target scores
 *   -weight / ln(u), u the key's hash mixed with the target's, in (0, 1); the highest wins. A
 *   target that leaves takes only the keys it won (every other key's winner is unchanged), and
 *   its share is weight / Σ weights. Not a ketama ring: HRW needs no ring (160 points × weight
 *   per target, rebuilt when weights change) and moves exactly the leaving target's keys, and at
 *   n ≤ 64 its O(n) pick costs what a ring lookup would plus a logarithm a target: 59 ns at 2
 *   targets, 138 ns at 8, 512 ns at 32 (round-robin 9 / 29 / 79 ns, least-requests 23 / 66 / 125 ns;
 *   keys of 10 characters, `node --import @swc-node/register/esm-register bench/balance.ts`).
 */

export type BalanceMode = 'round-robin' | 'least-requests' | 'hash'

export interface Balancer {
  /**
   * Index of the chosen target among those for which `available(i)` is true, never `exclude` (a
   * target a retry just failed on; -1: none excluded), or -1 when no target is left. `key` is the
   * hash key (only `hash` reads it).
   */
  pick: (available: (i: number) => boolean, key: string, exclude: number) => number
}

export function createBalancer (mode: BalanceMode, weights: readonly number[], inFlight: (i: number) => number, seed = (Math.random() * 0x7fffffff) | 0): Balancer {
  for (const w of weights) if (!Number.isInteger(w) || w < 1) throw new RangeError(`weights must be positive integers, got ${w}`)
  if (mode === 'round-robin') return new SmoothRoundRobin(weights)
  if (mode === 'least-requests') return new LeastRequests(weights, inFlight, seed)
  return new RendezvousHash(weights)
}

class SmoothRoundRobin implements Balancer {
  private readonly current: Float64Array
  constructor (private readonly weights: readonly number[]) {
    this.current = new Float64Array(weights.length)
  }

  pick (available: (i: number) => boolean, _key: string, exclude: number): number {
    const { current, weights } = this
    let total = 0
    let best = -1
    for (let i = 0; i < weights.length; i++) {
      if (i === exclude || !available(i)) continue
      current[i] += weights[i]
      total += weights[i]
      if (best === -1 || current[i] > current[best]) best = i
    }
    if (best !== -1) current[best] -= total
    return best
  }
}

class LeastRequests implements Balancer {
  private state: number
  constructor (private readonly weights: readonly number[], private readonly inFlight: (i: number) => number, seed: number) {
    this.state = seed | 0
  }

  /** mulberry32: a seeded, allocation-free PRNG in [0, 1). */
  private random (): number {
    this.state = (this.state + 0x6d2b79f5) | 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  /** A target drawn with probability ∝ weight among the available ones except `skip` and `exclude`. */
  private draw (available: (i: number) => boolean, exclude: number, skip: number, total: number): number {
    let r = this.random() * total
    const weights = this.weights
    let last = -1
    for (let i = 0; i < weights.length; i++) {
      if (i === exclude || i === skip || !available(i)) continue
      last = i
      r -= weights[i]
      if (r < 0) return i
    }
    return last // rounding at the very end of the range
  }

  pick (available: (i: number) => boolean, _key: string, exclude: number): number {
    const weights = this.weights
    let total = 0
    let count = 0
    let only = -1
    for (let i = 0; i < weights.length; i++) {
      if (i === exclude || !available(i)) continue
      total += weights[i]
      count++
      only = i
    }
    if (count <= 1) return only
    const a = this.draw(available, exclude, -1, total)
    const b = this.draw(available, exclude, a, total - weights[a])
    return (this.inFlight(b) + 1) / weights[b] < (this.inFlight(a) + 1) / weights[a] ? b : a
  }
}

class RendezvousHash implements Balancer {
  /** Each target's own hash, mixed with the key's. */
  private readonly salts: Uint32Array
  constructor (private readonly weights: readonly number[]) {
    this.salts = new Uint32Array(weights.length)
    for (let i = 0; i < weights.length; i++) this.salts[i] = fmix32(Math.imul(i + 1, 0x9e3779b1))
  }

  pick (available: (i: number) => boolean, key: string, exclude: number): number {
    const k = hashString(key)
    const { salts, weights } = this
    let best = -1
    let bestScore = -Infinity
    for (let i = 0; i < weights.length; i++) {
      if (i === exclude || !available(i)) continue
      const u = (fmix32(k ^ salts[i]) + 0.5) / 4294967296 // in (0, 1)
      const score = -weights[i] / Math.log(u)
      if (score > bestScore) { bestScore = score; best = i }
    }
    return best
  }
}

/** FNV-1a over the UTF-16 code units, then murmur3's finalizer (FNV alone leaves the high bits poorly mixed). */
export function hashString (key: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return fmix32(h)
}

function fmix32 (x: number): number {
  let h = x >>> 0
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

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
 *   available targets drawn with probability ∝ weight (a seeded mulberry32, so tests replay), the
 *   one with fewer requests in flight per unit of weight ((inFlight + 1) / weight) wins. The + 1
 *   favours heavy targets while few requests are in flight, as in Envoy.
 * - hash: rendezvous (highest random weight) hashing with weights: each target scores
 *   -weight / ln(u), u the key's hash mixed with the target's, in (0, 1); the highest wins. A
 *   target that leaves (or is excluded) takes only the keys it won, every other key's winner is
 *   unchanged, and its share is weight / Σ weights. The key's hash is FNV-1a followed by
 *   murmur3's 32-bit finalizer (χ² over 256 buckets and the avalanche are in the test); it does
 *   not depend on the seed, so every gateway instance maps a key alike.
 * - one target, any mode: no arithmetic at all.
 *
 * Why rendezvous and not a ketama ring, measured (`node --import @swc-node/register/esm-register
 * bench/balance.ts`, which builds a ketama ring beside it: 160 points a target ∝ weight, binary
 * search, walking past unavailable targets' points): the ring's shares stray from the weights by
 * 6.2 % (1:1:1), 5.5 % (1:2:1), 8.6 % (8 × 1) at 160 points a target, and still 3.3 / 1.5 / 4.1 %
 * at 1,000, where rendezvous is within 0.4 / 0.5 / 1.5 % (100,000 keys: sampling noise); the
 * ring needs rebuilding and its memory grows with points × targets. What the ring wins is speed
 * at many targets: its lookup costs about the same at 2, 8 or 32 targets (87 / 101 / 105 ns) where
 * rendezvous is O(n): 64 / 133 / 262 ns with weights, 39 / 88 / 146 ns with equal weights (no
 * logarithm then; with weights, a target that cannot win is ruled out without one: that halved
 * the 32-target figure). 160 ns more at 32 targets is a fraction of a percent of a proxied
 * request, and 2 to 8 targets are the usual case, so accuracy wins.
 *
 * ns per pick (one run; weights 1, 2, 3, 1, …; keys of 8 to 12 characters; median of 5 × 1,000,000
 * picks; 2-core VM shared with other work, load average 3.3 — runs under heavier load read up to
 * 3 × higher); 0 garbage collections during the 90,000,000 measured picks in every run:
 *   targets   round-robin   least-requests   hash (weights)   hash (equal)   ketama (not used)
 *   2         12            37               64               39             87
 *   8         24            68               133              88             101
 *   32        93            146              262              146            105
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
  if (weights.length === 1) return new OneTarget()
  if (mode === 'round-robin') return new SmoothRoundRobin(weights)
  if (mode === 'least-requests') return new LeastRequests(weights, inFlight, seed)
  return weights.every((w) => w === weights[0]) ? new EqualRendezvousHash(weights.length) : new RendezvousHash(weights)
}

/** One target, any mode: it, when it is available and not excluded. */
class OneTarget implements Balancer {
  pick (available: (i: number) => boolean, _key: string, exclude: number): number {
    return exclude !== 0 && available(0) ? 0 : -1
  }
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

/** Each target's own 32-bit salt, mixed with the key's hash: distinct for distinct targets (fmix32 is a bijection). */
function targetSalts (n: number): Uint32Array {
  const salts = new Uint32Array(n)
  for (let i = 0; i < n; i++) salts[i] = fmix32(Math.imul(i + 1, 0x9e3779b1))
  return salts
}

class RendezvousHash implements Balancer {
  private readonly salts: Uint32Array
  constructor (private readonly weights: readonly number[]) {
    this.salts = targetSalts(weights.length)
  }

  pick (available: (i: number) => boolean, key: string, exclude: number): number {
    const k = hashString(key)
    const { salts, weights } = this
    let best = -1
    // The highest score -w / ln(u) is the lowest cost -ln(u) / w. Since -ln(u) ≥ 1 - u, a target
    // whose 1 - u already exceeds the best cost × its weight cannot win: no logarithm for it (the
    // margin keeps rounding from ever skipping a winner). Most targets are skipped that way.
    let bestCost = Infinity
    for (let i = 0; i < weights.length; i++) {
      if (i === exclude || !available(i)) continue
      const u = (fmix32(k ^ salts[i]) + 0.5) / 4294967296 // in (0, 1)
      if (1 - u > bestCost * weights[i] * (1 + 1e-9)) continue
      const cost = -Math.log(u) / weights[i]
      if (cost < bestCost) { bestCost = cost; best = i }
    }
    return best
  }
}

/**
 * RendezvousHash when every weight is the same: -w / ln(u) grows with u, so the target with the
 * highest mixed hash wins — the same target, without a logarithm.
 */
class EqualRendezvousHash implements Balancer {
  private readonly salts: Uint32Array
  constructor (n: number) {
    this.salts = targetSalts(n)
  }

  pick (available: (i: number) => boolean, key: string, exclude: number): number {
    const k = hashString(key)
    const salts = this.salts
    let best = -1
    let bestHash = -1
    for (let i = 0; i < salts.length; i++) {
      if (i === exclude || !available(i)) continue
      const h = fmix32(k ^ salts[i])
      if (h > bestHash) { bestHash = h; best = i }
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

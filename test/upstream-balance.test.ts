/**
 * The balancers on their own (plugins/upstream/balance.ts): shares, smoothness, exclusion, and
 * what a consistent hash keeps when a target leaves. The end-to-end splits through a running
 * gateway are in test/upstream-resilience.test.ts.
 */
import t from 'tap'
import { createBalancer, hashString } from '../plugins/upstream/balance.js'

const all = (): boolean => true

function counts (n: number, picks: () => number, times: number): number[] {
  const seen = new Array<number>(n).fill(0)
  for (let i = 0; i < times; i++) seen[picks()]++
  return seen
}

t.test('round-robin: exact weighted shares, spread out (nginx\'s sequence), unavailable and excluded targets skipped', async (t) => {
  const rr = createBalancer('round-robin', [1, 3], () => 0)
  t.same(counts(2, () => rr.pick(all, '', -1), 4000), [1000, 3000], '1:3 over 4,000 picks: 1,000 and 3,000 exactly')
  const smooth = createBalancer('round-robin', [5, 1, 1], () => 0)
  const sequence = Array.from({ length: 7 }, () => 'abc'[smooth.pick(all, '', -1)]).join(' ')
  t.equal(sequence, 'a a b a c a a', 'weights 5:1:1 give nginx\'s smooth sequence')
  const three = createBalancer('round-robin', [1, 1, 1], () => 0)
  t.same(counts(3, () => three.pick((i) => i !== 1, '', -1), 300), [150, 0, 150], 'an unavailable target gets nothing, the rest share')
  t.same(counts(3, () => three.pick(all, '', 0), 300), [0, 150, 150], 'the excluded one is never chosen')
  t.equal(three.pick(() => false, '', -1), -1, 'none available: -1')
  t.equal(three.pick((i) => i === 2, '', 2), -1, 'only the excluded one available: -1')
  t.throws(() => createBalancer('round-robin', [1, 0], () => 0), /positive integers/, 'a weight of 0 is refused')
})

t.test('least-requests: the less busy of two wins, weights shape the share, exclude honoured', async (t) => {
  const inFlight = [10, 0, 10]
  const lr = createBalancer('least-requests', [1, 1, 1], (i) => inFlight[i], 7)
  const seen = counts(3, () => lr.pick(all, '', -1), 3000)
  // Target 1 wins every draw it is part of: two of the three possible pairs.
  t.ok(seen[1] > 1800 && seen[1] < 2200, `the idle target wins about 2/3 of the picks (${seen[1]} of 3,000)`)
  const idle = createBalancer('least-requests', [1, 3], () => 0, 11)
  const share = counts(2, () => idle.pick(all, '', -1), 20000)
  // Two targets are both drawn every time; with nothing in flight (0 + 1) / 3 < (0 + 1) / 1.
  t.equal(share[1], 20000, 'two idle targets: the weight-3 one wins every pick')
  // Under load: each pick adds a request in flight, and the oldest finishes once 8 are open.
  const open = [0, 0]
  const queue: number[] = []
  const loaded = createBalancer('least-requests', [1, 3], (i) => open[i], 5)
  const got = [0, 0]
  for (let i = 0; i < 20000; i++) {
    const j = loaded.pick(all, '', -1)
    got[j]++
    open[j]++
    queue.push(j)
    if (queue.length > 8) open[queue.shift() as number]--
  }
  t.ok(Math.abs(got[1] / 20000 - 0.75) < 0.05, `with 8 requests in flight, 1:3 weights get ${got[0]} : ${got[1]} (3/4 ± 5 points)`)
  const busyShare = createBalancer('least-requests', [1, 1], (i) => [0, 5][i], 3)
  t.same(counts(2, () => busyShare.pick(all, '', -1), 1000), [1000, 0], 'two targets: the less busy always wins')
  t.same(counts(3, () => lr.pick(all, '', 1), 600)[1], 0, 'never the excluded target')
  t.equal(lr.pick((i) => i === 2, '', -1), 2, 'one available: that one')
  t.equal(lr.pick(() => false, '', -1), -1, 'none available: -1')
})

t.test('hash: one key one target; shares follow weights; a target leaving moves only its own keys, and they come back', async (t) => {
  const keys = Array.from({ length: 10000 }, (_, i) => `user-${i}`)
  for (const weights of [[1, 1, 1], [1, 2, 1]]) {
    const h = createBalancer('hash', weights, () => 0)
    const seen = counts(3, () => 0, 0)
    for (const key of keys) seen[h.pick(all, key, -1)]++
    const total = weights.reduce((a, b) => a + b, 0)
    weights.forEach((w, i) => {
      const expected = 10000 * w / total
      t.ok(Math.abs(seen[i] - expected) <= 0.05 * expected, `weights ${weights.join(':')}: target ${i} has ${seen[i]} keys (expected ${expected.toFixed(0)} ± 5 %)`)
    })
  }
  const h = createBalancer('hash', [1, 1, 1], () => 0)
  const before = keys.map((k) => h.pick(all, k, -1))
  t.same(keys.slice(0, 50).map((k) => h.pick(all, k, -1)), before.slice(0, 50), 'the same key gets the same target every time')
  const without1 = keys.map((k) => h.pick((i) => i !== 1, k, -1))
  let kept = 0
  let moved = 0
  const movedTo = [0, 0, 0]
  keys.forEach((_, j) => {
    if (before[j] !== 1) { if (without1[j] === before[j]) kept++ } else { moved++; movedTo[without1[j]]++ }
  })
  t.equal(kept, keys.length - moved, 'every key of the other targets kept its target')
  t.equal(movedTo[1], 0, 'the keys of the target that left all moved')
  t.ok(movedTo[0] > moved * 0.4 && movedTo[2] > moved * 0.4, `and they spread over the rest (${movedTo[0]} / ${movedTo[2]})`)
  t.same(keys.map((k) => h.pick(all, k, -1)), before, 'when it comes back, every key maps as before')
  t.equal(h.pick(all, before.length > 0 ? keys[0] : '', before[0]), h.pick((i) => i !== before[0], keys[0], -1), 'exclude acts as if the target were unavailable')
})

t.test('the key hash spreads similar keys (IP addresses) evenly over 32-bit space', async (t) => {
  const buckets = new Array<number>(16).fill(0)
  for (let i = 0; i < 16000; i++) buckets[hashString(`10.0.${i >> 8}.${i & 255}`) >>> 28]++
  t.ok(buckets.every((n) => n > 800 && n < 1200), `16 buckets of 16,000 addresses: ${buckets.join(' ')}`)
})

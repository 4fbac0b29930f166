/**
 * ns per pick of each balancer with 2, 8 and 32 targets, all available, one in-flight count
 * per target: `node --import @swc-node/register/esm-register bench/balance.ts`.
 */
import { createBalancer, type BalanceMode } from '../plugins/upstream/balance.js'

const PICKS = 2_000_000
for (const n of [2, 8, 32]) {
  const weights = Array.from({ length: n }, (_, i) => 1 + (i % 3))
  const inFlight = new Int32Array(n)
  const available = (i: number): boolean => i >= 0
  const line: string[] = []
  for (const mode of ['round-robin', 'least-requests', 'hash'] as BalanceMode[]) {
    const balancer = createBalancer(mode, weights, (i) => inFlight[i], 42)
    const keys = Array.from({ length: 1024 }, (_, i) => `10.0.${i >> 8}.${i & 255}`)
    let sink = 0
    for (let i = 0; i < 200_000; i++) sink += balancer.pick(available, keys[i & 1023], -1) // warm-up
    const start = process.hrtime.bigint()
    for (let i = 0; i < PICKS; i++) sink += balancer.pick(available, keys[i & 1023], -1)
    const ns = Number(process.hrtime.bigint() - start) / PICKS
    line.push(`${mode} ${ns.toFixed(0)} ns`)
    if (sink < 0) console.log(sink)
  }
  console.log(`${n} targets: ${line.join(', ')}`)
}

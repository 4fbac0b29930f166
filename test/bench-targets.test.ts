/** Issue 19's targets from a benchmark's runs: per-round ratios of two scenarios of the same round. */
import t from 'tap'
import { evaluateTargets, formatTargets, type TargetRun } from '../bench/targets.js'
import { roundOrder } from '../bench/lib.js'

const run = (scenario: string, round: number, rps: number, cpu: number | null, p99 = 10, method: 'GET' | 'POST' = 'GET'): TargetRun =>
  ({ scenario, round, method, rps, cpuUsPerRequest: cpu, p99Ms: p99 })

t.test('ratios are taken within a round, and the median decides whether the goal is met', async (t) => {
  const runs = [
    run('node-floor', 1, 15000, 50), run('portcullis-full', 1, 10000, 60, 12), run('bare-proxy', 1, 9000, 90, 10),
    run('node-floor', 2, 14000, 60), run('portcullis-full', 2, 9900, 66, 9), run('bare-proxy', 2, 8000, 95, 10),
    run('node-floor', 3, 15000, 40), run('portcullis-full', 3, 9000, 60, 11), run('bare-proxy', 3, 9500, 80, 10)
  ]
  const results = evaluateTargets(runs, ['GET', 'POST'])
  t.same(results.map((r) => r.id), ['1-cpu', '1-rps', '1-p99'], 'only the targets whose scenarios ran; no POST runs, no POST rows')
  const cpu = results[0]
  t.same(cpu.rounds, [1.2, 1.1, 1.5], 'round by round: 60/50, 66/60, 60/40')
  t.equal(cpu.median, 1.2)
  t.equal(cpu.met, true, '1.2 ≤ 1.25')
  t.equal(cpu.goal, '≤ 1.25')
  const rps = results[1]
  t.same(rps.rounds, [1.111, 1.238, 0.947])
  t.equal(rps.met, true, 'median 1.111 ≥ 1.1')
  const p99 = results[2]
  t.same(p99.rounds, [1.2, 0.9, 1.1])
  t.equal(p99.met, false, 'median p99 ratio 1.1 > 1')
  t.match(formatTargets(results), /everything on: CPU per request ÷ node-floor +GET +1\.200× \(quartiles 1\.100–1\.500, 3 rounds\) +goal ≤ 1\.25: met/)
})

t.test('a round missing its partner, or without a CPU reading, gives no ratio for that round', async (t) => {
  const runs = [
    run('portcullis-full', 1, 10000, null), run('portcullis-full-metrics', 1, 9800, 70),
    run('portcullis-full', 2, 10000, 70), run('portcullis-full-metrics', 2, 9800, 71.4),
    run('portcullis-full-metrics', 3, 9800, 70),
    run('portcullis-full-redis', 2, 8000, 80)
  ]
  const results = evaluateTargets(runs, ['GET'])
  t.same(results.map((r) => [r.id, r.rounds]), [['2-redis', [0.8]], ['3-metrics', [1.02]]])
  t.same(results.map((r) => r.met), [false, true])
  t.equal(formatTargets([]), '', 'nothing to print without targets')
})

t.test('the scenarios run in their listed order in odd rounds and reversed in even ones, so every pair meets in both orders', async (t) => {
  const list = ['upstream', 'bare-proxy', 'portcullis-full', 'portcullis-full-metrics'] as const
  t.same(roundOrder(list, 1), list)
  t.same(roundOrder(list, 2), ['portcullis-full-metrics', 'portcullis-full', 'bare-proxy', 'upstream'])
  t.same(roundOrder(list, 3), list)
  t.same(list, ['upstream', 'bare-proxy', 'portcullis-full', 'portcullis-full-metrics'], 'the list itself is left alone')
  const firstOf = (a: string, b: string, r: number): string => roundOrder(list, r).find((x) => x === a || x === b)!
  t.same([1, 2].map((r) => firstOf('portcullis-full', 'portcullis-full-metrics', r)), ['portcullis-full', 'portcullis-full-metrics'], 'over two rounds each goes first once')
})

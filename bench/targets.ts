/**
 * The performance targets of issue 19, each a ratio taken per round between two scenarios
 * measured in that same round (so drift hits both), printed by `npm run bench` after its table
 * with median and quartiles, and written into the JSON report. A target whose scenarios did not
 * run is left out; none is a verdict on its own — docs/benchmarks.md says how the figures stand.
 */
import { round, spread } from './lib.js'

/** What a target needs of one run (bench/run.ts RunRecord). */
export interface TargetRun {
  round: number
  method: 'GET' | 'POST'
  scenario: string
  rps: number
  p99Ms: number
  cpuUsPerRequest: number | null
}

type Metric = 'cpuUsPerRequest' | 'rps' | 'p99Ms'

interface TargetSpec {
  id: string
  what: string
  scenario: string
  against: string
  metric: Metric
  /** The ratio scenario ÷ against must be at most (`max`) or at least (`min`) this. */
  max?: number
  min?: number
}

export const TARGETS: readonly TargetSpec[] = [
  { id: '1-cpu', what: 'everything on: CPU per request ÷ node-floor', scenario: 'portcullis-full', against: 'node-floor', metric: 'cpuUsPerRequest', max: 1.25 },
  { id: '1-rps', what: 'everything on: req/s ÷ bare http-proxy', scenario: 'portcullis-full', against: 'bare-proxy', metric: 'rps', min: 1.1 },
  { id: '1-p99', what: 'everything on: p99 ÷ bare http-proxy', scenario: 'portcullis-full', against: 'bare-proxy', metric: 'p99Ms', max: 1 },
  { id: '2-redis', what: 'Redis store: req/s ÷ memory store', scenario: 'portcullis-full-redis', against: 'portcullis-full', metric: 'rps', min: 0.85 },
  { id: '3-metrics', what: 'metrics + tracing: CPU per request ÷ off', scenario: 'portcullis-full-metrics', against: 'portcullis-full', metric: 'cpuUsPerRequest', max: 1.03 },
  { id: '4-workers', what: 'workers: req/s ÷ one process', scenario: 'portcullis-full-w2', against: 'portcullis-full-1', metric: 'rps', min: 1.7 }
]

export interface TargetResult {
  id: string
  what: string
  method: 'GET' | 'POST'
  goal: string
  /** Per-round ratios, in round order. */
  rounds: number[]
  median: number
  q1: number
  q3: number
  /** Whether the median meets the goal (the quartiles say how surely). */
  met: boolean
}

export function evaluateTargets (runs: readonly TargetRun[], methods: ReadonlyArray<'GET' | 'POST'>): TargetResult[] {
  const results: TargetResult[] = []
  for (const spec of TARGETS) {
    for (const method of methods) {
      const rounds: number[] = []
      for (const mine of runs) {
        if (mine.scenario !== spec.scenario || mine.method !== method) continue
        const other = runs.find((r) => r.scenario === spec.against && r.method === method && r.round === mine.round)
        const a = mine[spec.metric]
        const b = other?.[spec.metric]
        if (a === null || b === null || b === undefined || b === 0) continue
        rounds.push(round(a / b, 3))
      }
      if (rounds.length === 0) continue
      const s = spread(rounds)
      results.push({
        id: spec.id,
        what: spec.what,
        method,
        goal: spec.max !== undefined ? `≤ ${spec.max}` : `≥ ${spec.min ?? 0}`,
        rounds,
        median: round(s.median, 3),
        q1: s.q1,
        q3: s.q3,
        met: spec.max !== undefined ? s.median <= spec.max : s.median >= (spec.min ?? 0)
      })
    }
  }
  return results
}

export function formatTargets (results: readonly TargetResult[]): string {
  if (results.length === 0) return ''
  const lines = results.map((r) => `  ${r.what.padEnd(45)} ${r.method.padEnd(4)} ${r.median.toFixed(3)}× (quartiles ${r.q1.toFixed(3)}–${r.q3.toFixed(3)}, ${r.rounds.length} round${r.rounds.length === 1 ? '' : 's'})  goal ${r.goal}: ${r.met ? 'met' : 'not met'}`)
  return ['Targets (issue 19; per-round ratios, median and quartiles):', ...lines].join('\n')
}

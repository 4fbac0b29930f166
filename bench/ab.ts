/**
 * `npm run ab -- --base REV [--scenario portcullis-full] [--method GET] [--rounds 12]`: is the
 * working tree's build cheaper or dearer per request than revision REV? A paired A/B of one
 * Portcullis scenario: REV is transpiled from `git archive` into a temp folder, both builds start
 * side by side (each from its own CLI and its own bench/portcullis-config, so each runs as it
 * ships), behind the benchmark's upstream and pinned like the benchmark (gateways on core 0,
 * upstream and load on core 1). Then `--rounds` rounds of one `--seconds` load on each, the order
 * alternating every round: on this 2-core VM the second of two back-to-back runs measured up to
 * 6 % dearer, so a fixed order biases the answer.
 *
 * What it reports is the per-round ratio head ÷ base of CPU per request (the figure that survives
 * a noisy host: absolute CPU per request swung between 90 and 170 µs within minutes), with its
 * median and quartiles, and the same for req/s and p99 — never a verdict, and no test judges
 * speed with it. A JSON report goes to bench/results/ (or --out).
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import {
  benchRequest, Proc, ROOT, cpuSeconds, detectTool, freePort, installCleanup, pinningPossible, removeDir, round, runLoad, spread,
  scratchDir, startBenchUpstream, stopAll, transpileTree, waitForHttp, type LoadResult, type LoadSpec
} from './lib.js'
import type { Plan, PlanInput, Variant } from './portcullis-config.js'
import { NODE_FLAGS } from '../src/node-flags.js'

const USAGE = `usage: npm run ab -- --base REV [options]
  --base REV          the git revision to compare the working tree's build against (e.g. HEAD~1)
  --base-build DIR    instead of --base: an already built tree (DIR/src/cli.js, DIR/bench/portcullis-config.js)
  --repo DIR          the git repository REV is read from (default: this checkout)
  --scenario NAME     portcullis-full (default: every protection, access log on) or portcullis (none)
  --method M          GET (default) or POST
  --rounds N          rounds of one run per build (default 12)
  --seconds S         length of each run (default 2)
  --warmup S          load on each build before the first round (default 2)
  --connections N     (default 50)
  --head-targets N    the head's route balanced over N upstream origins (default 1), e.g. with
                      --base-build dist: what a second target costs, same build on both sides
  --head-node-options S  NODE_OPTIONS for the head's process only (e.g. --max-semi-space-size=64):
                      with --base-build dist, what a Node or V8 flag does to the same build
  --tool wrk|autocannon
  --no-pin            do not pin with taskset
  --out FILE          the JSON report (default bench/results/ab-<time>.json)
`

const SCENARIOS: Record<string, Variant> = {
  portcullis: { protections: false, store: 'memory' },
  'portcullis-full': { protections: true, store: 'memory' }
}

interface Side { name: 'base' | 'head', build: string, proc: Proc, spec: Omit<LoadSpec, 'seconds'>, protections: string[] }
interface Measured { round: number, side: 'base' | 'head', position: number, requests: number, rps: number, p99Ms: number, cpuUsPerRequest: number, errors: number, non2xx: number }

/** REV's sources, transpiled into `out` (node_modules linked to this checkout's). */
async function buildRevision (repo: string, rev: string, scratch: string): Promise<{ build: string, commit: string }> {
  const commit = spawnSync('git', ['-C', repo, 'rev-parse', '--verify', '--short', `${rev}^{commit}`], { encoding: 'utf8' })
  if (commit.status !== 0) throw new Error(`--base ${rev}: not a revision of ${repo} (${commit.stderr.trim()})`)
  const src = join(scratch, 'base-src')
  mkdirSync(src, { recursive: true })
  const tarball = join(scratch, 'base.tar')
  const archive = spawnSync('git', ['-C', repo, 'archive', '-o', tarball, commit.stdout.trim(), 'src', 'plugins', 'schemas', 'bench'], { encoding: 'utf8' })
  if (archive.status !== 0) throw new Error(`--base ${rev}: git archive failed: ${archive.stderr.trim()}`)
  const untar = spawnSync('tar', ['-x', '-f', tarball, '-C', src], { encoding: 'utf8' })
  if (untar.status !== 0) throw new Error(`--base ${rev}: tar failed: ${untar.stderr.trim()}`)
  const ts = (await import('typescript')).default
  const build = join(scratch, 'base')
  transpileTree(ts, src, build, ['src', 'plugins', 'schemas', 'bench'], join(ROOT, 'node_modules'), `ab-base-${commit.stdout.trim()}`)
  return { build, commit: commit.stdout.trim() }
}

async function startSide (name: 'base' | 'head', build: string, variant: Variant, upstreamOrigin: string, method: 'GET' | 'POST', connections: number, pin: boolean, scratch: string, extraUpstreamOrigins: readonly string[] = [], nodeOptions?: string): Promise<Side> {
  const { portcullisConfig } = await import(pathToFileURL(join(build, 'bench/portcullis-config.js')).href) as { portcullisConfig: (input: PlanInput) => Plan }
  const port = await freePort()
  const plan = portcullisConfig({ ...variant, upstreamOrigin, port, extraUpstreamOrigins })
  if (plan.skip !== undefined) throw new Error(`${name}: ${plan.skip}`)
  const configFile = join(scratch, `${name}.json`)
  writeFileSync(configFile, JSON.stringify(plan.config))
  const proc = new Proc(name, process.execPath, [...NODE_FLAGS, join(build, 'src/cli.js'), 'start', '--config', configFile], {
    cpu: pin ? 0 : null,
    stdoutFile: join(scratch, `${name}.log`),
    stderrFile: join(scratch, `${name}.stderr.log`),
    stdinPipe: true,
    env: nodeOptions === undefined ? undefined : { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} ${nodeOptions}`.trim() }
  })
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(url + '/healthz', proc)
  for (const check of plan.checks) await check(url)
  return {
    name,
    build,
    proc,
    protections: plan.protections,
    spec: {
      ...benchRequest(url, method, plan.headers),
      connections,
      cpu: pin ? 1 : null,
      scratch
    }
  }
}

async function measure (side: Side, tool: ReturnType<typeof detectTool>['tool'], seconds: number): Promise<Omit<Measured, 'round' | 'position'>> {
  const before = cpuSeconds([side.proc.pid])
  const load: LoadResult = await runLoad(tool, { ...side.spec, seconds })
  const after = cpuSeconds([side.proc.pid])
  const cpu = before === null || after === null ? NaN : after - before
  return {
    side: side.name,
    requests: load.requests,
    rps: round(load.rps, 0),
    p99Ms: load.p99Ms,
    cpuUsPerRequest: load.requests > 0 ? round(cpu * 1e6 / load.requests, 1) : NaN,
    errors: load.errors,
    non2xx: load.non2xx
  }
}

async function main (): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      base: { type: 'string' },
      'base-build': { type: 'string' },
      repo: { type: 'string' },
      scenario: { type: 'string', default: 'portcullis-full' },
      method: { type: 'string', default: 'GET' },
      rounds: { type: 'string', default: '12' },
      seconds: { type: 'string', default: '2' },
      warmup: { type: 'string', default: '2' },
      connections: { type: 'string', default: '50' },
      'head-targets': { type: 'string', default: '1' },
      'head-node-options': { type: 'string' },
      tool: { type: 'string' },
      'no-pin': { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', default: false }
    }
  })
  if (values.help) { process.stdout.write(USAGE); return 0 }
  if ((values.base === undefined) === (values['base-build'] === undefined)) throw new Error('give one of --base REV or --base-build DIR\n' + USAGE)
  const variant = SCENARIOS[values.scenario]
  if (variant === undefined) throw new Error(`--scenario must be one of ${Object.keys(SCENARIOS).join(', ')}`)
  const method = values.method.toUpperCase()
  if (method !== 'GET' && method !== 'POST') throw new Error('--method must be GET or POST')
  const rounds = Math.max(1, Math.round(Number(values.rounds)))
  const seconds = Math.max(1, Math.round(Number(values.seconds)))
  const warmup = Math.max(0, Math.round(Number(values.warmup)))
  const connections = Math.max(1, Math.round(Number(values.connections)))
  const headTargets = Math.max(1, Math.round(Number(values['head-targets'])))
  if (![rounds, seconds, warmup, connections, headTargets].every(Number.isFinite)) throw new Error('--rounds, --seconds, --warmup and --connections take numbers')

  installCleanup()
  const pin = !values['no-pin'] && pinningPossible().ok
  const { tool, version } = detectTool(values.tool)
  const scratch = scratchDir('portcullis-ab-')
  try {
    const base = values.base !== undefined ? await buildRevision(values.repo ?? ROOT, values.base, scratch) : { build: values['base-build'] as string, commit: 'given build' }
    const head = join(import.meta.dirname, '..')
    // One upstream process for every target (listening on 127.0.0.2, .3… too), so the head's
    // extra targets add origins and pools to the gateway, not processes competing for core 1.
    const { origin, port: upstreamPort } = await startBenchUpstream(scratch, pin ? 1 : null, headTargets)
    const extra: string[] = []
    for (let i = 2; i <= headTargets; i++) extra.push(`http://127.0.0.${i}:${upstreamPort}`)
    const sides = [
      await startSide('base', base.build, variant, origin, method, connections, pin, scratch),
      await startSide('head', head, variant, origin, method, connections, pin, scratch, extra, values['head-node-options'])
    ]
    process.stdout.write(`ab: ${values.scenario} ${method} [${sides[1].protections.join(', ') || 'no protection'}], base ${values.base ?? values['base-build']} (${base.commit}) against the working tree's build${headTargets > 1 ? ` (head: ${headTargets} targets)` : ''}${values['head-node-options'] !== undefined ? ` (head: NODE_OPTIONS ${values['head-node-options']})` : ''}; ` +
      `${rounds} rounds × ${seconds} s, ${connections} connections, ${tool} ${version}, ${pin ? 'gateways pinned to core 0, upstream + load to core 1' : 'not pinned'}\n`)
    if (warmup > 0) for (const side of sides) await runLoad(tool, { ...side.spec, seconds: warmup })

    const runs: Measured[] = []
    for (let r = 1; r <= rounds; r++) {
      const order = r % 2 === 1 ? sides : [sides[1], sides[0]]
      for (const [position, side] of order.entries()) {
        const m = { round: r, position, ...await measure(side, tool, seconds) }
        runs.push(m)
        process.stdout.write(`  round ${String(r).padStart(2)} ${m.side}  ${String(m.rps).padStart(6)} req/s  p99 ${m.p99Ms.toFixed(2).padStart(6)} ms  ${m.cpuUsPerRequest.toFixed(1).padStart(6)} µs CPU/req  errors ${m.errors}  non-2xx ${m.non2xx}\n`)
      }
    }
    const ratio = (r: number, field: 'cpuUsPerRequest' | 'rps' | 'p99Ms'): number => {
      const b = runs.find((m) => m.round === r && m.side === 'base')?.[field] ?? NaN
      const h = runs.find((m) => m.round === r && m.side === 'head')?.[field] ?? NaN
      return round(h / b, 3)
    }
    const perRound = (field: 'cpuUsPerRequest' | 'rps' | 'p99Ms'): number[] => Array.from({ length: rounds }, (_, i) => ratio(i + 1, field))
    const summary = {
      cpuPerRequest: { ...spread(perRound('cpuUsPerRequest')), rounds: perRound('cpuUsPerRequest') },
      rps: { ...spread(perRound('rps')), rounds: perRound('rps') },
      p99: { ...spread(perRound('p99Ms')), rounds: perRound('p99Ms') }
    }
    const errors = runs.reduce((n, m) => n + m.errors + m.non2xx, 0)
    const fmt = (s: { median: number, q1: number, q3: number }): string => `${s.median.toFixed(3)}× (quartiles ${s.q1.toFixed(3)}–${s.q3.toFixed(3)})`
    process.stdout.write(`\nhead ÷ base, per round: CPU per request ${fmt(summary.cpuPerRequest)}; req/s ${fmt(summary.rps)}; p99 ${fmt(summary.p99)}\n` +
      `errors + non-2xx: ${errors}${errors > 0 ? ' — WARNING: a build answered with errors, the comparison is void' : ''}\n`)

    const stamp = new Date().toISOString().replace(/[:.]/g, '-')
    const out = values.out ?? join(ROOT, 'bench', 'results', `ab-${values.scenario}-${method}-${stamp}.json`)
    mkdirSync(join(out, '..'), { recursive: true })
    writeFileSync(out, JSON.stringify({
      kind: 'ab',
      base: { rev: values.base ?? null, build: values['base-build'] ?? null, commit: base.commit },
      scenario: values.scenario,
      method,
      protections: sides[1].protections,
      headTargets,
      headNodeOptions: values['head-node-options'] ?? null,
      rounds,
      seconds,
      connections,
      tool: { name: tool, version },
      pinned: pin,
      runs,
      summary,
      errors
    }, null, 2) + '\n')
    process.stdout.write(`report: ${out}\n`)
    return errors > 0 ? 1 : 0
  } finally {
    await stopAll()
    removeDir(scratch)
  }
}

main().then((code) => { process.exitCode = code }, async (err: unknown) => {
  process.stderr.write(`ab: ${(err as Error).message}\n`)
  await stopAll()
  process.exitCode = 2
})

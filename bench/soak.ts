/**
 * `npm run soak -- --minutes N`: Portcullis with everything on (the benchmark's
 * portcullis-full config, access log to /dev/null) under constant GET + POST load for N
 * minutes, pinned like the benchmark. Samples the gateway's RSS (`ps -o rss`) and V8 heap (a
 * preloaded sampler writing process.memoryUsage() to a file: no /metrics needed) over time, and
 * reports their least-squares slopes after a warm-up, with the load's errors. Always bounded.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism, loadavg } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import {
  benchRequest, Proc, ROOT, builtFile, detectTool, freePort, installCleanup, pinningPossible, removeDir, round, rssKiB,
  runLoad, scratchDir, sleep, slope, stopAll, waitForHttp, type LoadResult, startBenchUpstream
} from './lib.js'
import { NODE_FLAGS } from '../src/node-flags.js'
import { portcullisConfig } from './portcullis-config.js'

const USAGE = `Usage: npm run soak -- --minutes N [options]

  --minutes N       how long the load runs (default 1; 0.2 to 240)
  --connections N   concurrent connections, half GET, half POST (default 50)
  --sample S        seconds between memory samples (default 5)
  --warmup-share F  share of the run left out of the slopes (default 0.2)
  --tool NAME       wrk | autocannon (default: wrk when installed)
  --no-pin          do not pin processes to cores
  --out FILE        where to write the JSON report (default bench/results/soak-<time>.json)
`

interface Sample { s: number, rssMiB: number | null, heapUsedMiB: number | null, heapTotalMiB: number | null }

function parse (): { minutes: number, connections: number, sample: number, warmupShare: number, tool?: string, pin: boolean, out: string | null } {
  let values
  try {
    values = parseArgs({
      args: process.argv.slice(2),
      strict: true,
      options: {
        minutes: { type: 'string', default: '1' },
        connections: { type: 'string', default: '50' },
        sample: { type: 'string', default: '5' },
        'warmup-share': { type: 'string', default: '0.2' },
        tool: { type: 'string' },
        'no-pin': { type: 'boolean', default: false },
        out: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false }
      }
    }).values
  } catch (err) {
    fail((err as Error).message)
  }
  if (values.help) { process.stdout.write(USAGE); process.exit(0) }
  const num = (name: string, v: string, min: number, max: number): number => {
    const n = Number(v)
    if (!Number.isFinite(n) || n < min || n > max) fail(`--${name} must be a number from ${min} to ${max}, not "${v}"`)
    return n
  }
  return {
    minutes: num('minutes', values.minutes, 0.2, 240),
    connections: Math.round(num('connections', values.connections, 2, 1000)),
    sample: num('sample', values.sample, 1, 600),
    warmupShare: num('warmup-share', values['warmup-share'], 0, 0.9),
    tool: values.tool,
    pin: !values['no-pin'],
    out: values.out ?? null
  }
}

function fail (message: string): never {
  process.stderr.write(`soak: ${message}\n\n${USAGE}`)
  process.exit(2)
}

function lastHeap (file: string): { heapUsed: number, heapTotal: number } | null {
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n')
    const last = JSON.parse(lines[lines.length - 1]) as { heapUsed: number, heapTotal: number }
    return last
  } catch { return null }
}

async function main (): Promise<number> {
  const opts = parse()
  installCleanup()
  const pinning = pinningPossible()
  const pin = opts.pin && pinning.ok
  const { tool, version } = detectTool(opts.tool)
  const seconds = Math.max(10, Math.round(opts.minutes * 60))
  const scratch = scratchDir('portcullis-soak-')
  const startedAt = new Date()
  const samples: Sample[] = []
  const problems: string[] = []
  let loads: LoadResult[] = []
  let protections: string[] = []
  /** Every heap sample the gateway wrote (1 s apart): [seconds since the load began, heapUsed MiB]. */
  let heapSeries: Array<readonly [number, number]> = []
  try {
    const { port: upstreamPort } = await startBenchUpstream(scratch, pin ? 1 : null)
    const port = await freePort()
    const plan = portcullisConfig({ protections: true, store: 'memory', upstreamOrigin: `http://127.0.0.1:${upstreamPort}`, port })
    protections = plan.protections
    const configFile = join(scratch, 'gateway.json')
    writeFileSync(configFile, JSON.stringify(plan.config, null, 2))
    const heapFile = join(scratch, 'heap.jsonl')
    const gateway = new Proc('portcullis', process.execPath, [
      ...NODE_FLAGS, '--import', pathToFileURL(builtFile('bench/heap-sampler.js')).href, builtFile('src/cli.js'), 'start', '--config', configFile
    ], {
      cpu: pin ? 0 : null,
      stdoutFile: '/dev/null',
      stderrFile: join(scratch, 'gateway.stderr.log'),
      env: { ...process.env, BENCH_HEAP_FILE: heapFile, BENCH_HEAP_INTERVAL_MS: String(Math.min(1000, opts.sample * 500)) }
    })
    const url = `http://127.0.0.1:${port}`
    await waitForHttp(url + '/healthz', gateway)
    for (const check of plan.checks) await check(url)

    process.stderr.write(`soak: ${opts.minutes} min of GET + POST (${opts.connections} connections, ${tool} ${version}) against Portcullis ` +
      `[${protections.join(', ')}], ${pin ? 'pinned' : 'not pinned'}; a sample every ${opts.sample} s\n`)
    const began = Date.now()
    const half = Math.max(1, Math.floor(opts.connections / 2))
    const common = { connections: half, seconds, cpu: pin ? 1 : null, scratch }
    const load = Promise.all([
      runLoad(tool, { ...common, ...benchRequest(url, 'GET', plan.headers) }),
      runLoad(tool, { ...common, ...benchRequest(url, 'POST', plan.headers) })
    ])
    const settled = load.then(() => {}, () => {})
    const take = (): void => {
      const heap = lastHeap(heapFile)
      const rss = rssKiB(gateway.pid)
      const sample: Sample = {
        s: round((Date.now() - began) / 1000, 1),
        rssMiB: rss === null ? null : round(rss / 1024, 2),
        heapUsedMiB: heap === null ? null : round(heap.heapUsed / 1048576, 2),
        heapTotalMiB: heap === null ? null : round(heap.heapTotal / 1048576, 2)
      }
      samples.push(sample)
      process.stderr.write(`  ${String(sample.s).padStart(6)} s  rss ${sample.rssMiB ?? '?'} MiB  heap used ${sample.heapUsedMiB ?? '?'} MiB\n`)
    }
    take()
    // A sample every `sample` seconds while the load runs (the last one as it ends).
    for (let remaining = seconds * 1000; remaining > 0; remaining = began + seconds * 1000 - Date.now()) {
      const finished = await Promise.race([sleep(Math.min(opts.sample * 1000, remaining)).then(() => false), settled.then(() => true)])
      if (!gateway.alive) { problems.push(`the gateway exited during the soak:\n${gateway.stderrTail()}`); break }
      take()
      if (finished) break
    }
    loads = await load
    if (!gateway.alive) problems.push('the gateway was not running at the end of the soak')
    heapSeries = readFileSync(heapFile, 'utf8').trimEnd().split('\n').map((line) => {
      const m = JSON.parse(line) as { t: number, heapUsed: number }
      return [(m.t - began) / 1000, m.heapUsed / 1048576] as const
    }).filter(([t]) => t >= 0 && t <= seconds)
  } catch (err) {
    problems.push((err as Error).message)
  } finally {
    await stopAll()
    removeDir(scratch)
  }

  const measured = samples.filter((x) => x.s >= seconds * opts.warmupShare)
  const fit = (key: 'rssMiB' | 'heapUsedMiB'): { slopeMiBPerMin: number, first: number | null, last: number | null, min: number, max: number } => {
    const pts = measured.filter((x) => x[key] !== null).map((x) => [x.s / 60, x[key] as number] as const)
    const vals = pts.map((p) => p[1])
    return {
      slopeMiBPerMin: round(slope(pts), 3),
      first: vals[0] ?? null,
      last: vals[vals.length - 1] ?? null,
      min: vals.length === 0 ? Number.NaN : Math.min(...vals),
      max: vals.length === 0 ? Number.NaN : Math.max(...vals)
    }
  }
  const rss = fit('rssMiB')
  const heap = fit('heapUsedMiB')
  // The heap in use is a GC sawtooth: its floor (the lowest value in each 30 s window) is what
  // grows when something leaks, so that is the slope to judge.
  const floors: Array<readonly [number, number]> = []
  for (let from = seconds * opts.warmupShare; from < seconds; from += 30) {
    const inWindow = heapSeries.filter(([t]) => t >= from && t < from + 30)
    if (inWindow.length > 0) floors.push([(from + 15) / 60, Math.min(...inWindow.map(([, v]) => v))])
  }
  const heapFloor = {
    slopeMiBPerMin: round(slope(floors), 3),
    windows: floors.map(([m, v]) => [round(m, 2), round(v, 2)])
  }
  const requests = loads.reduce((a, l) => a + l.requests, 0)
  const errors = loads.reduce((a, l) => a + l.errors, 0)
  const non2xx = loads.reduce((a, l) => a + l.non2xx, 0)
  if (errors > 0 || non2xx > 0) problems.push(`${errors} errors and ${non2xx} non-2xx responses under load`)
  const window = opts.minutes * (1 - opts.warmupShare)
  const report = {
    kind: 'soak',
    ok: problems.length === 0,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `npm run soak --${process.argv.length > 2 ? ' ' + process.argv.slice(2).join(' ') : ''}`,
    options: opts,
    tool: { name: tool, version },
    pinning: pin ? { proxy: 0, upstreamAndLoad: 1 } : null,
    machine: { cpus: availableParallelism(), node: process.version, loadavgAtEnd: loadavg().map((x) => round(x, 2)) },
    protections,
    load: {
      requests,
      rps: round(loads.reduce((a, l) => a + l.rps, 0), 0),
      errors,
      non2xx,
      get: loads[0] ?? null,
      post: loads[1] ?? null
    },
    memory: { slopesFrom: `${round(seconds * opts.warmupShare, 0)} s`, rss, heapUsed: heap, heapFloor },
    samples,
    problems
  }
  const out = opts.out ?? join(ROOT, 'bench', 'results', `soak-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  mkdirSync(join(out, '..'), { recursive: true })
  writeFileSync(out, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(
    `\nsoak: ${requests} requests in ${opts.minutes} min (${report.load.rps} req/s), ${errors} errors, ${non2xx} non-2xx\n` +
    `RSS:       ${rss.first} → ${rss.last} MiB (min ${rss.min}, max ${rss.max}), slope ${rss.slopeMiBPerMin} MiB/min ` +
    `(≈ ${round(rss.slopeMiBPerMin * window, 1)} MiB over the ${round(window, 1)} min after warm-up)\n` +
    `heap used: ${heap.first} → ${heap.last} MiB (min ${heap.min}, max ${heap.max}), slope ${heap.slopeMiBPerMin} MiB/min (GC sawtooth)\n` +
    `heap floor (lowest per 30 s): ${heapFloor.windows.map(([, v]) => v).join(' → ')} MiB, slope ${heapFloor.slopeMiBPerMin} MiB/min\n` +
    problems.map((p) => `PROBLEM: ${p}\n`).join('') +
    `report: ${out}\n`
  )
  return problems.length === 0 ? 0 : 1
}

main().then((code) => { process.exitCode = code }, async (err: unknown) => {
  process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`)
  await stopAll()
  process.exitCode = 1
})

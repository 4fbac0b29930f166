/**
 * `npm run bench [-- options]`: the upstream alone, nginx (when installed), bare
 * @fastify/http-proxy and Portcullis (no protection / everything on / everything on with the
 * Redis store) as separate processes on loopback, loaded in turn with GET and POST for a bounded
 * time, in interleaved rounds. Prints medians, per-round ratios and error counts; writes a JSON
 * report to bench/results/. See the README's "Benchmarks" section.
 */
import { writeFileSync, mkdirSync, statSync, truncateSync, readFileSync } from 'node:fs'
import { availableParallelism, cpus, loadavg, platform, release } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { parseArgs } from 'node:util'
import { isDeepStrictEqual } from 'node:util'
import {
  BENCH_GET_PATH, BENCH_POST_BODY, BENCH_POST_PATH, benchRequest, Proc, ROOT, builtFile, commandExists, cpuSeconds, detectTool, freePort, httpCall, installCleanup, median,
  pinningPossible, removeDir, round, roundOrder, runLoad, scratchDir, sleep, startNginx, stopAll, waitForHttp, type LoadResult, type ToolName, startBenchUpstream
} from './lib.js'
import { portcullisConfig, type Variant } from './portcullis-config.js'
import { evaluateTargets, formatTargets } from './targets.js'
import { FLUSH_INTERVAL_MS } from '../src/logging.js'
import { NODE_FLAGS } from '../src/node-flags.js'

const USAGE = `Usage: npm run bench -- [options]

  --duration S      seconds per measured run (default 5; whole seconds)
  --warmup S        seconds of warm-up load before each measured run (default 1; 0 = none)
  --rounds N        interleaved rounds (default 3)
  --connections N   concurrent connections (default 50)
  --quick           smoke test: 1 round of 2 s, 1 s warm-up (explicit flags still win)
  --methods LIST    GET,POST (default both)
  --only LIST       scenario ids to run (the upstream and bare-proxy always run: ratios need them)
  --tool NAME       wrk | autocannon (default: wrk when installed)
  --no-pin          do not pin processes to cores
  --workers N       instead of the pinned comparison: Portcullis in 1 process vs
                    "portcullis start --workers N", nothing pinned
  --out FILE        where to write the JSON report (default bench/results/bench-<time>.json)
  --scale           instead: cost growth with routes, API keys and idle clients (bench/scale.ts;
                    --scale --help for its options; --scale-quick: tiny sizes)
  -h, --help
`

export interface Options {
  duration: number
  warmup: number
  rounds: number
  connections: number
  methods: Array<'GET' | 'POST'>
  only: string[] | null
  tool: string | undefined
  pin: boolean
  workers: number | null
  out: string | null
  quick: boolean
}

function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      duration: { type: 'string' },
      warmup: { type: 'string' },
      rounds: { type: 'string' },
      connections: { type: 'string' },
      quick: { type: 'boolean', default: false },
      methods: { type: 'string' },
      only: { type: 'string' },
      tool: { type: 'string' },
      'no-pin': { type: 'boolean', default: false },
      workers: { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false }
    }
  })
  if (values.help) { process.stdout.write(USAGE); process.exit(0) }
  const int = (name: string, value: string | undefined, fallback: number, min: number, max: number): number => {
    if (value === undefined) return fallback
    const n = Number(value)
    if (!Number.isInteger(n) || n < min || n > max) usage(`--${name} must be a whole number from ${min} to ${max}, not "${value}"`)
    return n
  }
  const quick = values.quick
  const methods = (values.methods ?? 'GET,POST').split(',').map((m) => m.trim().toUpperCase())
  for (const m of methods) if (m !== 'GET' && m !== 'POST') usage(`--methods: ${m} is not GET or POST`)
  if (values.tool !== undefined && values.tool !== 'wrk' && values.tool !== 'autocannon') usage('--tool must be wrk or autocannon')
  return {
    duration: int('duration', values.duration, quick ? 2 : 5, 1, 600),
    warmup: int('warmup', values.warmup, 1, 0, 60),
    rounds: int('rounds', values.rounds, quick ? 1 : 3, 1, 20),
    connections: int('connections', values.connections, 50, 1, 1000),
    methods: methods as Array<'GET' | 'POST'>,
    only: values.only === undefined ? null : values.only.split(',').map((s) => s.trim()).filter((s) => s !== ''),
    tool: values.tool,
    pin: !values['no-pin'] && values.workers === undefined,
    workers: values.workers === undefined ? null : int('workers', values.workers, 2, 1, 64),
    out: values.out ?? null,
    quick
  }
}

function usage (message: string): never {
  process.stderr.write(`bench: ${message}\n\n${USAGE}`)
  process.exit(2)
}

// --- scenarios ---------------------------------------------------------------------------

/** What is in front of the load generator. */
interface Target {
  url: string
  /** Headers every request carries (a bearer token…). */
  headers: Record<string, string>
  /** Processes whose CPU time is the cost of serving (the proxy; plus redis-server). */
  cpuPids: number[]
  /** The access log file, counted and emptied after every run. */
  logFile?: string
  protections: string[]
  /** Checks that this target does what it claims (proxies, refuses) before it is measured. */
  check: () => Promise<void>
}

interface Scenario {
  id: string
  label: string
  /** Why it does not run here (the runner says so and goes on). */
  skip?: string
  /** Protections the "everything on" config cannot include yet (not in schemas/config.ts). */
  missing?: string[]
  start?: () => Promise<Target>
  target?: Target
  /** Why it failed to start or failed its checks. */
  failure?: string
}

interface Context {
  options: Options
  scratch: string
  upstreamOrigin: string
  proxyCpu: number | null
  loadCpu: number | null
}

const GET_EXPECTED = { id: 1, name: 'Ada Lovelace', age: 36 }

const FAST_GATEWAY_SKIP = 'fast-gateway cannot be installed here: fast-gateway 5.0.1 needs fast-proxy-lite ^1.1.3, ' +
  'and the registry mirror this machine uses has only fast-proxy-lite 1.1.2'

async function expectProxying (name: string, url: string, headers: Record<string, string>): Promise<void> {
  const get = await httpCall(url + BENCH_GET_PATH, { headers })
  if (get.status !== 200) throw new Error(`${name}: GET ${BENCH_GET_PATH} answered ${get.status}: ${get.body.slice(0, 300)}`)
  if (!isDeepStrictEqual(JSON.parse(get.body), GET_EXPECTED)) throw new Error(`${name}: GET ${BENCH_GET_PATH} returned ${get.body.slice(0, 300)}`)
  const post = await httpCall(url + BENCH_POST_PATH, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: BENCH_POST_BODY })
  if (post.status !== 200) throw new Error(`${name}: POST ${BENCH_POST_PATH} answered ${post.status}: ${post.body.slice(0, 300)}`)
  if (!isDeepStrictEqual(JSON.parse(post.body), JSON.parse(BENCH_POST_BODY))) throw new Error(`${name}: POST ${BENCH_POST_PATH} echoed ${post.body.slice(0, 300)}`)
}

function upstreamScenario (ctx: Context, upstream: Proc): Scenario {
  return {
    id: 'upstream',
    label: 'upstream alone (node:http)',
    start: async () => ({
      url: ctx.upstreamOrigin,
      headers: {},
      cpuPids: [upstream.pid],
      protections: [],
      check: () => expectProxying('upstream', ctx.upstreamOrigin, {})
    })
  }
}

function nginxScenario (ctx: Context): Scenario {
  const base = { id: 'nginx', label: 'nginx (1 worker, upstream keep-alive)' }
  if (!commandExists('nginx')) {
    return { ...base, skip: 'nginx is not installed (Debian: apt-get install nginx): skipped' }
  }
  return {
    ...base,
    start: async () => {
      const { proc, url } = await startNginx({ dir: join(ctx.scratch, 'nginx'), upstreamOrigin: ctx.upstreamOrigin, cpu: ctx.proxyCpu })
      return { url, headers: {}, cpuPids: [proc.pid], protections: [], check: () => expectProxying('nginx', url, {}) }
    }
  }
}

/** A proxy script from bench/ (`node dist/bench/ID.js UPSTREAM PORT`, prints `listening PORT`). */
function scriptScenario (ctx: Context, id: string, label: string): Scenario {
  return {
    id,
    label,
    start: async () => {
      const port = await freePort()
      const proc = new Proc(id, process.execPath, [builtFile(`bench/${id}.js`), ctx.upstreamOrigin, String(port)], {
        cpu: ctx.proxyCpu, stderrFile: join(ctx.scratch, `${id}.stderr.log`), stdinPipe: true
      })
      await proc.waitForLine(/listening (\d+)/)
      const url = `http://127.0.0.1:${port}`
      return { url, headers: {}, cpuPids: [proc.pid], protections: [], check: () => expectProxying(id, url, {}) }
    }
  }
}

const bareProxyScenario = (ctx: Context): Scenario => scriptScenario(ctx, 'bare-proxy', 'bare @fastify/http-proxy (defaults)')
/** node:http + an undici Pool and nothing else: the ceiling for any Node gateway here. */
const nodeFloorScenario = (ctx: Context): Scenario => scriptScenario(ctx, 'node-floor', 'node:http + undici Pool, nothing else (the Node floor)')
/** The same inside one Fastify route: Fastify's own share. */
const fastifyFloorScenario = (ctx: Context): Scenario => scriptScenario(ctx, 'fastify-floor', 'the node floor inside one Fastify route (Fastify\'s share)')

/** Portcullis from the built CLI (`start`, or `start --workers N`) with a generated config. */
function portcullisScenario (ctx: Context, id: string, variant: Variant, workers: number | null = null): Scenario {
  const plan = portcullisConfig({ ...variant, upstreamOrigin: ctx.upstreamOrigin, port: 0 })
  const base = { id, label: plan.label + (workers === null ? '' : `, ${workers} worker${workers === 1 ? '' : 's'}`), missing: plan.missing }
  if (plan.skip !== undefined) return { ...base, skip: plan.skip }
  if (variant.store === 'redis' && !commandExists('redis-server')) {
    return { ...base, skip: 'redis-server is not installed (Debian: apt-get install redis-server): skipped' }
  }
  return {
    ...base,
    start: async () => {
      const cpuPids: number[] = []
      let redisUrl: string | undefined
      if (variant.store === 'redis') {
        const redisPort = await freePort()
        const redis = new Proc('redis-server', 'redis-server', [
          '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'
        ], { cpu: ctx.proxyCpu, stderrFile: join(ctx.scratch, `${id}-redis.stderr.log`) })
        await redis.waitForLine(/Ready to accept connections/)
        redisUrl = `redis://127.0.0.1:${redisPort}`
        cpuPids.push(redis.pid)
      }
      const port = await freePort()
      const built = portcullisConfig({ ...variant, upstreamOrigin: ctx.upstreamOrigin, port, redisUrl })
      const configFile = join(ctx.scratch, `${id}.json`)
      writeFileSync(configFile, JSON.stringify(built.config, null, 2))
      const logFile = join(ctx.scratch, `${id}.log`)
      const [command, args] = [process.execPath, workers === null
        ? [...NODE_FLAGS, builtFile('src/cli.js'), 'start', '--config', configFile]
        : workerArgs(configFile, workers)]
      const proc = new Proc(id, command, args, { cpu: ctx.proxyCpu, stdoutFile: logFile, stderrFile: join(ctx.scratch, `${id}.stderr.log`) })
      const url = `http://127.0.0.1:${port}`
      await waitForHttp(url + '/healthz', proc)
      cpuPids.unshift(proc.pid)
      return {
        url,
        headers: built.headers,
        cpuPids,
        logFile: built.accessLog ? logFile : undefined,
        protections: built.protections,
        check: async () => {
          await expectProxying(id, url, built.headers)
          for (const check of built.checks) await check(url)
        }
      }
    }
  }
}

/**
 * `portcullis start --workers N`. With the memory store, N > 1 needs --allow-per-worker-limits
 * (each worker counts on its own; the benchmark's limit is never reached anyway).
 */
function workerArgs (configFile: string, workers: number): string[] {
  const args = [...NODE_FLAGS, builtFile('src/cli.js'), 'start', '--config', configFile, '--workers', String(workers)]
  if (workers > 1) args.push('--allow-per-worker-limits')
  return args
}

function scenarios (ctx: Context, upstream: Proc): Scenario[] {
  const list: Scenario[] = [upstreamScenario(ctx, upstream)]
  if (ctx.options.workers !== null) {
    list.push(
      bareProxyScenario(ctx),
      portcullisScenario(ctx, 'portcullis-full-1', { protections: true, store: 'memory' }, null),
      portcullisScenario(ctx, `portcullis-full-w${ctx.options.workers}`, { protections: true, store: 'memory' }, ctx.options.workers)
    )
    return list
  }
  list.push(
    nginxScenario(ctx),
    { id: 'fast-gateway', label: 'fast-gateway', skip: FAST_GATEWAY_SKIP },
    bareProxyScenario(ctx),
    portcullisScenario(ctx, 'portcullis', { protections: false, store: 'memory' }),
    nodeFloorScenario(ctx),
    fastifyFloorScenario(ctx),
    portcullisScenario(ctx, 'portcullis-jwt-hs256', { protections: false, store: 'memory', jwtOnly: 'HS256' }),
    portcullisScenario(ctx, 'portcullis-jwt-rs256', { protections: false, store: 'memory', jwtOnly: 'RS256' }),
    portcullisScenario(ctx, 'portcullis-full', { protections: true, store: 'memory' }),
    portcullisScenario(ctx, 'portcullis-full-redis', { protections: true, store: 'redis' })
  )
  const metrics = portcullisConfig({ protections: true, store: 'memory', metrics: true, upstreamOrigin: ctx.upstreamOrigin, port: 0 })
  if (metrics.skip === undefined) {
    list.push(portcullisScenario(ctx, 'portcullis-full-metrics', { protections: true, store: 'memory', metrics: true }))
  } else {
    list.push({ id: 'portcullis-full-metrics', label: metrics.label, skip: metrics.skip })
  }
  const only = ctx.options.only
  if (only === null) return list
  for (const id of only) if (!list.some((s) => s.id === id)) usage(`--only: no scenario "${id}" (${list.map((s) => s.id).join(', ')})`)
  return list.filter((s) => s.id === 'upstream' || s.id === 'bare-proxy' || only.includes(s.id))
}

// --- measuring ---------------------------------------------------------------------------

export interface RunRecord extends LoadResult {
  round: number
  /** Place in the round's order (0 = first; the order reverses every other round, see roundOrder). */
  position: number
  method: 'GET' | 'POST'
  scenario: string
  /** CPU time of the serving processes per request, µs (null where /proc is unavailable). */
  cpuUsPerRequest: number | null
  /** Lines the gateway logged during the measured run (access log scenarios only). */
  logLines?: number
}

function countLines (file: string): number {
  const text = readFileSync(file)
  let n = 0
  for (let i = 0; i < text.length; i++) if (text[i] === 10) n++
  return n
}

async function measure (ctx: Context, tool: ToolName, scenario: Scenario, target: Target, method: 'GET' | 'POST', round: number, position: number): Promise<RunRecord> {
  const spec = {
    ...benchRequest(target.url, method, target.headers),
    connections: ctx.options.connections,
    cpu: ctx.loadCpu,
    scratch: ctx.scratch
  }
  if (ctx.options.warmup > 0) await runLoad(tool, { ...spec, seconds: ctx.options.warmup })
  if (target.logFile !== undefined) truncateSync(target.logFile, 0)
  const before = cpuSeconds(target.cpuPids)
  const result = await runLoad(tool, { ...spec, seconds: ctx.options.duration })
  const after = cpuSeconds(target.cpuPids)
  const record: RunRecord = {
    round,
    position,
    method,
    scenario: scenario.id,
    ...result,
    cpuUsPerRequest: before === null || after === null || result.requests === 0 ? null : round2((after - before) * 1e6 / result.requests)
  }
  if (target.logFile !== undefined) {
    // The gateway buffers its log lines for up to FLUSH_INTERVAL_MS (src/logging.ts): wait them out.
    await sleep(FLUSH_INTERVAL_MS * 3)
    record.logLines = countLines(target.logFile)
    truncateSync(target.logFile, 0)
  }
  return record
}

function round2 (n: number): number { return round(n, 2) }

// --- the report --------------------------------------------------------------------------

export interface SummaryRow {
  scenario: string
  label: string
  method: 'GET' | 'POST'
  rps: number
  p50Ms: number
  p99Ms: number
  errors: number
  non2xx: number
  cpuUsPerRequest: number | null
  vsUpstream: { median: number, rounds: number[] }
  vsBare: { median: number, rounds: number[] }
}

function summarize (runs: RunRecord[], scenarioList: Scenario[], methods: Array<'GET' | 'POST'>): SummaryRow[] {
  const rows: SummaryRow[] = []
  const rpsOf = (scenario: string, method: string, roundNo: number): number | undefined =>
    runs.find((r) => r.scenario === scenario && r.method === method && r.round === roundNo)?.rps
  for (const method of methods) {
    for (const s of scenarioList) {
      const mine = runs.filter((r) => r.scenario === s.id && r.method === method)
      if (mine.length === 0) continue
      const ratio = (other: string): number[] => mine.map((r) => {
        const o = rpsOf(other, method, r.round)
        return o === undefined || o === 0 ? Number.NaN : round(r.rps / o, 3)
      })
      const vsUpstream = ratio('upstream')
      const vsBare = ratio('bare-proxy')
      const cpu = mine.map((r) => r.cpuUsPerRequest).filter((c): c is number => c !== null)
      rows.push({
        scenario: s.id,
        label: s.label,
        method,
        rps: round(median(mine.map((r) => r.rps)), 0),
        p50Ms: round(median(mine.map((r) => r.p50Ms)), 3),
        p99Ms: round(median(mine.map((r) => r.p99Ms)), 3),
        errors: mine.reduce((a, r) => a + r.errors, 0),
        non2xx: mine.reduce((a, r) => a + r.non2xx, 0),
        cpuUsPerRequest: cpu.length === 0 ? null : round(median(cpu), 1),
        vsUpstream: { median: round(median(vsUpstream), 3), rounds: vsUpstream },
        vsBare: { median: round(median(vsBare), 3), rounds: vsBare }
      })
    }
  }
  return rows
}

function fmtRatio (r: { median: number, rounds: number[] }): string {
  if (!Number.isFinite(r.median)) return '—'
  const each = r.rounds.length > 1 ? ` (${r.rounds.map((x) => x.toFixed(2)).join(' ')})` : ''
  return `${r.median.toFixed(2)}×${each}`
}

export function formatTable (rows: SummaryRow[]): string {
  const header = ['scenario', 'method', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'CPU µs/req', '× upstream', '× bare http-proxy']
  const body = rows.map((r) => [
    r.scenario, r.method, String(r.rps), r.p50Ms.toFixed(2), r.p99Ms.toFixed(2), String(r.errors), String(r.non2xx),
    r.cpuUsPerRequest === null ? '—' : r.cpuUsPerRequest.toFixed(0),
    fmtRatio(r.vsUpstream), r.scenario === 'bare-proxy' ? '1.00×' : fmtRatio(r.vsBare)
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)))
  const line = (cells: string[]): string => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |'
  return [line(header), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line)].join('\n')
}

function gitRevision (): string {
  const rev = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' })
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' })
  return rev.status === 0 ? rev.stdout.trim() + (dirty.stdout.trim() === '' ? '' : ' (uncommitted changes)') : 'unknown'
}

// --- main --------------------------------------------------------------------------------

async function main (): Promise<number> {
  const options = parseOptions(process.argv.slice(2))
  installCleanup()
  const pinning = pinningPossible()
  const pin = options.pin && pinning.ok
  const { tool, version: toolVersion, note: toolNote } = detectTool(options.tool)
  const notes: string[] = []
  if (toolNote !== undefined) notes.push(toolNote)
  if (options.pin && !pinning.ok) notes.push(`not pinned: ${pinning.reason}`)
  if (options.workers !== null) notes.push(`--workers ${options.workers}: nothing is pinned; Portcullis in one process vs "portcullis start --workers ${options.workers}"`)
  const startedAt = new Date()
  const loadAtStart = loadavg()
  const scratch = scratchDir('portcullis-bench-')
  const problems: string[] = []
  const runs: RunRecord[] = []
  let scenarioList: Scenario[] = []
  try {
    const loadCpu = pin ? 1 : null
    const { proc: upstream, origin: upstreamOrigin } = await startBenchUpstream(scratch, loadCpu)
    const ctx: Context = { options, scratch, upstreamOrigin, proxyCpu: pin ? 0 : null, loadCpu }
    scenarioList = scenarios(ctx, upstream)

    log(`bench: ${tool} ${toolVersion}, ${options.connections} connections, ${options.rounds} round(s) × ${options.methods.join('+')} × ` +
      `(${options.warmup} s warm-up + ${options.duration} s), ${pin ? 'proxy pinned to core 0, upstream + load to core 1' : 'not pinned'}`)
    // Start every scenario at once (each on its own ports), then check each does what it claims.
    const startedAll = Date.now()
    await Promise.all(scenarioList.map(async (s) => {
      if (s.skip !== undefined) return
      try {
        s.target = await s.start!()
        await s.target.check()
      } catch (err) {
        s.failure = (err as Error).message
        s.target = undefined
      }
    }))
    for (const s of scenarioList) {
      if (s.skip !== undefined) {
        log(`  skip ${s.id}: ${s.skip}`)
        notes.push(`${s.id}: ${s.skip}`)
      } else if (s.target === undefined) {
        problems.push(`${s.id}: ${s.failure ?? 'did not start'}`)
        log(`  FAILED ${s.id}: ${s.failure ?? 'did not start'}`)
      } else {
        log(`  ready ${s.id}: ${s.label}${s.target.protections.length > 0 ? ` [${s.target.protections.join(', ')}]` : ''}`)
        if (s.missing !== undefined && s.missing.length > 0) notes.push(`${s.id}: not included yet: ${s.missing.join('; ')}`)
      }
    }
    log(`  (started and checked in ${((Date.now() - startedAll) / 1000).toFixed(1)} s)`)

    for (let r = 1; r <= options.rounds; r++) {
      for (const method of options.methods) {
        const order = roundOrder(scenarioList.filter((s): s is Scenario & { target: Target } => s.target !== undefined), r)
        for (const [position, s] of order.entries()) {
          try {
            const rec = await measure(ctx, tool, s, s.target, method, r, position)
            runs.push(rec)
            log(`  round ${r} ${method.padEnd(4)} ${s.id.padEnd(24)} ${rec.rps.toFixed(0).padStart(7)} req/s  p50 ${rec.p50Ms.toFixed(2)} ms  ` +
              `p99 ${rec.p99Ms.toFixed(2)} ms  errors ${rec.errors}  non-2xx ${rec.non2xx}` +
              (rec.cpuUsPerRequest === null ? '' : `  ${rec.cpuUsPerRequest.toFixed(0)} µs CPU/req`))
            if (rec.errors > 0 || rec.non2xx > 0) problems.push(`${s.id} ${method} round ${r}: ${rec.errors} errors, ${rec.non2xx} non-2xx responses`)
            if (rec.logLines !== undefined && rec.logLines < rec.requests) {
              problems.push(`${s.id} ${method} round ${r}: the access log has ${rec.logLines} lines for ${rec.requests} requests`)
            }
          } catch (err) {
            problems.push(`${s.id} ${method} round ${r}: ${(err as Error).message}`)
            log(`  FAILED ${s.id} ${method} round ${r}: ${(err as Error).message}`)
          }
        }
      }
    }
  } finally {
    const stopping = Date.now()
    await stopAll()
    log(`  (stopped in ${((Date.now() - stopping) / 1000).toFixed(1)} s)`)
    removeDir(scratch)
  }

  const summary = summarize(runs, scenarioList, options.methods)
  const targets = evaluateTargets(runs, options.methods)
  const report = {
    kind: options.workers === null ? 'pinned-comparison' : 'workers',
    ok: problems.length === 0,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `npm run bench --${process.argv.length > 2 ? ' ' + process.argv.slice(2).join(' ') : ''}`,
    git: gitRevision(),
    options,
    tool: { name: tool, version: toolVersion },
    pinning: pin ? { proxy: 0, upstreamAndLoad: 1 } : null,
    machine: {
      cpus: availableParallelism(),
      model: cpus()[0]?.model ?? 'unknown',
      platform: `${platform()} ${release()}`,
      node: process.version,
      loadavgAtStart: loadAtStart.map((x) => round(x, 2)),
      loadavgAtEnd: loadavg().map((x) => round(x, 2))
    },
    scenarios: scenarioList.map((s) => ({
      id: s.id,
      label: s.label,
      status: s.skip !== undefined ? 'skipped' : s.target === undefined ? 'failed' : 'measured',
      ...(s.skip === undefined ? {} : { reason: s.skip }),
      ...(s.failure === undefined ? {} : { failure: s.failure }),
      protections: s.target?.protections ?? [],
      missing: s.missing ?? []
    })),
    summary,
    targets,
    runs,
    notes,
    problems
  }
  const out = options.out ?? join(ROOT, 'bench', 'results', `bench-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  mkdirSync(join(out, '..'), { recursive: true })
  writeFileSync(out, JSON.stringify(report, null, 2) + '\n')

  process.stdout.write('\n' + formatTable(summary) + '\n\n')
  if (targets.length > 0) process.stdout.write(formatTargets(targets) + '\n\n')
  process.stdout.write(`req/s, p50 and p99 are medians over ${options.rounds} round(s); ratios are taken per round (shown in brackets) ` +
    'against the upstream alone and bare @fastify/http-proxy measured in the same round; CPU is the serving process(es) only.\n')
  const busy = report.machine.loadavgAtStart[0] > availableParallelism() * 0.5
  process.stdout.write(`load average at start ${report.machine.loadavgAtStart.join(' ')}, at end ${report.machine.loadavgAtEnd.join(' ')}` +
    (busy ? ` — WARNING: the machine was busy with other work (${availableParallelism()} cores): these figures are only indicative\n` : '\n'))
  for (const n of notes) process.stdout.write(`note: ${n}\n`)
  for (const p of problems) process.stdout.write(`PROBLEM: ${p}\n`)
  process.stdout.write(`report: ${out} (${statSync(out).size} bytes)\n`)
  return problems.length === 0 ? 0 : 1
}

function log (line: string): void {
  process.stderr.write(line + '\n')
}

const argv = process.argv.slice(2)
const entry = argv.includes('--scale') || argv.includes('--scale-quick')
  ? async () => await (await import('./scale.js')).runScale(argv)
  : main
entry().then((code) => { process.exitCode = code }, async (err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`)
  await stopAll()
  process.exitCode = 1
})

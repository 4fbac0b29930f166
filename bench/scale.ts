/**
 * `npm run bench -- --scale` (issue 19, item 5, the first three rows): how the cost of a request,
 * the start-up time and the memory grow with the size of the config and the number of idle
 * clients. Real gateway processes (the built CLI, generated JSON configs) behind the benchmark's
 * upstream, pinned like the benchmark (gateways on core 0, upstream and load on core 1):
 *   - routes: N routes with distinct prefixes (/s0/api, /s1/api, …); the request hits the LAST
 *     declared one (/api/people), the fair worst case for any lookup that walks the list;
 *   - API keys: N `apiKeys[]` entries with `keyHash` (sha256$…, as `portcullis api-key` prints);
 *     the route takes `auth: [apiKey]` and the request carries the last declared key;
 *   - idle keep-alive clients: N connections that each made one request and stay open (held by
 *     this process, separate from the load's connections).
 * For one dimension every size runs side by side; then `--rounds` rounds of one `--seconds` load
 * on each, the order reversed every other round; the figure is the per-round ratio of CPU per
 * request against the smallest size (median and quartiles), next to start-up time (spawn to the
 * first answer of /healthz, polled every 50 ms) and RSS after a warm-up. Nothing here judges speed.
 */
import { createHash } from 'node:crypto'
import { closeSync, mkdirSync, openSync, statSync, writeSync, writeFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { availableParallelism, loadavg } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import {
  BENCH_GET_PATH, Proc, ROOT, builtFile, cpuSeconds, detectTool, freePort, httpCall, installCleanup, median, pinningPossible, removeDir, round, rssKiB,
  runLoad, scratchDir, sleep, startBenchUpstream, stopAll, waitForHttp, type ToolName
} from './lib.js'

const USAGE = `Usage: npm run bench -- --scale [options]   (or --scale-quick: tiny sizes, for a test)

  --routes LIST       route counts (default 1,100,1000,10000; the first is the baseline)
  --keys LIST         API key counts (default 10,10000,1000000)
  --idle LIST         idle keep-alive connections (default 100,10000)
  --dimensions LIST   routes,keys,idle (default all three)
  --rounds N          paired rounds per dimension (default 6)
  --seconds S         length of each load run (default 2)
  --warmup S          load on each gateway before measuring (default 1)
  --connections N     load connections (default 20)
  --start-timeout S   give up on a gateway that does not answer within S seconds (default 180)
  --tool wrk|autocannon
  --no-pin            do not pin with taskset
  --out FILE          the JSON report (default bench/results/scale-<time>.json)
`

type Dimension = 'routes' | 'keys' | 'idle'
const DIMENSIONS: readonly Dimension[] = ['routes', 'keys', 'idle']

interface ScaleOptions {
  sizes: Record<Dimension, number[]>
  dimensions: Dimension[]
  rounds: number
  seconds: number
  warmup: number
  connections: number
  startTimeoutMs: number
  tool: string | undefined
  pin: boolean
  out: string | null
  quick: boolean
}

function parseScaleOptions (argv: string[]): ScaleOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      scale: { type: 'boolean', default: false },
      'scale-quick': { type: 'boolean', default: false },
      routes: { type: 'string' },
      keys: { type: 'string' },
      idle: { type: 'string' },
      dimensions: { type: 'string' },
      rounds: { type: 'string' },
      seconds: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      'start-timeout': { type: 'string' },
      tool: { type: 'string' },
      'no-pin': { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false }
    }
  })
  if (values.help) { process.stdout.write(USAGE); process.exit(0) }
  const quick = values['scale-quick']
  const int = (name: string, value: string | undefined, fallback: number, min: number, max: number): number => {
    if (value === undefined) return fallback
    const n = Number(value)
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}, not "${value}"\n${USAGE}`)
    return n
  }
  const list = (name: string, value: string | undefined, fallback: number[], min: number, max: number): number[] =>
    value === undefined ? fallback : value.split(',').map((v) => int(name, v.trim(), 0, min, max))
  const dimensions = (values.dimensions ?? DIMENSIONS.join(',')).split(',').map((d) => d.trim())
  for (const d of dimensions) if (!DIMENSIONS.includes(d as Dimension)) throw new Error(`--dimensions: ${d} is not one of ${DIMENSIONS.join(', ')}`)
  return {
    sizes: {
      routes: list('routes', values.routes, quick ? [1, 50] : [1, 100, 1000, 10_000], 1, 100_000),
      keys: list('keys', values.keys, quick ? [10, 100] : [10, 10_000, 1_000_000], 1, 2_000_000),
      idle: list('idle', values.idle, quick ? [0, 10] : [100, 10_000], 0, 15_000)
    },
    dimensions: dimensions as Dimension[],
    rounds: int('rounds', values.rounds, quick ? 2 : 6, 1, 50),
    seconds: int('seconds', values.seconds, quick ? 1 : 2, 1, 60),
    warmup: int('warmup', values.warmup, quick ? 0 : 1, 0, 60),
    connections: int('connections', values.connections, quick ? 5 : 20, 1, 1000),
    startTimeoutMs: int('start-timeout', values['start-timeout'], 180, 1, 3600) * 1000,
    tool: values.tool,
    pin: !values['no-pin'] && pinningPossible().ok,
    out: values.out ?? null,
    quick
  }
}

// --- configs -------------------------------------------------------------------------------

const API_KEY_HEADER = 'x-api-key'
/** The key of the i-th generated API key (plain ASCII, ≥ 16 characters). */
const apiKey = (i: number): string => `scale-bench-key-${i}-0123456789abcdef`

/**
 * The config of one gateway of a dimension, written to `file` (JSON; the key list is streamed
 * out in chunks, a million entries being about 110 MB). Returns the headers the request needs.
 */
function writeConfig (file: string, dimension: Dimension, size: number, port: number, upstream: string): Record<string, string> {
  const server = { host: '127.0.0.1', port, metrics: { enabled: false }, ...(dimension === 'idle' ? { timeouts: { keepAlive: '10m' } } : {}) }
  const head = { server, logging: { level: 'warn', accessLog: false }, tracing: { enabled: false } }
  const target = { name: 'people', prefix: '/api/people', upstream: `${upstream}/api/people`, timeout: '30s', ...(dimension === 'keys' ? { auth: ['apiKey'] } : {}) }
  const fd = openSync(file, 'w')
  try {
    writeSync(fd, JSON.stringify(head).slice(0, -1) + ',"routes":[')
    const others = dimension === 'routes' ? size - 1 : 0
    let chunk: string[] = []
    const flush = (): void => { if (chunk.length > 0) writeSync(fd, chunk.join(',') + ','); chunk = [] }
    for (let i = 0; i < others; i++) {
      chunk.push(JSON.stringify({ name: `s${i}`, prefix: `/s${i}/api`, upstream: `${upstream}/s${i}`, timeout: '30s' }))
      if (chunk.length === 5_000) flush()
    }
    flush()
    writeSync(fd, JSON.stringify(target) + ']')
    if (dimension === 'keys') {
      writeSync(fd, ',"apiKeys":[')
      for (let i = 0; i < size; i++) {
        const hash = 'sha256$' + createHash('sha256').update(apiKey(i), 'utf8').digest('hex')
        chunk.push(`{"name":"k${i}","keyHash":"${hash}","scopes":[]}`)
        if (chunk.length === 20_000 || i === size - 1) { writeSync(fd, chunk.join(',') + (i === size - 1 ? '' : ',')); chunk = [] }
      }
      writeSync(fd, ']')
    }
    writeSync(fd, '}\n')
  } finally {
    closeSync(fd)
  }
  return dimension === 'keys' ? { [API_KEY_HEADER]: apiKey(size - 1) } : {}
}

// --- idle clients --------------------------------------------------------------------------

/** `count` connections to `port`, each after one answered GET /healthz, left open and idle. */
async function openIdle (port: number, count: number): Promise<{ sockets: Socket[], failed: number }> {
  const sockets: Socket[] = []
  let failed = 0
  const one = async (): Promise<void> => await new Promise<void>((resolve) => {
    const socket = connect(port, '127.0.0.1')
    const fail = (): void => { failed++; socket.destroy(); resolve() }
    socket.setTimeout(30_000, fail)
    socket.once('error', fail)
    socket.once('connect', () => socket.write('GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n'))
    socket.once('data', (chunk: Buffer) => {
      socket.setTimeout(0)
      socket.removeListener('error', fail)
      socket.on('error', () => {}) // counted as dropped at the end
      socket.on('data', () => {})
      if (chunk.toString('latin1').startsWith('HTTP/1.1 200')) sockets.push(socket)
      else fail()
      resolve()
    })
  })
  // In batches of 250: 10,000 connects at once overflow the listen backlog (511 by default).
  for (let done = 0; done < count; done += 250) await Promise.all(Array.from({ length: Math.min(250, count - done) }, one))
  return { sockets, failed }
}

// --- statistics ----------------------------------------------------------------------------

/**
 * Median and quartiles, interpolated between neighbours (R's type 7, as numpy's default). Not
 * bench/ab.ts's `spread`: importing ab.ts runs its command line.
 */
function quartiles (values: readonly number[]): { median: number, q1: number, q3: number } {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b)
  const q = (p: number): number => {
    if (v.length === 0) return Number.NaN
    const h = (v.length - 1) * p
    const lo = Math.floor(h)
    return v[lo] + (h - lo) * ((v[Math.min(lo + 1, v.length - 1)] ?? v[lo]) - v[lo])
  }
  return { median: round(median(v), 3), q1: round(q(0.25), 3), q3: round(q(0.75), 3) }
}

// --- one dimension -------------------------------------------------------------------------

interface Gateway {
  size: number
  proc: Proc
  url: string
  headers: Record<string, string>
  startupMs: number
  configBytes: number
  idle?: { sockets: Socket[], failed: number, rssBeforeKiB: number | null, rssAfterKiB: number | null }
}

interface Row {
  size: number
  status: 'measured' | 'failed'
  reason?: string
  startupMs?: number
  configMiB?: number
  rssMiB?: number | null
  cpuUsPerRequest?: number
  ratio?: { median: number, q1: number, q3: number, rounds: number[] }
  requests?: number
  errors?: number
  idle?: { open: number, failed: number, dropped: number, rssPerConnectionKiB: number | null }
}

interface DimensionReport { dimension: Dimension, hit: string, loadavgAtStart: number[], loadavgAtEnd: number[], rows: Row[] }

const HIT: Record<Dimension, string> = {
  routes: `GET ${BENCH_GET_PATH} on the last declared route (/api/people; the others are /sN/api)`,
  keys: `GET ${BENCH_GET_PATH} with the last declared API key in X-Api-Key (route auth: [apiKey])`,
  idle: `GET ${BENCH_GET_PATH} on the load's own connections while N others stay open and idle`
}

async function startGateway (dimension: Dimension, size: number, upstream: string, o: ScaleOptions, scratch: string): Promise<Gateway> {
  const port = await freePort()
  const file = join(scratch, `${dimension}-${size}.json`)
  const headers = writeConfig(file, dimension, size, port, upstream)
  const configBytes = statSync(file).size
  const t0 = performance.now()
  const proc = new Proc(`${dimension}-${size}`, process.execPath, [builtFile('src/cli.js'), 'start', '--config', file], {
    cpu: o.pin ? 0 : null, stdoutFile: join(scratch, `${dimension}-${size}.log`), stderrFile: join(scratch, `${dimension}-${size}.stderr.log`), stdinPipe: true
  })
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(url + '/healthz', proc, o.startTimeoutMs)
  const startupMs = round(performance.now() - t0, 0)
  const ok = await httpCall(url + BENCH_GET_PATH, { headers })
  if (ok.status !== 200 || !ok.body.includes('Ada Lovelace')) throw new Error(`${proc.name}: GET ${BENCH_GET_PATH} answered ${ok.status}: ${ok.body.slice(0, 200)}`)
  if (dimension === 'keys') {
    const refused = await httpCall(url + BENCH_GET_PATH, { headers: { [API_KEY_HEADER]: apiKey(size) } })
    if (refused.status !== 401) throw new Error(`${proc.name}: an unknown API key answered ${refused.status}, not 401`)
  }
  return { size, proc, url, headers, startupMs, configBytes }
}

async function runDimension (dimension: Dimension, upstream: string, tool: ToolName, o: ScaleOptions, scratch: string): Promise<DimensionReport> {
  const report: DimensionReport = { dimension, hit: HIT[dimension], loadavgAtStart: loadavg().map((x) => round(x, 2)), loadavgAtEnd: [], rows: [] }
  const gateways: Gateway[] = []
  try {
    for (const size of o.sizes[dimension]) {
      try {
        gateways.push(await startGateway(dimension, size, upstream, o, scratch))
        log(`scale: ${dimension} ${size}: listening after ${gateways[gateways.length - 1].startupMs} ms`)
      } catch (err) {
        report.rows.push({ size, status: 'failed', reason: (err as Error).message.slice(0, 2_000) })
        log(`scale: ${dimension} ${size}: FAILED: ${(err as Error).message.split('\n')[0]}`)
      }
    }
    const spec = (g: Gateway, seconds: number): Parameters<typeof runLoad>[1] =>
      ({ url: g.url + BENCH_GET_PATH, method: 'GET', headers: g.headers, connections: o.connections, seconds, cpu: o.pin ? 1 : null, scratch })
    const stats = new Map<Gateway, { cpu: number[], requests: number, errors: number, rss: number | null }>()
    for (const g of gateways) {
      if (o.warmup > 0) await runLoad(tool, spec(g, o.warmup))
      stats.set(g, { cpu: [], requests: 0, errors: 0, rss: rssKiB(g.proc.pid) })
      if (dimension === 'idle') {
        const before = rssKiB(g.proc.pid)
        const opened = await openIdle(Number(new URL(g.url).port), g.size)
        await sleep(500)
        g.idle = { ...opened, rssBeforeKiB: before, rssAfterKiB: rssKiB(g.proc.pid) }
      }
    }
    for (let r = 1; r <= o.rounds; r++) {
      const order = r % 2 === 1 ? gateways : [...gateways].reverse()
      for (const g of order) {
        const before = cpuSeconds([g.proc.pid])
        const load = await runLoad(tool, spec(g, o.seconds))
        const after = cpuSeconds([g.proc.pid])
        const s = stats.get(g) as { cpu: number[], requests: number, errors: number }
        const us = before === null || after === null || load.requests === 0 ? Number.NaN : (after - before) * 1e6 / load.requests
        s.cpu.push(us)
        s.requests += load.requests
        s.errors += load.errors + load.non2xx
        log(`scale: ${dimension} ${String(g.size).padStart(7)} round ${r}: ${load.requests} requests, ${round(us, 1)} µs CPU/req, errors ${load.errors + load.non2xx}`)
      }
    }
    const base = gateways[0]
    for (const g of gateways) {
      const s = stats.get(g) as { cpu: number[], requests: number, errors: number, rss: number | null }
      const ratios = s.cpu.map((us, i) => round(us / (stats.get(base)?.cpu[i] ?? Number.NaN), 3))
      const row: Row = {
        size: g.size,
        status: 'measured',
        startupMs: g.startupMs,
        configMiB: round(g.configBytes / 1_048_576, 2),
        rssMiB: s.rss === null ? null : round(s.rss / 1024, 1),
        cpuUsPerRequest: round(median(s.cpu), 1),
        ratio: { ...quartiles(ratios), rounds: ratios },
        requests: s.requests,
        errors: s.errors
      }
      if (g.idle !== undefined) {
        const dropped = g.idle.sockets.filter((sock) => sock.destroyed || sock.readyState !== 'open').length
        const grew = g.idle.rssBeforeKiB === null || g.idle.rssAfterKiB === null || g.size === 0 ? null : round((g.idle.rssAfterKiB - g.idle.rssBeforeKiB) / g.size, 2)
        row.idle = { open: g.idle.sockets.length - dropped, failed: g.idle.failed, dropped, rssPerConnectionKiB: grew }
        row.rssMiB = g.idle.rssAfterKiB === null ? null : round(g.idle.rssAfterKiB / 1024, 1)
        row.errors = (row.errors ?? 0) + g.idle.failed + dropped
      }
      report.rows.push(row)
    }
    report.rows.sort((a, b) => a.size - b.size)
  } finally {
    for (const g of gateways) for (const sock of g.idle?.sockets ?? []) sock.destroy()
    await Promise.all(gateways.map(async (g) => await g.proc.stop()))
    report.loadavgAtEnd = loadavg().map((x) => round(x, 2))
  }
  return report
}

function formatTable (reports: readonly DimensionReport[]): string {
  const lines = ['| dimension | size | start-up ms | RSS MiB | CPU µs/req | CPU/req vs smallest: median (quartiles) | requests | errors | load avg (start → end) |',
    '|---|---:|---:|---:|---:|---|---:|---:|---|']
  for (const d of reports) {
    for (const r of d.rows) {
      const load = `${d.loadavgAtStart[0]} → ${d.loadavgAtEnd[0]}`
      if (r.status === 'failed') { lines.push(`| ${d.dimension} | ${r.size} | failed: ${(r.reason ?? '').split('\n')[0].slice(0, 120)} | | | | | | ${load} |`); continue }
      const rss = `${r.rssMiB ?? '?'}${r.idle?.rssPerConnectionKiB != null ? ` (${r.idle.rssPerConnectionKiB} KiB/conn)` : ''}`
      const ratio = r.ratio === undefined ? '' : `${r.ratio.median.toFixed(3)}× (${r.ratio.q1.toFixed(3)}–${r.ratio.q3.toFixed(3)})`
      lines.push(`| ${d.dimension} | ${r.size} | ${r.startupMs ?? ''} | ${rss} | ${r.cpuUsPerRequest ?? ''} | ${ratio} | ${r.requests ?? ''} | ${r.errors ?? ''} | ${load} |`)
    }
  }
  return lines.join('\n')
}

function log (line: string): void {
  process.stderr.write(line + '\n')
}

/** `npm run bench -- --scale [options]`: returns the exit code (1 when any row failed or saw errors). */
export async function runScale (argv: string[]): Promise<number> {
  const o = parseScaleOptions(argv)
  installCleanup()
  const { tool, version } = detectTool(o.tool)
  const scratch = scratchDir('portcullis-scale-')
  const startedAt = new Date()
  const reports: DimensionReport[] = []
  try {
    const { origin } = await startBenchUpstream(scratch, o.pin ? 1 : null)
    log(`scale: ${o.dimensions.join(', ')}; ${o.rounds} rounds × ${o.seconds} s, ${o.connections} connections, ${tool} ${version}, ${o.pin ? 'gateways pinned to core 0, upstream + load to core 1' : 'not pinned'}; load average ${loadavg().map((x) => round(x, 2)).join(' ')}`)
    for (const d of o.dimensions) reports.push(await runDimension(d, origin, tool, o, scratch))
  } finally {
    await stopAll()
    removeDir(scratch)
  }
  const problems = reports.flatMap((d) => d.rows.filter((r) => r.status === 'failed' || (r.errors ?? 0) > 0)
    .map((r) => `${d.dimension} ${r.size}: ${r.status === 'failed' ? (r.reason ?? '').split('\n')[0] : `${r.errors ?? 0} errors`}`))
  const report = {
    kind: 'scale',
    ok: problems.length === 0,
    command: `npm run bench -- ${argv.join(' ')}`,
    startedAt: startedAt.toISOString(),
    options: { ...o, sizes: o.sizes },
    tool: { name: tool, version },
    pinning: o.pin ? { gateways: 0, upstreamAndLoad: 1 } : null,
    machine: { cpus: availableParallelism(), node: process.version },
    dimensions: reports,
    problems
  }
  const out = o.out ?? join(ROOT, 'bench', 'results', `scale-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  mkdirSync(join(out, '..'), { recursive: true })
  writeFileSync(out, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write('\n' + formatTable(reports) + '\n\n')
  for (const d of reports) process.stdout.write(`${d.dimension}: ${d.hit}\n`)
  process.stdout.write('CPU/req ratios are per round against the smallest size, the order reversed every other round; start-up is spawn → first /healthz answer (50 ms polls); RSS after warm-up (idle: after the idle connections opened).\n')
  for (const p of problems) process.stdout.write(`PROBLEM: ${p}\n`)
  process.stdout.write(`report: ${out}\n`)
  return problems.length === 0 ? 0 : 1
}

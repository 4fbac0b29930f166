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
 *
 * Three more dimensions load with a client inside this process (undici, a fixed number of
 * requests; with pinning this process moves to core 1 too), because each request differs:
 *   - jwks: gateways verifying RS256 tokens against a JWKS of 1 and 100 keys served by this
 *     process (tokens signed with the last key), and against a fixed RS256 or ES256 public key;
 *     each loaded with tokens never seen before (pre-signed, each sent once) and with one token
 *     reused. CPU per request; per round, 100 keys against 1, and never seen minus reused.
 *   - bodies: uploads (POST to the upstream's /blob, which discards and answers small) and
 *     downloads (GET /blob/N, generated) of 1 KiB, 1 MiB and 100 MiB, straight to the upstream,
 *     through nginx and through Portcullis, alternating; MiB/s, the per-round ratio to nginx, and
 *     the peak RSS (VmHWM, reset before) of each proxy during the largest transfers.
 *   - c1: one connection, one request at a time, to the upstream directly, through nginx and
 *     through Portcullis, alternating: latency quartiles, and per round what the hop adds (p50
 *     through the proxy minus p50 direct).
 */
import { spawnSync } from 'node:child_process'
import { createHash, generateKeyPair, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { closeSync, mkdirSync, openSync, statSync, writeSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { cpus, loadavg, release } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { promisify, parseArgs } from 'node:util'
import { createSigner } from 'fast-jwt'
import { Pool } from 'undici'
import {
  BENCH_GET_PATH, Proc, ROOT, builtFile, cpuSeconds, detectTool, freePort, httpCall, installCleanup, median, nginxMissing, peakRssKiB, pinningPossible, removeDir,
  resetPeakRss, round, rssKiB, runLoad, scratchDir, sleep, startBenchUpstream, startNginx, stopAll, waitForHttp, type ToolName
} from './lib.js'
import { NODE_FLAGS } from '../src/node-flags.js'
import { parseSize } from '../schemas/common.js'

const USAGE = `Usage: npm run bench -- --scale [options]   (or --scale-quick: tiny sizes, for a test)

  --routes LIST       route counts (default 1,100,1000,10000; the first is the baseline)
  --keys LIST         API key counts (default 10,10000,1000000)
  --idle LIST         idle keep-alive connections (default 100,10000)
  --jwks-keys LIST    JWKS sizes (default 1,100)
  --tokens N          requests per jwks run: that many tokens signed for each "never seen" run (default 2000)
  --bodies LIST       body sizes, both ways (default 1kb,1mb,100mb)
  --body-connections N  connections of the bodies runs (default 2)
  --c1-requests N     requests per c1 run (default 2000)
  --only LIST         routes,keys,idle,jwks,bodies,c1 (default all; --dimensions is the same)
  --rounds N          paired rounds per dimension (default 6)
  --seconds S         length of each load run (default 2)
  --warmup S          load on each gateway before measuring (default 1)
  --connections N     load connections (default 20)
  --start-timeout S   give up on a gateway that does not answer within S seconds (default 180)
  --tool wrk|autocannon
  --no-pin            do not pin with taskset
  --out FILE          the JSON report (default bench/results/scale-<time>.json)
`

type Dimension = 'routes' | 'keys' | 'idle' | 'jwks' | 'bodies' | 'c1'
const DIMENSIONS: readonly Dimension[] = ['routes', 'keys', 'idle', 'jwks', 'bodies', 'c1']
/** The dimensions loaded by wrk or autocannon, one gateway per size. */
type SizeDimension = 'routes' | 'keys' | 'idle'

interface ScaleOptions {
  sizes: Record<SizeDimension | 'jwks' | 'bodies', number[]>
  dimensions: Dimension[]
  tokens: number
  bodyConnections: number
  c1Requests: number
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
      only: { type: 'string' },
      'jwks-keys': { type: 'string' },
      tokens: { type: 'string' },
      bodies: { type: 'string' },
      'body-connections': { type: 'string' },
      'c1-requests': { type: 'string' },
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
  if (values.only !== undefined && values.dimensions !== undefined) throw new Error(`--only and --dimensions are the same option: give one\n${USAGE}`)
  const dimensions = (values.only ?? values.dimensions ?? DIMENSIONS.join(',')).split(',').map((d) => d.trim())
  for (const d of dimensions) if (!DIMENSIONS.includes(d as Dimension)) throw new Error(`--only: ${d} is not one of ${DIMENSIONS.join(', ')}`)
  const bodies = values.bodies === undefined
    ? (quick ? [1024, 1_048_576] : [1024, 1_048_576, 104_857_600])
    : values.bodies.split(',').map((v) => {
      const bytes = /^[0-9]+(b|kb|mb|gb)$/.test(v.trim()) ? parseSize(v.trim()) : Number.NaN
      if (!(bytes >= 1 && bytes <= 1_073_741_824)) throw new Error(`--bodies: "${v}" is not a size from 1b to 1gb such as 1kb, 1mb, 100mb\n${USAGE}`)
      return bytes
    })
  return {
    sizes: {
      routes: list('routes', values.routes, quick ? [1, 50] : [1, 100, 1000, 10_000], 1, 100_000),
      keys: list('keys', values.keys, quick ? [10, 100] : [10, 10_000, 1_000_000], 1, 2_000_000),
      idle: list('idle', values.idle, quick ? [0, 10] : [100, 10_000], 0, 15_000),
      jwks: list('jwks-keys', values['jwks-keys'], quick ? [1, 3] : [1, 100], 1, 1000),
      bodies
    },
    dimensions: dimensions as Dimension[],
    tokens: int('tokens', values.tokens, quick ? 100 : 2000, 10, 100_000),
    bodyConnections: int('body-connections', values['body-connections'], 2, 1, 16),
    c1Requests: int('c1-requests', values['c1-requests'], quick ? 100 : 2000, 10, 100_000),
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

/** What every generated config starts with: loopback, no metrics, no tracing, no access log. */
function configHead (port: number, server: Record<string, unknown> = {}): Record<string, unknown> {
  return { server: { host: '127.0.0.1', port, metrics: { enabled: false }, ...server }, logging: { level: 'warn', accessLog: false }, tracing: { enabled: false } }
}

/** The benchmark's route, /api/people → the upstream's /api/people. */
const peopleRoute = (upstream: string, more: Record<string, unknown> = {}): Record<string, unknown> =>
  ({ name: 'people', prefix: '/api/people', upstream: `${upstream}/api/people`, timeout: '30s', ...more })

const API_KEY_HEADER = 'x-api-key'
/** The key of the i-th generated API key (plain ASCII, ≥ 16 characters). */
const apiKey = (i: number): string => `scale-bench-key-${i}-0123456789abcdef`

/**
 * The config of one gateway of a dimension, written to `file` (JSON; the key list is streamed
 * out in chunks, a million entries being about 110 MB). Returns the headers the request needs.
 */
function writeConfig (file: string, dimension: SizeDimension, size: number, port: number, upstream: string): Record<string, string> {
  const head = configHead(port, dimension === 'idle' ? { timeouts: { keepAlive: '10m' } } : {})
  const target = peopleRoute(upstream, dimension === 'keys' ? { auth: ['apiKey'] } : {})
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

/** Median and quartiles over rounds, and each round's value. */
interface Spread { median: number, q1: number, q3: number, rounds: number[] }

interface Row {
  size: number
  /** What the row is, where the size alone does not say (jwks, bodies, c1). */
  label?: string
  status: 'measured' | 'failed' | 'skipped'
  reason?: string
  startupMs?: number
  configMiB?: number
  rssMiB?: number | null
  cpuUsPerRequest?: number
  ratio?: { median: number, q1: number, q3: number, rounds: number[] }
  requests?: number
  errors?: number
  idle?: { open: number, failed: number, dropped: number, rssPerConnectionKiB: number | null }
  /** jwks, RS256/ES256 never seen: CPU µs per request minus the reused token's, per round. */
  checkUs?: Spread
  /** bodies: MiB/s, per round. */
  mibPerSecond?: Spread
  /** bodies, Portcullis: MiB/s ÷ nginx's, per round. */
  vsNginx?: Spread
  /** bodies: CPU ms of the proxy per MiB moved (median over rounds). */
  cpuMsPerMiB?: number
  /** bodies, the largest size: the proxy's peak RSS during those transfers (VmHWM), and its RSS before. */
  peakRssMiB?: number | null
  rssBeforeMiB?: number | null
  /** c1: latency quartiles in µs (each the median over rounds). */
  latencyUs?: { p25: number, p50: number, p75: number }
  /** c1: p50 through the proxy minus p50 direct, per round. */
  hopUs?: Spread
}

interface DimensionReport { dimension: Dimension, hit: string, loadavgAtStart: number[], loadavgAtEnd: number[], rows: Row[] }

const spread = (values: readonly number[], digits = 3): Spread => ({ ...quartiles(values), rounds: values.map((v) => round(v, digits)) })

const HIT: Record<Dimension, string> = {
  routes: `GET ${BENCH_GET_PATH} on the last declared route (/api/people; the others are /sN/api)`,
  keys: `GET ${BENCH_GET_PATH} with the last declared API key in X-Api-Key (route auth: [apiKey])`,
  idle: `GET ${BENCH_GET_PATH} on the load's own connections while N others stay open and idle`,
  jwks: `GET ${BENCH_GET_PATH} with a bearer token (route auth: [jwt]): never seen (each pre-signed token sent once) or one token reused; RS256 from a JWKS of N keys (signed with the last) or a fixed key, ES256 a fixed key`,
  bodies: 'POST /blob/ of N bytes (the upstream discards it and answers {"bytes":N}) and GET /blob/N (N generated bytes), straight to the upstream, through nginx and through Portcullis',
  c1: `GET ${BENCH_GET_PATH}, one connection, one request at a time, straight to the upstream, through nginx and through Portcullis`
}

/** The built CLI's `start` with `file`, timed from spawn to the first answer of /healthz. */
async function launch (name: string, file: string, port: number, o: ScaleOptions, scratch: string): Promise<{ proc: Proc, url: string, startupMs: number }> {
  const t0 = performance.now()
  const proc = new Proc(name, process.execPath, [...NODE_FLAGS, builtFile('src/cli.js'), 'start', '--config', file], {
    cpu: o.pin ? 0 : null, stdoutFile: join(scratch, `${name}.log`), stderrFile: join(scratch, `${name}.stderr.log`), stdinPipe: true
  })
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(url + '/healthz', proc, o.startTimeoutMs)
  return { proc, url, startupMs: round(performance.now() - t0, 0) }
}

async function startGateway (dimension: SizeDimension, size: number, upstream: string, o: ScaleOptions, scratch: string): Promise<Gateway> {
  const port = await freePort()
  const file = join(scratch, `${dimension}-${size}.json`)
  const headers = writeConfig(file, dimension, size, port, upstream)
  const configBytes = statSync(file).size
  const { proc, url, startupMs } = await launch(`${dimension}-${size}`, file, port, o, scratch)
  const ok = await httpCall(url + BENCH_GET_PATH, { headers })
  if (ok.status !== 200 || !ok.body.includes('Ada Lovelace')) throw new Error(`${proc.name}: GET ${BENCH_GET_PATH} answered ${ok.status}: ${ok.body.slice(0, 200)}`)
  if (dimension === 'keys') {
    const refused = await httpCall(url + BENCH_GET_PATH, { headers: { [API_KEY_HEADER]: apiKey(size) } })
    if (refused.status !== 401) throw new Error(`${proc.name}: an unknown API key answered ${refused.status}, not 401`)
  }
  return { size, proc, url, headers, startupMs, configBytes }
}

async function runDimension (dimension: SizeDimension, upstream: string, tool: ToolName, o: ScaleOptions, scratch: string): Promise<DimensionReport> {
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

// --- a client in this process: a fixed number of requests, each its own ----------------------

interface OneRequest {
  method: 'GET' | 'POST'
  path: string
  headers?: Record<string, string>
  /** A buffer, or for large bodies a maker of chunks (content-length is set from `bodyBytes`). */
  body?: Buffer | (() => AsyncIterable<Buffer>)
  bodyBytes?: number
  /** The answer must have exactly this many bytes, or this text. */
  expect?: { bytes?: number, text?: string }
}

interface FixedResult { requests: number, errors: number, seconds: number, bytes: number, latenciesUs: number[], firstError?: string }

/**
 * `count` requests made by `make(i)`, at most `connections` at once over the pool's keep-alive
 * connections. Counts an error for a failed request, a status other than 200 or an answer that
 * is not what `expect` says.
 */
async function fixedLoad (pool: Pool, count: number, connections: number, make: (i: number) => OneRequest, latencies = false): Promise<FixedResult> {
  const result: FixedResult = { requests: 0, errors: 0, seconds: 0, bytes: 0, latenciesUs: [] }
  let next = 0
  const fail = (why: string): void => { result.errors++; result.firstError ??= why }
  const worker = async (): Promise<void> => {
    while (next < count) {
      const r = make(next++)
      const headers = { ...r.headers, ...(r.bodyBytes === undefined ? {} : { 'content-length': String(r.bodyBytes) }) }
      const t0 = performance.now()
      try {
        const res = await pool.request({ method: r.method, path: r.path, headers, body: typeof r.body === 'function' ? Readable.from(r.body()) : r.body })
        let bytes = 0
        let text = ''
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          bytes += chunk.length
          if (text.length < 4096) text += chunk.toString('latin1')
        }
        if (latencies) result.latenciesUs.push((performance.now() - t0) * 1000)
        result.requests++
        result.bytes += bytes + (r.bodyBytes ?? 0)
        if (res.statusCode !== 200) fail(`${r.method} ${r.path}: ${res.statusCode} ${text.slice(0, 200)}`)
        else if (r.expect?.bytes !== undefined && bytes !== r.expect.bytes) fail(`${r.method} ${r.path}: ${bytes} bytes, not ${r.expect.bytes}`)
        else if (r.expect?.text !== undefined && text !== r.expect.text) fail(`${r.method} ${r.path}: ${text.slice(0, 200)}`)
      } catch (err) {
        fail(`${r.method} ${r.path}: ${(err as Error).message}`)
      }
    }
  }
  const t0 = performance.now()
  await Promise.all(Array.from({ length: Math.min(connections, count) }, worker))
  result.seconds = (performance.now() - t0) / 1000
  return result
}

const newPool = (origin: string, connections: number): Pool =>
  new Pool(origin, { connections, keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000, headersTimeout: 300_000, bodyTimeout: 300_000 })

/** CPU µs of `pid` (and its children) per request of `load`, which ran between the two readings. */
function cpuPerRequest (before: number | null, after: number | null, requests: number): number {
  return before === null || after === null || requests === 0 ? Number.NaN : (after - before) * 1e6 / requests
}

/** `taskset` this process (every thread) to `cpu`: the in-process client runs beside the upstream, off the gateways' core. */
function pinSelf (cpu: number): void {
  const res = spawnSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)], { encoding: 'utf8' })
  if (res.status !== 0) throw new Error(`taskset -a -p -c ${cpu} ${process.pid}: ${res.stderr}`)
}

/** A row that could not be measured, and the log line saying so. */
function failedRow (dimension: Dimension, size: number, label: string, err: unknown): Row {
  log(`scale: ${dimension} ${label}: FAILED: ${(err as Error).message.split('\n')[0]}`)
  return { size, label, status: 'failed', reason: (err as Error).message.slice(0, 2_000) }
}

const loadNow = (): number[] => loadavg().map((x) => round(x, 2))

// --- jwks: key-set size, first verification vs a token seen before --------------------------------

const JWT_ISSUER = 'portcullis-scale'
const JWT_AUDIENCE = 'people-api'
const LAST_KID = 'signing-key'

interface JwtGateway { name: string, size: number, alg: 'RS256' | 'ES256', proc: Proc, url: string, startupMs: number, pool: Pool, rss: number | null }

/** A JWKS server in this process: GET /jwks-N.json → N RSA public keys, the signing key last. */
async function startJwksServer (rsaPublic: KeyObject, others: readonly KeyObject[], sizes: readonly number[]): Promise<{ server: Server, origin: string }> {
  const jwk = (key: KeyObject, kid: string): Record<string, unknown> => ({ ...key.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' })
  const docs = new Map(sizes.map((n) => [`/jwks-${n}.json`, JSON.stringify({ keys: [...others.slice(0, n - 1).map((k, i) => jwk(k, `other-${i}`)), jwk(rsaPublic, LAST_KID)] })]))
  const server = createServer((req, res) => {
    const doc = docs.get(req.url ?? '')
    res.writeHead(doc === undefined ? 404 : 200, { 'content-type': 'application/json' })
    res.end(doc ?? '{}')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
}

async function runJwks (upstream: string, o: ScaleOptions, scratch: string): Promise<DimensionReport> {
  const report: DimensionReport = { dimension: 'jwks', hit: HIT.jwks, loadavgAtStart: loadNow(), loadavgAtEnd: [], rows: [] }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const generate = promisify(generateKeyPair)
  const others = await Promise.all(Array.from({ length: Math.max(...o.sizes.jwks) - 1 }, async () => (await generate('rsa', { modulusLength: 2048 })).publicKey))
  const jwks = await startJwksServer(rsa.publicKey, others, o.sizes.jwks)
  let serial = 0
  const signers = {
    RS256: createSigner({ key: rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, algorithm: 'RS256', kid: LAST_KID, iss: JWT_ISSUER, aud: JWT_AUDIENCE, sub: 'scale-client', expiresIn: 3_600_000 }),
    ES256: createSigner({ key: ec.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, algorithm: 'ES256', iss: JWT_ISSUER, aud: JWT_AUDIENCE, sub: 'scale-client', expiresIn: 3_600_000 })
  }
  /** `n` tokens no gateway has seen (each carries its own jti). */
  const fresh = (alg: 'RS256' | 'ES256', n: number): string[] => Array.from({ length: n }, () => signers[alg]({ jti: `t${++serial}` }))
  const reused = { RS256: fresh('RS256', 1)[0], ES256: fresh('ES256', 1)[0] }
  const plan: Array<{ name: string, size: number, alg: 'RS256' | 'ES256', jwt: Record<string, unknown> }> = [
    ...o.sizes.jwks.map((n) => ({ name: `jwks-${n}`, size: n, alg: 'RS256' as const, jwt: { jwksUrl: `${jwks.origin}/jwks-${n}.json` } })),
    { name: 'RS256', size: 1, alg: 'RS256', jwt: { publicKey: rsa.publicKey.export({ type: 'spki', format: 'pem' }) } },
    { name: 'ES256', size: 1, alg: 'ES256', jwt: { publicKey: ec.publicKey.export({ type: 'spki', format: 'pem' }) } }
  ]
  const label = (name: string, mode: string): string => `${name.startsWith('jwks') ? `JWKS ${name.slice(5)} key${name === 'jwks-1' ? '' : 's'}` : `${name} public key`}, ${mode}`
  const gateways: JwtGateway[] = []
  try {
    // Started side by side; `gateways` keeps the plan's order (the first JWKS is the baseline).
    const started = await Promise.all(plan.map(async (p): Promise<JwtGateway | null> => {
      let proc: Proc | undefined
      try {
        const port = await freePort()
        const file = join(scratch, `${p.name}.json`)
        writeFileSync(file, JSON.stringify({ ...configHead(port), jwt: { algorithms: [p.alg], issuer: JWT_ISSUER, audience: JWT_AUDIENCE, ...p.jwt }, routes: [peopleRoute(upstream, { auth: ['jwt'] })] }))
        const up = await launch(p.name, file, port, o, scratch)
        proc = up.proc
        const ok = await httpCall(up.url + BENCH_GET_PATH, { headers: { authorization: `Bearer ${reused[p.alg]}` } })
        if (ok.status !== 200) throw new Error(`${p.name}: a good token answered ${ok.status}: ${ok.body.slice(0, 200)}`)
        const refused = await httpCall(up.url + BENCH_GET_PATH, { headers: { authorization: `Bearer ${reused[p.alg].slice(0, -4)}AAAA` } })
        if (refused.status !== 401) throw new Error(`${p.name}: a token with a bad signature answered ${refused.status}, not 401`)
        log(`scale: jwks ${p.name}: listening after ${up.startupMs} ms`)
        return { ...p, ...up, pool: newPool(up.url, o.connections), rss: null }
      } catch (err) {
        await proc?.stop()
        for (const mode of ['never seen', 'reused']) report.rows.push(failedRow('jwks', p.size, label(p.name, mode), err))
        return null
      }
    }))
    for (const g of started) if (g !== null) gateways.push(g)
    const get = (token: string): OneRequest => ({ method: 'GET', path: BENCH_GET_PATH, headers: { authorization: `Bearer ${token}` }, expect: { text: '{"id":1,"name":"Ada Lovelace","age":36}' } })
    type Tally = { requests: number, errors: number, firstError?: string }
    const cpu = new Map<string, { seen: number[], reused: number[], tally: Record<'seen' | 'reused', Tally> }>()
    for (const g of gateways) {
      cpu.set(g.name, { seen: [], reused: [], tally: { seen: { requests: 0, errors: 0 }, reused: { requests: 0, errors: 0 } } })
      if (o.warmup > 0) {
        const tokens = fresh(g.alg, Math.ceil(o.tokens / 2))
        await fixedLoad(g.pool, tokens.length, o.connections, (i) => get(tokens[i]))
        await fixedLoad(g.pool, tokens.length, o.connections, () => get(reused[g.alg]))
      }
      g.rss = rssKiB(g.proc.pid)
    }
    for (let r = 1; r <= o.rounds; r++) {
      // Signed before the round (on this process's core): each token goes once to each gateway of its algorithm.
      const tokens = { RS256: fresh('RS256', o.tokens), ES256: fresh('ES256', o.tokens) }
      const order = r % 2 === 1 ? gateways : [...gateways].reverse()
      for (const g of order) {
        const s = cpu.get(g.name)!
        for (const mode of (r % 2 === 1 ? ['seen', 'reused'] : ['reused', 'seen']) as Array<'seen' | 'reused'>) {
          const before = cpuSeconds([g.proc.pid])
          const load = await fixedLoad(g.pool, o.tokens, o.connections, (i) => get(mode === 'seen' ? tokens[g.alg][i] : reused[g.alg]))
          const us = cpuPerRequest(before, cpuSeconds([g.proc.pid]), load.requests)
          s[mode].push(us)
          s.tally[mode].requests += load.requests
          s.tally[mode].errors += load.errors
          s.tally[mode].firstError ??= load.firstError
          log(`scale: jwks ${g.name.padEnd(9)} ${mode === 'seen' ? 'never seen' : 'reused    '} round ${r}: ${load.requests} requests, ${round(us, 1)} µs CPU/req, errors ${load.errors}${load.firstError === undefined ? '' : ` (${load.firstError})`}`)
        }
      }
    }
    const base = gateways.find((g) => g.name.startsWith('jwks-'))
    for (const g of gateways) {
      const s = cpu.get(g.name)!
      for (const mode of ['seen', 'reused'] as const) {
        const row: Row = {
          size: g.size,
          label: label(g.name, mode === 'seen' ? 'never seen' : 'reused'),
          status: 'measured',
          startupMs: g.startupMs,
          rssMiB: g.rss === null ? null : round(g.rss / 1024, 1),
          cpuUsPerRequest: round(median(s[mode]), 1),
          requests: s.tally[mode].requests,
          errors: s.tally[mode].errors,
          ...(s.tally[mode].firstError === undefined ? {} : { reason: s.tally[mode].firstError })
        }
        if (g.name.startsWith('jwks-') && base !== undefined) row.ratio = spread(s[mode].map((us, i) => us / cpu.get(base.name)![mode][i]))
        if (!g.name.startsWith('jwks-') && mode === 'seen') row.checkUs = spread(s.seen.map((us, i) => us - s.reused[i]), 1)
        report.rows.push(row)
      }
    }
  } finally {
    await Promise.all(gateways.map(async (g) => { await g.pool.close().catch(() => {}); await g.proc.stop() }))
    await new Promise((resolve) => jwks.server.close(resolve))
    report.loadavgAtEnd = loadNow()
  }
  return report
}

// --- the contenders of bodies and c1: the upstream itself, nginx, Portcullis -------------------

interface Contender { name: 'direct' | 'nginx' | 'portcullis', url: string, proc: Proc | null, pool: Pool }

/**
 * The upstream itself, nginx (unless it is missing outside CI: then a skipped row) and Portcullis
 * from the built CLI, with `routes`. `maxBody`: both proxies accept bodies that large.
 */
async function startContenders (dimension: Dimension, upstream: Proc, origin: string, o: ScaleOptions, scratch: string, connections: number, maxBody: number | null, rows: Row[]): Promise<Contender[]> {
  const list: Contender[] = [{ name: 'direct', url: origin, proc: upstream, pool: newPool(origin, connections) }]
  const nginxSkip = nginxMissing()
  if (nginxSkip !== null) {
    log(`scale: ${dimension}: nginx: ${nginxSkip}`)
    rows.push({ size: 0, label: 'nginx', status: 'skipped', reason: nginxSkip })
  }
  const nginx = async (): Promise<Contender | null> => {
    if (nginxSkip !== null) return null
    try {
      const mib = maxBody === null ? undefined : `${Math.ceil(maxBody / 1_048_576) + 1}m`
      const { proc, url } = await startNginx({ dir: join(scratch, `nginx-${dimension}`), upstreamOrigin: origin, cpu: o.pin ? 0 : null, maxBody: mib, name: `nginx-${dimension}` })
      return { name: 'nginx', url, proc, pool: newPool(url, connections) }
    } catch (err) {
      rows.push(failedRow(dimension, 0, 'nginx', err))
      return null
    }
  }
  const portcullis = async (): Promise<Contender | null> => {
    try {
      const port = await freePort()
      const file = join(scratch, `portcullis-${dimension}.json`)
      const blob = maxBody === null ? [] : [{ name: 'blob', prefix: '/blob', upstream: `${origin}/blob`, timeout: '300s', bodyLimit: `${Math.ceil(maxBody / 1_048_576) + 1}mb` }]
      writeFileSync(file, JSON.stringify({ ...configHead(port), routes: [peopleRoute(origin), ...blob] }))
      const { proc, url, startupMs } = await launch(`portcullis-${dimension}`, file, port, o, scratch)
      log(`scale: ${dimension} portcullis: listening after ${startupMs} ms`)
      return { name: 'portcullis', url, proc, pool: newPool(url, connections) }
    } catch (err) {
      rows.push(failedRow(dimension, 0, 'portcullis', err))
      return null
    }
  }
  for (const c of await Promise.all([nginx(), portcullis()])) if (c !== null) list.push(c)
  return list
}

async function stopContenders (list: readonly Contender[]): Promise<void> {
  await Promise.all(list.map(async (c) => {
    await c.pool.close().catch(() => {})
    if (c.name !== 'direct') await c.proc?.stop()
  }))
}

const sizeLabel = (bytes: number): string =>
  bytes % 1_073_741_824 === 0 ? `${bytes / 1_073_741_824} GiB` : bytes % 1_048_576 === 0 ? `${bytes / 1_048_576} MiB` : bytes % 1024 === 0 ? `${bytes / 1024} KiB` : `${bytes} B`

// --- bodies: MiB/s both ways, against nginx, and the peak RSS ------------------------------

/** Transfers of one size per run: about 200 MiB (20 quick), 2,000 at most, one per connection at least. */
const transfersPer = (size: number, o: ScaleOptions): number =>
  Math.max(o.bodyConnections, Math.min(o.quick ? 200 : 2000, Math.ceil((o.quick ? 20 : 200) * 1_048_576 / size)))

function bodyRequest (direction: 'upload' | 'download', size: number, chunk: Buffer): OneRequest {
  if (direction === 'download') return { method: 'GET', path: `/blob/${size}`, expect: { bytes: size } }
  const body = size <= chunk.length
    ? chunk.subarray(0, size)
    : async function * (): AsyncIterable<Buffer> {
      for (let left = size; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left)
    }
  return { method: 'POST', path: '/blob/', headers: { 'content-type': 'application/octet-stream' }, body, bodyBytes: size, expect: { text: JSON.stringify({ bytes: size }) } }
}

async function runBodies (upstream: Proc, origin: string, o: ScaleOptions, scratch: string): Promise<DimensionReport> {
  const report: DimensionReport = { dimension: 'bodies', hit: HIT.bodies, loadavgAtStart: loadNow(), loadavgAtEnd: [], rows: [] }
  const largest = Math.max(...o.sizes.bodies)
  const list = await startContenders('bodies', upstream, origin, o, scratch, o.bodyConnections, largest, report.rows)
  const chunk = Buffer.alloc(Math.min(largest, 8 * 1_048_576), 'upload ')
  const directions = ['upload', 'download'] as const
  type Key = `${string} ${number} ${string}`
  const key = (d: string, size: number, c: string): Key => `${d} ${size} ${c}`
  const runs = new Map<Key, { mibs: number[], cpuMsPerMiB: number[], requests: number, errors: number, firstError?: string, peak: number | null, before: number | null }>()
  try {
    for (const c of list) {
      // Warm-up: every kind of transfer once, small sizes a few times.
      for (const d of directions) {
        for (const size of o.sizes.bodies) {
          const n = size === largest ? 1 : Math.min(20, transfersPer(size, o))
          await fixedLoad(c.pool, n, o.bodyConnections, () => bodyRequest(d, size, chunk))
        }
      }
    }
    for (let r = 1; r <= o.rounds; r++) {
      for (const size of o.sizes.bodies) {
        for (const d of directions) {
          const order = r % 2 === 1 ? list : [...list].reverse()
          for (const c of order) {
            const k = key(d, size, c.name)
            const s = runs.get(k) ?? { mibs: [], cpuMsPerMiB: [], requests: 0, errors: 0, peak: null, before: null }
            runs.set(k, s)
            // The proxy's own CPU and memory; none for the upstream alone.
            const pid = c.name === 'direct' ? undefined : c.proc?.pid
            if (size === largest && pid !== undefined) { s.before ??= rssKiB(pid); resetPeakRss(pid) }
            const cpuBefore = pid === undefined ? null : cpuSeconds([pid])
            const load = await fixedLoad(c.pool, transfersPer(size, o), o.bodyConnections, () => bodyRequest(d, size, chunk))
            const cpuAfter = pid === undefined ? null : cpuSeconds([pid])
            const mib = load.requests * size / 1_048_576
            s.mibs.push(load.seconds > 0 ? mib / load.seconds : Number.NaN)
            s.cpuMsPerMiB.push(cpuBefore === null || cpuAfter === null || mib === 0 ? Number.NaN : (cpuAfter - cpuBefore) * 1000 / mib)
            if (size === largest && pid !== undefined) {
              const peak = peakRssKiB(pid)
              if (peak !== null) s.peak = Math.max(s.peak ?? 0, peak)
            }
            s.requests += load.requests
            s.errors += load.errors
            s.firstError ??= load.firstError
            log(`scale: bodies ${d.padEnd(8)} ${sizeLabel(size).padStart(8)} ${c.name.padEnd(10)} round ${r}: ${load.requests} × in ${round(load.seconds, 2)} s = ${round(s.mibs[s.mibs.length - 1], 1)} MiB/s, errors ${load.errors}${load.firstError === undefined ? '' : ` (${load.firstError})`}`)
          }
        }
      }
    }
    for (const size of o.sizes.bodies) {
      for (const d of directions) {
        for (const c of list) {
          const s = runs.get(key(d, size, c.name))
          if (s === undefined) continue
          const nginx = runs.get(key(d, size, 'nginx'))
          const row: Row = {
            size,
            label: `${d} ${sizeLabel(size)}, ${c.name}`,
            status: 'measured',
            mibPerSecond: spread(s.mibs, 1),
            ...(c.name === 'direct' ? {} : { cpuMsPerMiB: round(median(s.cpuMsPerMiB), 2) }),
            requests: s.requests,
            errors: s.errors,
            ...(s.firstError === undefined ? {} : { reason: s.firstError })
          }
          if (c.name === 'portcullis' && nginx !== undefined) row.vsNginx = spread(s.mibs.map((m, i) => m / nginx.mibs[i]))
          if (size === largest && c.name !== 'direct') { row.peakRssMiB = s.peak === null ? null : round(s.peak / 1024, 1); row.rssBeforeMiB = s.before === null ? null : round(s.before / 1024, 1) }
          report.rows.push(row)
        }
      }
    }
  } finally {
    await stopContenders(list)
    report.loadavgAtEnd = loadNow()
  }
  return report
}

// --- c1: what one hop adds at one connection ----------------------------------------------

async function runC1 (upstream: Proc, origin: string, o: ScaleOptions, scratch: string): Promise<DimensionReport> {
  const report: DimensionReport = { dimension: 'c1', hit: HIT.c1, loadavgAtStart: loadNow(), loadavgAtEnd: [], rows: [] }
  const list = await startContenders('c1', upstream, origin, o, scratch, 1, null, report.rows)
  const get: OneRequest = { method: 'GET', path: BENCH_GET_PATH, expect: { text: '{"id":1,"name":"Ada Lovelace","age":36}' } }
  const stats = new Map<string, { p25: number[], p50: number[], p75: number[], requests: number, errors: number, firstError?: string }>()
  try {
    for (const c of list) {
      await fixedLoad(c.pool, Math.min(500, o.c1Requests), 1, () => get)
      stats.set(c.name, { p25: [], p50: [], p75: [], requests: 0, errors: 0 })
    }
    for (let r = 1; r <= o.rounds; r++) {
      for (const c of r % 2 === 1 ? list : [...list].reverse()) {
        const load = await fixedLoad(c.pool, o.c1Requests, 1, () => get, true)
        const q = quartiles(load.latenciesUs)
        const s = stats.get(c.name)!
        s.p25.push(q.q1)
        s.p50.push(q.median)
        s.p75.push(q.q3)
        s.requests += load.requests
        s.errors += load.errors
        s.firstError ??= load.firstError
        log(`scale: c1 ${c.name.padEnd(10)} round ${r}: ${load.requests} requests, latency µs p25 ${round(q.q1, 1)} p50 ${round(q.median, 1)} p75 ${round(q.q3, 1)}, errors ${load.errors}`)
      }
    }
    const direct = stats.get('direct')!
    for (const c of list) {
      const s = stats.get(c.name)!
      report.rows.push({
        size: 1,
        label: c.name,
        status: 'measured',
        latencyUs: { p25: round(median(s.p25), 1), p50: round(median(s.p50), 1), p75: round(median(s.p75), 1) },
        ...(c.name === 'direct' ? {} : { hopUs: spread(s.p50.map((p, i) => p - direct.p50[i]), 1) }),
        requests: s.requests,
        errors: s.errors,
        ...(s.firstError === undefined ? {} : { reason: s.firstError })
      })
    }
  } finally {
    await stopContenders(list)
    report.loadavgAtEnd = loadNow()
  }
  return report
}

const fmtSpread = (x: Spread | undefined, unit = '×', digits = 3): string =>
  x === undefined || !Number.isFinite(x.median) ? '' : `${x.median.toFixed(digits)}${unit} (${x.q1.toFixed(digits)}–${x.q3.toFixed(digits)})`

/** The table of jwks, bodies or c1. */
function formatOther (d: DimensionReport): string {
  const load = `${d.loadavgAtStart[0]} → ${d.loadavgAtEnd[0]}`
  const header: Record<string, string[]> = {
    jwks: ['token check', 'start-up ms', 'RSS MiB', 'CPU µs/req', 'CPU/req vs JWKS of the fewest keys: median (quartiles)', 'never seen − reused, µs: median (quartiles)'],
    bodies: ['transfer, through', 'MiB/s: median (quartiles)', 'MiB/s ÷ nginx\'s: median (quartiles)', 'CPU ms/MiB', 'peak RSS MiB (before)'],
    c1: ['to', 'latency µs p25 / p50 / p75', 'p50 added by the hop, µs: median (quartiles)']
  }
  const cells = (r: Row): string[] => {
    if (d.dimension === 'jwks') return [String(r.startupMs ?? ''), String(r.rssMiB ?? ''), String(r.cpuUsPerRequest ?? ''), fmtSpread(r.ratio), fmtSpread(r.checkUs, ' µs', 1)]
    if (d.dimension === 'bodies') {
      return [fmtSpread(r.mibPerSecond, '', 1), fmtSpread(r.vsNginx), String(r.cpuMsPerMiB ?? ''), r.peakRssMiB === undefined ? '' : `${r.peakRssMiB ?? '?'} (${r.rssBeforeMiB ?? '?'})`]
    }
    return [r.latencyUs === undefined ? '' : `${r.latencyUs.p25} / ${r.latencyUs.p50} / ${r.latencyUs.p75}`, fmtSpread(r.hopUs, ' µs', 1)]
  }
  const head = [...header[d.dimension], 'requests', 'errors', 'load avg (start → end)']
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => i === 0 ? '---' : '---:').join('|')}|`]
  for (const r of d.rows) {
    const first = r.label ?? String(r.size)
    if (r.status !== 'measured') {
      lines.push(`| ${first} | ${r.status}: ${(r.reason ?? '').split('\n')[0].slice(0, 120)} |${' |'.repeat(head.length - 3)} ${load} |`)
      continue
    }
    lines.push(`| ${[first, ...cells(r), String(r.requests ?? ''), String(r.errors ?? ''), load].join(' | ')} |`)
  }
  return lines.join('\n')
}

function formatTable (all: readonly DimensionReport[]): string {
  const reports = all.filter((d) => d.dimension === 'routes' || d.dimension === 'keys' || d.dimension === 'idle')
  const others = all.filter((d) => !reports.includes(d)).map((d) => `${d.dimension}:\n\n${formatOther(d)}`)
  if (reports.length === 0) return others.join('\n\n')
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
  return [lines.join('\n'), ...others].join('\n\n')
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
    // The in-process client of jwks, bodies and c1 runs where the load generator would: core 1.
    if (o.pin && o.dimensions.some((d) => d === 'jwks' || d === 'bodies' || d === 'c1')) pinSelf(1)
    const { proc: upstream, origin } = await startBenchUpstream(scratch, o.pin ? 1 : null)
    log(`scale: ${o.dimensions.join(', ')}; ${o.rounds} rounds × ${o.seconds} s, ${o.connections} connections, ${tool} ${version}, ${o.pin ? 'gateways pinned to core 0, upstream + load to core 1' : 'not pinned'}; load average ${loadavg().map((x) => round(x, 2)).join(' ')}`)
    for (const d of o.dimensions) {
      if (d === 'jwks') reports.push(await runJwks(origin, o, scratch))
      else if (d === 'bodies') reports.push(await runBodies(upstream, origin, o, scratch))
      else if (d === 'c1') reports.push(await runC1(upstream, origin, o, scratch))
      else reports.push(await runDimension(d, origin, tool, o, scratch))
    }
  } finally {
    await stopAll()
    removeDir(scratch)
  }
  const problems = reports.flatMap((d) => d.rows.filter((r) => r.status === 'failed' || (r.errors ?? 0) > 0)
    .map((r) => `${d.dimension} ${r.label ?? r.size}: ${r.status === 'failed' ? (r.reason ?? '').split('\n')[0] : `${r.errors ?? 0} errors (${r.reason ?? ''})`}`))
  const report = {
    kind: 'scale',
    ok: problems.length === 0,
    command: `npm run bench -- ${argv.join(' ')}`,
    startedAt: startedAt.toISOString(),
    options: { ...o, sizes: o.sizes },
    tool: { name: tool, version },
    pinning: o.pin ? { gateways: 0, upstreamAndLoad: 1 } : null,
    machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown', kernel: release(), node: process.version },
    dimensions: reports,
    problems
  }
  const out = o.out ?? join(ROOT, 'bench', 'results', `scale-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  mkdirSync(join(out, '..'), { recursive: true })
  writeFileSync(out, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write('\n' + formatTable(reports) + '\n\n')
  for (const d of reports) process.stdout.write(`${d.dimension}: ${d.hit}\n`)
  process.stdout.write('CPU/req ratios are per round against the smallest size, the order reversed every other round; start-up is spawn → first /healthz answer (50 ms polls); RSS after warm-up (idle: after the idle connections opened).\n')
  if (reports.some((d) => d.dimension === 'jwks')) process.stdout.write(`jwks: ${o.tokens} requests a run over ${o.connections} connections; "never seen − reused" is per round the CPU per request with fresh tokens minus with one reused token: the cost of a first verification.\n`)
  if (reports.some((d) => d.dimension === 'bodies')) process.stdout.write(`bodies: ${o.bodyConnections} connections; MiB/s is bytes moved ÷ wall time of the run; ratios to nginx per round; peak RSS is VmHWM of the proxy's processes, reset before each run of the largest size, the highest over rounds, with the RSS after warm-up in brackets.\n`)
  if (reports.some((d) => d.dimension === 'c1')) process.stdout.write(`c1: ${o.c1Requests} requests a round, one connection; latency as this process's client sees it (undici), each quartile the median over rounds; the hop is per round p50 through the proxy minus p50 direct.\n`)
  for (const p of problems) process.stdout.write(`PROBLEM: ${p}\n`)
  process.stdout.write(`report: ${out}\n`)
  return problems.length === 0 ? 0 : 1
}

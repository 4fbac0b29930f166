/**
 * What the benchmark runner (bench/run.ts) and the soak test (bench/soak.ts) share: child
 * processes that are always cleaned up, CPU pinning, readiness checks, the load generators
 * (wrk, else autocannon) and their parsed results, CPU and memory readings from /proc and ps.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { createServer, type AddressInfo } from 'node:net'
import { availableParallelism, tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { createRequire } from 'node:module'

// --- processes ---------------------------------------------------------------------------

export interface ProcOptions {
  /** Pin to this CPU with taskset (null: not pinned). */
  cpu: number | null
  /** File for stdout (default: a pipe the runner reads for the `listening` line). */
  stdoutFile?: string
  /** File for stderr (always a file, so a crash can be explained). */
  stderrFile: string
  env?: NodeJS.ProcessEnv
  /** Keep stdin a pipe: our own helpers exit when it closes, so they never outlive the runner. */
  stdinPipe?: boolean
}

const running = new Set<Proc>()

export class Proc {
  readonly child: ChildProcess
  readonly pid: number
  readonly stderrFile: string
  readonly stdoutFile: string | undefined
  private stdout = ''
  private exited = false
  readonly exit: Promise<void>

  constructor (readonly name: string, command: string, args: string[], options: ProcOptions) {
    const [cmd, argv] = options.cpu === null ? [command, args] : ['taskset', ['-c', String(options.cpu), command, ...args]]
    const out = options.stdoutFile === undefined ? 'pipe' : openSync(options.stdoutFile, 'a')
    const err = openSync(options.stderrFile, 'a')
    this.stderrFile = options.stderrFile
    this.stdoutFile = options.stdoutFile
    this.child = spawn(cmd, argv, {
      stdio: [options.stdinPipe === true ? 'pipe' : 'ignore', out, err],
      env: options.env ?? process.env
    })
    if (typeof out === 'number') closeSync(out)
    closeSync(err)
    if (this.child.pid === undefined) throw new Error(`${name}: could not start ${cmd}`)
    this.pid = this.child.pid // taskset execs the command, so this is the command's own pid
    this.child.stdout?.setEncoding('utf8')
    this.child.stdout?.on('data', (chunk: string) => { if (this.stdout.length < 65_536) this.stdout += chunk })
    this.child.stdin?.on('error', () => {})
    this.exit = new Promise((resolve) => {
      this.child.once('exit', () => { this.exited = true; running.delete(this); resolve() })
      this.child.once('error', () => { this.exited = true; running.delete(this); resolve() })
    })
    running.add(this)
  }

  get alive (): boolean { return !this.exited }

  /** Resolves with the port once the process printed `listening PORT`. */
  async waitForLine (pattern: RegExp, timeoutMs = 60_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      const m = pattern.exec(this.stdout)
      if (m !== null) return m
      if (!this.alive) throw new Error(`${this.name} exited before it was ready:\n${this.stderrTail()}`)
      await sleep(25)
    }
    throw new Error(`${this.name} was not ready within ${timeoutMs} ms:\n${this.stderrTail()}`)
  }

  /** The end of what it wrote (stderr, then the stdout file): why it died or hangs. */
  stderrTail (lines = 15): string {
    const tail = (file: string | undefined): string => {
      if (file === undefined) return ''
      try {
        return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
      } catch { return '' }
    }
    return [tail(this.stderrFile), tail(this.stdoutFile)].filter((t) => t !== '').join('\n')
  }

  /** SIGTERM, then SIGKILL if it is still there after `graceMs`. */
  async stop (graceMs = 5_000): Promise<void> {
    if (!this.alive) return
    this.child.stdin?.end()
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => { if (this.alive) this.child.kill('SIGKILL') }, graceMs)
    await this.exit
    clearTimeout(timer)
  }
}

/** Stop every process this module started (the runner's finally, and its signal handlers). */
/** The benchmark's upstream (bench/upstream.ts) as its own process, once it listens. */
export async function startBenchUpstream (scratch: string, cpu: number | null, addresses = 1): Promise<{ proc: Proc, port: number, origin: string }> {
  const port = await freePort()
  const proc = new Proc('upstream', process.execPath, [builtFile('bench/upstream.js'), String(port), String(addresses)], {
    cpu, stderrFile: join(scratch, 'upstream.stderr.log'), stdinPipe: true
  })
  await proc.waitForLine(/listening (\d+)/)
  return { proc, port, origin: `http://127.0.0.1:${port}` }
}

export async function stopAll (): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()))
}

let cleanupInstalled = false
/** On SIGINT/SIGTERM or a crash, kill the children before exiting. */
export function installCleanup (): void {
  if (cleanupInstalled) return
  cleanupInstalled = true
  const killNow = (): void => { for (const p of running) p.child.kill('SIGKILL') }
  process.on('exit', killNow)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping the processes it started\n`)
      stopAll().finally(() => process.exit(130))
    })
  }
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A loopback port that was free a moment ago (for programs that cannot report port 0 back). */
export async function freePort (): Promise<number> {
  for (;;) {
    const srv = createServer()
    srv.listen(0, '127.0.0.1')
    await once(srv, 'listening')
    const { port } = srv.address() as AddressInfo
    await new Promise((resolve) => srv.close(resolve))
    // Scenarios start in parallel: never hand out the same port twice.
    if (handedOut.has(port)) continue
    handedOut.add(port)
    return port
  }
}
const handedOut = new Set<number>()

export function commandExists (command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0
}

/** A scratch folder for configs, scripts and logs; removed by the caller. */
export function scratchDir (prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

export function removeDir (dir: string): void {
  rmSync(dir, { recursive: true, force: true })
}

/** Pinning (proxy on core 0; upstream and load on core 1) needs taskset and 2+ cores. */
export function pinningPossible (): { ok: boolean, reason: string } {
  const cores = availableParallelism()
  if (cores < 2) return { ok: false, reason: `only ${cores} core available` }
  if (!commandExists('taskset')) return { ok: false, reason: 'taskset is not installed (Debian: util-linux)' }
  return { ok: true, reason: `${cores} cores, taskset` }
}

// --- nginx -------------------------------------------------------------------------------

/**
 * Why nginx cannot be a contender here, or null when it can. Under CI=true a missing nginx is an
 * error (the CI machine installs nginx-light), never a silent skip.
 */
export function nginxMissing (): string | null {
  if (commandExists('nginx')) return null
  const reason = 'nginx is not installed (Debian: apt-get install nginx-light)'
  if (process.env.CI === 'true') throw new Error(`${reason}, and CI=true needs it: .ci/run installs nginx-light`)
  return reason + ': skipped'
}

/**
 * nginx as a reverse proxy in front of `upstreamOrigin`: one worker, keep-alive to the upstream,
 * access log off, its files in `dir`. `maxBody`: client_max_body_size (nginx's default is 1m).
 */
export async function startNginx (options: { dir: string, upstreamOrigin: string, cpu: number | null, maxBody?: string, name?: string }): Promise<{ proc: Proc, url: string }> {
  const { dir } = options
  const port = await freePort()
  mkdirSync(dir, { recursive: true })
  const upstream = new URL(options.upstreamOrigin)
  const conf = join(dir, 'nginx.conf')
  writeFileSync(conf, `${process.getuid?.() === 0 ? 'user root;\n' : ''}worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
${options.maxBody === undefined ? '' : `  client_max_body_size ${options.maxBody};\n`}  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream bench_upstream {
    server ${upstream.host};
    keepalive 128;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`)
  const proc = new Proc(options.name ?? 'nginx', 'nginx', ['-p', dir, '-c', conf], { cpu: options.cpu, stderrFile: join(dir, 'stderr.log') })
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(url + '/', proc)
  return { proc, url }
}

// --- HTTP --------------------------------------------------------------------------------

export interface HttpResult { status: number, headers: Record<string, string | string[] | undefined>, body: string }

/** One request over a fresh connection (used for readiness and correctness checks, not load). */
export function httpCall (url: string, options: { method?: string, headers?: Record<string, string>, body?: string, timeoutMs?: number } = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? 'GET', headers: options.headers, agent: false, timeout: options.timeoutMs ?? 30_000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from ${url} within ${options.timeoutMs ?? 30_000} ms`)))
    req.on('error', reject)
    req.end(options.body)
  })
}

/** Polls `url` until it answers with any HTTP status; fails early if `proc` exits. */
export async function waitForHttp (url: string, proc: Proc, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = ''
  while (Date.now() < deadline) {
    if (!proc.alive) throw new Error(`${proc.name} exited before it answered on ${url}:\n${proc.stderrTail()}`)
    try {
      await httpCall(url, { timeoutMs: 1_000 })
      return
    } catch (err) {
      last = (err as Error).message
    }
    await sleep(50)
  }
  throw new Error(`${proc.name} did not answer on ${url} within ${timeoutMs} ms (${last}):\n${proc.stderrTail()}`)
}

// --- CPU and memory ----------------------------------------------------------------------

const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100

function descendants (pid: number): number[] {
  const out = [pid]
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const children = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim()
      if (children !== '') for (const c of children.split(/\s+/)) out.push(...descendants(Number(c)))
    }
  } catch { /* gone, or no /proc */ }
  return out
}

/** User + system CPU seconds used so far by `pid` and its descendants (nginx workers, cluster workers). */
export function cpuSeconds (pids: readonly number[]): number | null {
  let ticks = 0
  let seen = false
  for (const root of pids) {
    for (const pid of descendants(root)) {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
        ticks += Number(fields[11]) + Number(fields[12]) // utime, stime (fields 14, 15 of stat)
        seen = true
      } catch { /* exited meanwhile */ }
    }
  }
  return seen ? ticks / CLOCK_TICKS : null
}

/** Resident set size in KiB of `pid` and its descendants, from `ps -o rss=`. */
export function rssKiB (pid: number): number | null {
  const pids = descendants(pid)
  const res = spawnSync('ps', ['-o', 'rss=', '-p', pids.join(',')], { encoding: 'utf8' })
  if (res.status !== 0) return null
  const values = res.stdout.trim().split(/\s+/).map(Number).filter((n) => Number.isFinite(n))
  return values.length === 0 ? null : values.reduce((a, b) => a + b, 0)
}

/**
 * Resets the peak RSS (VmHWM) of `pid` and its descendants to their current RSS (Linux:
 * `echo 5 > /proc/PID/clear_refs`); false where that is not possible.
 */
export function resetPeakRss (pid: number): boolean {
  let ok = true
  for (const p of descendants(pid)) {
    try { writeFileSync(`/proc/${p}/clear_refs`, '5') } catch { ok = false }
  }
  return ok
}

/** The peak RSS in KiB (VmHWM, summed over `pid` and its descendants) since start or resetPeakRss. */
export function peakRssKiB (pid: number): number | null {
  let total = 0
  let seen = false
  for (const p of descendants(pid)) {
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))
      if (m !== null) { total += Number(m[1]); seen = true }
    } catch { /* exited meanwhile */ }
  }
  return seen ? total : null
}

// --- load generators ---------------------------------------------------------------------

export type ToolName = 'wrk' | 'autocannon'

export interface LoadSpec {
  url: string
  method: 'GET' | 'POST'
  headers: Record<string, string>
  body?: string
  connections: number
  /** Whole seconds (wrk takes no fractions). */
  seconds: number
  cpu: number | null
  /** Folder for the wrk Lua script. */
  scratch: string
  /** A wrk Lua script to use instead of the generated one (the soak's GET/POST mix). */
  script?: string
}

/** The benchmark's two requests, the same for every tool, contender and scenario. */
export const BENCH_GET_PATH = '/api/people/1'
export const BENCH_POST_PATH = '/api/people/'
export const BENCH_POST_BODY = JSON.stringify({ name: 'Grace Hopper', age: 85 })

/** What the load generator sends for `method` to `baseUrl`, with the scenario's headers (a bearer token…). */
export function benchRequest (baseUrl: string, method: 'GET' | 'POST', headers: Record<string, string>): Pick<LoadSpec, 'url' | 'method' | 'headers' | 'body'> {
  return method === 'GET'
    ? { url: baseUrl + BENCH_GET_PATH, method, headers }
    : { url: baseUrl + BENCH_POST_PATH, method, headers: { ...headers, 'content-type': 'application/json' }, body: BENCH_POST_BODY }
}

export interface LoadResult {
  requests: number
  seconds: number
  rps: number
  p50Ms: number
  p99Ms: number
  /** Connect, read, write errors and timeouts (wrk), errors + timeouts (autocannon). */
  errors: number
  errorDetail: Record<string, number>
  non2xx: number
}

export function detectTool (wanted: string | undefined): { tool: ToolName, version: string, note?: string } {
  if (wanted === 'autocannon' || (wanted !== 'wrk' && !commandExists('wrk'))) {
    const note = wanted === 'autocannon' ? undefined : 'wrk is not installed (Debian: apt-get install wrk): using autocannon'
    return { tool: 'autocannon', version: autocannonVersion(), ...(note === undefined ? {} : { note }) }
  }
  if (!commandExists('wrk')) throw new Error('--tool wrk: wrk is not installed (Debian: apt-get install wrk)')
  const v = spawnSync('wrk', ['-v'], { encoding: 'utf8' })
  const version = /wrk\s+(\S+)/.exec(`${v.stdout}${v.stderr}`)?.[1] ?? 'unknown'
  return { tool: 'wrk', version }
}

const require = createRequire(import.meta.url)

function autocannonBin (): string {
  const pkgPath = require.resolve('autocannon/package.json')
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as { bin: Record<string, string> }
  return join(pkgPath, '..', pkg.bin.autocannon)
}

function autocannonVersion (): string {
  return (JSON.parse(readFileSync(require.resolve('autocannon/package.json'), 'utf8')) as { version: string }).version
}

/** A Lua string literal (the bodies and headers here are plain ASCII). */
function lua (value: string): string {
  if (!/^[\x20-\x7e]*$/.test(value)) throw new Error(`not plain ASCII, cannot go into a wrk script: ${value}`)
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`
}

/** The wrk script for a POST: method, body and headers (wrk sends them on every request). */
export function wrkScript (method: string, headers: Record<string, string>, body?: string): string {
  const lines = [`wrk.method = ${lua(method)}`]
  if (body !== undefined) lines.push(`wrk.body = ${lua(body)}`)
  for (const [k, v] of Object.entries(headers)) lines.push(`wrk.headers[${lua(k)}] = ${lua(v)}`)
  return lines.join('\n') + '\n'
}

let scriptCounter = 0

export async function runLoad (tool: ToolName, spec: LoadSpec): Promise<LoadResult> {
  return tool === 'wrk' ? await runWrk(spec) : await runAutocannon(spec)
}

async function runPinned (command: string, args: string[], cpu: number | null, hardTimeoutMs: number): Promise<string> {
  const [cmd, argv] = cpu === null ? [command, args] : ['taskset', ['-c', String(cpu), command, ...args]]
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => { out += c })
  child.stderr.setEncoding('utf8').on('data', (c: string) => { err += c })
  const timer = setTimeout(() => child.kill('SIGKILL'), hardTimeoutMs)
  const [code] = await once(child, 'close') as [number | null]
  clearTimeout(timer)
  if (code !== 0) throw new Error(`${command} exited ${String(code)}: ${err.trim() || out.trim()}`)
  return out
}

async function runWrk (spec: LoadSpec): Promise<LoadResult> {
  const args = ['-t1', `-c${spec.connections}`, `-d${spec.seconds}s`, '--latency', '--timeout', '10s']
  let script = spec.script
  if (script === undefined && (spec.method !== 'GET' || spec.body !== undefined)) {
    script = join(spec.scratch, `wrk-${process.pid}-${++scriptCounter}.lua`)
    writeFileSync(script, wrkScript(spec.method, spec.headers, spec.body))
  } else if (spec.script === undefined) {
    for (const [k, v] of Object.entries(spec.headers)) args.push('-H', `${k}: ${v}`)
  }
  if (script !== undefined) args.push('-s', script)
  args.push(spec.url)
  const out = await runPinned('wrk', args, spec.cpu, (spec.seconds + 30) * 1000)
  return parseWrk(out, spec.seconds)
}

/** wrk's latency units → milliseconds. */
function wrkMs (value: string): number {
  const m = /^([0-9.]+)(us|ms|s|m)$/.exec(value)
  if (m === null) return Number.NaN
  const n = Number(m[1])
  return m[2] === 'us' ? n / 1000 : m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : n * 60_000
}

export function parseWrk (out: string, seconds: number): LoadResult {
  const requests = Number(/(\d+) requests in ([0-9.]+)(\w+)/.exec(out)?.[1] ?? Number.NaN)
  const rps = Number(/Requests\/sec:\s+([0-9.]+)/.exec(out)?.[1] ?? Number.NaN)
  const p50 = /^\s+50%\s+(\S+)/m.exec(out)?.[1]
  const p99 = /^\s+99%\s+(\S+)/m.exec(out)?.[1]
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const errorDetail = socket === null
    ? { connect: 0, read: 0, write: 0, timeout: 0 }
    : { connect: Number(socket[1]), read: Number(socket[2]), write: Number(socket[3]), timeout: Number(socket[4]) }
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0)
  if (!Number.isFinite(requests) || !Number.isFinite(rps)) throw new Error(`cannot read wrk's output:\n${out}`)
  return {
    requests,
    seconds,
    rps,
    p50Ms: p50 === undefined ? Number.NaN : wrkMs(p50),
    p99Ms: p99 === undefined ? Number.NaN : wrkMs(p99),
    errors: errorDetail.connect + errorDetail.read + errorDetail.write + errorDetail.timeout,
    errorDetail,
    non2xx
  }
}

/** The parts of autocannon's `--json` output the runner reads. */
interface AutocannonResult {
  requests: { total: number, average: number }
  latency: { p50: number, p99: number }
  errors: number
  timeouts: number
  non2xx: number
  duration: number
}

async function runAutocannon (spec: LoadSpec): Promise<LoadResult> {
  const args = [autocannonBin(), '-j', '-c', String(spec.connections), '-d', String(spec.seconds), '-m', spec.method, '-t', '10']
  for (const [k, v] of Object.entries(spec.headers)) args.push('-H', `${k}=${v}`)
  if (spec.body !== undefined) args.push('-b', spec.body)
  args.push(spec.url)
  const out = await runPinned(process.execPath, args, spec.cpu, (spec.seconds + 30) * 1000)
  const r = JSON.parse(out) as AutocannonResult
  return {
    requests: r.requests.total,
    seconds: spec.seconds,
    rps: r.requests.total / (r.duration || spec.seconds),
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    errors: r.errors + r.timeouts,
    errorDetail: { errors: r.errors, timeout: r.timeouts },
    non2xx: r.non2xx
  }
}

// --- statistics --------------------------------------------------------------------------

/**
 * The order of a round's scenarios: as listed in odd rounds, reversed in even ones. On the 2-core
 * VM the second of two back-to-back runs measured up to 6 % dearer (bench/ab.ts), and a fixed
 * order made an A/A ratio read 1.09–1.53× (bench/PROFILE.md); reversing gives every pair both
 * orders over two rounds.
 */
export function roundOrder<T> (list: readonly T[], round: number): T[] {
  return round % 2 === 0 ? [...list].reverse() : [...list]
}

export function median (values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return Number.NaN
  const mid = Math.floor(v.length / 2)
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

/** Median and quartiles of a list (the middle value, and the values a quarter in from each end). */
export function spread (values: readonly number[]): { median: number, q1: number, q3: number } {
  const sorted = [...values].sort((a, b) => a - b)
  const at = (f: number): number => sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))]
  return { median: median(sorted), q1: at(0.25), q3: at(0.75) }
}

/** Least-squares slope of y over x. */
export function slope (points: ReadonlyArray<readonly [number, number]>): number {
  const n = points.length
  if (n < 2) return Number.NaN
  let sx = 0
  let sy = 0
  let sxx = 0
  let sxy = 0
  for (const [x, y] of points) {
    sx += x
    sy += y
    sxx += x * x
    sxy += x * y
  }
  const d = n * sxx - sx * sx
  return d === 0 ? Number.NaN : (n * sxy - sx * sy) / d
}

export function round (n: number, digits = 2): number {
  if (!Number.isFinite(n)) return n
  const f = 10 ** digits
  return Math.round(n * f) / f
}

/** Where the compiled project is: dist/ (this file is dist/bench/lib.js), or a test's transpiled copy. */
const BUILD = join(import.meta.dirname, '..')
/** The repository root: bench/results/ and `git` are relative to it. */
export const ROOT = basename(BUILD) === 'dist' ? join(BUILD, '..') : BUILD

/**
 * A runnable copy of a source tree without type-checking: every .ts file under `dirs` of `root`
 * transpiled on its own (TypeScript's transpileModule) into `out`, a package.json, and `out`'s
 * node_modules linked to `modules`. A few seconds where `tsc` takes half a minute: what the tests
 * and `npm run ab` (a build of an older revision) run.
 */
export function transpileTree (ts: typeof import('typescript'), root: string, out: string, dirs: readonly string[], modules: string, version = '0.0.0-test'): void {
  for (const dir of dirs) {
    if (!existsSync(join(root, dir))) continue
    for (const file of readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })) {
      if (!file.endsWith('.ts') || file.endsWith('.d.ts')) continue
      const { outputText } = ts.transpileModule(readFileSync(join(root, dir, file), 'utf8'), {
        compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
        fileName: file
      })
      mkdirSync(dirname(join(out, dir, file)), { recursive: true })
      writeFileSync(join(out, dir, file.replace(/\.ts$/, '.js')), outputText)
    }
  }
  writeFileSync(join(out, 'package.json'), JSON.stringify({ type: 'module', version }))
  symlinkSync(modules, join(out, 'node_modules'))
}

/** A compiled file of the project: `builtFile('src/cli.js')`. */
export function builtFile (relative: string): string {
  const file = join(BUILD, relative)
  if (!existsSync(file)) throw new Error(`${file} is missing: run \`npm run build\` first`)
  return file
}

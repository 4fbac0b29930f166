/**
 * A load test a user can point at their own gateway:
 *
 *   PORTCULLIS_TOKEN=… npm run loadtest -- --url http://127.0.0.1:8080/api/people/ [--duration 10]
 *   npm run loadtest -- --url http://127.0.0.1:8080/api/people/ --token-file ~/.portcullis-token
 *
 * The bearer token comes from the environment (PORTCULLIS_TOKEN) or a file (--token-file), never
 * from the command line, where `ps`, /proc and the shell's history would show it to others; a
 * token in argv (--token, an Authorization --header) is refused. The token is sent, never printed:
 * not in the summary, not in the report, not in an error message.
 *
 * Runs autocannon (programmatic API) for a bounded time, prints a summary table and writes a
 * JSON report (--out, default bench/results/loadtest-<time>.json; bench/results/ is git-ignored).
 * Exit 1 when nothing succeeded, 2 on a bad command line.
 */
import { createRequire } from 'node:module'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { ROOT } from './lib.js'

export const MAX_DURATION_S = 600
/** The environment variable the bearer token is read from (unless --token-file is given). */
export const TOKEN_ENV = 'PORTCULLIS_TOKEN'

export interface LoadtestOptions {
  url: string
  /** Where the token came from (`PORTCULLIS_TOKEN`, `--token-file`), for the summary; never the token. */
  tokenSource?: string
  method: string
  body?: string
  headers: Record<string, string>
  connections: number
  /** seconds, 1..MAX_DURATION_S */
  duration: number
  /** Stop after this many requests instead of after `duration`. */
  requests?: number
  pipelining: number
  /** per-request timeout, seconds */
  timeout: number
  out: string
}

/** The parts of autocannon's result this script reads. */
interface Histogram { average: number, mean: number, stddev: number, min: number, max: number, p50: number, p90: number, p99: number, p99_9?: number, p97_5?: number }
interface AutocannonResult {
  url: string
  requests: Histogram & { total: number, sent: number }
  latency: Histogram
  throughput: Histogram & { total: number }
  errors: number
  timeouts: number
  non2xx: number
  duration: number
  start: Date
  finish: Date
  connections: number
  pipelining: number
  statusCodeStats?: Record<string, { count: number }>
  '2xx': number
}
type Autocannon = (options: Record<string, unknown>) => Promise<AutocannonResult>

export interface LoadtestReport {
  url: string
  method: string
  connections: number
  durationSeconds: number
  startedAt: string
  requests: { total: number, perSecondAvg: number, perSecondP50: number }
  latencyMs: { avg: number, p50: number, p90: number, p99: number, max: number }
  throughputBytesPerSecond: number
  statusCodes: Record<string, number>
  ok: number
  non2xx: number
  errors: number
  timeouts: number
}

const USAGE = `Usage: npm run loadtest -- --url URL [options]

  --url URL           the endpoint to load (required), e.g. http://127.0.0.1:8080/api/people/
  --token-file FILE   send the token in FILE as Authorization: Bearer (else $${TOKEN_ENV}, if set)
  --method M          HTTP method (default GET)
  --body JSON|@FILE   request body (sent as application/json)
  --header 'K: V'     extra request header (repeatable)
  --connections N     concurrent connections (default 50)
  --duration S        seconds to run, 1..${MAX_DURATION_S} (default 10)
  --requests N        stop after N requests instead (1..1000000)
  --pipelining N      requests in flight per connection (default 1)
  --timeout S         per-request timeout in seconds (default 10)
  --out FILE          JSON report (default bench/results/loadtest-<time>.json)

The token never goes on the command line (other users see it in ps): put it in $${TOKEN_ENV}
or in a file readable only by you and pass --token-file.
`

function positiveInt (name: string, value: string | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!/^[0-9]+$/.test(value) || n < 1 || n > max) throw new Error(`--${name} must be a whole number from 1 to ${max}, not "${value}"`)
  return n
}

const TOKEN_IN_ARGV = `a token on the command line is visible to every user of this machine (ps, /proc) and kept in your shell's history: put it in ${TOKEN_ENV} or in a file and pass --token-file FILE`

/** The default report file: bench/results/loadtest-<time>.json in the repository. */
export function defaultReportPath (now = new Date()): string {
  return join(ROOT, 'bench', 'results', `loadtest-${now.toISOString().replace(/[:.]/g, '-')}.json`)
}

/** The bearer token: the file's first line with --token-file, else the environment's, else none. */
function readToken (file: string | undefined, env: NodeJS.ProcessEnv): { token: string, source: string } | undefined {
  if (file !== undefined) {
    let text: string
    try { text = readFileSync(file, 'utf8') } catch (err) { throw new Error(`--token-file ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'error'})`) }
    const token = text.split(/\r?\n/, 1)[0]?.trim() ?? ''
    if (token === '') throw new Error(`--token-file ${file}: the first line is empty`)
    return { token, source: `--token-file ${file}` }
  }
  const token = env[TOKEN_ENV]?.trim() ?? ''
  return token === '' ? undefined : { token, source: TOKEN_ENV }
}

export function parseLoadtestArgs (argv: string[], env: NodeJS.ProcessEnv = process.env): LoadtestOptions {
  // Before parseArgs, whose messages may quote an argument.
  if (argv.some((a) => a === '--token' || a.startsWith('--token='))) throw new Error(`--token is not accepted: ${TOKEN_IN_ARGV}`)
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      'token-file': { type: 'string' },
      method: { type: 'string', default: 'GET' },
      body: { type: 'string' },
      header: { type: 'string', multiple: true, default: [] },
      connections: { type: 'string' },
      duration: { type: 'string' },
      requests: { type: 'string' },
      pipelining: { type: 'string' },
      timeout: { type: 'string' },
      out: { type: 'string' }
    }
  })
  // Not quoted: a stray argument may well be a token.
  if (positionals.length > 0) throw new Error(`positional arguments are not accepted (${positionals.length} given, not repeated here): ${TOKEN_IN_ARGV}`)
  if (values.url === undefined) throw new Error('--url is required')
  let url: URL
  try { url = new URL(values.url) } catch { throw new Error(`--url must be an http(s) URL, not "${values.url}"`) }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`--url must be an http(s) URL, not "${values.url}"`)
  if (url.username !== '' || url.password !== '') throw new Error(`--url must not carry credentials (user:password@): ${TOKEN_IN_ARGV}`)
  const headers: Record<string, string> = {}
  for (const h of values.header) {
    const i = h.indexOf(':')
    if (i < 1) throw new Error('--header must be "Name: value"')
    const name = h.slice(0, i).trim().toLowerCase()
    if (name === 'authorization' || name === 'proxy-authorization') throw new Error(`--header ${name} is not accepted: ${TOKEN_IN_ARGV}`)
    headers[name] = h.slice(i + 1).trim()
  }
  let body = values.body
  if (body?.startsWith('@') === true) body = readFileSync(body.slice(1), 'utf8')
  if (body !== undefined && headers['content-type'] === undefined) headers['content-type'] = 'application/json'
  const token = readToken(values['token-file'], env)
  if (token !== undefined) headers.authorization = `Bearer ${token.token}`
  return {
    url: url.href,
    tokenSource: token?.source,
    method: values.method.toUpperCase(),
    body,
    headers,
    connections: positiveInt('connections', values.connections, 50, 10_000),
    duration: positiveInt('duration', values.duration, 10, MAX_DURATION_S),
    requests: values.requests === undefined ? undefined : positiveInt('requests', values.requests, 1, 1_000_000),
    pipelining: positiveInt('pipelining', values.pipelining, 1, 100),
    timeout: positiveInt('timeout', values.timeout, 10, 600),
    out: values.out ?? defaultReportPath()
  }
}

const round = (n: number, digits = 2): number => Math.round(n * 10 ** digits) / 10 ** digits

export function toReport (options: LoadtestOptions, r: AutocannonResult): LoadtestReport {
  const statusCodes: Record<string, number> = {}
  for (const [code, s] of Object.entries(r.statusCodeStats ?? {})) statusCodes[code] = s.count
  return {
    url: options.url,
    method: options.method,
    connections: options.connections,
    durationSeconds: round(r.duration),
    startedAt: new Date(r.start).toISOString(),
    requests: { total: r.requests.total, perSecondAvg: round(r.requests.average), perSecondP50: round(r.requests.p50) },
    latencyMs: { avg: round(r.latency.average), p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max },
    throughputBytesPerSecond: round(r.throughput.average, 0),
    statusCodes,
    ok: r['2xx'],
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts
  }
}

/** The summary as an aligned text table. */
export function formatReport (report: LoadtestReport): string {
  const rows: Array<[string, string]> = [
    ['target', `${report.method} ${report.url}`],
    ['connections × duration', `${report.connections} × ${report.durationSeconds} s`],
    ['requests', `${report.requests.total} (${report.ok} 2xx, ${report.non2xx} non-2xx)`],
    ['requests/s (avg, p50)', `${report.requests.perSecondAvg}, ${report.requests.perSecondP50}`],
    ['latency ms (avg / p50 / p90 / p99 / max)', `${report.latencyMs.avg} / ${report.latencyMs.p50} / ${report.latencyMs.p90} / ${report.latencyMs.p99} / ${report.latencyMs.max}`],
    ['throughput', `${round(report.throughputBytesPerSecond / 1024 / 1024)} MB/s`],
    ['status codes', Object.entries(report.statusCodes).map(([c, n]) => `${c}: ${n}`).join(', ') || '—'],
    ['errors / timeouts', `${report.errors} / ${report.timeouts}`]
  ]
  const width = Math.max(...rows.map(([k]) => k.length))
  const rule = (joint: string): string => '─'.repeat(width + 2) + joint + '─'.repeat(Math.max(...rows.map(([, v]) => v.length)) + 2)
  return [rule('┬'), ...rows.map(([k, v]) => ` ${k.padEnd(width)} │ ${v}`), rule('┴')].join('\n') + '\n'
}

export async function runLoadtest (options: LoadtestOptions): Promise<LoadtestReport> {
  const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon
  const result = await autocannon({
    url: options.url,
    method: options.method,
    headers: options.headers,
    body: options.body,
    connections: options.connections,
    duration: options.duration,
    ...(options.requests === undefined ? {} : { amount: options.requests }),
    pipelining: options.pipelining,
    timeout: options.timeout
  })
  return toReport(options, result)
}

async function main (argv: string[]): Promise<void> {
  let options: LoadtestOptions
  try {
    options = parseLoadtestArgs(argv)
  } catch (err) {
    process.stderr.write(`loadtest: ${(err as Error).message}\n\n${USAGE}`)
    process.exit(2)
  }
  const length = options.requests === undefined ? `for ${options.duration} s` : `for ${options.requests} requests`
  const auth = options.tokenSource === undefined ? 'no token' : `the token from ${options.tokenSource}`
  process.stdout.write(`loadtest: ${options.method} ${options.url}, ${options.connections} connections ${length}, ${auth}…\n`)
  const report = await runLoadtest(options)
  process.stdout.write(formatReport(report))
  mkdirSync(dirname(options.out), { recursive: true })
  writeFileSync(options.out, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(`report written to ${options.out}\n`)
  if (report.ok === 0) {
    process.stderr.write(`loadtest: no request succeeded (check --url, and the token in ${TOKEN_ENV} or --token-file)\n`)
    process.exit(1)
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`loadtest: ${(err as Error).message}\n`)
    process.exit(1)
  })
}

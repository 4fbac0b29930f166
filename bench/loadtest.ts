/**
 * A load test a user can point at their own gateway:
 *
 *   npm run loadtest -- --url http://127.0.0.1:8080/api/people/ --token "$TOKEN" [--duration 10]
 *
 * Runs autocannon (programmatic API) for a bounded time, prints a summary table and writes a
 * JSON report (--out, default loadtest-report.json). Exit 1 when nothing succeeded.
 */
import { createRequire } from 'node:module'
import { readFileSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'

export const MAX_DURATION_S = 600

export interface LoadtestOptions {
  url: string
  token?: string
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
  --token TOKEN       sent as Authorization: Bearer TOKEN
  --method M          HTTP method (default GET)
  --body JSON|@FILE   request body (sent as application/json)
  --header 'K: V'     extra request header (repeatable)
  --connections N     concurrent connections (default 50)
  --duration S        seconds to run, 1..${MAX_DURATION_S} (default 10)
  --requests N        stop after N requests instead (1..1000000)
  --pipelining N      requests in flight per connection (default 1)
  --timeout S         per-request timeout in seconds (default 10)
  --out FILE          JSON report (default loadtest-report.json)
`

function positiveInt (name: string, value: string | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!/^[0-9]+$/.test(value) || n < 1 || n > max) throw new Error(`--${name} must be a whole number from 1 to ${max}, not "${value}"`)
  return n
}

export function parseLoadtestArgs (argv: string[]): LoadtestOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      method: { type: 'string', default: 'GET' },
      body: { type: 'string' },
      header: { type: 'string', multiple: true, default: [] },
      connections: { type: 'string' },
      duration: { type: 'string' },
      requests: { type: 'string' },
      pipelining: { type: 'string' },
      timeout: { type: 'string' },
      out: { type: 'string', default: 'loadtest-report.json' }
    }
  })
  if (values.url === undefined) throw new Error('--url is required')
  let url: URL
  try { url = new URL(values.url) } catch { throw new Error(`--url must be an http(s) URL, not "${values.url}"`) }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`--url must be an http(s) URL, not "${values.url}"`)
  const headers: Record<string, string> = {}
  for (const h of values.header) {
    const i = h.indexOf(':')
    if (i < 1) throw new Error(`--header must be "Name: value", not "${h}"`)
    headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim()
  }
  let body = values.body
  if (body?.startsWith('@') === true) body = readFileSync(body.slice(1), 'utf8')
  if (body !== undefined && headers['content-type'] === undefined) headers['content-type'] = 'application/json'
  if (values.token !== undefined) headers.authorization = `Bearer ${values.token}`
  return {
    url: url.href,
    token: values.token,
    method: values.method.toUpperCase(),
    body,
    headers,
    connections: positiveInt('connections', values.connections, 50, 10_000),
    duration: positiveInt('duration', values.duration, 10, MAX_DURATION_S),
    requests: values.requests === undefined ? undefined : positiveInt('requests', values.requests, 1, 1_000_000),
    pipelining: positiveInt('pipelining', values.pipelining, 1, 100),
    timeout: positiveInt('timeout', values.timeout, 10, 600),
    out: values.out
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
  process.stdout.write(`loadtest: ${options.method} ${options.url}, ${options.connections} connections ${length}…\n`)
  const report = await runLoadtest(options)
  process.stdout.write(formatReport(report))
  writeFileSync(options.out, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(`report written to ${options.out}\n`)
  if (report.ok === 0) {
    process.stderr.write('loadtest: no request succeeded (check --url and --token)\n')
    process.exit(1)
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`loadtest: ${(err as Error).message}\n`)
    process.exit(1)
  })
}

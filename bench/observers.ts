/**
 * What metrics and tracing add to each request, measured alone: the CPU of `Tracer.start` +
 * `GatewayMetrics.start` + the response's `close` (what the gateway runs per request when they
 * are on), against the same loop with no observer. Interleaved rounds, medians.
 *
 *   npm run build && node dist/bench/observers.js [requests-per-round]
 *
 * The end-to-end comparison (same run, separate processes, wrk/autocannon) is the runner's
 * scenario pair: `npm run bench -- --only portcullis-full,portcullis-full-metrics`.
 */
import { IncomingMessage, ServerResponse } from 'node:http'
import { Socket } from 'node:net'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { parseConfig } from '../src/config.js'
import { GatewayMetrics } from '../plugins/observability/metrics.js'
import { Tracer } from '../plugins/observability/tracing.js'

interface Observer { start: (request: FastifyRequest, reply: FastifyReply) => void }

const config = parseConfig({ routes: [{ name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/people' }] }, { env: {} })
const metrics = new GatewayMetrics(config)
const tracer = new Tracer(config.tracing)
const routeOptions = { config: { routeName: 'people' } }
const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
const socket = new Socket()
const noop = (): void => {}

/** One request's worth of objects, the observers' start, then the response's close. */
function one (observers: readonly Observer[], withParent: boolean): void {
  const req = new IncomingMessage(socket)
  req.method = 'GET'
  req.url = '/api/people/1'
  req.headers = withParent ? { host: 'gw', traceparent: TRACEPARENT } : { host: 'gw' }
  const res = new ServerResponse(req)
  res.on('close', noop) // the gateway's own close listener (src/server.ts), there whatever the observers
  const request = { raw: req, headers: req.headers, method: 'GET', upstream: undefined, trace: undefined, upstreamMs: 0.4, routeOptions }
  const reply = { raw: res, request, routeOptions }
  for (const o of observers) o.start(request as unknown as FastifyRequest, reply as unknown as FastifyReply)
  res.statusCode = 200
  res.emit('close')
}

/** CPU nanoseconds per request (user + system). */
function round (observers: readonly Observer[], withParent: boolean, n: number): number {
  const before = process.cpuUsage()
  for (let i = 0; i < n; i++) one(observers, withParent)
  const used = process.cpuUsage(before)
  return (used.user + used.system) * 1000 / n
}

const n = Number(process.argv[2] ?? 200_000)
const sets: Record<string, readonly Observer[]> = { none: [], metrics: [metrics], tracing: [tracer], both: [tracer, metrics] }
/** Per set, per traceparent (none: a new trace; given: the caller's continued), the rounds' ns per request. */
const results: Record<string, { none: number[], given: number[] }> = {}
for (const name of Object.keys(sets)) results[name] = { none: [], given: [] }
for (const observers of Object.values(sets)) { round(observers, false, n); round(observers, true, n) } // warm up
for (let r = 0; r < 7; r++) {
  for (const withParent of [false, true]) {
    for (const [name, observers] of Object.entries(sets)) results[name][withParent ? 'given' : 'none'].push(round(observers, withParent, n))
  }
}
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
for (const parent of ['none', 'given'] as const) {
  const base = median(results.none[parent])
  process.stdout.write(`traceparent ${parent === 'none' ? 'absent (a new trace)' : 'given (continued)'}:\n`)
  for (const [name, both] of Object.entries(results)) {
    const extra = name === 'none' ? '' : `  (+${Math.round(median(both[parent]) - base)} ns for ${name})`
    process.stdout.write(`  ${name.padEnd(8)} ${Math.round(median(both[parent]))} ns/request${extra}\n`)
  }
}
metrics.unsubscribe()
await tracer.close()

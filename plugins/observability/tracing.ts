/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) and an optional OTLP/HTTP exporter.
 *
 * Every request gets a trace: the caller's `traceparent` when it is well-formed, a new one
 * otherwise. The gateway is one span in it: the upstream receives `traceparent` with the
 * gateway's span as its parent (and the caller's `tracestate`, when well-formed), the access log
 * line carries the trace id, and — when `tracing.otlp` is set — one span per sampled request is
 * queued and sent in batches to the collector (OTLP/HTTP, JSON encoding), never on the request's
 * time: a full queue drops spans (counted) rather than wait.
 *
 * `Tracer.start` is called by the app's LogController for every request, before any hook.
 */
import { randomFillSync } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Agent, request as httpRequest } from 'undici'
import { parseDuration } from '../../schemas/common.js'
import type { OtlpConfig, TracingConfig } from '../../schemas/observability.js'
import { routeNameOf } from '../core/fastify-internals.js'

/** The trace context of one request, as `request.trace`. */
export interface TraceContext {
  /** 32 lower-case hex digits. */
  readonly traceId: string
  /** The gateway's own span (16 hex digits): the parent-id the upstream receives. */
  readonly spanId: string
  /** The caller's span, when a valid traceparent came in. */
  readonly parentId: string | undefined
  readonly sampled: boolean
  /** The caller's tracestate, when well-formed: forwarded as it came. */
  readonly tracestate: string | undefined
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's W3C trace context (undefined when `tracing.enabled` is false). */
    trace: TraceContext | undefined
  }
  interface FastifyInstance {
    /** The tracer (undefined when `tracing.enabled` is false); `tracer.exporter.stats` counts spans. */
    tracer: Tracer | undefined
  }
}

/** The headers the gateway sets itself; a client's own copies are never forwarded. */
export const TRACE_HEADERS = ['traceparent', 'tracestate'] as const

// --- parsing -----------------------------------------------------------------------------------

const HEX_FIELDS = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/
const ZERO_TRACE = '0'.repeat(32)
const ZERO_SPAN = '0'.repeat(16)

export interface Traceparent { traceId: string, parentId: string, sampled: boolean }

/**
 * A traceparent, or null when it is not well-formed: lower-case hex only, version `ff` invalid,
 * version 00 exactly 55 characters, a later version at least 55 with a `-` after the flags
 * (§3.2.4: parse what version 00 defines), trace id and parent id not all zeros.
 */
export function parseTraceparent (value: unknown): Traceparent | null {
  if (typeof value !== 'string' || value.length < 55) return null
  const head = value.length === 55 ? value : value.slice(0, 55)
  if (!HEX_FIELDS.test(head)) return null
  const version = head.slice(0, 2)
  if (version === 'ff') return null
  if (version === '00' ? value.length !== 55 : (value.length > 55 && value[55] !== '-')) return null
  const traceId = head.slice(3, 35)
  const parentId = head.slice(36, 52)
  if (traceId === ZERO_TRACE || parentId === ZERO_SPAN) return null
  return { traceId, parentId, sampled: (parseInt(head.slice(53, 55), 16) & 1) === 1 }
}

// §3.3.1: simple keys, or tenant@system multi-tenant keys; values of printable ASCII except `,` and `=`.
const TRACESTATE_MEMBER = /^(?:[a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/
const TRACESTATE_MAX_MEMBERS = 32
const TRACESTATE_MAX_LENGTH = 512

/**
 * A tracestate, normalised (`key=value,key=value`), or undefined when absent or malformed:
 * every member well-formed, keys unique, at most 32 members. Past 512 characters, members
 * longer than 128 are dropped first, then members from the end (§3.3.1.5).
 */
export function parseTracestate (value: unknown): string | undefined {
  if (typeof value !== 'string' || value === '') return undefined
  const members: string[] = []
  const keys = new Set<string>()
  for (const raw of value.split(',')) {
    const member = raw.trim()
    if (member === '') continue
    if (!TRACESTATE_MEMBER.test(member)) return undefined
    const key = member.slice(0, member.indexOf('='))
    if (keys.has(key)) return undefined
    keys.add(key)
    members.push(member)
  }
  if (members.length === 0 || members.length > TRACESTATE_MAX_MEMBERS) return undefined
  let out = members.join(',')
  if (out.length > TRACESTATE_MAX_LENGTH) {
    const kept = members.filter((m) => m.length <= 128)
    while (kept.join(',').length > TRACESTATE_MAX_LENGTH) kept.pop()
    out = kept.join(',')
  }
  return out === '' ? undefined : out
}

// --- ids -----------------------------------------------------------------------------------------

const RECORD = 55
const RECORD_BYTES = 24
const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1')

/**
 * New ids, ready-made: a refill draws `size` × 24 bytes from the CSPRNG and writes them as `size`
 * whole traceparents, `00-<32 hex>-<16 hex>-01`, into one string (`records`). A new trace then
 * takes three slices of one record (the header, the trace id, the span id): no hex conversion, no
 * string building and no system call per request. Neither id of a record is ever all zeros
 * (§3.2.2.3, invalid): such bytes are drawn again.
 */
export class IdPool {
  /** `size` records; read it after `take()`, which may refill it. */
  records = ''
  private next: number
  private readonly random: Buffer
  private readonly text: Buffer

  constructor (readonly size = 128, private readonly fill: (buffer: Buffer, offset?: number, size?: number) => unknown = randomFillSync) {
    this.random = Buffer.allocUnsafe(size * RECORD_BYTES)
    this.text = Buffer.allocUnsafe(size * RECORD)
    this.next = size
  }

  /** The offset in `records` of an unused record. */
  take (): number {
    if (this.next === this.size) this.refill()
    return (this.next++) * RECORD
  }

  private refill (): void {
    const random = this.random
    const text = this.text
    this.fill(random)
    for (let r = 0; r < this.size; r++) {
      const from = r * RECORD_BYTES
      // Bounded by chance alone: 2^-128 and 2^-64 per draw.
      while (allZero(random, from, from + 16)) this.fill(random, from, 16)
      while (allZero(random, from + 16, from + RECORD_BYTES)) this.fill(random, from + 16, 8)
      let at = r * RECORD
      text[at++] = 0x30 // 0
      text[at++] = 0x30 // 0
      text[at++] = 0x2d // -
      at = writeHex(random, from, from + 16, text, at)
      text[at++] = 0x2d
      at = writeHex(random, from + 16, from + RECORD_BYTES, text, at)
      text[at++] = 0x2d
      text[at++] = 0x30
      text[at++] = 0x31 // sampled
    }
    this.records = text.toString('latin1')
    this.next = 0
  }
}

function allZero (bytes: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (bytes[i] !== 0) return false
  return true
}

function writeHex (bytes: Buffer, from: number, to: number, text: Buffer, at: number): number {
  for (let i = from; i < to; i++) {
    const b = bytes[i]
    text[at++] = HEX_DIGITS[b >> 4]
    text[at++] = HEX_DIGITS[b & 15]
  }
  return at
}

const ids = new IdPool()

export function newTraceId (): string {
  const at = ids.take()
  return ids.records.slice(at + 3, at + 35)
}

export function newSpanId (): string {
  const at = ids.take()
  return ids.records.slice(at + 36, at + 52)
}

// --- the tracer ----------------------------------------------------------------------------------

const kTraced = Symbol('portcullis.tracing.reply')
const kStart = Symbol('portcullis.tracing.start')
/** Fastify measures `reply.elapsedTime` only when logging is on: the start is kept here instead. */
type TracedResponse = ServerResponse & { [kTraced]?: FastifyReply, [kStart]?: number }

export class Tracer {
  readonly exporter: OtlpExporter | null
  private readonly onClose: (this: TracedResponse) => void

  constructor (private readonly config: Readonly<TracingConfig>, version = '0.0.0') {
    this.exporter = config.otlp === undefined ? null : new OtlpExporter(config.otlp, version)
    const exporter = this.exporter
    this.onClose = function onResponseClose (this: TracedResponse) {
      const reply = this[kTraced]
      if (reply === undefined || exporter === null) return
      this[kTraced] = undefined
      exporter.add(serverSpan(reply, this[kStart] as number, this.writableEnded))
    }
  }

  /** Called for every request before any hook: sets `request.trace` and the headers for the upstream. */
  start (request: FastifyRequest, reply: FastifyReply): void {
    const headers = request.raw.headers
    const incoming = headers.traceparent
    const parent = incoming === undefined ? null : parseTraceparent(incoming)
    let trace: TraceContext
    let traceparent: string
    if (parent === null) {
      // A new trace: the header and both ids are slices of one pooled record.
      const at = ids.take()
      const records = ids.records
      const ratio = this.config.sampleRatio
      const sampled = ratio >= 1 || Math.random() < ratio
      trace = { traceId: records.slice(at + 3, at + 35), spanId: records.slice(at + 36, at + 52), parentId: undefined, sampled, tracestate: undefined }
      traceparent = sampled ? records.slice(at, at + RECORD) : records.slice(at, at + RECORD - 2) + '00'
    } else {
      trace = { traceId: parent.traceId, spanId: newSpanId(), parentId: parent.parentId, sampled: parent.sampled, tracestate: parseTracestate(headers.tracestate) }
      traceparent = '00-' + trace.traceId + '-' + trace.spanId + (trace.sampled ? '-01' : '-00')
    }
    request.trace = trace
    const out: Array<[string, string]> = [['traceparent', traceparent]]
    if (trace.tracestate !== undefined) out.push(['tracestate', trace.tracestate])
    const upstream = request.upstream
    // With the body fields present, a later `{ ...request.upstream, body, contentType }` (validation)
    // only overwrites them. Spreading `{ headers }` and then adding two properties takes V8's slow
    // path (Node 20: 2–4.5 µs a spread against ≈ 20 ns; POST with validation paid ≈ 10 % CPU).
    request.upstream = upstream === undefined
      ? { headers: out, body: undefined, contentType: undefined }
      : { ...upstream, headers: [...(upstream.headers ?? []), ...out] }
    if (this.exporter !== null && trace.sampled) {
      const res = reply.raw as TracedResponse
      res[kTraced] = reply
      res[kStart] = performance.now()
      res.on('close', this.onClose)
    }
  }

  async close (): Promise<void> {
    await this.exporter?.close()
  }
}

// --- OTLP/HTTP JSON --------------------------------------------------------------------------------

type AnyValue = { stringValue: string } | { intValue: string } | { doubleValue: number } | { boolValue: boolean }
interface KeyValue { key: string, value: AnyValue }

/** One span in OTLP's JSON encoding (ids as hex, 64-bit integers as decimal strings). */
export interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  startTimeUnixNano: string
  endTimeUnixNano: string
  attributes: KeyValue[]
  status: { code: number, message?: string }
}

const SPAN_KIND_SERVER = 2
const STATUS_UNSET = 0
const STATUS_ERROR = 2

const str = (key: string, value: string): KeyValue => ({ key, value: { stringValue: value } })
const int = (key: string, value: number): KeyValue => ({ key, value: { intValue: String(value) } })

function unixNano (ms: number): string {
  return (BigInt(Math.round(ms * 1000)) * 1000n).toString()
}

/** The gateway's server span of a finished (or aborted) request, named `METHOD route`. */
function serverSpan (reply: FastifyReply, started: number, finished: boolean): OtlpSpan {
  const request = reply.request
  const trace = request.trace as TraceContext
  const now = performance.now()
  const end = performance.timeOrigin + now
  const route = routeNameOf(reply.request) ?? 'unmatched'
  const url = request.raw.url ?? '/'
  const q = url.indexOf('?')
  const status = reply.raw.statusCode
  const attributes: KeyValue[] = [
    str('http.request.method', request.method),
    str('url.path', q === -1 ? url : url.slice(0, q)),
    str('url.scheme', request.protocol),
    str('client.address', request.ip),
    str('portcullis.route', route),
    str('portcullis.request_id', request.id)
  ]
  if (finished) attributes.push(int('http.response.status_code', status))
  if (request.upstreamMs !== undefined) attributes.push({ key: 'portcullis.upstream_ms', value: { doubleValue: request.upstreamMs } })
  const span: OtlpSpan = {
    traceId: trace.traceId,
    spanId: trace.spanId,
    name: `${request.method} ${route}`,
    kind: SPAN_KIND_SERVER,
    startTimeUnixNano: unixNano(performance.timeOrigin + started),
    endTimeUnixNano: unixNano(end),
    attributes,
    status: !finished ? { code: STATUS_ERROR, message: 'response aborted' } : status >= 500 ? { code: STATUS_ERROR } : { code: STATUS_UNSET }
  }
  if (trace.parentId !== undefined) span.parentSpanId = trace.parentId
  return span
}

/**
 * A bounded queue of spans, sent in batches by a timer (or as soon as a batch is full), one
 * request at a time, each within `timeout`. A failed batch is dropped, not retried: tracing must
 * never hold memory or time the requests need.
 */
export class OtlpExporter {
  /** Spans sent and acknowledged (2xx), dropped because the queue was full, lost in failed exports. */
  readonly stats = { exported: 0, dropped: 0, failed: 0 }
  private queue: OtlpSpan[] = []
  private sending: Promise<void> | null = null
  private readonly timer: NodeJS.Timeout
  private readonly agent = new Agent({ connections: 2, keepAliveTimeout: 10_000 })
  private readonly timeoutMs: number
  private readonly resource: { attributes: KeyValue[] }
  private readonly scope: { name: string, version: string }
  private warned = false
  private closed = false
  log: FastifyBaseLogger | undefined

  constructor (private readonly config: Readonly<OtlpConfig>, version: string) {
    this.timeoutMs = parseDuration(config.timeout)
    this.resource = { attributes: [str('service.name', config.serviceName), str('telemetry.sdk.name', 'portcullis')] }
    this.scope = { name: 'portcullis', version }
    this.timer = setInterval(() => { this.kick() }, parseDuration(config.interval))
    this.timer.unref()
  }

  /** O(1), never waits: a full queue drops the span. */
  add (span: OtlpSpan): void {
    if (this.closed || this.queue.length >= this.config.queueSize) {
      this.stats.dropped++
      return
    }
    this.queue.push(span)
    if (this.queue.length >= this.config.batchSize) this.kick()
  }

  /** Start sending unless a send is under way. */
  private kick (): void {
    if (this.sending !== null || this.queue.length === 0) return
    this.sending = this.drain().finally(() => { this.sending = null })
  }

  private async drain (): Promise<void> {
    while (this.queue.length > 0) await this.send(this.queue.splice(0, this.config.batchSize))
  }

  private async send (spans: OtlpSpan[]): Promise<void> {
    const body = JSON.stringify({ resourceSpans: [{ resource: this.resource, scopeSpans: [{ scope: this.scope, spans }] }] })
    try {
      const res = await httpRequest(this.config.endpoint, {
        method: 'POST',
        dispatcher: this.agent,
        headers: { ...this.config.headers, 'content-type': 'application/json' },
        body,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
        signal: AbortSignal.timeout(this.timeoutMs)
      })
      await res.body.dump()
      if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`collector answered ${res.statusCode}`)
      this.stats.exported += spans.length
      this.warned = false
    } catch (err) {
      this.stats.failed += spans.length
      if (!this.warned) {
        this.warned = true
        this.log?.warn({ err: (err as Error).message, spans: spans.length }, 'OTLP export failed; spans dropped')
      }
    }
  }

  /** Send what is queued (each request within `timeout`); resolves when done. */
  async flush (): Promise<void> {
    while (this.sending !== null) await this.sending
    this.kick()
    while (this.sending !== null) await this.sending
  }

  async close (): Promise<void> {
    if (this.closed) return
    clearInterval(this.timer)
    await this.flush()
    this.closed = true
    this.queue = []
    await this.agent.close()
  }
}

// --- the plugin --------------------------------------------------------------------------------

export interface TracingPluginOptions { tracer: Tracer }

async function tracingPlugin (app: FastifyInstance, opts: TracingPluginOptions): Promise<void> {
  app.decorateRequest('trace', undefined)
  app.decorate('tracer', opts.tracer)
  if (opts.tracer.exporter !== null) opts.tracer.exporter.log = app.log
  app.addHook('onClose', async () => { await opts.tracer.close() })
}

export default fp(tracingPlugin, { name: 'portcullis-tracing', fastify: '5.x' })

/**
 * W3C trace context: a well-formed traceparent is continued (same trace, the gateway's span as
 * the upstream's parent), anything else starts a new trace; the trace id is on the access log
 * line; with tracing.otlp set, a local collector stub receives one span per request.
 */
import t from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { request } from 'undici'
import { buildGateway } from '../src/app.js'
import { ConfigError, parseConfig } from '../src/config.js'
import { IdPool, Tracer, parseTraceparent, parseTracestate, type OtlpSpan } from '../plugins/observability/tracing.js'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { freePort, startTestGateway, startUpstream, type RawConfig, type T } from './helper.js'
import { basic, cheapHash } from './auth-helper.js'

const TRACE = '0af7651916cd43dd8448eb211c80319c'
const PARENT = 'b7ad6b7169203331'
const VALID = `00-${TRACE}-${PARENT}-01`
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/

async function get (url: string, headers: Record<string, string | string[]> = {}): Promise<number> {
  const res = await request(url, { headers })
  await res.body.dump()
  return res.statusCode
}

/** The trace headers the upstream received on its last request (and how many traceparent lines). */
function lastTrace (up: { requests: Array<{ headers: IncomingHttpHeaders, rawHeaders: string[] }> }): { traceparent: string, tracestate: string | undefined, lines: number } {
  const r = up.requests[up.requests.length - 1]
  return {
    traceparent: String(r.headers.traceparent),
    tracestate: r.headers.tracestate as string | undefined,
    lines: r.rawHeaders.filter((v, i) => i % 2 === 0 && v.toLowerCase() === 'traceparent').length
  }
}

t.test('a well-formed traceparent is continued: same trace id, the gateway\'s span as parent, flags and tracestate kept', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  t.equal(await get(`${url}/api/people/1`, { traceparent: VALID, tracestate: 'congo=t61rcWkgMzE, rojo=00f067aa0ba902b7' }), 200)
  const sent = lastTrace(up)
  const m = TRACEPARENT.exec(sent.traceparent)
  t.ok(m, sent.traceparent)
  t.equal(m?.[1], TRACE, 'same trace')
  t.not(m?.[2], PARENT, 'the parent-id is the gateway\'s own span')
  t.ok(sent.traceparent.endsWith('-01'), 'sampled flag kept')
  t.equal(sent.tracestate, 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7')
  t.equal(sent.lines, 1, 'the client\'s traceparent is not forwarded next to the gateway\'s')

  t.equal(await get(`${url}/api/people/1`, { traceparent: `00-${TRACE}-${PARENT}-00` }), 200)
  t.ok(lastTrace(up).traceparent.endsWith('-00'), 'not sampled stays not sampled')
  t.equal(lastTrace(up).tracestate, undefined)

  // A later version: the version-00 fields are taken, the rest ignored (§3.2.4); we speak 00.
  t.equal(await get(`${url}/api/people/1`, { traceparent: `cc-${TRACE}-${PARENT}-01-what-the-future-holds` }), 200)
  t.equal(TRACEPARENT.exec(lastTrace(up).traceparent)?.[1], TRACE)
})

t.test('the trace headers travel with the identity and the validated body the pipeline adds', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    users: [{ username: 'alice', passwordHash: cheapHash('pw'), scopes: ['people:write'] }],
    routes: [{
      name: 'people',
      prefix: '/api/people',
      upstream: `${up.origin}/people`,
      auth: ['basic'],
      validate: [{ method: 'POST', path: '/', body: 'Person' }]
    }]
  })
  const res = await request(`${url}/api/people/`, {
    method: 'POST',
    headers: { traceparent: VALID, authorization: basic('alice', 'pw'), 'content-type': 'application/json' },
    body: '{"name":"Ada","age":36}'
  })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  const r = up.requests[0]
  t.equal(TRACEPARENT.exec(String(r.headers.traceparent))?.[1], TRACE)
  t.equal(r.headers['x-authenticated-user'], 'alice')
  t.equal(r.body.toString(), '{"name":"Ada","age":36}')
})

t.test('a malformed traceparent starts a new trace (and its tracestate is dropped)', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  const malformed: Record<string, string | string[]> = {
    'upper-case hex': `00-${TRACE.toUpperCase()}-${PARENT}-01`,
    'version ff': `ff-${TRACE}-${PARENT}-01`,
    'zero trace id': `00-${'0'.repeat(32)}-${PARENT}-01`,
    'zero parent id': `00-${TRACE}-${'0'.repeat(16)}-01`,
    'version 00 with more fields': `${VALID}-extra`,
    'later version without a dash after the flags': `01-${TRACE}-${PARENT}-01x`,
    'short trace id': `00-${TRACE.slice(2)}-${PARENT}-01`,
    'not hex': `00-${TRACE.slice(0, 31)}g-${PARENT}-01`,
    'missing flags': `00-${TRACE}-${PARENT}`,
    'oversized version 00': `${VALID}-${'x'.repeat(6000)}`,
    'oversized garbage': '0'.repeat(8000),
    garbage: 'hello',
    'two headers': [VALID, `00-${'1'.repeat(32)}-${PARENT}-01`]
  }
  const seen = new Set<string>()
  for (const [what, traceparent] of Object.entries(malformed)) {
    t.equal(await get(`${url}/api/people/1`, { traceparent, tracestate: 'congo=t61rcWkgMzE' }), 200)
    const sent = lastTrace(up)
    const m = TRACEPARENT.exec(sent.traceparent)
    t.ok(m, `${what}: a well-formed traceparent goes upstream (${sent.traceparent})`)
    t.not(m?.[1], TRACE, `${what}: a new trace`)
    t.ok(m?.[1] !== undefined && !seen.has(m[1]), `${what}: a fresh trace id`)
    seen.add(m?.[1] ?? '')
    t.equal(sent.tracestate, undefined, `${what}: tracestate dropped`)
    t.equal(sent.lines, 1)
  }
  t.equal(await get(`${url}/api/people/1`), 200)
  t.match(lastTrace(up).traceparent, TRACEPARENT, 'no traceparent at all: a new one')
  t.ok(lastTrace(up).traceparent.endsWith('-01'), 'new traces are sampled (sampleRatio 1)')
})

t.test('traceparent and tracestate parsing rules', async (t) => {
  t.same(parseTraceparent(VALID), { traceId: TRACE, parentId: PARENT, sampled: true })
  t.same(parseTraceparent(`00-${TRACE}-${PARENT}-02`), { traceId: TRACE, parentId: PARENT, sampled: false })
  t.equal(parseTraceparent(undefined), null)
  t.equal(parseTraceparent(` ${VALID}`), null)
  t.equal(parseTracestate('a=1,b=2'), 'a=1,b=2')
  t.equal(parseTracestate('a=1,,  b=2 '), 'a=1,b=2', 'empty members and surrounding spaces are allowed')
  t.equal(parseTracestate('tenant@vendor=x'), 'tenant@vendor=x')
  t.equal(parseTracestate('A=1'), undefined, 'upper-case key')
  t.equal(parseTracestate('a=1,a=2'), undefined, 'duplicate key')
  t.equal(parseTracestate('a=x,y'), undefined, 'comma in a value')
  t.equal(parseTracestate('a=1 '), 'a=1')
  t.equal(parseTracestate(Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(',')), undefined, 'more than 32 members')
  const long = Array.from({ length: 10 }, (_, i) => `k${i}=${'v'.repeat(100)}`)
  const big = `${long.join(',')},huge=${'x'.repeat(200)}`
  const cut = parseTracestate(big) ?? ''
  t.ok(cut.length <= 512 && !cut.includes('huge=') && cut.startsWith('k0='), 'past 512 characters: long members first, then from the end')
})

const RECORD = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/
const ZERO_ID = /^0+$/

t.test('pooled ids: every record a valid sampled traceparent, unique across refills', async (t) => {
  const pool = new IdPool(4)
  const seen = new Set<string>()
  for (let i = 0; i < 4 * 3 + 1; i++) {
    const at = pool.take()
    const record = pool.records.slice(at, at + 55)
    const m = RECORD.exec(record)
    t.ok(m, record)
    t.ok(m !== null && !ZERO_ID.test(m[1]) && !ZERO_ID.test(m[2]))
    seen.add(m?.[1] ?? '').add(m?.[2] ?? '')
  }
  t.equal(seen.size, 2 * 13, 'no id repeats, within a refill or across three')
})

t.test('pooled ids: all-zero trace or span bytes from the generator are drawn again', async (t) => {
  let calls = 0
  // The first fill gives zeros for record 0's trace id and record 2's span id; the first redraw of each gives zeros again.
  const fill = (buffer: Buffer, offset = 0, size = buffer.length - offset): void => {
    calls++
    for (let i = offset; i < offset + size; i++) buffer[i] = (i * 7 + calls) % 251 + 1
    if (calls === 1) { buffer.fill(0, 0, 16); buffer.fill(0, 2 * 24 + 16, 3 * 24) }
    if (calls === 2 || calls === 4) buffer.fill(0, offset, offset + size)
  }
  const pool = new IdPool(3, fill)
  const records: string[] = []
  for (let i = 0; i < 3; i++) {
    const at = pool.take()
    records.push(pool.records.slice(at, at + 55))
  }
  t.equal(calls, 5, 'one fill, two redraws of record 0\'s trace id, two of record 2\'s span id')
  for (const record of records) {
    const m = RECORD.exec(record)
    t.ok(m, record)
    t.ok(m !== null && !ZERO_ID.test(m[1]) && !ZERO_ID.test(m[2]), `no all-zero id in ${record}`)
  }
})

/** What Tracer.start sets on one bare request: its trace and the traceparent for the upstream. */
function startTrace (tracer: Tracer, headers: Record<string, string> = {}): { trace: NonNullable<FastifyRequest['trace']>, sent: string } {
  const request = { raw: { headers }, upstream: undefined, trace: undefined } as unknown as FastifyRequest
  tracer.start(request, { raw: {} } as unknown as FastifyReply)
  const sent = request.upstream?.headers?.find(([name]) => name === 'traceparent')?.[1] ?? ''
  return { trace: request.trace as NonNullable<FastifyRequest['trace']>, sent }
}

t.test('Tracer.start across the pool\'s refills: new traces, unsampled traces and continued ones', async (t) => {
  const sampled = new Tracer(parseConfig({ routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9' }] }).tracing)
  const unsampled = new Tracer(parseConfig({ tracing: { sampleRatio: 0 }, routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9' }] }).tracing)
  const ids = new Set<string>()
  let bad = 0
  const n = 3 * 128 + 7 // the process's pool holds 128 records
  for (let i = 0; i < n; i++) {
    const fresh = startTrace(sampled)
    if (fresh.sent !== `00-${fresh.trace.traceId}-${fresh.trace.spanId}-01` || !fresh.trace.sampled || fresh.trace.parentId !== undefined) bad++
    const off = startTrace(unsampled)
    if (off.sent !== `00-${off.trace.traceId}-${off.trace.spanId}-00` || off.trace.sampled) bad++
    const continued = startTrace(sampled, { traceparent: VALID })
    if (continued.sent !== `00-${TRACE}-${continued.trace.spanId}-01` || continued.trace.parentId !== PARENT) bad++
    for (const { trace } of [fresh, off, continued]) {
      if (!/^[0-9a-f]{32}$/.test(trace.traceId) || !/^[0-9a-f]{16}$/.test(trace.spanId) || ZERO_ID.test(trace.spanId)) bad++
      ids.add(trace.spanId)
    }
    ids.add(fresh.trace.traceId).add(off.trace.traceId)
  }
  t.equal(bad, 0, 'every header is 00-<trace id>-<span id>-<flags> of the request\'s own trace')
  t.equal(ids.size, 5 * n, 'every trace id and span id is new')
})

t.test('Tracer.start leaves request.upstream with the fields validation sets, so its spread stays on V8\'s fast path', async (t) => {
  const tracer = new Tracer(parseConfig({ routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9' }] }).tracing)
  const request = { raw: { headers: {} }, upstream: undefined, trace: undefined } as unknown as FastifyRequest
  tracer.start(request, { raw: {} } as unknown as FastifyReply)
  t.same(Object.keys(request.upstream ?? {}), ['headers', 'body', 'contentType'])
  t.equal(request.upstream?.body, undefined, 'no body of its own: the forwarder still streams or reads the client\'s')
  const validated = { ...request.upstream, body: '{}', contentType: 'application/json' }
  t.same(Object.keys(validated), ['headers', 'body', 'contentType'])
})

t.test('through the gateway: trace ids stay unique and well-formed past the pool\'s refill', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  const seen = new Set<string>()
  for (let i = 0; i < 140; i++) {
    t.equal(await get(`${url}/api/people/1`, i % 2 === 0 ? {} : { traceparent: VALID }), 200)
    const m = TRACEPARENT.exec(lastTrace(up).traceparent)
    if (m === null) { t.fail(lastTrace(up).traceparent); break }
    if (i % 2 === 0) seen.add(m[1])
    seen.add(m[2])
  }
  t.equal(seen.size, 70 + 140, 'a fresh trace id per new trace, a fresh span id per request')
})

/** Build a gateway whose log lines are collected. */
async function gatewayWithLog (t: T, raw: RawConfig): Promise<{ url: string, lines: Array<Record<string, unknown>> }> {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    }
  })
  const app = await buildGateway(parseConfig(raw), { logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { url, lines }
}

t.test('the access log line carries the trace id', async (t) => {
  const up = await startUpstream(t)
  const { url, lines } = await gatewayWithLog(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  await get(`${url}/api/people/1`, { traceparent: VALID })
  await get(`${url}/nope`)
  const access = lines.filter((l) => l.msg === 'request completed')
  t.equal(access.length, 2)
  t.equal(access[0].traceId, TRACE)
  t.match(access[1].traceId, /^[0-9a-f]{32}$/, 'a 404 has a (new) trace too')
  t.not(access[1].traceId, TRACE)
})

t.test('tracing.enabled: false leaves the client\'s trace headers alone', async (t) => {
  const up = await startUpstream(t)
  const { url, lines } = await gatewayWithLog(t, {
    tracing: { enabled: false },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  await get(`${url}/api/people/1`, { traceparent: 'not-a-traceparent', tracestate: 'a=1' })
  t.equal(lastTrace(up).traceparent, 'not-a-traceparent', 'passed through as any other header')
  t.equal(lastTrace(up).tracestate, 'a=1')
  t.equal(lines.find((l) => l.msg === 'request completed')?.traceId, null)
})

// --- OTLP export -------------------------------------------------------------------------------

interface Collector { url: string, spans: OtlpSpan[], bodies: unknown[], requests: IncomingMessage[] }

/** A collector stub on 127.0.0.1 that records the spans POSTed to /v1/traces. */
async function startCollector (t: T, behave: (res: ServerResponse) => boolean = () => false): Promise<Collector> {
  const spans: OtlpSpan[] = []
  const bodies: unknown[] = []
  const requests: IncomingMessage[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      requests.push(req)
      if (behave(res)) return
      if (req.method !== 'POST' || req.url !== '/v1/traces' || req.headers['content-type'] !== 'application/json') {
        res.writeHead(400).end()
        return
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: OtlpSpan[] }> }> }
      bodies.push(body)
      for (const rs of body.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans)
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, spans, bodies, requests }
}

async function until (what: string, check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

const attr = (span: OtlpSpan, key: string): unknown => {
  const v = span.attributes.find((a) => a.key === key)?.value as Record<string, unknown> | undefined
  return v === undefined ? undefined : Object.values(v)[0]
}

t.test('OTLP: the collector receives one span per request, with the route name and status', async (t) => {
  const collector = await startCollector(t)
  const up = await startUpstream(t, (req, res) => { res.writeHead(req.url?.endsWith('/fail') === true ? 503 : 200).end('x') })
  const { url, app } = await startTestGateway(t, {
    tracing: { otlp: { endpoint: collector.url, interval: '100ms', batchSize: 4, serviceName: 'edge-gw', headers: { 'x-api-key': 'k' } } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  const statuses: number[] = []
  statuses.push(await get(`${url}/api/people/1`, { traceparent: VALID }))
  for (let i = 0; i < 8; i++) statuses.push(await get(`${url}/api/people/${i}`))
  statuses.push(await get(`${url}/api/people/fail`))
  statuses.push(await get(`${url}/nope`))
  t.same(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 200, 503, 404])
  await until('11 spans', () => collector.spans.length >= 11)
  t.equal(collector.spans.length, 11, 'one span per request')
  t.ok(collector.bodies.length >= 3, `sent in batches of at most 4 (${collector.bodies.length} requests)`)
  t.equal(collector.requests[0].headers['x-api-key'], 'k', 'configured headers are sent')
  const body = collector.bodies[0] as { resourceSpans: Array<{ resource: { attributes: Array<{ key: string, value: { stringValue: string } }> } }> }
  t.same(body.resourceSpans[0].resource.attributes.find((a) => a.key === 'service.name'), { key: 'service.name', value: { stringValue: 'edge-gw' } })

  const upstreamSeen = up.requests.map((r) => TRACEPARENT.exec(String(r.headers.traceparent)))
  for (const span of collector.spans) {
    t.match(span.traceId, /^[0-9a-f]{32}$/)
    t.match(span.spanId, /^[0-9a-f]{16}$/)
    t.equal(span.kind, 2, 'a server span')
    t.ok(BigInt(span.endTimeUnixNano) >= BigInt(span.startTimeUnixNano))
    t.ok(Math.abs(Number(BigInt(span.endTimeUnixNano) / 1_000_000n) - Date.now()) < 60_000, 'timestamps are Unix time')
  }
  const first = collector.spans.find((s) => s.traceId === TRACE)
  t.ok(first, 'the continued trace')
  t.equal(first?.parentSpanId, PARENT, 'its parent is the caller\'s span')
  t.equal(first?.name, 'GET people')
  t.equal(attr(first as OtlpSpan, 'portcullis.route'), 'people')
  t.equal(attr(first as OtlpSpan, 'http.response.status_code'), '200')
  t.same(first?.status, { code: 0 })
  t.ok(upstreamSeen.some((m) => m?.[1] === TRACE && m[2] === first?.spanId), 'the upstream\'s parent-id is the exported span')
  const failed = collector.spans.find((s) => attr(s, 'url.path') === '/api/people/fail')
  t.equal(attr(failed as OtlpSpan, 'http.response.status_code'), '503')
  t.equal(failed?.status.code, 2, '5xx is an error span')
  const missing = collector.spans.find((s) => attr(s, 'url.path') === '/nope')
  t.equal(missing?.name, 'GET unmatched')
  t.equal(attr(missing as OtlpSpan, 'http.response.status_code'), '404')
  t.equal(missing?.parentSpanId, undefined, 'a new trace has no parent')
  // The collector has the spans before the exporter has read its answer: wait for that too.
  await until('the exporter counted 11 spans', () => app.tracer?.exporter?.stats.exported === 11)
  t.equal(app.tracer?.exporter?.stats.exported, 11)
})

t.test('OTLP: unsampled requests are not exported; sampleRatio 0 samples no new trace', async (t) => {
  const collector = await startCollector(t)
  const up = await startUpstream(t)
  const { url, app } = await startTestGateway(t, {
    tracing: { sampleRatio: 0, otlp: { endpoint: collector.url, interval: '50ms' } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  await get(`${url}/api/people/1`)
  t.ok(lastTrace(up).traceparent.endsWith('-00'), 'a new trace, not sampled')
  await get(`${url}/api/people/1`, { traceparent: `00-${TRACE}-${PARENT}-00` })
  await get(`${url}/api/people/1`, { traceparent: VALID })
  await until('the sampled span', () => collector.spans.length >= 1)
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(collector.spans.length, 1, 'only the request whose caller sampled it')
  t.equal(collector.spans[0].traceId, TRACE)
  await app.close()
})

t.test('OTLP: a dead, failing or stalled collector never holds requests, and the queue stays bounded', async (t) => {
  const up = await startUpstream(t)
  const routes = [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  const dead = await freePort()
  const failing = await startCollector(t, (res) => { res.writeHead(500).end(); return true })
  const stalled = await startCollector(t, () => true) // never answers
  for (const [what, endpoint] of [['dead', `http://127.0.0.1:${dead}/v1/traces`], ['failing', failing.url], ['stalled', stalled.url]]) {
    const started = Date.now()
    const { url, app } = await startTestGateway(t, {
      tracing: { otlp: { endpoint, interval: '50ms', batchSize: 2, queueSize: 3, timeout: '300ms' } },
      routes
    })
    for (let i = 0; i < 20; i++) t.equal(await get(`${url}/api/people/${i}`), 200)
    const exporter = app.tracer?.exporter
    await until(`${what}: an export attempt`, () => (exporter?.stats.failed ?? 0) > 0)
    await app.close()
    t.ok(Date.now() - started < 5000, `${what}: 20 requests and a close within 5 s`)
    const stats = exporter?.stats ?? { exported: -1, dropped: 0, failed: 0 }
    t.equal(stats.exported, 0, `${what}: nothing acknowledged`)
    if (what === 'stalled') t.ok(stats.dropped >= 20 - 2 * 3, `${what}: spans beyond the queue were dropped (${stats.dropped})`)
    t.equal(stats.dropped + stats.failed, 20, `${what}: every span accounted for`)
  }
  t.ok(failing.requests.length > 0 && stalled.requests.length > 0, 'the collectors were called')
})

t.test('config checks for tracing', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/people' }
  const problems = (raw: Record<string, unknown>): string[] => {
    try { parseConfig(raw, { env: {} }) } catch (err) { if (err instanceof ConfigError) return err.problems; throw err }
    return []
  }
  t.same(parseConfig({ routes: [route] }, { env: {} }).tracing, { enabled: true, sampleRatio: 1 })
  t.same(parseConfig({ tracing: { otlp: { endpoint: 'http://127.0.0.1:4318/v1/traces' } }, routes: [route] }, { env: {} }).tracing.otlp, {
    endpoint: 'http://127.0.0.1:4318/v1/traces', headers: {}, serviceName: 'portcullis', interval: '5s', batchSize: 512, queueSize: 4096, timeout: '10s'
  })
  t.same(problems({ tracing: { otlp: { endpoint: 'ftp://x/v1/traces' } }, routes: [route] }), ['tracing.otlp.endpoint: must be an http or https URL'])
  t.same(problems({ tracing: { sampleRatio: 2 }, routes: [route] }).length, 1)
  t.same(problems({ tracing: { otlp: {} }, routes: [route] }), ['tracing.otlp.endpoint: required'])
})

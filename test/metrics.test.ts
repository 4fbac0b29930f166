/**
 * /metrics: every metric moves when its event happens (real requests through a real gateway to
 * a real upstream, then a scrape, parsed and compared), label cardinality stays bounded
 * whatever paths clients send, and the endpoint's protection (Basic, allow list, own port).
 */
import t from 'tap'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Agent, request } from 'undici'
import { channels } from '../schemas/events.js'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'
import { ConfigError, parseConfig } from '../src/config.js'
import { buildTestGateway, freePort, startTestGateway, startUpstream, type T } from './helper.js'
import { basic, cheapHash, hsToken, SECRET } from './auth-helper.js'

// --- the exposition, parsed ------------------------------------------------------------------

interface Sample { name: string, labels: Record<string, string>, value: number }

/** Prometheus text format → samples (HELP/TYPE lines skipped). */
function parseExposition (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null) throw new Error(`not an exposition line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v
    samples.push({ name: m[1], labels, value: Number(m[3]) })
  }
  return samples
}

/** The sum of the samples named `name` whose labels include `labels`. */
function total (samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0)
}

async function scrape (url: string, headers: Record<string, string> = {}): Promise<Sample[]> {
  const res = await request(url, { headers })
  const text = await res.body.text()
  if (res.statusCode !== 200) throw new Error(`scrape: ${res.statusCode} ${text}`)
  if (!String(res.headers['content-type']).startsWith('text/plain; version=0.0.4')) throw new Error('scrape: not the text exposition')
  return parseExposition(text)
}

async function get (url: string, options: Parameters<typeof request>[1] = {}): Promise<{ status: number, text: string, headers: Record<string, unknown> }> {
  const res = await request(url, options)
  return { status: res.statusCode, text: await res.body.text(), headers: res.headers }
}

const M = {
  requests: 'portcullis_requests_total',
  duration: 'portcullis_request_duration_seconds',
  upstream: 'portcullis_upstream_duration_seconds',
  inFlight: 'portcullis_requests_in_flight',
  upstreamErrors: 'portcullis_upstream_errors_total',
  authFailures: 'portcullis_auth_failures_total',
  authzDenials: 'portcullis_authz_denials_total',
  validation: 'portcullis_validation_failures_total',
  reported: 'portcullis_validation_report_violations_total',
  rateLimited: 'portcullis_rate_limited_total'
}

/** An upstream that answers by path: /fail → 500, /hold → waits for `release()`, else 200. */
async function scriptedUpstream (t: T): Promise<{ origin: string, release: () => void, held: () => number }> {
  const waiting: Array<() => void> = []
  const up = await startUpstream(t, (req, res) => {
    if (req.url?.endsWith('/fail') === true) { res.writeHead(500).end('no'); return }
    if (req.url?.endsWith('/hold') === true) {
      waiting.push(() => { if (!res.destroyed) res.end('late') })
      return
    }
    res.end('ok')
  })
  return { origin: up.origin, release: () => { for (const w of waiting.splice(0)) w() }, held: () => waiting.length }
}

async function until (what: string, check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

// --- the request metrics -------------------------------------------------------------------------

t.test('requests are counted by route, method and status class, with latency and the upstream share', async (t) => {
  const up = await scriptedUpstream(t)
  const { url } = await startTestGateway(t, {
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` },
      { name: 'orders', prefix: '/orders', upstream: `${up.origin}/o`, methods: ['GET'] }
    ]
  })
  const before = await scrape(`${url}/metrics`)
  t.equal(total(before, M.requests, { route: 'people' }), 0, 'nothing counted yet')

  for (let i = 0; i < 3; i++) t.equal((await get(`${url}/api/people/${i}`)).status, 200)
  for (let i = 0; i < 2; i++) t.equal((await get(`${url}/api/people/`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })).status, 200)
  t.equal((await get(`${url}/api/people/fail`)).status, 500)
  t.equal((await get(`${url}/orders/1`)).status, 200)
  t.equal((await get(`${url}/orders/1`, { method: 'DELETE' })).status, 405)
  t.equal((await get(`${url}/nowhere/${Math.random()}`)).status, 404)

  const s = await scrape(`${url}/metrics`)
  t.equal(total(s, M.requests, { route: 'people', method: 'GET', status_class: '2xx' }), 3)
  t.equal(total(s, M.requests, { route: 'people', method: 'POST', status_class: '2xx' }), 2)
  t.equal(total(s, M.requests, { route: 'people', method: 'GET', status_class: '5xx' }), 1)
  t.equal(total(s, M.requests, { route: 'orders', method: 'GET', status_class: '2xx' }), 1)
  t.equal(total(s, M.requests, { route: 'unmatched', status_class: '4xx' }), 2, 'the 405 and the 404 matched no route')
  t.equal(total(s, M.requests, { route: 'metrics', status_class: '2xx' }), 1, 'the first scrape counts too')

  t.equal(total(s, `${M.duration}_count`, { route: 'people' }), 6, 'a latency observation per request')
  t.equal(total(s, `${M.duration}_bucket`, { route: 'people', le: '+Inf' }), 6)
  t.ok(total(s, `${M.duration}_sum`, { route: 'people' }) > 0)
  t.equal(total(s, `${M.upstream}_count`, { route: 'people' }), 6, 'every people request reached the upstream')
  t.equal(total(s, `${M.upstream}_count`, { route: 'orders' }), 1)
  t.equal(total(s, `${M.upstream}_count`, { route: 'unmatched' }), 0, 'no upstream share without an upstream')
  t.ok(total(s, `${M.upstream}_sum`, { route: 'people' }) <= total(s, `${M.duration}_sum`, { route: 'people' }), 'the upstream share is part of the whole')
  // Buckets are cumulative.
  const buckets = s.filter((x) => x.name === `${M.duration}_bucket` && x.labels.route === 'people').map((x) => x.value)
  t.same(buckets, [...buckets].sort((a, b) => a - b))
  t.ok(s.some((x) => x.name === 'process_cpu_user_seconds_total'), 'Node default process metrics are there')
  t.ok(s.some((x) => x.name === 'nodejs_eventloop_lag_seconds'))
})

t.test('in-flight requests rise while held and fall back; an abandoned response counts as aborted', async (t) => {
  const up = await scriptedUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  const idle = await scrape(`${url}/metrics`)
  t.equal(total(idle, M.inFlight), 1, 'only the scrape itself')

  // No keep-alive: connections that were busy when the gateway closes make close() wait for them.
  const agent = new Agent({ pipelining: 0 })
  t.teardown(() => agent.close())
  const held = [get(`${url}/api/people/hold`, { dispatcher: agent }), get(`${url}/api/people/hold`, { dispatcher: agent })]
  const abandoned = new AbortController()
  const gone = get(`${url}/api/people/hold`, { signal: abandoned.signal, dispatcher: agent }).catch((err: Error) => err)
  await until('three held requests', () => up.held() === 3)
  t.equal(total(await scrape(`${url}/metrics`), M.inFlight), 4, 'three held + the scrape')

  abandoned.abort()
  t.type(await gone, Error)
  await until('the abandoned request to be counted', async () => total(await scrape(`${url}/metrics`), M.requests, { status_class: 'aborted' }) === 1)
  up.release()
  for (const r of await Promise.all(held)) t.equal(r.status, 200)
  const after = await scrape(`${url}/metrics`)
  t.equal(total(after, M.inFlight), 1, 'back to the scrape alone')
  t.equal(total(after, M.requests, { route: 'people', status_class: '2xx' }), 2)
  t.equal(total(after, M.requests, { route: 'people', status_class: 'aborted' }), 1)
})

t.test('upstream errors are counted by kind: refused, timeout, reset', async (t) => {
  const dead = await freePort()
  const slow = await startUpstream(t, () => {}) // never answers
  const rude = await startUpstream(t, (_req, res) => { res.socket?.destroy() })
  const { url } = await startTestGateway(t, {
    routes: [
      { name: 'dead', prefix: '/dead', upstream: `http://127.0.0.1:${dead}/x`, retries: 0 },
      { name: 'slow', prefix: '/slow', upstream: `${slow.origin}/x`, timeout: '200ms' },
      { name: 'rude', prefix: '/rude', upstream: `${rude.origin}/x`, retries: 0 }
    ]
  })
  t.equal((await get(`${url}/dead/1`)).status, 502)
  t.equal((await get(`${url}/dead/2`)).status, 502)
  t.equal((await get(`${url}/slow/1`)).status, 504)
  t.equal((await get(`${url}/rude/1`)).status, 502)
  const s = await scrape(`${url}/metrics`)
  t.equal(total(s, M.upstreamErrors, { route: 'dead', kind: 'refused' }), 2)
  t.equal(total(s, M.upstreamErrors, { route: 'slow', kind: 'timeout' }), 1)
  t.equal(total(s, M.upstreamErrors, { route: 'rude', kind: 'reset' }), 1)
  t.equal(total(s, M.requests, { route: 'dead', status_class: '5xx' }), 2)
})

t.test('the pipeline\'s own refusals move their counters: 401, 403, 400, report-mode violations, 429', async (t) => {
  const up = await startUpstream(t)
  const person = [{ method: 'POST', path: '/', body: 'Person' }]
  const { url } = await startTestGateway(t, {
    users: [{ username: 'alice', passwordHash: cheapHash('alice-pw'), scopes: ['people:read'] }],
    jwt: { algorithms: ['HS256'], secret: SECRET },
    tokenEndpoint: { path: '/auth/token' },
    routes: [
      {
        name: 'people',
        prefix: '/api/people',
        upstream: `${up.origin}/people`,
        auth: ['jwt', 'basic'],
        scopes: { GET: ['people:read'], '*': ['people:write'] },
        validate: person
      },
      { name: 'loose', prefix: '/loose', upstream: `${up.origin}/loose`, validate: { mode: 'report', rules: person } },
      { name: 'tight', prefix: '/tight', upstream: `${up.origin}/tight`, rateLimit: { max: 2, window: '1m', by: 'ip' } }
    ]
  })
  const json = { 'content-type': 'application/json' }
  const writer = `Bearer ${hsToken({ sub: 'bob', scope: 'people:read people:write' })}`
  t.equal((await get(`${url}/api/people/1`)).status, 401, 'no credentials')
  t.equal((await get(`${url}/api/people/1`, { headers: { authorization: basic('alice', 'wrong') } })).status, 401, 'a wrong password')
  t.equal((await get(`${url}/api/people/1`, { headers: { authorization: `Bearer ${hsToken({ sub: 'bob', exp: 1 })}` } })).status, 401, 'an expired token')
  t.equal((await get(`${url}/api/people/1`, { headers: { authorization: basic('alice', 'alice-pw') } })).status, 200)
  t.equal((await get(`${url}/api/people/`, { method: 'POST', headers: { ...json, authorization: basic('alice', 'alice-pw') }, body: '{"name":"A","age":1}' })).status, 403, 'no people:write')
  t.equal((await get(`${url}/api/people/`, { method: 'POST', headers: { ...json, authorization: writer }, body: '{"name":5}' })).status, 400)
  t.equal((await get(`${url}/api/people/`, { method: 'POST', headers: { ...json, authorization: writer }, body: '{"name":"A","age":1}' })).status, 200)
  t.equal((await get(`${url}/loose/`, { method: 'POST', headers: json, body: '{"name":5}' })).status, 200, 'report mode lets it through')
  for (const expected of [200, 200, 429, 429]) t.equal((await get(`${url}/tight/x`)).status, expected)
  t.equal((await get(`${url}/auth/token`, { method: 'POST', headers: json, body: '{"username":"alice","password":"nope"}' })).status, 401)

  const s = await scrape(`${url}/metrics`)
  t.equal(total(s, M.authFailures, { route: 'people' }), 3, 'three failed authentications')
  t.equal(total(s, M.authFailures, { route: 'people', scheme: 'basic' }), 1)
  t.equal(total(s, M.authFailures, { route: 'people', scheme: 'jwt' }), 1)
  t.equal(total(s, M.authFailures, { route: 'token-endpoint' }), 1, 'the token endpoint is a named route too')
  t.equal(total(s, M.authzDenials, { route: 'people' }), 1)
  t.equal(total(s, M.validation, { route: 'people', part: 'body' }), 1)
  t.equal(total(s, M.validation, { route: 'loose' }), 0, 'report mode is not a refusal')
  t.equal(total(s, M.reported, { route: 'loose', part: 'body' }), 1)
  t.equal(total(s, M.rateLimited, { route: 'tight', by: 'ip' }), 2)
  t.equal(total(s, M.requests, { route: 'tight', status_class: '4xx' }), 2)
  t.equal(total(s, M.requests, { route: 'people', status_class: '4xx' }), 5)
})

t.test('an event published on each diagnostics channel moves its counter', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  channels.authFailure.publish({ route: 'people', scheme: 'jwt', reason: 'expired' })
  channels.authFailure.publish({ route: 'people', scheme: 'jwt', reason: 'expired' })
  channels.authFailure.publish({ route: 'people', scheme: 'basic', reason: 'invalid' })
  channels.authzDenied.publish({ route: 'people', scope: 'people:write' })
  channels.validationFailure.publish({ route: 'people', part: 'body', reportOnly: false })
  channels.validationFailure.publish({ route: 'people', part: 'querystring', reportOnly: true })
  channels.rateLimited.publish({ route: 'people', by: 'consumer' })
  channels.upstreamError.publish({ route: 'people', kind: 'tls' })
  const s = await scrape(`${url}/metrics`)
  t.equal(total(s, M.authFailures, { route: 'people', scheme: 'jwt', reason: 'expired' }), 2)
  t.equal(total(s, M.authFailures, { route: 'people', scheme: 'basic', reason: 'invalid' }), 1)
  t.equal(total(s, M.authzDenials, { route: 'people' }), 1)
  t.equal(total(s, M.validation, { route: 'people', part: 'body' }), 1)
  t.equal(total(s, M.validation, { part: 'querystring' }), 0, 'report-mode violations are counted apart')
  t.equal(total(s, M.reported, { route: 'people', part: 'querystring' }), 1)
  t.equal(total(s, M.rateLimited, { route: 'people', by: 'consumer' }), 1)
  t.equal(total(s, M.upstreamErrors, { route: 'people', kind: 'tls' }), 1)
})

t.test('labels taken from events are bounded: unknown routes are unmatched, odd or excess values other', async (t) => {
  const up = await startUpstream(t)
  const { url, app } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  channels.authFailure.publish({ route: '/api/people/12345', scheme: 'jwt', reason: 'bad' })
  channels.authFailure.publish({ route: 'people', scheme: 'x"}\n evil', reason: 'bad' })
  for (let i = 0; i < 200; i++) channels.authFailure.publish({ route: 'people', scheme: 'basic', reason: `r${i}` })
  channels.rateLimited.publish({ route: 'healthz', by: 'ip' })
  channels.rateLimited.publish(null)
  const s = await scrape(`${url}/metrics`)
  t.equal(total(s, M.authFailures, { route: 'unmatched' }), 1, 'a path is never a label')
  t.equal(total(s, M.authFailures, { route: 'people', scheme: 'other' }), 1)
  const reasons = new Set(s.filter((x) => x.name === M.authFailures && x.labels.scheme === 'basic').map((x) => x.labels.reason))
  t.ok(reasons.size <= 65, `at most 64 reasons + other (${reasons.size})`)
  t.equal(total(s, M.authFailures, { scheme: 'basic' }), 200, 'nothing is lost, only folded')
  t.equal(total(s, M.rateLimited, { route: 'healthz' }), 1, 'a named route of the gateway itself is a known label')
  await app.close()
  channels.rateLimited.publish({ route: 'people', by: 'ip' }) // after close: unsubscribed, no throw
})

t.test('10 000 distinct random paths leave the number of series bounded', async (t) => {
  const up = await startUpstream(t)
  // Injected requests (no client sockets, so the run stays short); the upstream hop is real.
  const app = await buildTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  const seriesOf = (s: Sample[]): number => s.filter((x) => x.name.startsWith('portcullis_')).length
  const scrapeInjected = async (): Promise<string> => (await app.inject('/metrics')).body
  await app.inject('/api/people/warm')
  await app.inject('/warm-404')
  const warm = seriesOf(parseExposition(await scrapeInjected()))
  const methods = ['GET', 'POST', 'DELETE', 'PROPFIND', 'PATCH'] as const
  const paths: string[] = []
  for (let batch = 0; batch < 100; batch++) {
    await Promise.all(Array.from({ length: 100 }, async (_, j) => {
      const i = batch * 100 + j
      const path = `${i % 4 === 0 ? '/api/people' : ''}/${Math.random().toString(36).slice(2)}-${i}`
      paths.push(path)
      await app.inject({ method: methods[i % methods.length], url: path })
    }))
  }
  t.equal(up.requests.length, 1 + 2000, 'the in-prefix GET, POST, DELETE and PATCH requests reached the upstream')
  const text = await scrapeInjected()
  const s = parseExposition(text)
  t.equal(total(s, M.requests) - total(s, M.requests, { route: 'metrics' }), 10_002, 'every request counted')
  t.equal(total(s, M.requests, { status_class: 'aborted' }), 0)
  const routes = new Set(s.filter((x) => x.name.startsWith('portcullis_')).map((x) => x.labels.route).filter((r) => r !== undefined))
  t.same([...routes].sort(), ['metrics', 'people', 'unmatched'])
  const methodsSeen = new Set(s.filter((x) => x.name === M.requests).map((x) => x.labels.method))
  t.same([...methodsSeen].sort(), ['DELETE', 'GET', 'PATCH', 'POST', 'other'], 'an unknown method is folded into other')
  t.ok(seriesOf(s) < warm + 100, `series before ${warm}, after ${seriesOf(s)}`)
  t.notOk(paths.some((p) => text.includes(p.slice(p.lastIndexOf('/') + 1))), 'no path appears in the exposition')
})

// --- configuration and protection ------------------------------------------------------------

t.test('server.metrics.enabled: false serves no /metrics and counts nothing', async (t) => {
  const up = await startUpstream(t)
  const { url, app } = await startTestGateway(t, {
    server: { metrics: { enabled: false } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  t.equal(app.metrics, undefined)
  t.equal((await get(`${url}/api/people/1`)).status, 200)
  const res = await get(`${url}/metrics`)
  t.equal(res.status, 404)
  t.match(res.headers['content-type'], /problem\+json/)
})

t.test('a custom path; /metrics is never proxied', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    server: { metrics: { path: '/_gw/metrics' } },
    routes: [{ name: 'all', prefix: '/', upstream: `${up.origin}/` }]
  })
  t.equal(total(await scrape(`${url}/_gw/metrics`), M.requests), 0)
  t.equal((await get(`${url}/metrics`)).status, 200, 'the catch-all route proxies /metrics when metrics live elsewhere')
  t.equal(up.requests.length, 1)

  const { url: url2 } = await startTestGateway(t, { routes: [{ name: 'all', prefix: '/', upstream: `${up.origin}/` }] })
  await scrape(`${url2}/metrics`)
  t.equal(up.requests.length, 1, 'with the default path, /metrics is the gateway\'s own even under a catch-all route')
})

t.test('scrapes are not shed under load, at the default or a custom path', async (t) => {
  const up = await startUpstream(t)
  for (const path of ['/metrics', '/_gw/metrics']) {
    const { url } = await startTestGateway(t, {
      server: { metrics: { path } },
      loadShedding: { maxHeapUsed: '1mb', sampleInterval: '50ms' }, // always over the limit
      routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
    })
    await new Promise((resolve) => setTimeout(resolve, 200)) // a sample or two
    t.equal((await get(`${url}/api/people/1`)).status, 503, 'the routes are shed')
    const s = await scrape(`${url}${path}`)
    t.equal(total(s, M.requests, { route: 'people', status_class: '5xx' }), 1, `${path} answers, and counted the shed request`)
  }
})

t.test('Basic protection: 401 with a challenge without or with wrong credentials, 200 with the right ones', async (t) => {
  const up = await startUpstream(t)
  const passwordHash = hashPasswordSync('s3cret pass', { N: 1024, r: 8, p: 1 })
  const { url } = await startTestGateway(t, {
    server: { metrics: { basic: { username: 'prom', passwordHash } } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  const basic = (user: string, pass: string): Record<string, string> => ({ authorization: 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64') })
  const none = await get(`${url}/metrics`)
  t.equal(none.status, 401)
  t.equal(none.headers['www-authenticate'], 'Basic realm="metrics", charset="UTF-8"')
  t.match(none.headers['content-type'], /application\/problem\+json/)
  t.notMatch(none.text, /portcullis_/)
  t.equal((await get(`${url}/metrics`, { headers: basic('prom', 'wrong') })).status, 401)
  t.equal((await get(`${url}/metrics`, { headers: basic('other', 's3cret pass') })).status, 401)
  t.equal((await get(`${url}/metrics`, { headers: { authorization: 'Bearer abc' } })).status, 401)
  t.equal((await get(`${url}/metrics`, { headers: { authorization: 'Basic !!!' } })).status, 401)
  const ok = await scrape(`${url}/metrics`, basic('prom', 's3cret pass'))
  t.equal(total(ok, M.requests, { route: 'metrics', status_class: '4xx' }), 5, 'refused scrapes are counted')
  t.ok(await scrape(`${url}/metrics`, basic('prom', 's3cret pass')), 'again (remembered)')
})

t.test('allow list: other addresses get 403', async (t) => {
  const up = await startUpstream(t)
  const routes = [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  const { url: denied } = await startTestGateway(t, { server: { metrics: { allow: ['10.0.0.0/8', '2001:db8::/32'] } }, routes })
  const res = await get(`${denied}/metrics`)
  t.equal(res.status, 403)
  t.match(res.headers['content-type'], /application\/problem\+json/)
  const { url: allowed } = await startTestGateway(t, { server: { metrics: { allow: ['10.0.0.0/8', '127.0.0.0/8'] } }, routes })
  t.ok(await scrape(`${allowed}/metrics`))
  // With trustProxy off a client's X-Forwarded-For is not believed.
  t.equal((await get(`${denied}/metrics`, { headers: { 'x-forwarded-for': '10.1.2.3' } })).status, 403)
})

t.test('a separate port: metrics there (protected the same way), not on the gateway port', async (t) => {
  const up = await startUpstream(t)
  const passwordHash = hashPasswordSync('pw', { N: 1024, r: 8, p: 1 })
  const { url, app } = await startTestGateway(t, {
    server: { metrics: { port: 0, host: '127.0.0.1', basic: { username: 'prom', passwordHash } } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  })
  const server = app.metricsServer as Server
  t.ok(server.listening)
  const metricsUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.equal((await get(`${url}/metrics`)).status, 404, 'not on the gateway port')
  await get(`${url}/api/people/1`)
  const auth = { authorization: 'Basic ' + Buffer.from('prom:pw').toString('base64') }
  const s = await scrape(`${metricsUrl}/metrics`, auth)
  t.equal(total(s, M.requests, { route: 'people', status_class: '2xx' }), 1)
  t.equal(total(s, M.requests, { route: 'unmatched', status_class: '4xx' }), 1)
  const unauth = await get(`${metricsUrl}/metrics`)
  t.equal(unauth.status, 401)
  t.match(unauth.headers['www-authenticate'], /^Basic /)
  t.match(unauth.headers['content-type'], /application\/problem\+json/)
  t.equal((await get(`${metricsUrl}/other`, { headers: auth })).status, 404)
  const post = await get(`${metricsUrl}/metrics`, { method: 'POST', headers: auth })
  t.equal(post.status, 405)
  t.equal(post.headers.allow, 'GET')
  await app.close()
  t.notOk(server.listening, 'closed with the gateway')
})

t.test('a metrics port that is taken fails the start', async (t) => {
  const blocker = createServer()
  blocker.listen(0, '127.0.0.1')
  await once(blocker, 'listening')
  t.teardown(() => { blocker.close() })
  const port = (blocker.address() as AddressInfo).port
  await t.rejects(startTestGateway(t, {
    server: { metrics: { port, host: '127.0.0.1' } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/people' }]
  }), /EADDRINUSE/)
})

t.test('config checks for server.metrics', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/people' }
  const problems = (raw: Record<string, unknown>): string[] => {
    try { parseConfig(raw, { env: {} }) } catch (err) { if (err instanceof ConfigError) return err.problems; throw err }
    return []
  }
  t.same(parseConfig({ routes: [route] }, { env: {} }).server.metrics, {
    enabled: true, path: '/metrics', defaultMetrics: true, buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
  })
  t.same(problems({ server: { metrics: { host: '0.0.0.0' } }, routes: [route] }), ['server.metrics.host: only meaningful with server.metrics.port'])
  t.same(problems({ server: { port: 9000, metrics: { port: 9000 } }, routes: [route] }), ['server.metrics.port: must differ from server.port (leave it out to serve metrics on the gateway port)'])
  t.same(problems({ server: { metrics: { allow: ['10.0.0.0/33'] } }, routes: [route] }), ['server.metrics.allow[0]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)'])
  t.same(problems({ server: { metrics: { buckets: [1, 0.5] } }, routes: [route] }), ['server.metrics.buckets: must be in ascending order, without repeats'])
  t.same(problems({ server: { metrics: { path: '/api/people/metrics' } }, routes: [route] }), ['server.metrics.path: "/api/people/metrics" collides with routes[0].prefix "/api/people"'])
  t.same(problems({ server: { metrics: { path: '/healthz' } }, routes: [route] }), ['server.metrics.path: "/healthz" is the gateway\'s own'])
  t.same(problems({ server: { metrics: { path: 'metrics' } }, routes: [route] }).length, 1)
  t.same(problems({ server: { metrics: { basic: { username: 'p', passwordHash: 'plain' } } }, routes: [route] }).length, 1)
  t.same(problems({ routes: [{ ...route, name: 'unmatched' }] }), ['routes[0].name: "unmatched" is the metrics label of requests no route matched'])
  t.same(problems({ routes: [{ ...route, prefix: '/metrics' }] }), ['routes[0].prefix: "/metrics" collides with the gateway\'s own /metrics'])
})

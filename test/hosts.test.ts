/**
 * Host-based routes (routes[].hosts, plugins/edge/host-match.ts): the same prefix to different
 * upstreams per host, exact names before the longest wildcard before routes without hosts, a
 * host no route takes → 404 problem+json, and every spelling of a host a client can send —
 * over raw sockets where node:http would not send it. Real upstreams on 127.0.0.1:0, each
 * recording what reached it, so a refused request is seen not to have reached any.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { connect } from 'node:net'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { HOSTS_CONSTRAINT, hostsOverlap, hostsRouterConstraints, hostsStrategy, routingHost } from '../plugins/edge/host-match.js'
import { METRIC_NAMES } from '../plugins/observability/metrics.js'
import { call, startTestGateway, startUpstream, buildTestGateway, type Upstream } from './helper.js'
import { configProblems, tempFolder } from './config-helper.js'
import { sendRaw, type RawResponse } from './raw-http.js'
import { samples } from './metrics-helper.js'

const ROOT = join(import.meta.dirname, '..')

/** An upstream that answers with its own name and the Host / X-Forwarded-Host it received. */
async function tagged (t: Test, name: string): Promise<Upstream> {
  return await startUpstream(t, (req, res) => {
    const text = JSON.stringify({ upstream: name, host: req.headers.host, forwardedHost: req.headers['x-forwarded-host'], url: req.url })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  })
}

function route (name: string, prefix: string, up: Upstream, hosts?: string[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, prefix, upstream: `${up.origin}${prefix === '/' ? '' : prefix}`, ...(hosts === undefined ? {} : { hosts }), ...extra }
}

/** GET `path` with the Host header `host`, exactly as given, over a raw socket (Connection: close). */
async function get (port: number, path: string, host: string | null, version = '1.1', extra = ''): Promise<RawResponse> {
  const hostLine = host === null ? '' : `Host: ${host}\r\n`
  return await sendRaw(port, `GET ${path} HTTP/${version}\r\n${hostLine}${extra}Connection: close\r\n\r\n`)
}

/** Which upstream answered (by name), or `problem <status>` for the gateway's own problem+json. */
function answeredBy (res: RawResponse): string {
  if (res.headers['content-type']?.startsWith('application/problem+json') === true) {
    const body = JSON.parse(res.body) as { status: number, detail: string }
    return `problem ${body.status}`
  }
  if (res.status !== 200) return `status ${res.status}`
  return (JSON.parse(res.body) as { upstream: string }).upstream
}

function total (ups: Upstream[]): number {
  return ups.reduce((n, u) => n + u.requests.length, 0)
}

t.test('routingHost: lower case, no port, one trailing dot; anything that is not a host name is no host', async (t) => {
  const table: Array<[string | undefined, string | undefined]> = [
    ['api.example.com', 'api.example.com'],
    ['API.Example.COM', 'api.example.com'],
    ['api.example.com:8080', 'api.example.com'],
    ['api.example.com:', 'api.example.com'],
    ['api.example.com.', 'api.example.com'],
    ['API.example.com.:443', 'api.example.com'],
    ['127.0.0.1:80', '127.0.0.1'],
    ['my_service', 'my_service'],
    ['api.example.com..', undefined],
    ['.api.example.com', undefined],
    ['api..example.com', undefined],
    ['.', undefined],
    ['', undefined],
    [undefined, undefined],
    ['api.example.com:80:80', undefined],
    ['api.example.com:http', undefined],
    ['api.example.com:123456', undefined],
    ['a@api.example.com', undefined],
    ['user:pass@api.example.com', undefined],
    ['[::1]:8080', undefined],
    ['[::1]', undefined],
    ['api.example.com/x', undefined],
    ['api example.com', undefined],
    ['api.example.com\t', undefined],
    ['ápi.example.com', undefined],
    ['xn--pi-ola.example.com', 'xn--pi-ola.example.com'],
    [`${'a'.repeat(64)}.example.com`, undefined],
    [`${'a'.repeat(63)}.example.com`, `${'a'.repeat(63)}.example.com`],
    [Array(76).fill('abc').join('.'), undefined], // 303 characters
    [Array(63).fill('abc').join('.') + '.a', Array(63).fill('abc').join('.') + '.a'] // 253
  ]
  for (const [value, want] of table) t.equal(routingHost(value), want, JSON.stringify(value))
})

t.test('two hosts, one prefix, two upstreams; a host neither takes → 404 problem+json that no upstream sees', async (t) => {
  const a = await tagged(t, 'a')
  const b = await tagged(t, 'b')
  const { app, url } = await startTestGateway(t, {
    routes: [route('alpha', '/api', a, ['a.example.com']), route('beta', '/api', b, ['b.example.com'])]
  })
  const port = Number(new URL(url).port)
  t.equal(answeredBy(await get(port, '/api/x', 'a.example.com')), 'a')
  t.equal(answeredBy(await get(port, '/api/x', 'b.example.com')), 'b')
  t.equal(answeredBy(await get(port, '/api', 'b.example.com:8443')), 'b', 'the prefix itself, with a port')
  const before = total([a, b])
  for (const host of ['c.example.com', 'example.com', 'a.example.com.evil.org', 'xa.example.com', '127.0.0.1']) {
    const res = await get(port, '/api/x', host)
    t.equal(res.status, 404, `${host}: 404`)
    t.match(res.headers['content-type'], /^application\/problem\+json/, `${host}: problem+json`)
    t.match(JSON.parse(res.body), { status: 404, title: 'Not Found', instance: '/api/x' }, `${host}: the 404 body`)
  }
  // A method the routes do not take, for an unknown host: 404 too (not a 405 that would name another host's methods).
  const post = await sendRaw(port, 'POST /api/x HTTP/1.1\r\nHost: c.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
  t.equal(post.status, 404, 'POST for an unknown host: 404')
  t.equal(total([a, b]), before, 'no refused request reached an upstream')
  t.equal(app.hasConstraintStrategy(HOSTS_CONSTRAINT), true, 'the hosts strategy is in use')
})

t.test('precedence: exact name, then the longest wildcard, then the route without hosts; any depth under a wildcard, never the bare suffix', async (t) => {
  const ups = { exact: await tagged(t, 'exact'), wild: await tagged(t, 'wild'), eu: await tagged(t, 'eu'), any: await tagged(t, 'any') }
  const { url } = await startTestGateway(t, {
    routes: [
      // Listed in the order least specific first: precedence does not depend on the order.
      route('any', '/api', ups.any),
      route('wild', '/api', ups.wild, ['*.example.com']),
      route('eu', '/api', ups.eu, ['*.eu.example.com', 'eu.example.org']),
      route('exact', '/api', ups.exact, ['api.example.com', 'api.eu.example.com'])
    ]
  })
  const port = Number(new URL(url).port)
  const table: Array<[string, string]> = [
    ['api.example.com', 'exact'],
    ['API.Example.COM', 'exact'],
    ['api.example.com.', 'exact'],
    ['api.example.com:8080', 'exact'],
    ['Api.Example.Com.:80', 'exact'],
    ['api.eu.example.com', 'exact'], // an exact name beats the longer wildcard
    ['x.example.com', 'wild'],
    ['a.b.c.example.com', 'wild'], // one or more labels: any depth
    ['eu.example.com', 'wild'], // *.eu.example.com does not take eu.example.com itself
    ['x.eu.example.com', 'eu'], // the longest wildcard wins
    ['a.b.eu.example.com', 'eu'],
    ['eu.example.org', 'eu'],
    ['example.com', 'any'], // *.example.com does not take example.com
    ['other.org', 'any'],
    ['api.example.com..', 'any'], // not a host name
    ['x@api.example.com', 'any'],
    ['[::1]:8080', 'any'],
    ['xexample.com', 'any']
  ]
  for (const [host, want] of table) t.equal(answeredBy(await get(port, '/api/people/1', host)), want, host)
  t.equal(answeredBy(await get(port, '/api/people/1', null, '1.0')), 'any', 'HTTP/1.0 without Host: the route without hosts')
})

t.test('the upstream receives its own Host and X-Forwarded-Host as the client sent it; the path is the route\'s', async (t) => {
  const a = await tagged(t, 'a')
  const { url } = await startTestGateway(t, { routes: [route('alpha', '/api', a, ['*.example.com'])] })
  const port = Number(new URL(url).port)
  const res = await get(port, '/api/people/1?q=2', 'Shop.Example.com:8080')
  t.equal(res.status, 200)
  t.same(JSON.parse(res.body), { upstream: 'a', host: `127.0.0.1:${a.port}`, forwardedHost: 'Shop.Example.com:8080', url: '/api/people/1?q=2' })
})

t.test('hostile Host values on a gateway with host routes only: 400 or 404 problem+json, never an upstream', async (t) => {
  const a = await tagged(t, 'a')
  const { url } = await startTestGateway(t, { routes: [route('alpha', '/api', a, ['api.example.com'])] })
  const port = Number(new URL(url).port)
  const long = `${'a'.repeat(290)}.example.com`
  const cases: Array<[string, string, string]> = [
    // [what, raw request, answer]
    ['HTTP/1.1 without Host', 'GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n', 'problem 400'],
    ['HTTP/1.0 without Host', 'GET /api/x HTTP/1.0\r\n\r\n', 'problem 404'],
    ['an empty Host', 'GET /api/x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n', 'problem 404'],
    ['two Host headers, the known one first', 'GET /api/x HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example.com\r\nConnection: close\r\n\r\n', 'problem 400'],
    ['two Host headers, the known one second', 'GET /api/x HTTP/1.1\r\nHost: other.example.com\r\nHost: api.example.com\r\nConnection: close\r\n\r\n', 'problem 404'],
    ['two Host headers, the same twice', 'GET /api/x HTTP/1.1\r\nHost: api.example.com\r\nhost: api.example.com\r\nConnection: close\r\n\r\n', 'problem 400'],
    ['userinfo in Host', 'GET /api/x HTTP/1.1\r\nHost: a@api.example.com\r\nConnection: close\r\n\r\n', 'problem 404'],
    ['an IPv6 literal', 'GET /api/x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n', 'problem 404'],
    ['a 300-character host', `GET /api/x HTTP/1.1\r\nHost: ${long}\r\nConnection: close\r\n\r\n`, 'problem 404'],
    ['a host with a path', 'GET /api/x HTTP/1.1\r\nHost: api.example.com/x\r\nConnection: close\r\n\r\n', 'problem 404'],
    ['a non-numeric port', 'GET /api/x HTTP/1.1\r\nHost: api.example.com:x\r\nConnection: close\r\n\r\n', 'problem 404'],
    ['absolute-form naming another host', 'GET http://other.example.com/api/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n', 'problem 400'],
    ['absolute-form with userinfo', 'GET http://a@api.example.com/api/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n', 'problem 400'],
    ['absolute-form naming the known host, Host another', 'GET http://api.example.com/api/x HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n', 'problem 400'],
    ['X-Forwarded-Host from an untrusted client is not believed', 'GET /api/x HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-Host: other.example.com\r\nConnection: close\r\n\r\n', 'a']
  ]
  for (const [what, raw, want] of cases) {
    const res = await sendRaw(port, raw)
    t.equal(answeredBy(res), want, what)
  }
  const two = await sendRaw(port, 'GET /api/x HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example.com\r\nConnection: close\r\n\r\n')
  t.match(JSON.parse(two.body), { detail: 'The request has more than one Host header.' }, 'the 400 says why')
  t.equal(a.requests.length, 1, 'only the request with the untrusted X-Forwarded-Host reached the upstream')
  t.equal(a.requests[0].headers['x-forwarded-host'], 'api.example.com', '…with X-Forwarded-Host set by the gateway')
})

t.test('hostile Host values where a route without hosts is the default: it takes what no host route does', async (t) => {
  const a = await tagged(t, 'a')
  const d = await tagged(t, 'default')
  const { url } = await startTestGateway(t, { routes: [route('alpha', '/api', a, ['api.example.com']), route('default', '/api', d)] })
  const port = Number(new URL(url).port)
  t.equal(answeredBy(await get(port, '/api/x', null, '1.0')), 'default', 'HTTP/1.0 without Host')
  t.equal(answeredBy(await get(port, '/api/x', 'a@api.example.com')), 'default', 'userinfo')
  t.equal(answeredBy(await get(port, '/api/x', '[::1]:8080')), 'default', 'IPv6 literal')
  t.equal(answeredBy(await get(port, '/api/x', 'x'.repeat(300))), 'default', '300 characters')
  t.equal(answeredBy(await get(port, '/api/x', 'api.example.com', '1.1', 'Host: other.example.com\r\n')), 'problem 400', 'a second Host on the host route: 400')
  t.equal(answeredBy(await get(port, '/api/x', 'other.example.com', '1.1', 'Host: api.example.com\r\n')), 'default', 'the first Host decides, as for the upstream')
  t.equal(d.requests.length, 5)
  t.equal(a.requests.length, 0)
  for (const r of d.requests) t.equal(r.rawHeaders.filter((h) => h.toLowerCase() === 'host').length, 1, 'the upstream gets one Host')
})

t.test('a trusted proxy\'s X-Forwarded-Host must name the host the route was chosen by', async (t) => {
  const a = await tagged(t, 'a')
  const { url } = await startTestGateway(t, { server: { trustProxy: ['127.0.0.1/32'] }, routes: [route('alpha', '/api', a, ['api.example.com'])] })
  const port = Number(new URL(url).port)
  const same = await get(port, '/api/x', 'api.example.com', '1.1', 'X-Forwarded-Host: API.example.com:443\r\n')
  t.equal(answeredBy(same), 'a', 'the same host, spelled otherwise')
  t.equal((JSON.parse(same.body) as { forwardedHost: string }).forwardedHost, 'API.example.com:443', 'the trusted value is passed on')
  const other = await get(port, '/api/x', 'api.example.com', '1.1', 'X-Forwarded-Host: other.example.com\r\n')
  t.equal(answeredBy(other), 'problem 400')
  t.match(JSON.parse(other.body), { detail: 'X-Forwarded-Host names another host than the Host header.' })
  t.equal(a.requests.length, 1)
})

t.test('slow and aborted clients on a host route: a trickled head is routed by its whole Host; a body given up halfway never reaches the upstream', async (t) => {
  const a = await tagged(t, 'a')
  // Recorded as soon as its head arrives (stream: true), so an upload that reached it would show.
  const b = await startUpstream(t, (req, res) => {
    req.resume()
    req.on('end', () => { res.end(JSON.stringify({ upstream: 'b' })) })
  }, { stream: true })
  const { url } = await startTestGateway(t, { routes: [route('alpha', '/api', a, ['a.example.com']), route('beta', '/api', b, ['*.example.com'])] })
  const port = Number(new URL(url).port)
  // The head in 3-byte pieces: "Host: a.exa" alone would be another host; the route is chosen on the whole value.
  const head = 'GET /api/x HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n'
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  for (let i = 0; i < head.length; i += 3) {
    socket.write(head.slice(i, i + 3))
    await new Promise((resolve) => setImmediate(resolve))
  }
  await once(socket, 'close')
  const text = Buffer.concat(chunks).toString('utf8')
  t.match(text, /^HTTP\/1\.1 200 /)
  t.match(text, /"upstream":"a"/, 'the exact name, not the wildcard')

  // An upload that stops halfway and is dropped: buffered by the gateway, so no upstream hears of it.
  const upload = connect(port, '127.0.0.1')
  await once(upload, 'connect')
  upload.on('error', () => {})
  upload.write('POST /api/x HTTP/1.1\r\nHost: b.example.com\r\nContent-Length: 100000\r\n\r\n' + 'x'.repeat(5000))
  await new Promise((resolve) => setTimeout(resolve, 50))
  upload.destroy()
  t.equal(answeredBy(await get(port, '/api/y', 'b.example.com')), 'b', 'the gateway still answers')
  t.equal(b.requests.filter((r) => r.method === 'POST').length, 0, 'the aborted upload never reached the upstream')
})

t.test('prefixes and hosts together: a longer prefix for one host, a shorter one for every host', async (t) => {
  const people = await tagged(t, 'people')
  const rest = await tagged(t, 'rest')
  const root = await tagged(t, 'root')
  const { url } = await startTestGateway(t, {
    routes: [
      route('people', '/api/people', people, ['api.example.com']),
      route('rest', '/api', rest, ['*.example.com']),
      route('root', '/', root)
    ]
  })
  const port = Number(new URL(url).port)
  t.equal(answeredBy(await get(port, '/api/people/1', 'api.example.com')), 'people')
  t.equal(answeredBy(await get(port, '/api/other', 'api.example.com')), 'rest', 'under /api but not /api/people: the wildcard route')
  t.equal(answeredBy(await get(port, '/api/people/1', 'x.example.com')), 'rest', 'another host under the wildcard: the route it has')
  t.equal(answeredBy(await get(port, '/api/people/1', 'other.org')), 'root', 'a host with neither: back to /')
  t.equal(answeredBy(await get(port, '/elsewhere', 'api.example.com')), 'root')
})

t.test('methods and auth are the chosen route\'s: a route per host can differ in each', async (t) => {
  const a = await tagged(t, 'a')
  const b = await tagged(t, 'b')
  const { url } = await startTestGateway(t, {
    routes: [
      route('reader', '/api', a, ['read.example.com'], { methods: ['GET'] }),
      route('writer', '/api', b, ['write.example.com'], { methods: ['GET', 'POST'], auth: ['apiKey'] })
    ],
    apiKeys: [{ name: 'k', keyHash: 'sha256$' + '0'.repeat(64), scopes: [] }]
  })
  const port = Number(new URL(url).port)
  const post = (host: string): string => `POST /api/x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`
  const r1 = await sendRaw(port, post('read.example.com'))
  t.equal(r1.status, 405, 'POST on the GET-only host: 405')
  t.equal(r1.headers.allow, 'GET', '…with its own Allow')
  t.equal((await sendRaw(port, post('write.example.com'))).status, 401, 'POST on the other host: its auth asks for a key')
  t.equal(answeredBy(await get(port, '/api/x', 'read.example.com')), 'a')
  t.equal(total([a, b]), 1)
})

t.test('metrics and the access log name the route, not the host', async (t) => {
  const a = await tagged(t, 'a')
  const b = await tagged(t, 'b')
  const { dir } = tempFolder(t, 'portcullis-hosts-')
  const file = join(dir, 'gateway.log')
  const config = parseConfig({
    logging: { level: 'info' },
    routes: [route('alpha', '/api', a, ['a.example.com']), route('beta', '/api', b, ['*.example.com'])]
  })
  const app = await buildGateway(config, { logDestination: file })
  let closed = false
  t.teardown(async () => { if (!closed) await app.close() })
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  const port = Number(new URL(url).port)
  await get(port, '/api/1', 'a.example.com')
  await get(port, '/api/2', 'b.example.com')
  await get(port, '/api/3', 'c.example.com')
  await get(port, '/api/4', 'other.org')
  const scrape = samples((await call(`${url}/metrics`)).body.toString('utf8')).filter((s) => s.name === METRIC_NAMES.requests)
  const count = (labels: Record<string, string>): number => scrape.filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0)
  t.equal(count({ route: 'alpha', status_class: '2xx' }), 1)
  t.equal(count({ route: 'beta', status_class: '2xx' }), 2)
  t.notOk(scrape.some((s) => Object.values(s.labels).some((v) => v.includes('example'))), 'no label carries a host')
  await app.close()
  closed = true
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'request completed')
  t.same(lines.filter((l) => l.path !== '/metrics').map((l) => [l.path, l.route, l.status]), [['/api/1', 'alpha', 200], ['/api/2', 'beta', 200], ['/api/3', 'beta', 200], ['/api/4', null, 404]])
})

t.test('no route with hosts: the strategy is not given to the router at all', async (t) => {
  const a = await tagged(t, 'a')
  const app = await buildTestGateway(t, { routes: [route('alpha', '/api', a)] })
  t.equal(app.hasConstraintStrategy(HOSTS_CONSTRAINT), false)
  const res = await app.inject({ method: 'GET', url: '/api/x', headers: { host: 'anything.example.com' } })
  t.equal(res.statusCode, 200)
})

t.test('config: hosts are lower-case names or *. and one; shadowing for some host is refused, naming both routes and the host', async (t) => {
  const up = 'http://127.0.0.1:1'
  const r = (name: string, prefix: string, hosts?: string[]): Record<string, unknown> => ({ name, prefix, upstream: up, ...(hosts === undefined ? {} : { hosts }) })
  const bad = ['API.example.com', 'api.example.com.', 'api.example.com:8080', '*', '*.', 'a.*.example.com', '**.example.com', '*example.com', 'http://api.example.com', 'api.example.com/x', '[::1]', '-a.example.com', 'a_b.example.com', '', 'a'.repeat(64) + '.com', Array(64).fill('abcd').join('.')]
  for (const host of bad) {
    const problems = configProblems({ routes: [r('a', '/api', [host])] })
    t.ok(problems.some((p) => p.startsWith('routes[0].hosts[0]: must')), `${JSON.stringify(host)} refused: ${problems.join('; ')}`)
  }
  t.match(configProblems({ routes: [r('a', '/api', ['API.example.com'])] }), [/must be a lower-case host name such as api.example.com/])
  t.match(configProblems({ routes: [r('a', '/api', ['a.example.com', 'a.example.com'])] }), [/routes\[0\]\.hosts: /])
  t.same(configProblems({ routes: [r('a', '/api', ['a.example.com', '*.example.com', 'localhost', '127.0.0.1', 'xn--pi-ola.example.com'])] }), [])

  const table: Array<[string, Array<Record<string, unknown>>, RegExp[]]> = [
    ['the same host and prefix', [r('a', '/api', ['x.example.com']), r('b', '/api', ['y.example.com', 'x.example.com'])],
      [/^routes\[1\]\.hosts: "x\.example\.com" with prefix "\/api" is already routed by routes\[0\] \(routes "a" and "b"\)$/]],
    ['the same wildcard and prefix', [r('a', '/api', ['*.example.com']), r('b', '/api', ['*.example.com'])],
      [/^routes\[1\]\.hosts: "\*\.example\.com" with prefix "\/api" is already routed by routes\[0\]/]],
    ['the same host, nested prefixes', [r('a', '/api', ['x.example.com']), r('b', '/api/people', ['x.example.com'])],
      [/^routes\[1\]\.prefix: "\/api\/people" is shadowed by routes\[0\]\.prefix "\/api" for host "x\.example\.com" \(routes "a" and "b"\)$/]],
    ['the same host, nested the other way', [r('a', '/api/people', ['x.example.com']), r('b', '/', ['x.example.com'])],
      [/^routes\[1\]\.prefix: "\/" shadows routes\[0\]\.prefix "\/api\/people" for host "x\.example\.com"/]],
    ['a shorter prefix with the more specific host', [r('a', '/api', ['x.example.com']), r('b', '/api/people')],
      [/^routes\[1\]\.hosts: for host "x\.example\.com", routes\[0\] \("a", prefix "\/api"\) has a more specific hosts entry than routes\[1\] \("b", prefix "\/api\/people"\), but the router tries the longer prefix first, so "b" would take that host's requests under "\/api\/people"/]],
    ['a shorter prefix with the longer wildcard', [r('a', '/api/people', ['*.example.com']), r('b', '/api', ['*.eu.example.com'])],
      [/^routes\[1\]\.hosts: for host "\*\.eu\.example\.com", routes\[1\] \("b", prefix "\/api"\)/]],
    ['two routes without hosts (the plain rule, as before)', [r('a', '/api'), r('b', '/api')],
      [/^routes\[1\]\.prefix: "\/api" is already the prefix of routes\[0\]$/]],
    ['two routes without hosts, nested', [r('a', '/api'), r('b', '/api/people')],
      [/^routes\[1\]\.prefix: "\/api\/people" is shadowed by routes\[0\]\.prefix "\/api"$/]]
  ]
  for (const [what, routes, want] of table) t.match(configProblems({ routes }), want, what)

  const fine: Array<[string, Array<Record<string, unknown>>]> = [
    ['different hosts, one prefix', [r('a', '/api', ['x.example.com']), r('b', '/api', ['y.example.com'])]],
    ['exact, wildcard and none at one prefix', [r('a', '/api', ['x.example.com']), r('b', '/api', ['*.example.com']), r('c', '/api')]],
    ['a longer prefix with the more specific host', [r('a', '/api/people', ['x.example.com']), r('b', '/api', ['*.example.com']), r('c', '/')]],
    ['a host under a wildcard, longer prefix', [r('a', '/api', ['*.example.com']), r('b', '/api/people', ['x.example.com'])]],
    ['disjoint hosts, nested prefixes', [r('a', '/api', ['x.example.com']), r('b', '/api/people', ['y.example.com'])]]
  ]
  for (const [what, routes] of fine) t.same(configProblems({ routes }), [], what)

  const many = Array.from({ length: 32 }, (_, i) => r(`r${i}`, '/api', [`h${i}.example.com`]))
  t.match(configProblems({ routes: many }), [/^routes\[31\]\.prefix: at most 31 routes may share the prefix "\/api"/])
  t.same(configProblems({ routes: many.slice(0, 31) }), [])
})

t.test('hostsOverlap: every host ranks like a listed name, a name under a listed wildcard, or none', async (t) => {
  t.same(hostsOverlap([], [], false), { host: undefined, kind: 'tie' })
  t.same(hostsOverlap(['a.com'], [], false), null)
  t.same(hostsOverlap(['a.com'], [], true), { host: 'a.com', kind: 'inverted' })
  t.same(hostsOverlap([], ['a.com'], true), null)
  t.same(hostsOverlap(['*.a.com'], ['x.a.com'], true), null)
  t.same(hostsOverlap(['x.a.com'], ['*.a.com'], true), { host: 'x.a.com', kind: 'inverted' })
  t.same(hostsOverlap(['*.a.com', 'b.com'], ['c.com', '*.a.com'], false), { host: '*.a.com', kind: 'tie' })
  t.same(hostsOverlap(['*.a.com'], ['*.b.a.com'], false), null)
})

t.test('the strategy refuses a constraint value that is not a list of names (a route written by hand with constraints.hosts)', async (t) => {
  for (const value of ['a.com', [], [1], null]) t.throws(() => hostsStrategy.validate?.(value), TypeError, JSON.stringify(value))
  t.doesNotThrow(() => hostsStrategy.validate?.(['a.com', '*.b.com']))
  t.same(hostsRouterConstraints([{ hosts: [] }, { hosts: [] }]), {}, 'no route with hosts: no strategy')
})

t.test('portcullis validate: a shadowing host route is refused before anything starts', async (t) => {
  const { file } = tempFolder(t, 'portcullis-hosts-cli-')
  const config = file('hosts.yaml', `
routes:
  - name: shop
    prefix: /api
    hosts: ["shop.example.com", "*.example.com"]
    upstream: http://127.0.0.1:8001
  - name: shop-v2
    prefix: /api
    hosts: ["*.example.com"]
    upstream: http://127.0.0.1:8002
`)
  const child = spawn(process.execPath, ['--import=@swc-node/register/esm-register', join(ROOT, 'src', 'cli.ts'), 'validate', config], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { out += d })
  const [code] = await once(child, 'close') as [number | null]
  t.equal(code, 1)
  t.match(out, /routes\[1\]\.hosts: "\*\.example\.com" with prefix "\/api" is already routed by routes\[0\] \(routes "shop" and "shop-v2"\)/)
})

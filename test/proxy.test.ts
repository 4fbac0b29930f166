/**
 * Proxying against real upstreams on 127.0.0.1:0: methods and bodies, the path rewrite, the
 * headers the upstream receives (X-Forwarded-*, X-Request-Id, hop-by-hop), 404/405, path
 * spellings that must never reach the upstream, redirects and load balancing.
 */
import t, { type Test } from 'tap'
import { call, startTestGateway, startUpstream, type CallResult, type RawConfig, type RecordedRequest } from './helper.js'
import { Writable } from 'node:stream'
import { HTTP_METHODS } from '../schemas/config.js'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'

interface Echo { method: string, url: string, headers: Record<string, string>, body: string }

/** A problem+json body of the given status, with the whole contract. */
function assertProblem (t: Test, res: CallResult, status: number, instance?: string): Record<string, unknown> {
  t.equal(res.status, status, `status ${status}`)
  t.match(res.headers['content-type'], /^application\/problem\+json/, 'problem+json')
  const body = res.json as Record<string, unknown>
  t.type(body, 'object', 'JSON body')
  t.equal(body.status, status)
  t.match(body, { type: /^urn:portcullis:problem:[a-z-]+$/, title: String, detail: String, instance: String, requestId: String })
  t.equal(body.requestId, res.headers['x-request-id'], 'requestId is the X-Request-Id header')
  if (instance !== undefined) t.equal(body.instance, instance)
  return body
}

async function gatewayFor (t: Test, upstream: string | string[], route: Record<string, unknown> = {}, server: RawConfig = {}): Promise<string> {
  const { url } = await startTestGateway(t, {
    server,
    routes: [{ name: 'people', prefix: '/api/people', upstream, ...route }]
  })
  return url
}

t.test('every method, with and without a body, reaches the upstream as sent', async (t) => {
  const up = await startUpstream(t)
  const gw = await gatewayFor(t, `${up.origin}/v1/people`)
  for (const method of HTTP_METHODS) {
    const bare = await call(`${gw}/api/people/1`, { method })
    t.equal(bare.status, 200, `${method} without a body: 200`)
    const seen = up.requests.at(-1) as RecordedRequest
    t.equal(seen.method, method, `${method} reached the upstream`)
    t.equal(seen.url, '/v1/people/1')
    t.equal(seen.body.length, 0, `${method}: no body`)
    t.notOk(seen.headers['transfer-encoding'], `${method}: no body framing invented`)
    if (method === 'HEAD') {
      t.equal(bare.body.length, 0, 'HEAD: no response body')
      t.ok(Number(bare.headers['content-length']) > 0, 'HEAD: the upstream\'s Content-Length passes')
    } else {
      t.equal((bare.json as Echo).method, method, `${method}: the upstream's response body arrives`)
    }

    const payload = JSON.stringify({ method, n: 1, text: 'é✓' })
    const withBody = await call(`${gw}/api/people/1`, { method, headers: { 'content-type': 'application/json' }, body: payload })
    t.equal(withBody.status, 200, `${method} with a body: 200`)
    const got = up.requests.at(-1) as RecordedRequest
    t.equal(got.method, method)
    t.equal(got.body.toString('utf8'), payload, `${method}: the body arrives byte for byte`)
    t.equal(got.headers['content-type'], 'application/json')
    t.equal(got.headers['content-length'], String(Buffer.byteLength(payload)), `${method}: Content-Length kept`)

    // The same body sent chunked (no Content-Length).
    const chunked = await call(`${gw}/api/people/1`, { method, headers: { 'content-type': 'text/plain' }, body: (async function * () { yield Buffer.from('part one, '); yield Buffer.from('part two') })() })
    t.equal(chunked.status, 200, `${method} chunked: 200`)
    t.equal((up.requests.at(-1) as RecordedRequest).body.toString(), 'part one, part two', `${method}: a chunked body arrives whole`)
  }
  // A body without a Content-Type passes too.
  const untyped = await call(`${gw}/api/people/`, { method: 'POST', headers: { 'content-length': '5' }, body: 'hello' })
  t.equal(untyped.status, 200)
  t.equal((up.requests.at(-1) as RecordedRequest).body.toString(), 'hello', 'a body with no Content-Type passes')
})

t.test('the upstream URL path replaces the prefix; the query string passes untouched', async (t) => {
  const up = await startUpstream(t)
  const gw = await gatewayFor(t, `${up.origin}/v1/people`)
  const cases: Array<[string, string]> = [
    ['/api/people', '/v1/people'],
    ['/api/people/', '/v1/people/'],
    ['/api/people/7', '/v1/people/7'],
    ['/api/people/7?x=1', '/v1/people/7?x=1'],
    ['/api/people?x=1', '/v1/people?x=1'],
    ['/api/people/7/?page=2&ordering=-age', '/v1/people/7/?page=2&ordering=-age'],
    // Odd encodings: nothing decoded, re-encoded or reordered.
    ['/api/people/7?a=%2F%2e%2e&b=%zz&c=a+b&d=%E2%9C%93&&e=1;f=2&a=2', '/v1/people/7?a=%2F%2e%2e&b=%zz&c=a+b&d=%E2%9C%93&&e=1;f=2&a=2'],
    ['/api/people/7?q=../../etc/passwd', '/v1/people/7?q=../../etc/passwd'],
    ['/api/people/7?', '/v1/people/7?'],
    ['/api/people/a%20b/caf%C3%A9', '/v1/people/a%20b/caf%C3%A9'],
    ['/api/people/a..b', '/v1/people/a..b']
  ]
  for (const [sent, expected] of cases) {
    const res = await call(`${gw}${sent}`)
    t.equal(res.status, 200, sent)
    t.equal((up.requests.at(-1) as RecordedRequest).url, expected, `${sent} → ${expected}`)
  }

  // An upstream with no path: the prefix is simply removed.
  const bare = await gatewayFor(t, up.origin)
  for (const [sent, expected] of [['/api/people', '/'], ['/api/people?x=1', '/?x=1'], ['/api/people/7?x=1', '/7?x=1']]) {
    await call(`${bare}${sent}`)
    t.equal((up.requests.at(-1) as RecordedRequest).url, expected, `no upstream path: ${sent} → ${expected}`)
  }
})

t.test('X-Forwarded-* are the gateway\'s own; client values are ignored with trustProxy off', async (t) => {
  const up = await startUpstream(t)
  const gw = await gatewayFor(t, `${up.origin}/v1/people`)
  const port = new URL(gw).port
  await call(`${gw}/api/people/`, {
    headers: {
      'x-forwarded-for': '6.6.6.6',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'evil.example',
      'x-forwarded-port': '443',
      'x-forwarded-prefix': '/admin',
      forwarded: 'for=6.6.6.6;proto=https',
      'x-real-ip': '6.6.6.6'
    }
  })
  const h = (up.requests.at(-1) as RecordedRequest).headers
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is the peer only')
  t.equal(h['x-forwarded-proto'], 'http')
  t.equal(h['x-forwarded-host'], `127.0.0.1:${port}`, 'X-Forwarded-Host is what the client called')
  t.equal(h.host, `127.0.0.1:${up.port}`, 'Host is the upstream\'s')
  t.notOk(h.forwarded, 'Forwarded removed')
  t.notOk(h['x-real-ip'], 'X-Real-IP removed')
  t.notOk(h['x-forwarded-port'], 'X-Forwarded-Port removed')
  t.notOk(h['x-forwarded-prefix'], 'X-Forwarded-Prefix removed')
  const raw = (up.requests.at(-1) as RecordedRequest).rawHeaders
  t.equal(raw.filter((_, i) => i % 2 === 0 && raw[i].toLowerCase() === 'x-forwarded-for').length, 1, 'exactly one X-Forwarded-For')
})

t.test('with trustProxy, the trusted chain is believed and passed on', async (t) => {
  const up = await startUpstream(t)
  const spoof = { 'x-forwarded-for': '1.2.3.4, 10.0.0.9', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.example' }

  const trustAll = await gatewayFor(t, `${up.origin}/v1/people`, {}, { trustProxy: true })
  await call(`${trustAll}/api/people/`, { headers: spoof })
  let h = (up.requests.at(-1) as RecordedRequest).headers
  t.equal(h['x-forwarded-for'], '1.2.3.4, 10.0.0.9, 127.0.0.1', 'trustProxy true: the whole chain plus the peer')
  t.equal(h['x-forwarded-proto'], 'https')
  t.equal(h['x-forwarded-host'], 'api.example')

  // Only loopback trusted: 10.0.0.9 is the first untrusted hop, so it is the client; what it claims is not believed.
  const trustLoopback = await gatewayFor(t, `${up.origin}/v1/people`, {}, { trustProxy: ['127.0.0.0/8'] })
  await call(`${trustLoopback}/api/people/`, { headers: spoof })
  h = (up.requests.at(-1) as RecordedRequest).headers
  t.equal(h['x-forwarded-for'], '10.0.0.9, 127.0.0.1', 'CIDR list: the chain up to the first untrusted address')
  t.equal(h['x-forwarded-proto'], 'https', 'the trusted peer\'s proto is believed')

  const trustBoth = await gatewayFor(t, `${up.origin}/v1/people`, {}, { trustProxy: ['127.0.0.1', '10.0.0.0/8'] })
  await call(`${trustBoth}/api/people/`, { headers: spoof })
  h = (up.requests.at(-1) as RecordedRequest).headers
  t.equal(h['x-forwarded-for'], '1.2.3.4, 10.0.0.9, 127.0.0.1', 'CIDR list covering every proxy: the whole chain')

  // A peer outside the list is not believed at all.
  const trustOther = await gatewayFor(t, `${up.origin}/v1/people`, {}, { trustProxy: ['10.0.0.0/8'] })
  await call(`${trustOther}/api/people/`, { headers: spoof })
  h = (up.requests.at(-1) as RecordedRequest).headers
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'untrusted peer: its X-Forwarded-For is ignored')
  t.equal(h['x-forwarded-proto'], 'http')
  t.not(h['x-forwarded-host'], 'api.example')
})

t.test('X-Request-Id: a safe one is kept, an unsafe one replaced; sent upstream and returned', async (t) => {
  const up = await startUpstream(t)
  const gw = await gatewayFor(t, `${up.origin}/v1/people`)

  const safe = 'req-42_A.b'
  let res = await call(`${gw}/api/people/`, { headers: { 'x-request-id': safe } })
  t.equal(res.headers['x-request-id'], safe, 'returned to the client')
  t.equal((up.requests.at(-1) as RecordedRequest).headers['x-request-id'], safe, 'sent upstream')
  t.equal(res.headers['x-request-id'], (res.json as Echo).headers['x-request-id'])

  const max = 'a'.repeat(64)
  res = await call(`${gw}/api/people/`, { headers: { 'x-request-id': max } })
  t.equal(res.headers['x-request-id'], max, '64 characters are accepted')

  const unsafe = ['a'.repeat(65), 'has space', 'a<script>', 'semi;colon', 'ünï', 'a/b', 'crlf%0d%0a']
  for (const given of unsafe) {
    res = await call(`${gw}/api/people/`, { headers: { 'x-request-id': given } })
    const returned = res.headers['x-request-id'] as string
    t.not(returned, given, `"${given.slice(0, 20)}" is not accepted`)
    t.match(returned, /^[0-9a-f-]{36}$/, 'a UUID is generated instead')
    t.equal((up.requests.at(-1) as RecordedRequest).headers['x-request-id'], returned, 'the generated id goes upstream')
  }
  // Two X-Request-Id headers are not a safe token either.
  res = await call(`${gw}/api/people/`, { headers: ['X-Request-Id', 'one', 'X-Request-Id', 'two'] })
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'duplicated header → generated')
  t.equal((up.requests.at(-1) as RecordedRequest).rawHeaders.filter((v) => v.toLowerCase() === 'x-request-id').length, 1, 'one X-Request-Id upstream')

  // None given: generated, and different each time.
  const a = await call(`${gw}/api/people/`)
  const b = await call(`${gw}/api/people/`)
  t.match(a.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  t.not(a.headers['x-request-id'], b.headers['x-request-id'], 'a fresh id per request')

  // The upstream's own X-Request-Id does not replace the gateway's.
  const liar = await startUpstream(t, (_req, res) => { res.writeHead(200, { 'x-request-id': 'from-upstream' }); res.end('ok') })
  const gw2 = await gatewayFor(t, liar.origin)
  res = await call(`${gw2}/api/people/`, { headers: { 'x-request-id': 'mine' } })
  t.equal(res.headers['x-request-id'], 'mine', 'the client gets the gateway\'s id, not the upstream\'s')

  // Gateway-made responses carry it too.
  res = await call(`${gw}/nowhere`, { headers: { 'x-request-id': 'lost-1' } })
  t.equal(res.headers['x-request-id'], 'lost-1')
  t.equal((res.json as { requestId: string }).requestId, 'lost-1')
})

t.test('hop-by-hop headers are not forwarded, either way', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, [
      ['content-type', 'text/plain'],
      ['connection', 'keep-alive, x-up-hop'],
      ['keep-alive', 'timeout=5'],
      ['x-up-hop', 'secret'],
      ['proxy-authenticate', 'Basic'],
      ['upgrade', 'h2c'],
      ['x-up-kept', 'yes']
    ].flat())
    res.end('ok')
  })
  const gw = await gatewayFor(t, up.origin)
  const res = await call(`${gw}/api/people/`, {
    headers: {
      connection: 'keep-alive, x-client-hop',
      'keep-alive': 'timeout=5',
      'x-client-hop': 'only for the gateway',
      'proxy-authorization': 'Basic Zm9vOmJhcg==',
      'proxy-connection': 'keep-alive',
      te: 'trailers',
      trailer: 'x-checksum',
      upgrade: 'websocket',
      'x-kept': 'yes',
      'transfer-encoding': 'chunked'
    },
    body: (async function * () { yield Buffer.from('chunked, so that a Trailer header is allowed') })()
  })
  t.equal(res.status, 200)
  const h = (up.requests.at(-1) as RecordedRequest).headers
  for (const name of ['keep-alive', 'x-client-hop', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'upgrade']) {
    t.notOk(h[name], `request header ${name} not forwarded`)
  }
  t.not(h.connection, 'keep-alive, x-client-hop', 'the client\'s Connection header is not forwarded')
  t.equal(h['x-kept'], 'yes', 'end-to-end headers pass')
  for (const name of ['x-up-hop', 'proxy-authenticate', 'upgrade']) {
    t.notOk(res.headers[name], `response header ${name} not forwarded`)
  }
  t.not(res.headers['keep-alive'], 'timeout=5', 'the upstream\'s Keep-Alive is not passed on')
  t.equal(res.headers['x-up-kept'], 'yes')
  t.equal(res.body.toString(), 'ok')
})

t.test('Connection: close, X-Request-Id, X-Forwarded-For cannot strip the gateway\'s own headers', async (t) => {
  const up = await startUpstream(t)
  const gw = await gatewayFor(t, up.origin)
  const res = await call(`${gw}/api/people/`, {
    headers: {
      connection: 'close, X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Host',
      'x-request-id': 'keep-me',
      'x-forwarded-for': '6.6.6.6'
    }
  })
  t.equal(res.status, 200)
  const h = (up.requests.at(-1) as RecordedRequest).headers
  t.equal(h['x-request-id'], 'keep-me', 'X-Request-Id still reaches the upstream')
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For still reaches the upstream, the gateway\'s value')
  t.equal(h['x-forwarded-proto'], 'http')
  t.ok(h['x-forwarded-host'])
  t.equal(h.host, `127.0.0.1:${up.port}`)
  t.equal(res.headers['x-request-id'], 'keep-me')
})

t.test('unknown paths are 404 and other methods 405 with Allow, as problem+json', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [
      { name: 'people', prefix: '/api/people', upstream: up.origin },
      { name: 'readonly', prefix: '/api/reports', upstream: up.origin, methods: ['GET', 'HEAD'] }
    ]
  })
  assertProblem(t, await call(`${gw}/nope`), 404, '/nope')
  assertProblem(t, await call(`${gw}/api`), 404)
  assertProblem(t, await call(`${gw}/api/peoplex`), 404, '/api/peoplex')
  assertProblem(t, await call(`${gw}/API/people`), 404)
  const notFound = assertProblem(t, await call(`${gw}/nope?token=s3cret`), 404, '/nope')
  t.equal(notFound.type, 'urn:portcullis:problem:not-found')

  let res = await call(`${gw}/api/people/`, { method: 'PROPFIND' })
  const body = assertProblem(t, res, 405, '/api/people/')
  t.equal(body.type, 'urn:portcullis:problem:method-not-allowed')
  t.equal(res.headers.allow, 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS')

  res = await call(`${gw}/api/reports/7`, { method: 'POST', body: 'x' })
  assertProblem(t, res, 405)
  t.equal(res.headers.allow, 'GET, HEAD', 'Allow lists the route\'s methods')
  res = await call(`${gw}/api/reports`, { method: 'DELETE' })
  assertProblem(t, res, 405)
  t.equal(res.headers.allow, 'GET, HEAD')
  t.equal((await call(`${gw}/api/reports/7`)).status, 200, 'an allowed method passes')
  t.equal(up.requests.length, 1, 'only the allowed request reached the upstream')
})

t.test('encoded prefixes are 404 and dot segments 400; the upstream is never contacted', async (t) => {
  const up = await startUpstream(t)
  const gw = await gatewayFor(t, `${up.origin}/v1/people`)
  for (const path of ['/api/%70eople', '/api/%70eople/7', '/api/peopl%65/7', '/api%2fpeople/7', '/%61pi/people']) {
    assertProblem(t, await call(`${gw}${path}`), 404)
  }
  for (const path of [
    '/api/people/../admin',
    '/api/people/..',
    '/api/people/./7',
    '/api/people/7/../../admin',
    '/api/people/%2e%2e/admin',
    '/api/people/%2E%2E/admin',
    '/api/people/.%2e/admin',
    '/api/people/%2e./admin',
    '/api/people/%2e%2e%2fadmin',
    '/api/people/..%2Fadmin',
    '/api/people/..%5cadmin',
    '/api/people/..\\admin',
    '/api/people/%2e'
  ]) {
    const res = await call(`${gw}${path}`)
    const body = assertProblem(t, res, 400)
    t.equal(body.type, 'urn:portcullis:problem:bad-request', path)
  }
  // A dot segment in the query string is data, not a path.
  t.equal((await call(`${gw}/api/people/?next=../x`)).status, 200)
  t.equal(up.requests.length, 1, 'only the clean request reached the upstream')
})

t.test('an upstream redirect comes back with a Location the client can follow through the gateway', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    const location = req.headers['x-want-location']
    if (typeof location === 'string') { res.writeHead(301, { location, 'content-length': 0 }); res.end(); return }
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.end(`at ${req.url ?? ''}`)
  })
  const gw = await gatewayFor(t, `${up.origin}/v1/people`)
  const cases: Array<[string, string]> = [
    ['/v1/people/7/', '/api/people/7/'],
    ['/v1/people/?page=2', '/api/people/?page=2'],
    ['/v1/people', '/api/people'],
    [`${up.origin}/v1/people/7/?q=1`, '/api/people/7/?q=1'],
    [`${up.origin}/v1/people`, '/api/people'],
    ['https://example.com/v1/people/', 'https://example.com/v1/people/'],
    [`http://127.0.0.1:${up.port + 1}/v1/people/`, `http://127.0.0.1:${up.port + 1}/v1/people/`],
    ['/elsewhere/x', '/elsewhere/x'],
    ['/v1/peoplex', '/v1/peoplex'],
    ['//evil.example/v1/people/', '//evil.example/v1/people/'],
    ['7/', '7/']
  ]
  for (const [given, expected] of cases) {
    const res = await call(`${gw}/api/people/7`, { headers: { 'x-want-location': given } })
    t.equal(res.status, 301)
    t.equal(res.headers.location, expected, `Location ${given} → ${expected}`)
  }
  // Following the rewritten Location through the gateway lands on the upstream resource.
  const redirect = await call(`${gw}/api/people/7`, { headers: { 'x-want-location': '/v1/people/7/' } })
  const followed = await call(`${gw}${redirect.headers.location ?? ''}`)
  t.equal(followed.status, 200)
  t.equal(followed.body.toString(), 'at /v1/people/7/')
})

t.test('a list of upstreams is balanced round-robin', async (t) => {
  const a = await startUpstream(t)
  const b = await startUpstream(t)
  const gw = await gatewayFor(t, [`${a.origin}/v1/people`, `${b.origin}/v1/people`])
  for (let i = 0; i < 6; i++) t.equal((await call(`${gw}/api/people/${i}`)).status, 200)
  t.equal(a.requests.length, 3, 'first upstream got half')
  t.equal(b.requests.length, 3, 'second upstream got half')
  t.same([...a.requests, ...b.requests].map((r) => r.url).sort(), [0, 1, 2, 3, 4, 5].map((i) => `/v1/people/${i}`), 'each request went to one of them, rewritten')
})

t.test('response status, headers and body pass through', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(418, 'I\'m a teapot', [['content-type', 'text/plain'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2'], ['cache-control', 'no-store']].flat())
    res.end('short and stout')
  })
  const gw = await gatewayFor(t, up.origin)
  const res = await call(`${gw}/api/people/`)
  t.equal(res.status, 418, 'the upstream\'s status, even an odd one')
  t.same(res.headers['set-cookie'], ['a=1', 'b=2'], 'repeated headers kept')
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.body.toString(), 'short and stout')
})

t.test('the request id is on every log line of the request, and the access line has no query string', async (t) => {
  const up = await startUpstream(t, (_req, res) => { res.writeHead(500); res.end() })
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({ write (chunk: Buffer, _enc, done) { for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>); done() } })
  const app = await buildGateway(parseConfig({ routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin }, { name: 'down', prefix: '/down', upstream: 'http://127.0.0.1:9' }] }), { logger: { level: 'debug', stream } })
  t.teardown(() => app.close())
  const gw = await app.listen({ host: '127.0.0.1', port: 0 })
  await call(`${gw}/api/people/7?token=s3cret`, { headers: { 'x-request-id': 'trace-me-1' } })
  await call(`${gw}/down/x`, { headers: { 'x-request-id': 'trace-me-2' } })
  for (const id of ['trace-me-1', 'trace-me-2']) {
    const mine = lines.filter((l) => JSON.stringify(l).includes(id))
    t.ok(mine.length >= 1, `${id}: logged`)
    t.ok(mine.every((l) => l.reqId === id), `${id}: every line that mentions the request carries reqId`)
  }
  const access = lines.find((l) => l.reqId === 'trace-me-1' && l.status === 500)
  t.match(access, { method: 'GET', route: 'people', path: '/api/people/7', status: 500 }, 'one access line: method, route, path, status')
  t.type(access?.ms, 'number')
  t.notOk(lines.some((l) => JSON.stringify(l).includes('s3cret')), 'the query string is never logged')
  t.ok(lines.filter((l) => l.reqId === 'trace-me-2').length >= 2, 'a failed request: its warning and its access line both carry the id')
})

/**
 * Protocol strictness for Transfer-Encoding (the "Hostile clients" issue): only `chunked` is
 * accepted; any other coding is 501 (plugins/edge/client-limits.ts), what Node's parser refuses itself
 * is a 400 problem (plugins/core/problem.ts clientErrorResponse), and none of it is forwarded — the
 * recording upstream proves it. Raw request heads over node:net, as a hostile client sends them.
 */
import t, { type Test } from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ERRORS, problemType } from '../schemas/errors.js'
import { hashApiKey } from '../plugins/auth/password-hash.js'
import { startTestGateway, startUpstream, type Upstream } from './helper.js'
import { sendRaw } from './raw-http.js'

const BODY = '{"name":"Ada","age":36}'
const CHUNKED_BODY = `${BODY.length.toString(16)}\r\n${BODY}\r\n0\r\n\r\n`
const KEY = 'pk_protocol-key-0123456789abcdefghijklmnop'

function request (headers: string, options: { target?: string, version?: string, body?: string } = {}): string {
  return `POST ${options.target ?? '/api/people/'} HTTP/${options.version ?? '1.1'}\r\nHost: gw\r\nContent-Type: application/json\r\n${headers}\r\n${options.body ?? CHUNKED_BODY}`
}

async function gateway (t: Test): Promise<{ port: number, up: Upstream }> {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    apiKeys: [{ name: 'k', keyHash: hashApiKey(KEY), scopes: [] }],
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, methods: ['GET', 'POST'] },
      { name: 'private', prefix: '/private', upstream: up.origin, auth: ['apiKey'], rateLimit: { max: 1, window: '1m', by: 'ip' } }
    ]
  })
  return { port: Number(new URL(url).port), up }
}

t.test('a Transfer-Encoding other than chunked: 501 problem, connection closed, never forwarded', async (t) => {
  const { port, up } = await gateway(t)
  const cases: Array<[string, string]> = [
    ['gzip, chunked', 'Transfer-Encoding: gzip, chunked\r\n'],
    ['eee, chunked', 'Transfer-Encoding: eee, chunked\r\n'],
    ['identity, chunked', 'Transfer-Encoding: identity, chunked\r\n'],
    [',chunked', 'Transfer-Encoding: ,chunked\r\n'],
    ['gzip + chunked in two fields (node joins them)', 'Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n']
  ]
  for (const [name, headers] of cases) {
    const res = await sendRaw(port, request(headers))
    t.equal(res.status, 501, `${name}: 501`)
    t.match(res.headers['content-type'], /^application\/problem\+json/, `${name}: problem+json`)
    const body = JSON.parse(res.body) as Record<string, unknown>
    t.match(body, {
      type: problemType('GW_ERR_NOT_IMPLEMENTED'),
      title: ERRORS.GW_ERR_NOT_IMPLEMENTED.title,
      status: 501,
      detail: 'The only transfer coding accepted is "chunked".',
      instance: '/api/people/'
    }, name)
    t.equal(res.headers.connection, 'close', `${name}: the connection is closed after the answer`)
  }
  // At the root, first: before routing (no 404), authentication (no 401) and the rate limit.
  for (const target of ['/nowhere', '/private/x', '/private/y']) {
    const res = await sendRaw(port, request('Transfer-Encoding: gzip, chunked\r\n', { target }))
    t.equal(res.status, 501, `${target}: 501 before anything else`)
    t.notOk('www-authenticate' in res.headers, `${target}: no authentication challenge`)
  }
  const clean = await sendRaw(port, request(`Transfer-Encoding: chunked\r\nX-Api-Key: ${KEY}\r\nConnection: close\r\n`, { target: '/private/z' }))
  t.equal(clean.status, 200, 'the first clean request is the first the rate limit counts')
  t.equal(up.requests.length, 1, 'only that one reached the upstream')
})

t.test('chunked in any case, with spaces around it, is forwarded with its body', async (t) => {
  const { port, up } = await gateway(t)
  for (const value of ['chunked', 'CHUNKED', 'Chunked', '  chunked  ']) {
    const res = await sendRaw(port, request(`Transfer-Encoding: ${value}\r\nConnection: close\r\n`))
    t.equal(res.status, 200, `"${value}": forwarded`)
  }
  t.equal(up.requests.length, 4)
  for (const r of up.requests) t.equal(r.body.toString(), BODY, 'the body arrives whole')
})

t.test('HTTP/1.0 with a Transfer-Encoding: 400, never forwarded', async (t) => {
  const { port, up } = await gateway(t)
  const res = await sendRaw(port, request('Transfer-Encoding: chunked\r\n', { version: '1.0' }))
  t.equal(res.status, 400)
  t.match(JSON.parse(res.body), { type: problemType('GW_ERR_BAD_REQUEST'), detail: 'An HTTP/1.0 request must not have a Transfer-Encoding.' })
  t.equal(up.requests.length, 0)
})

t.test('HTTP/1.1 without Host: 400 problem+json (RFC 9112 §3.2), never forwarded; HTTP/1.0 without Host is served', async (t) => {
  const { port, up } = await gateway(t)
  for (const raw of ['GET /api/people/x HTTP/1.1\r\nConnection: close\r\n\r\n', `POST /api/people/ HTTP/1.1\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`, 'GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n']) {
    const res = await sendRaw(port, raw)
    t.equal(res.status, 400, `${raw.split(' ')[1]}: 400`)
    t.match(res.headers['content-type'], /^application\/problem\+json/)
    t.match(JSON.parse(res.body), { type: problemType('GW_ERR_BAD_REQUEST'), detail: 'An HTTP/1.1 request must have a Host header.' })
  }
  t.equal(up.requests.length, 0, 'none reached the upstream')
  const old = await sendRaw(port, 'GET /api/people/x HTTP/1.0\r\n\r\n')
  t.equal(old.status, 200, 'HTTP/1.0 has no Host requirement')
  t.equal(up.requests.length, 1)
})

t.test('what Node\'s parser refuses itself is a 400 problem, never forwarded', async (t) => {
  const { port, up } = await gateway(t)
  const cases: Array<[string, string]> = [
    ['chunked, chunked', 'Transfer-Encoding: chunked, chunked\r\n'],
    ['two chunked fields', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n'],
    ['chunked, gzip (chunked not last)', 'Transfer-Encoding: chunked, gzip\r\n'],
    ['gzip alone', 'Transfer-Encoding: gzip\r\n'],
    ['chunked;q=1', 'Transfer-Encoding: chunked;q=1\r\n'],
    ['chunked + Content-Length', `Transfer-Encoding: chunked\r\nContent-Length: ${BODY.length}\r\n`],
    ['Content-Length + chunked', `Content-Length: ${BODY.length}\r\nTransfer-Encoding: chunked\r\n`],
    ['a tab around chunked', 'Transfer-Encoding:\tchunked\t\r\n'],
    ['space before the colon', 'Transfer-Encoding : chunked\r\n'],
    ['obsolete line folding in Transfer-Encoding', 'Transfer-Encoding: gzip,\r\n chunked\r\n'],
    ['obsolete line folding in another field', 'X-Note: a\r\n b\r\nTransfer-Encoding: chunked\r\n'],
    ['obsolete line folding with a tab', 'X-Note: a\r\n\tb\r\nTransfer-Encoding: chunked\r\n'],
    ['two different Content-Lengths', `Content-Length: ${BODY.length}\r\nContent-Length: 3\r\n`]
  ]
  for (const [name, headers] of cases) {
    const body = name.startsWith('two different') ? BODY : CHUNKED_BODY
    const res = await sendRaw(port, request(headers, { body }))
    t.equal(res.status, 400, `${name}: 400`)
    t.match(res.headers['content-type'], /^application\/problem\+json/, `${name}: problem+json`)
    t.match(JSON.parse(res.body), { type: problemType('GW_ERR_BAD_REQUEST'), status: 400 }, name)
  }
  t.equal(up.requests.length, 0, 'none of them reached the upstream')
})

t.test('a request pipelined behind a refused coding is not read as a request', async (t) => {
  // A route plugin records every request that reaches the route: Node has already parsed the
  // pipelined request when the first is refused, and would hand it on to the route.
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-protocol-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const plugin = join(dir, 'seen.mjs')
  writeFileSync(plugin, `export default async function seen (scope) {
  scope.addHook('onRequest', async (request) => { (globalThis.portcullisSeen ??= []).push(request.url) })
}
`)
  const seen: string[] = []
  ;(globalThis as { portcullisSeen?: string[] }).portcullisSeen = seen
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, methods: ['GET', 'POST'], plugins: [plugin] }]
  })
  const port = Number(new URL(url).port)
  // A front proxy that framed the first request by another rule would have let the second
  // through as its body; the gateway closes the connection after its 501 instead.
  const smuggled = [
    'GET /api/people/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n',
    `POST /api/people/smuggled HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`
  ]
  for (const [first, version] of [['Transfer-Encoding: gzip, chunked\r\n', '1.1'], ['Transfer-Encoding: chunked\r\n', '1.0']]) {
    for (const second of smuggled) {
      const res = await sendRaw(port, request(first, { version }) + second)
      t.equal(res.status, version === '1.1' ? 501 : 400, `HTTP/${version} ${first.trim()}, then ${second.slice(0, 4)}`)
      t.notMatch(res.body, /HTTP\/1\.1/, 'one answer only')
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(seen, [], 'no pipelined request reached the route')
  t.equal(up.requests.length, 0, 'nor the upstream')
  const clean = await sendRaw(port, 'GET /api/people/clean HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n')
  t.equal(clean.status, 200, 'a new connection is served')
  t.same(seen, ['/api/people/clean'], 'and its request reaches the route (the plugin records)')
})

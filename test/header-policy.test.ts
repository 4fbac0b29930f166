/**
 * What a client cannot pass on: header names with `_` (server.headersWithUnderscores: drop by
 * default, reject, allow), the identity headers in every spelling an upstream could fold onto
 * them, and the trust-bearing headers (schemas/edge.ts TRUST_BEARING_HEADERS) unless the peer is
 * one server.trustProxy trusts. The recording upstream shows exactly what arrived.
 */
import t from 'tap'
import { TRUST_BEARING_HEADERS } from '../schemas/edge.js'
import { call, startTestGateway, startUpstream } from './helper.js'

const SPOOFS = [
  'X_Authenticated_User', 'root',
  'X_Authenticated_Scopes', 'people:write admin',
  'x_authenticated_via', 'jwt',
  'SCRIPT_NAME', '/api/public',
  'X_Forwarded_For', '6.6.6.6',
  'X_Forwarded_Host', 'evil.example',
  'x_api_key', 'stolen'
]

t.test('default (drop): no header name with "_" reaches the upstream; the rest of the request does', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, { routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }] })
  const res = await call(`${gw}/pub/x`, { headers: [...SPOOFS, 'x-custom', 'kept', 'my_header', 'gone'] })
  t.equal(res.status, 200)
  const got = up.requests[0]
  t.same(got.rawHeaders.filter((_, i) => i % 2 === 0 && got.rawHeaders[i].includes('_')), [], 'no underscore name arrived')
  t.equal(got.headers['x-custom'], 'kept', 'other headers pass')
  t.equal(got.headers['x-forwarded-for'], '127.0.0.1', 'the client address is the gateway\'s word')
  t.equal(got.headers['x-authenticated-user'], undefined)
})

t.test('reject: a header name with "_" is a 400 problem, and nothing reaches the upstream', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, { server: { headersWithUnderscores: 'reject' }, routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }] })
  const res = await call(`${gw}/pub/x`, { headers: ['my_header', 'x'] })
  t.equal(res.status, 400)
  t.match(res.json, { status: 400, detail: 'Header names must not contain "_".' })
  t.equal((await call(`${gw}/pub/y`, { headers: ['my-header', 'x'] })).status, 200, 'a name without "_" passes')
  t.same(up.requests.map((r) => r.url), ['/y'])
})

t.test('allow: names with "_" pass, except those an upstream could fold onto an identity, credential or trust-bearing header', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    server: { headersWithUnderscores: 'allow' },
    apiKeys: [{ name: 'k', keyHash: 'sha256$' + 'a'.repeat(64), scopes: [] }],
    routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }]
  })
  const res = await call(`${gw}/pub/x`, { headers: [...SPOOFS, 'my_header', 'kept'] })
  t.equal(res.status, 200)
  const names = up.requests[0].rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase())
  t.ok(names.includes('my_header'), 'an ordinary name with "_" is forwarded')
  for (let i = 0; i < SPOOFS.length; i += 2) t.notOk(names.includes(SPOOFS[i].toLowerCase()), `${SPOOFS[i]} is dropped`)
})

t.test('trust-bearing headers: removed from an untrusted peer, passed on from a trusted one (the gateway\'s own X-Forwarded-* always win)', async (t) => {
  const up = await startUpstream(t)
  const headers = TRUST_BEARING_HEADERS.flatMap((name) => [name, name === 'forwarded' ? 'for=6.6.6.6' : '6.6.6.6'])
  const untrusted = await startTestGateway(t, { routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }] })
  t.equal((await call(`${untrusted.url}/pub/u`, { headers })).status, 200)
  const fromUntrusted = up.requests.at(-1)?.headers ?? {}
  for (const name of TRUST_BEARING_HEADERS) {
    if (name === 'x-forwarded-for' || name === 'x-forwarded-proto' || name === 'x-forwarded-host') continue
    t.equal(fromUntrusted[name], undefined, `${name}: not passed on from an untrusted peer`)
  }
  t.equal(fromUntrusted['x-forwarded-for'], '127.0.0.1')
  t.equal(fromUntrusted['x-forwarded-proto'], 'http')
  t.not(fromUntrusted['x-forwarded-host'], '6.6.6.6')

  const trusted = await startTestGateway(t, { server: { trustProxy: ['127.0.0.1'] }, routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }] })
  t.equal((await call(`${trusted.url}/pub/t`, { headers })).status, 200)
  const fromTrusted = up.requests.at(-1)?.headers ?? {}
  for (const name of ['x-forwarded-ssl', 'x-original-url', 'true-client-ip', 'cf-connecting-ip', 'x-real-ip']) {
    t.equal(fromTrusted[name], '6.6.6.6', `${name}: passed on from a trusted peer`)
  }
  t.equal(fromTrusted.forwarded, undefined, 'Forwarded is always the gateway\'s matter (it sets X-Forwarded-* instead)')
  t.equal(fromTrusted['x-forwarded-for'], '6.6.6.6, 127.0.0.1', 'the trusted chain')
})

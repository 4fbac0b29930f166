/**
 * IP allow/deny lists (`ipFilter`, `routes[].ipFilter`; CIDR, IPv4 and IPv6): 403 problem+json
 * before anything else — before authentication (no 401, no challenge), before a CORS preflight
 * and before the rate limit — on the client address that trustProxy defines.
 */
import t, { type Test } from 'tap'
import { request } from 'undici'
import { call, buildTestGateway, startTestGateway, startUpstream, type CallResult, type Upstream } from './helper.js'
import { cheapHash } from './auth-helper.js'
import { ConfigError, parseConfig } from '../src/config.js'
import { ipAllowed, blockList } from '../plugins/edge/ip-filter.js'

function assert403 (t: Test, res: CallResult): void {
  t.equal(res.status, 403)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.match(res.json, { type: 'urn:portcullis:problem:forbidden', detail: 'Requests from this address are not allowed.' })
}

async function gateway (t: Test, raw: Record<string, unknown>, route: Record<string, unknown> = {}): Promise<{ url: string, up: Upstream }> {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    users: [{ username: 'alice', passwordHash: cheapHash('pw'), scopes: [] }],
    ...raw,
    routes: [
      { name: 'people', prefix: '/api/people', upstream: up.origin, ...route },
      { name: 'open', prefix: '/open', upstream: up.origin }
    ]
  })
  return { url, up }
}

t.test('a denied client gets 403 before authentication, CORS and the rate limit', async (t) => {
  const { url, up } = await gateway(t, {}, {
    ipFilter: { deny: ['127.0.0.0/8'] },
    auth: ['basic'],
    rateLimit: { max: 1 },
    cors: { origins: ['https://app.example.com'] }
  })
  const anonymous = await call(`${url}/api/people/`)
  assert403(t, anonymous)
  t.equal(anonymous.headers['www-authenticate'], undefined, 'no challenge: authentication never ran')
  t.equal(anonymous.headers.ratelimit, undefined, 'the rate limit never ran')
  assert403(t, await call(`${url}/api/people/`, { headers: { authorization: 'Basic ' + Buffer.from('alice:pw').toString('base64') } }))
  assert403(t, await call(`${url}/api/people/`, {
    method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET' }
  }))
  t.equal((await call(`${url}/open/`)).status, 200, 'another route without the list is open')
  t.equal(up.requests.length, 1, 'only the open route reached the upstream')
})

t.test('the gateway-wide list applies to every route; deny wins over allow', async (t) => {
  const denied = await gateway(t, { ipFilter: { allow: ['127.0.0.0/8'], deny: ['127.0.0.1'] } })
  assert403(t, await call(`${denied.url}/api/people/`))
  assert403(t, await call(`${denied.url}/open/`))
  t.equal((await call(`${denied.url}/healthz`)).status, 200, 'ops endpoints are not filtered')

  const allowed = await gateway(t, { ipFilter: { allow: ['127.0.0.0/8'] } }, { ipFilter: { allow: ['10.0.0.0/8'] } })
  t.equal((await call(`${allowed.url}/open/`)).status, 200, 'in the gateway-wide allow list')
  assert403(t, await call(`${allowed.url}/api/people/`))
})

t.test('the gateway-wide list guards the token endpoint too', async (t) => {
  const { url } = await gateway(t, {
    ipFilter: { deny: ['127.0.0.0/8'] },
    jwt: { algorithms: ['HS256'], secret: 'a-test-secret-that-is-at-least-32-bytes-long!' },
    tokenEndpoint: { path: '/auth/token', rateLimit: { max: 1 } }
  })
  const login = async (): Promise<CallResult> => await call(`${url}/auth/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'alice', password: 'pw' })
  })
  assert403(t, await login())
  const again = await login()
  assert403(t, again)
  t.equal(again.headers.ratelimit, undefined, 'refused before the token endpoint\'s limiter')
})

t.test('the client address is the one trustProxy defines', async (t) => {
  const { url } = await gateway(t, { server: { trustProxy: ['127.0.0.1'] }, ipFilter: { deny: ['203.0.113.0/24', '2001:db8::/32'] } })
  assert403(t, await call(`${url}/open/`, { headers: { 'x-forwarded-for': '203.0.113.9' } }))
  assert403(t, await call(`${url}/open/`, { headers: { 'x-forwarded-for': '2001:db8::1:2' } }))
  t.equal((await call(`${url}/open/`, { headers: { 'x-forwarded-for': '198.51.100.1' } })).status, 200)
  t.equal((await call(`${url}/open/`)).status, 200, 'the peer itself is not denied')
})

t.test('IPv6, and IPv4 clients on a dual-stack listener', async (t) => {
  const up = await startUpstream(t)
  const app = await buildTestGateway(t, {
    routes: [
      { name: 'v6deny', prefix: '/v6deny', upstream: up.origin, ipFilter: { deny: ['::1/128'] } },
      { name: 'v6allow', prefix: '/v6allow', upstream: up.origin, ipFilter: { allow: ['::1'] } },
      { name: 'v4deny', prefix: '/v4deny', upstream: up.origin, ipFilter: { deny: ['127.0.0.0/8'] } }
    ]
  })
  let v6 = true
  try {
    await app.listen({ host: '::', port: 0 })
  } catch {
    v6 = false
  }
  if (!v6) { t.comment('no IPv6 on this machine: the list logic is still checked below'); return }
  const port = (app.server.address() as { port: number }).port
  // call() takes IPv4 hosts only; undici speaks to [::1].
  const v6get = async (path: string): Promise<CallResult> => {
    const res = await request(`http://[::1]:${port}${path}`)
    const body = Buffer.from(await res.body.arrayBuffer())
    return { status: res.statusCode, headers: res.headers, body, json: JSON.parse(body.toString()) }
  }
  assert403(t, await v6get('/v6deny/'))
  t.equal((await v6get('/v6allow/')).status, 200, '::1 is in the allow list')
  assert403(t, await call(`http://127.0.0.1:${port}/v6allow/`))
  assert403(t, await call(`http://127.0.0.1:${port}/v4deny/`)) // ::ffff:127.0.0.1 matches 127.0.0.0/8
  t.equal((await call(`http://127.0.0.1:${port}/v6deny/`)).status, 200)
})

t.test('list logic: CIDRs, single addresses, mapped addresses', async (t) => {
  const filters = [{ allow: blockList(['10.0.0.0/8', '2001:db8::/32']), deny: blockList(['10.0.0.66', '2001:db8:bad::/48']) }]
  t.ok(ipAllowed(filters, '10.1.2.3'))
  t.ok(ipAllowed(filters, '::ffff:10.1.2.3'))
  t.notOk(ipAllowed(filters, '10.0.0.66'))
  t.notOk(ipAllowed(filters, '11.0.0.1'))
  t.ok(ipAllowed(filters, '2001:db8::1'))
  t.notOk(ipAllowed(filters, '2001:db8:bad::1'))
  t.notOk(ipAllowed(filters, '2001:db9::1'))
})

t.test('config: every entry must be an address or CIDR', async (t) => {
  const route = { name: 'p', prefix: '/p', upstream: 'http://127.0.0.1:9/p' }
  const problems = (raw: Record<string, unknown>): string[] => {
    try { parseConfig({ routes: [route], ...raw }, { env: {} }) } catch (err) { if (err instanceof ConfigError) return err.problems; throw err }
    return []
  }
  t.same(problems({ ipFilter: { deny: ['10.0.0.0/33', 'example.com', '::1/129', '10.0.0.0/8'] } }), [
    'ipFilter.deny[0]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)',
    'ipFilter.deny[1]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)',
    'ipFilter.deny[2]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)'
  ])
  t.same(problems({ routes: [{ ...route, ipFilter: { allow: ['1.2.3'] } }] }), ['routes[0].ipFilter.allow[0]: must be an IP address or CIDR (10.0.0.0/8, 2001:db8::/32)'])
})

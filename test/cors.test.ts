/**
 * CORS per route (`routes[].cors`): preflights answered by the gateway (never the upstream,
 * never a credentials check, never counted by the rate limit), disallowed origins refused, the
 * CORS headers on proxied responses replacing the upstream's, and OPTIONS still 405 on a route
 * that does not proxy it.
 */
import t, { type Test } from 'tap'
import { call, startTestGateway, startUpstream, type Upstream } from './helper.js'
import { cheapHash } from './auth-helper.js'
import { ConfigError, parseConfig } from '../src/config.js'

const APP = 'https://app.example.com'

async function gateway (t: Test, route: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<{ url: string, up: Upstream }> {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'access-control-allow-origin': '*', vary: 'Accept-Encoding' })
    res.end('{"ok":true}')
  })
  const { url } = await startTestGateway(t, {
    users: [{ username: 'alice', passwordHash: cheapHash('pw'), scopes: [] }],
    ...extra,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, ...route }]
  })
  return { url, up }
}

const preflight = (origin: string, method = 'POST'): Record<string, string> => ({
  origin, 'access-control-request-method': method, 'access-control-request-headers': 'authorization, content-type'
})

t.test('a preflight is answered by the gateway, without credentials, on an authenticated route', async (t) => {
  const { url, up } = await gateway(t, {
    auth: ['basic'],
    methods: ['GET', 'POST', 'DELETE'],
    cors: { origins: [APP, 'https://admin.example.com'], credentials: true, maxAge: '5m' }
  })
  const res = await call(`${url}/api/people/7`, { method: 'OPTIONS', headers: preflight(APP) })
  t.equal(res.status, 204)
  t.equal(res.body.length, 0)
  t.equal(res.headers['access-control-allow-origin'], APP)
  t.equal(res.headers['access-control-allow-credentials'], 'true')
  t.equal(res.headers['access-control-allow-methods'], 'GET, POST, DELETE', 'the route\'s methods by default')
  t.equal(res.headers['access-control-allow-headers'], 'authorization, content-type', 'the asked headers reflected by default')
  t.equal(res.headers['access-control-max-age'], '300')
  t.match(res.headers.vary, /Origin/)
  t.equal(res.headers['www-authenticate'], undefined, 'no credentials asked for')
  t.equal(up.requests.length, 0, 'the upstream never saw it')
})

t.test('a preflight from an origin not listed gets 403, and nothing reaches the upstream', async (t) => {
  const { url, up } = await gateway(t, { cors: { origins: [APP] } })
  const res = await call(`${url}/api/people/`, { method: 'OPTIONS', headers: preflight('https://evil.example') })
  t.equal(res.status, 403)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.equal(res.headers['access-control-allow-origin'], undefined)
  t.equal(up.requests.length, 0)
})

t.test('proxied responses carry the gateway\'s CORS headers, replacing the upstream\'s', async (t) => {
  const { url, up } = await gateway(t, { cors: { origins: [APP], credentials: true, exposedHeaders: ['X-Total-Count', 'RateLimit'] } })
  const res = await call(`${url}/api/people/`, { headers: { origin: APP } })
  t.equal(res.status, 200)
  t.equal(res.headers['access-control-allow-origin'], APP, 'the upstream\'s "*" is replaced')
  t.equal(res.headers['access-control-allow-credentials'], 'true')
  t.equal(res.headers['access-control-expose-headers'], 'X-Total-Count, RateLimit')
  t.match(res.headers.vary, /Accept-Encoding/, 'the upstream\'s Vary is kept…')
  t.match(res.headers.vary, /Origin/, '…and Origin added')
  const other = await call(`${url}/api/people/`, { headers: { origin: 'https://evil.example' } })
  t.equal(other.status, 200, 'a simple request from another origin is still proxied (the browser enforces CORS)')
  t.equal(other.headers['access-control-allow-origin'], undefined, 'but gets no permission: the upstream\'s "*" is not passed on either')
  t.equal(up.requests.length, 2)
})

t.test('origins "*" without credentials: a fixed "*"', async (t) => {
  const { url } = await gateway(t, { cors: { origins: ['*'] } })
  const pre = await call(`${url}/api/people/`, { method: 'OPTIONS', headers: preflight('https://anyone.example', 'GET') })
  t.equal(pre.status, 204)
  t.equal(pre.headers['access-control-allow-origin'], '*')
  t.equal(pre.headers['access-control-allow-credentials'], undefined)
  const res = await call(`${url}/api/people/`, { headers: { origin: 'https://anyone.example' } })
  t.equal(res.headers['access-control-allow-origin'], '*')
  t.equal(res.headers['access-control-expose-headers'], 'RateLimit, RateLimit-Policy, Retry-After, X-Request-Id', 'the default exposed headers')
})

t.test('OPTIONS that is not a preflight: 405 unless the route proxies OPTIONS', async (t) => {
  const closed = await gateway(t, { methods: ['GET'], cors: { origins: [APP] } })
  const res = await call(`${closed.url}/api/people/`, { method: 'OPTIONS' })
  t.equal(res.status, 405)
  t.equal(res.headers.allow, 'GET')
  t.equal((await call(`${closed.url}/api/people/`, { method: 'OPTIONS', headers: preflight(APP, 'GET') })).status, 204, 'a preflight still works')
  t.equal(closed.up.requests.length, 0)

  const open = await gateway(t, { methods: ['GET', 'OPTIONS'], cors: { origins: [APP] } })
  t.equal((await call(`${open.url}/api/people/`, { method: 'OPTIONS' })).status, 200, 'proxied when the route allows OPTIONS')
  t.equal(open.up.requests.length, 1)
})

t.test('preflights are not counted by the rate limit', async (t) => {
  const { url } = await gateway(t, { rateLimit: { max: 1, window: '1m' }, cors: { origins: [APP] } })
  for (let i = 0; i < 3; i++) t.equal((await call(`${url}/api/people/`, { method: 'OPTIONS', headers: preflight(APP) })).status, 204)
  t.equal((await call(`${url}/api/people/`)).status, 200)
  t.equal((await call(`${url}/api/people/`)).status, 429)
})

t.test('config: "*" with credentials is refused; origins must be origins', async (t) => {
  const route = { name: 'p', prefix: '/p', upstream: 'http://127.0.0.1:9/p' }
  const problems = (cors: unknown): string[] => {
    try { parseConfig({ routes: [{ ...route, cors }] }, { env: {} }) } catch (err) { if (err instanceof ConfigError) return err.problems; throw err }
    return []
  }
  t.same(problems({ origins: ['*'], credentials: true }), ['routes[0].cors.origins: "*" cannot be combined with credentials: true (list the origins)'])
  t.match(problems({ origins: ['https://app.example.com/path'] }), [/^routes\[0\]\.cors\.origins\[0\]: /])
  t.same(problems({ origins: [APP] }), [])
})

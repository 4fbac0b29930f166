/**
 * Rate limiting with the memory store, against a real upstream: per IP, per header, per consumer
 * (falling back to the IP), the 429 contract and the RateLimit headers (draft-10) on proxied and
 * refused responses, one bucket for every spelling of a path and for HEAD/GET, brute force on
 * HTTP Basic and on the token endpoint cut off before credentials are checked, the rateLimited
 * event, config checks and the scale-out warning.
 */
import t, { type Test } from 'tap'
import { call, startTestGateway, startUpstream, type CallResult, type RawConfig } from './helper.js'
import { basic, cheapHash, hsToken, SECRET } from './auth-helper.js'
import { channels, type RateLimitedEvent } from '../schemas/events.js'
import { ConfigError, parseConfig } from '../src/config.js'
import { IpKeys, rateLimitScaleWarning, routeLimiter } from '../plugins/rate-limit/rate-limit.js'
import { MemoryCounterStore } from '../plugins/rate-limit/memory-store.js'

async function gateway (t: Test, rateLimit: Record<string, unknown>, extra: RawConfig = {}, route: Record<string, unknown> = {}): Promise<{ url: string, requests: unknown[] }> {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    ...extra,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, rateLimit, ...route }]
  })
  return { url, requests: up.requests }
}

function assert429 (t: Test, res: CallResult): void {
  t.equal(res.status, 429)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.match(res.json, { type: 'urn:portcullis:problem:rate-limited', status: 429, title: 'Too Many Requests' })
  t.match(res.headers['retry-after'], /^[1-9][0-9]*$/, 'Retry-After in whole seconds')
}

/** `"people";r=2;t=60` → { r: 2, t: 60 } */
function parseRateLimit (value: unknown): { name: string, r: number, t: number } {
  const m = /^"([^"]+)";r=([0-9]+);t=([0-9]+)$/.exec(String(value))
  if (m === null) throw new Error(`not a RateLimit field: ${String(value)}`)
  return { name: m[1], r: Number(m[2]), t: Number(m[3]) }
}

t.test('by ip: max requests pass, then 429 problem+json with Retry-After; the upstream sees only max', async (t) => {
  const { url, requests } = await gateway(t, { max: 3, window: '1m', by: 'ip' })
  const seen: CallResult[] = []
  for (let i = 0; i < 3; i++) seen.push(await call(`${url}/api/people/`))
  t.same(seen.map((r) => r.status), [200, 200, 200])
  t.same(seen.map((r) => parseRateLimit(r.headers.ratelimit).r), [2, 1, 0], 'remaining counts down on proxied responses')
  for (const r of seen) {
    t.equal(r.headers['ratelimit-policy'], '"people";q=3;w=60')
    const reset = parseRateLimit(r.headers.ratelimit).t
    t.ok(reset >= 1 && reset <= 60, `reset ${reset} s is within the window`)
  }
  const refused = await call(`${url}/api/people/`)
  assert429(t, refused)
  t.equal(parseRateLimit(refused.headers.ratelimit).r, 0)
  t.equal(refused.headers['ratelimit-policy'], '"people";q=3;w=60')
  const retry = Number(refused.headers['retry-after'])
  t.ok(retry >= 1 && retry <= 60, `Retry-After ${retry} is within the window`)
  t.equal(requests.length, 3, 'the refused request never reached the upstream')
})

t.test('the gateway\'s RateLimit headers replace an upstream\'s own', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', ratelimit: '"upstream";r=999;t=1', 'ratelimit-policy': '"upstream";q=1000' })
    res.end('ok')
  })
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin, rateLimit: { max: 5, window: '10s' } }]
  })
  const res = await call(`${url}/api/people/x`)
  t.equal(res.status, 200)
  t.equal(res.body.toString(), 'ok')
  t.equal(res.headers.ratelimit, '"people";r=4;t=10')
  t.equal(res.headers['ratelimit-policy'], '"people";q=5;w=10')
})

t.test('every spelling of a path, the query string and HEAD share one bucket', async (t) => {
  const { url, requests } = await gateway(t, { max: 7, window: '1m' })
  const variants: Array<[string, string]> = [
    ['GET', '/api/people'],
    ['GET', '/api/people/'],
    ['GET', '/api/people//'],
    ['GET', '/api/people/?page=2'],
    ['GET', '/api/people/%31'],
    ['HEAD', '/api/people/'],
    ['GET', '/api/people/1?x=%20']
  ]
  for (const [method, path] of variants) {
    const res = await call(url + path, { method })
    t.equal(res.status, 200, `${method} ${path} passes`)
  }
  // Spellings that do not reach the route are not forwarded at all (so they cannot dodge it).
  for (const path of ['/API/people/', '/api/%70eople/', '/api/People']) {
    const res = await call(url + path)
    t.equal(res.status, 404, `${path} is not this route`)
  }
  for (const [method, path] of [['GET', '/api/people/?fresh=1'], ['HEAD', '/api/people'], ['GET', '/api/people///']]) {
    const res = await call(url + path, { method })
    t.equal(res.status, 429, `${method} ${path} is refused: the bucket is spent`)
  }
  t.equal(requests.length, 7, 'exactly max requests reached the upstream')
})

t.test('IPv6 clients: one bucket per /64, an IPv4-mapped address shares the IPv4 bucket', async (t) => {
  const { url } = await gateway(t, { max: 2, window: '1m', by: 'ip' }, { server: { trustProxy: ['127.0.0.1/32'] } })
  const from = async (ip: string): Promise<number> => (await call(`${url}/api/people/`, { headers: { 'x-forwarded-for': ip } })).status
  t.same([await from('2001:db8:0:7::1'), await from('2001:db8:0:7::2'), await from('2001:db8:0:7:ffff::9')], [200, 200, 429], 'three addresses of one /64: one bucket')
  t.same([await from('2001:db8:0:8::1'), await from('2001:db8:0:8::1')], [200, 200], 'the next /64 has its own')
  t.same([await from('203.0.113.9'), await from('::ffff:203.0.113.9'), await from('203.0.113.9')], [200, 200, 429], 'IPv4 and IPv4-mapped IPv6: one bucket')
})

t.test('IpKeys: the counter key of an address, the same after its memo is emptied', async (t) => {
  const keys = new IpKeys()
  const ipKeyOf = (ip: string): string => keys.of(ip)
  t.equal(ipKeyOf('203.0.113.9'), 'ip:203.0.113.9')
  t.equal(ipKeyOf('::ffff:203.0.113.9'), 'ip:203.0.113.9')
  const first = ipKeyOf('2001:db8:0:7::1')
  t.equal(first, ipKeyOf('2001:DB8:0:7:ffff::9'), 'one key per /64, whatever the spelling')
  t.not(first, ipKeyOf('2001:db8:0:8::1'))
  // More distinct addresses than the memo holds: it is emptied, and the keys do not change.
  for (let i = 0; i < 5000; i++) ipKeyOf(`2001:db8:${i.toString(16)}::1`)
  t.equal(ipKeyOf('2001:db8:0:7::1'), first)
  t.equal(ipKeyOf('2001:db8:1387::1'), ipKeyOf('2001:db8:1387::2'))
})

t.test('by header: one bucket per header value, the IP when the header is absent', async (t) => {
  const { url } = await gateway(t, { max: 2, window: '1m', by: 'header:X-Tenant' })
  const tenant = async (name?: string): Promise<number> =>
    (await call(`${url}/api/people/`, { headers: name === undefined ? {} : { 'x-tenant': name } })).status
  t.same([await tenant('a'), await tenant('a'), await tenant('a')], [200, 200, 429], 'tenant a: 2 then 429')
  t.same([await tenant('b'), await tenant('b'), await tenant('b')], [200, 200, 429], 'tenant b has its own bucket')
  t.same([await tenant(), await tenant(), await tenant()], [200, 200, 429], 'no header: the client IP\'s bucket')
})

t.test('by consumer without an identity: counted against the client IP', async (t) => {
  const { url, requests } = await gateway(t, { max: 2, window: '1m', by: 'consumer' })
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await call(`${url}/api/people/`)).status)
  t.same(statuses, [200, 200, 429, 429])
  t.equal(requests.length, 2)
})

const users = [
  { username: 'alice', passwordHash: cheapHash('alice-pw'), scopes: ['people:read'] },
  { username: 'bob', passwordHash: cheapHash('bob-pw'), scopes: ['people:read'] }
]

t.test('brute force on HTTP Basic (by ip): cut off at the limit, even the right password then', async (t) => {
  const { url, requests } = await gateway(t, { max: 5, window: '1m', by: 'ip' }, { users }, { auth: ['basic'] })
  for (let i = 0; i < 5; i++) {
    const res = await call(`${url}/api/people/`, { headers: { authorization: basic('alice', `guess-${i}`) } })
    t.equal(res.status, 401, `guess ${i + 1}: 401`)
    t.equal(parseRateLimit(res.headers.ratelimit).r, 4 - i, 'and it counted')
  }
  const right = await call(`${url}/api/people/`, { headers: { authorization: basic('alice', 'alice-pw') } })
  assert429(t, right)
  t.equal(right.headers['www-authenticate'], undefined, 'refused before credentials were looked at')
  t.equal(requests.length, 0, 'nothing reached the upstream')
})

t.test('by consumer: one bucket per identity; failed logins count against the IP and cut it off', async (t) => {
  const { url, requests } = await gateway(t, { max: 3, window: '1m', by: 'consumer' },
    { users, jwt: { algorithms: ['HS256'], secret: SECRET } }, { auth: ['jwt', 'basic'] })
  const as = async (authorization: string): Promise<CallResult> => await call(`${url}/api/people/`, { headers: { authorization } })
  const alice = basic('alice', 'alice-pw')
  t.same([(await as(alice)).status, (await as(alice)).status, (await as(alice)).status, (await as(alice)).status], [200, 200, 200, 429], 'alice: 3 then 429')
  const carol = 'Bearer ' + hsToken({ sub: 'carol', scope: 'people:read' })
  const carolRes = await as(carol)
  t.equal(carolRes.status, 200, 'carol (JWT) has her own bucket, from the same IP')
  t.equal(parseRateLimit(carolRes.headers.ratelimit).r, 2)
  t.equal((await as(basic('bob', 'bob-pw'))).status, 200, 'bob too')
  t.equal(requests.length, 5)

  // Three failed logins spend this IP's bucket: then the IP is refused before credentials.
  for (let i = 0; i < 3; i++) t.equal((await as(basic('bob', `guess-${i}`))).status, 401, `failed login ${i + 1}: 401`)
  const guess = await as(basic('bob', 'guess-4'))
  assert429(t, guess)
  t.equal((await as(basic('bob', 'bob-pw'))).status, 429, 'the right password is refused too: a guess cannot be confirmed')
  t.equal((await call(`${url}/api/people/`)).status, 429, 'so is an anonymous request')
  t.equal(requests.length, 5, 'none of them reached the upstream')
})

t.test('brute force on the token endpoint: cut off at tokenEndpoint.rateLimit.max', async (t) => {
  const { url } = await gateway(t, { max: 100 }, {
    users,
    jwt: { algorithms: ['HS256'], secret: SECRET },
    tokenEndpoint: { path: '/auth/token', rateLimit: { max: 3, window: '1m' } }
  })
  const login = async (password: string): Promise<CallResult> => await call(`${url}/auth/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'alice', password })
  })
  t.same([(await login('a')).status, (await login('b')).status, (await login('c')).status], [401, 401, 401])
  const right = await login('alice-pw')
  assert429(t, right)
  t.notOk(JSON.stringify(right.json).includes('access_token'), 'no token after the cut-off')
})

t.test('routes have separate buckets', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    routes: [
      { name: 'a', prefix: '/a', upstream: up.origin, rateLimit: { max: 1 } },
      { name: 'b', prefix: '/b', upstream: up.origin, rateLimit: { max: 1 } },
      { name: 'open', prefix: '/open', upstream: up.origin }
    ]
  })
  t.same([(await call(`${url}/a`)).status, (await call(`${url}/a`)).status], [200, 429])
  t.same([(await call(`${url}/b`)).status, (await call(`${url}/b`)).status], [200, 429])
  const open = await call(`${url}/open`)
  t.equal(open.status, 200)
  t.equal(open.headers.ratelimit, undefined, 'an unlimited route sends no RateLimit header')
})

t.test('a 429 publishes a rateLimited event', async (t) => {
  const events: RateLimitedEvent[] = []
  // Each event names its request; the rest is compared.
  const listener = (msg: unknown): void => {
    const { request, ...rest } = msg as RateLimitedEvent
    events.push((typeof request?.id === 'string' ? rest : { missingRequest: msg }) as RateLimitedEvent)
  }
  channels.rateLimited.subscribe(listener)
  t.teardown(() => { channels.rateLimited.unsubscribe(listener) })
  const { url } = await gateway(t, { max: 1, window: '1m' })
  await call(`${url}/api/people`)
  t.same(events, [], 'no event while under the limit')
  await call(`${url}/api/people`)
  t.same(events, [{ route: 'people', by: 'ip' }])
})

t.test('config: checks and defaults', async (t) => {
  const route = { name: 'p', prefix: '/p', upstream: 'http://127.0.0.1:9/p' }
  const problems = (raw: unknown): string[] => {
    try { parseConfig(raw, { env: {} }) } catch (err) { if (err instanceof ConfigError) return err.problems; throw err }
    return []
  }
  const config = parseConfig({ routes: [{ ...route, rateLimit: { max: 5 } }] }, { env: {} })
  t.same(config.rateLimit, { store: 'memory', onStoreError: 'allow', timeout: '250ms', keyPrefix: 'portcullis:rl:', maxKeys: 10000, leaseMax: 64 })
  t.same(config.routes[0].rateLimit, { max: 5, window: '1m', by: 'ip' })
  t.same(problems({ rateLimit: { store: 'redis' }, routes: [route] }), ['rateLimit.redis: required with store: redis'])
  t.same(problems({ rateLimit: { store: 'redis', redis: 'http://x' }, routes: [route] }), ['rateLimit.redis: must be a redis:// or rediss:// URL'])
  t.match(problems({ routes: [{ ...route, rateLimit: { max: 5, by: 'cookie' } }] }), [/^routes\[0\]\.rateLimit\.by: /])
  t.match(problems({ routes: [{ ...route, rateLimit: { max: 0 } }] }), [/^routes\[0\]\.rateLimit\.max: /])
  t.match(problems({ routes: [{ ...route, rateLimit: { max: 5, window: 'soon' } }] }), ['routes[0].rateLimit.window: must be a duration such as 500ms, 10s, 15m or 1h'])
})

t.test('scale-out warning for several processes on the memory store', async (t) => {
  const routes = [{ name: 'people', rateLimit: { max: 100 } }, { name: 'open' }]
  t.equal(rateLimitScaleWarning({ rateLimit: { store: 'memory' }, routes }, 1), null, 'one process: fine')
  t.equal(rateLimitScaleWarning({ rateLimit: { store: 'redis' }, routes }, 4), null, 'redis: shared')
  t.equal(rateLimitScaleWarning({ rateLimit: { store: 'memory' }, routes: [{ name: 'open' }] }, 4), null, 'nothing limited')
  t.match(rateLimitScaleWarning({ rateLimit: { store: 'memory' }, routes }, 4), /4 processes.*4 × max.*people.*rateLimit\.store: redis/)
})

t.test('the memory store, asked without a callback: the same headers and 429, a throw from done goes up, a store throw is a failure', async (t) => {
  const store = new MemoryCounterStore({ maxKeys: 10 })
  const failures: unknown[] = []
  const scope = { rateLimitBackend: { onStoreError: 'allow', store: () => store, failed: (err: unknown) => { failures.push(err) }, ipKeys: new IpKeys() } }
  const limiter = routeLimiter(scope as never, { route: 'people', limit: { max: 2, window: '1m', by: 'ip' } as never })
  const request = { ip: '203.0.113.9', headers: {}, log: { warn () {} } }
  const headers: Record<string, string> = {}
  const reply = { header (name: string, value: string) { headers[name] = value; return reply } }
  const answers: Array<Error | undefined> = []
  for (let i = 0; i < 3; i++) limiter.count.call(scope as never, request as never, reply as never, (err?: Error) => { answers.push(err) })
  t.same(answers.slice(0, 2), [undefined, undefined], 'two counted')
  t.match(answers[2], { statusCode: 429 }, 'the third refused')
  t.equal(headers['ratelimit-policy'], '"people";q=2;w=60')
  t.match(headers.ratelimit, /^"people";r=0;t=(59|60)$/)
  limiter.peek.call(scope as never, request as never, reply as never, (err?: Error) => { answers.push(err) })
  t.match(answers[3], { statusCode: 429 }, 'a peek at the spent bucket refuses without counting')
  t.equal(store.peek('people|ip:203.0.113.9').current, 3)

  let calls = 0
  t.throws(() => { limiter.count.call(scope as never, { ...request, ip: '203.0.113.10' } as never, reply as never, () => { calls++; throw new Error('boom in done') }) }, /boom in done/)
  t.equal(calls, 1, 'done ran once')
  t.same(failures, [], 'and no store failure was recorded')

  const broken = (): never => { throw new Error('store broke') }
  store.count = broken
  store.peek = broken
  calls = 0
  limiter.count.call(scope as never, request as never, reply as never, () => { calls++ })
  limiter.peek.call(scope as never, request as never, reply as never, () => { calls++ })
  t.equal(calls, 2, 'onStoreError allow: let through, once each')
  t.match(failures, [/store broke/, /store broke/], 'recorded as store failures')
})

t.test('a throw from what the store callback ran is not a store failure: done runs once, the throw goes up', async (t) => {
  // A memory-like store that calls back synchronously, as LocalStore does.
  const store = {
    incr: (_key: string, cb: (err: Error | null, r?: { current: number, ttl: number }) => void) => { cb(null, { current: 1, ttl: 60_000 }) },
    read: (_key: string, cb: (err: Error | null, r?: { current: number, ttl: number }) => void) => { cb(null, { current: 0, ttl: 60_000 }) }
  }
  const failures: unknown[] = []
  const scope = { rateLimitBackend: { onStoreError: 'allow', store: () => store, failed: (err: unknown) => { failures.push(err) }, ipKeys: new IpKeys() } }
  const limiter = routeLimiter(scope as never, { route: 'people', limit: { max: 5, window: '1m', by: 'ip' } as never })
  const request = { ip: '203.0.113.9', headers: {}, log: { warn () {} } }
  let calls = 0
  t.throws(() => { limiter.countIp(request as never, () => { calls++; throw new Error('boom in done') }) }, /boom in done/)
  t.equal(calls, 1, 'countIp: done ran once')
  const reply = { header () { return reply } }
  calls = 0
  t.throws(() => { limiter.count.call(scope as never, request as never, reply as never, () => { calls++; throw new Error('boom in done') }) }, /boom in done/)
  t.equal(calls, 1, 'count: done ran once')
  t.same(failures, [], 'and no store failure was recorded')
})

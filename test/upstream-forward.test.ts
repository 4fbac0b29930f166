/**
 * How the forwarder uses a route's targets (src/forward.ts with plugins/upstream/upstream-set.ts),
 * in one process with upstreams on port 0: a failed try goes to the other target, only what is
 * safe is retried, a retried status is never passed on, an open breaker answers 503 at once, and
 * the config refuses what cannot work. Killed, hung and restarted upstream processes under load:
 * test/upstream-resilience.test.ts.
 */
import t from 'tap'
import { ConfigError, parseConfig } from '../src/config.js'
import { call, freePort, startTestGateway, startUpstream } from './helper.js'

const json = (name: string) => (_req: unknown, res: import('node:http').ServerResponse): void => {
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify({ name }))
}

t.test('a GET whose connection is refused is retried on the other target; a POST is not', async (t) => {
  const live = await startUpstream(t, json('live'))
  const dead = `http://127.0.0.1:${await freePort()}`
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'two', prefix: '/two', upstream: [dead, live.origin], outlierDetection: false, circuitBreaker: false }]
  })
  const gets = []
  for (let i = 0; i < 20; i++) gets.push((await call(`${url}/two/x`)).status)
  t.same(gets, Array(20).fill(200), '20 GETs, every one answered by the live target')
  t.equal(live.requests.length, 20, 'which saw each once')
  const posts = []
  for (let i = 0; i < 10; i++) posts.push((await call(`${url}/two/x`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })).status)
  t.same(posts.sort(), [...Array(5).fill(200), ...Array(5).fill(502)], 'POSTs: half went to the dead target and got 502, none was retried')
})

t.test('retryOn 503: the 503 is dropped and the request answered by the other target; without it the 503 is passed on', async (t) => {
  const sick = await startUpstream(t, (_req, res) => { res.statusCode = 503; res.end('{"detail":"down"}') })
  const well = await startUpstream(t, json('well'))
  const route = { prefix: '/r', upstream: [sick.origin, well.origin], outlierDetection: false, circuitBreaker: false }
  const { url } = await startTestGateway(t, {
    routes: [{ ...route, name: 'retried', prefix: '/retried', retryOn: ['503'] }, { ...route, name: 'plain', prefix: '/plain' }]
  })
  const retried = []
  for (let i = 0; i < 10; i++) retried.push((await call(`${url}/retried/x`)).status)
  t.same(retried, Array(10).fill(200), 'retryOn [503]: every GET answered 200')
  const plain = []
  for (let i = 0; i < 10; i++) plain.push((await call(`${url}/plain/x`)).status)
  t.same(plain.sort(), [...Array(5).fill(200), ...Array(5).fill(503)], 'default retryOn: the upstream\'s 503 is passed on')
})

t.test('a single target whose breaker opened: 503 problem+json with Retry-After, and the upstream sees nothing more', async (t) => {
  const sick = await startUpstream(t, (_req, res) => { res.statusCode = 502; res.end() })
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'one', prefix: '/one', upstream: sick.origin, retries: 0, circuitBreaker: { minRequests: 4, failureRatio: 0.5, openFor: '30s' } }]
  })
  for (let i = 0; i < 4; i++) t.equal((await call(`${url}/one/x`)).status, 502, `request ${i + 1}: the upstream's 502`)
  const seen = sick.requests.length
  const res = await call(`${url}/one/x`)
  t.equal(res.status, 503, 'the breaker is open: 503')
  t.match(res.headers['content-type'], /application\/problem\+json/)
  t.ok(Number(res.headers['retry-after']) >= 1 && Number(res.headers['retry-after']) <= 30, `Retry-After ${String(res.headers['retry-after'])} s: until it half-opens`)
  t.notMatch(res.body.toString(), /127\.0\.0\.1|ECONN/, 'no address or errno in the answer')
  t.equal(sick.requests.length, seen, 'the upstream saw nothing while open')
})

t.test('hash:header: one user, one target; the header absent, the client IP decides', async (t) => {
  const a = await startUpstream(t, json('a'))
  const b = await startUpstream(t, json('b'))
  const c = await startUpstream(t, json('c'))
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'h', prefix: '/h', upstream: [a.origin, b.origin, c.origin], balance: 'hash:header:X-User' }]
  })
  const owner = new Map<string, string>()
  for (let round = 0; round < 3; round++) {
    for (let u = 0; u < 30; u++) {
      const name = (JSON.parse((await call(`${url}/h/x`, { headers: { 'x-user': `u${u}` } })).body.toString()) as { name: string }).name
      if (round === 0) owner.set(`u${u}`, name)
      else if (owner.get(`u${u}`) !== name) t.fail(`u${u} moved from ${owner.get(`u${u}`)} to ${name}`)
    }
  }
  t.equal(new Set(owner.values()).size, 3, '30 users spread over the three targets, each stayed on its own')
  const anonymous = new Set<string>()
  for (let i = 0; i < 10; i++) anonymous.add((JSON.parse((await call(`${url}/h/x`)).body.toString()) as { name: string }).name)
  t.equal(anonymous.size, 1, 'without the header, one client (one IP) stays on one target')
})

t.test('the config refuses what cannot work, in words', async (t) => {
  const refused = (raw: Record<string, unknown>): string => {
    try { parseConfig(raw); return 'accepted' } catch (err) { return err instanceof ConfigError ? err.message : `not a ConfigError: ${String(err)}` }
  }
  const route = { name: 'r', prefix: '/r' }
  t.match(refused({ routes: [{ ...route, upstream: ['http://127.0.0.1:1/a', { url: 'http://127.0.0.1:1/a', weight: 2 }] }] }), /listed twice/, 'a target listed twice')
  t.match(refused({ routes: [{ ...route, upstream: ['http://127.0.0.1:1/a', 'http://127.0.0.1:2/b'] }] }), /same path/, 'targets with different paths')
  t.match(refused({ routes: [{ ...route, upstream: [{ url: 'http://127.0.0.1:1', weight: 0 }] }] }), /routes\[0\]\.upstream/, 'weight 0')
  t.match(refused({ routes: [{ ...route, upstream: [{ url: 'ftp://x' }] }] }), /routes\[0\]\.upstream\[0\]\.url/, 'a bad URL inside { url } is named with its path')
  t.match(refused({ routes: [{ ...route, upstream: 'http://127.0.0.1:1', balance: 'random' }] }), /must be round-robin, least-requests, hash:ip or hash:header/, 'an unknown balance, in words')
  t.match(refused({ routes: [{ ...route, upstream: 'http://127.0.0.1:1', healthCheck: { interval: '1s', timeout: '1s' } }] }), /healthCheck\.timeout: must be shorter/, 'a check that cannot finish before the next')
  t.match(refused({ server: { readiness: ['nope'] }, routes: [{ ...route, upstream: 'http://127.0.0.1:1' }] }), /server\.readiness\[0\]: "nope" is not the name of a route/, 'readiness names a route that does not exist')
  t.match(refused({ routes: [{ ...route, upstream: 'http://127.0.0.1:1', retryOn: ['500'] }] }), /routes\[0\]\.retryOn/, 'a status retryOn does not offer')
  t.equal(refused({ routes: [{ ...route, upstream: [{ url: 'http://127.0.0.1:1/a', weight: 3 }, 'http://127.0.0.1:2/a'], balance: 'least-requests', circuitBreaker: false, outlierDetection: false, retryBudget: false }] }), 'accepted', 'weights, least-requests, everything off: fine')
})

t.test('tryTimeout: a target that never answers is given up on after its try, and retried elsewhere when retryOn names timeout', async (t) => {
  const hung = await startUpstream(t, () => { /* never answers */ })
  const well = await startUpstream(t, json('well'))
  const route = { upstream: [hung.origin, well.origin], tryTimeout: '200ms', timeout: '20s', outlierDetection: false, circuitBreaker: false }
  const { url } = await startTestGateway(t, {
    routes: [
      { ...route, name: 'retried', prefix: '/retried', retryOn: ['connect-failure', 'reset', 'timeout'] },
      { ...route, name: 'plain', prefix: '/plain', retries: 0 }
    ]
  })
  const retried = []
  for (let i = 0; i < 6; i++) retried.push((await call(`${url}/retried/x`)).status)
  t.same(retried, Array(6).fill(200), 'retryOn timeout: every GET answered by the other target')
  const plain = []
  for (let i = 0; i < 6; i++) plain.push((await call(`${url}/plain/x`)).status)
  t.same(plain.sort(), [...Array(3).fill(200), ...Array(3).fill(504)], 'no retry: the tries on the silent target end in 504 (long before the route\'s 20 s timeout)')
  t.equal(hung.requests.length, 6, 'the silent target got its share of first tries, nothing more')
})

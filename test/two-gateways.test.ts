/**
 * Two gateways built in one process share nothing: each has its own users, its own rate-limit
 * counters (same route name and prefix), its own validation schemas (same route name) and its
 * own metrics. Both listen on 127.0.0.1:0 in front of real upstreams; every request goes over
 * real HTTP. Gateway B is built while A is running, and A is used again after B exists.
 */
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { call, startUpstream, type CallResult, type T } from './helper.js'
import { basic, cheapHash } from './auth-helper.js'
import { authSchemes, schemesOf, type SharedSchemes } from '../plugins/auth/authenticate.js'

interface Built { app: FastifyInstance, url: string }

async function start (t: T, raw: Record<string, unknown>): Promise<Built> {
  const app = await buildGateway(parseConfig({ logging: { level: 'silent' }, ...raw }))
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, url }
}

/** One gateway: user `user`, the `people` route limited to `max` a minute, its body schema `body`. */
function config (upstream: string, user: { username: string, password: string }, max: number, body: Record<string, unknown>): Record<string, unknown> {
  return {
    users: [{ username: user.username, passwordHash: cheapHash(user.password) }],
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${upstream}/api/people`, rateLimit: { max, window: '1m', by: 'ip' } },
      { name: 'private', prefix: '/api/private', upstream: `${upstream}/api/private`, auth: ['basic'] },
      { name: 'orders', prefix: '/api/orders', upstream: `${upstream}/api/orders`, validate: { rules: [{ method: 'POST', path: '/', body }] } }
    ]
  }
}

const NUMBERED = { type: 'object', required: ['id'], properties: { id: { type: 'integer' } } }
const NAMED = { type: 'object', required: ['id'], properties: { id: { type: 'string' } } }

const get = async (url: string, headers: Record<string, string> = {}): Promise<number> => (await call(url, { headers })).status
const post = async (url: string, body: string): Promise<number> =>
  (await call(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body })).status

/** `portcullis_requests_total` by route and status class, from a /metrics answer. */
function requestCounts (res: CallResult): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const m of res.body.toString('utf8').matchAll(/^portcullis_requests_total\{route="([^"]+)",method="[A-Z]+",status_class="([^"]+)"\} ([0-9]+)$/gm)) {
    const key = `${m[1]} ${m[2]}`
    counts[key] = (counts[key] ?? 0) + Number(m[3])
  }
  return counts
}

t.test('two gateways in one process: users, counters, schemas and metrics of their own', async (t) => {
  const upA = await startUpstream(t)
  const upB = await startUpstream(t)
  const a = await start(t, config(upA.origin, { username: 'alice', password: 'wonderland' }, 2, NUMBERED))
  t.equal(await get(`${a.url}/api/people/`), 200, 'A answers before B exists')
  const b = await start(t, config(upB.origin, { username: 'bob', password: 'builder' }, 5, NAMED))

  // Users: alice is A's user only, bob B's only.
  const alice = { authorization: basic('alice', 'wonderland') }
  const bob = { authorization: basic('bob', 'builder') }
  t.equal(await get(`${a.url}/api/private/`, alice), 200, 'alice on A')
  t.equal(await get(`${b.url}/api/private/`, alice), 401, 'alice on B: unknown there')
  t.equal(await get(`${b.url}/api/private/`, bob), 200, 'bob on B')
  t.equal(await get(`${a.url}/api/private/`, bob), 401, 'bob on A: unknown there')

  // Rate limits: the same route name, prefix and client IP; A allows 2 a minute, B 5.
  t.same([await get(`${a.url}/api/people/`), await get(`${a.url}/api/people/`)], [200, 429], 'A: its second request was its 2nd of 2, the next is refused')
  const onB: number[] = []
  for (let i = 0; i < 6; i++) onB.push(await get(`${b.url}/api/people/`))
  t.same(onB, [200, 200, 200, 200, 200, 429], 'B counts from zero, to its own max of 5')
  t.equal(await get(`${a.url}/api/people/`), 429, 'A is still spent')

  // Validation: the same route name, different schemas.
  t.equal(await post(`${a.url}/api/orders/`, '{"id":7}'), 200, 'A: an integer id is valid')
  t.equal(await post(`${b.url}/api/orders/`, '{"id":7}'), 400, 'B: the same body is refused (a string id)')
  t.equal(await post(`${b.url}/api/orders/`, '{"id":"7"}'), 200, 'B: a string id is valid')
  t.equal(await post(`${a.url}/api/orders/`, '{"id":"7"}'), 400, 'A: a string id is refused')

  t.equal(upA.requests.length, 4, 'A\'s upstream saw A\'s 4 passed requests')
  t.equal(upB.requests.length, 7, 'B\'s upstream saw B\'s 7 passed requests')

  // Metrics: each gateway counts its own requests only.
  const metricsA = await call(`${a.url}/metrics`)
  const metricsB = await call(`${b.url}/metrics`)
  t.same(requestCounts(metricsA), { 'people 2xx': 2, 'people 4xx': 2, 'private 2xx': 1, 'private 4xx': 1, 'orders 2xx': 1, 'orders 4xx': 1 }, 'A\'s /metrics')
  t.same(requestCounts(metricsB), { 'people 2xx': 5, 'people 4xx': 1, 'private 2xx': 1, 'private 4xx': 1, 'orders 2xx': 1, 'orders 4xx': 1 }, 'B\'s /metrics')
  // Known: the event counters come from process-wide diagnostics channels whose messages do not
  // say which gateway published them, so each gateway also counts the other's (A shows 3, 2, 2).
  t.match(metricsA.body.toString(), /^portcullis_rate_limited_total\{route="people",by="ip"\} 2$/m, 'A: its own 2 refusals (events name their request, so B\'s are not counted)')
  t.match(metricsA.body.toString(), /^portcullis_auth_failures_total\{route="private",scheme="basic",reason="invalid"\} 1$/m, 'A: its own failed login')
  t.match(metricsA.body.toString(), /^portcullis_validation_failures_total\{route="orders",part="body"\} 1$/m, 'A: its own refused body')

  // Closing one leaves the other whole.
  await a.app.close()
  t.equal(await get(`${b.url}/api/private/`, bob), 200, 'B still answers after A closed')
  t.equal(await post(`${b.url}/api/orders/`, '{"id":"8"}'), 200)
})

t.test('authSchemes: one set per gateway root, seen by every scope under it, even from one config object', async (t) => {
  const config = parseConfig({ users: [{ username: 'alice', passwordHash: cheapHash('wonderland') }], routes: [{ name: 'r', prefix: '/r', upstream: 'http://127.0.0.1:9' }] })
  const seen: SharedSchemes[] = []
  for (let i = 0; i < 2; i++) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(authSchemes, { config })
    for (let route = 0; route < 2; route++) {
      await app.register(async function routeScope (scope) { seen.push(schemesOf(scope, config)) })
    }
    await app.ready()
  }
  t.equal(seen[0], seen[1], 'the two scopes of the first gateway share its schemes')
  t.equal(seen[2], seen[3], 'and so do those of the second')
  t.not(seen[0], seen[2], 'the gateways do not share them, though built from the same config object')
  t.not(seen[0].basic, seen[2].basic, 'nor the user table')
  const bare = Fastify()
  t.teardown(() => bare.close())
  t.not(schemesOf(bare, config), schemesOf(bare, config), 'without authSchemes on the root a scope builds its own')
})

/**
 * The docker-compose stack without Docker: deploy/compose/gateway.yaml, exactly as mounted in the
 * gateway container, run against the real DRF example and a real redis-server on loopback (the
 * addresses compose would give them replaced by the environment variables the file reads).
 */
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { call, requireCommand, startDrf, startRedis, type CallOptions } from './helper.js'

const ROOT = new URL('..', import.meta.url).pathname

async function req (url: string, options: CallOptions = {}): Promise<{ status: number, json: any }> {
  const res = await call(url, options)
  return { status: res.status, json: res.json }
}

const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as { services: { drf: { environment: Record<string, string> } } }
// DRF's environment as compose sets it (its issuer), with the test's own key and users.
const drf = await startDrf(t, {
  users: [{ username: 'carol', password: 'carol-pw-1', scopes: ['people:read', 'people:write'] }],
  env: { DRF_JWT_ISSUER: compose.services.drf.environment.DRF_JWT_ISSUER ?? '' }
})
if (drf !== null && requireCommand(t, 'redis-server', 'apt-get install redis-server')) {
  const redis = await startRedis(t)
  const raw = parse(readFileSync(join(ROOT, 'deploy/compose/gateway.yaml'), 'utf8')) as Record<string, unknown>
  const config = parseConfig({ ...raw, logging: { level: 'silent' } }, {
    // What docker-compose.yml passes (from .env), with loopback addresses for drf and redis.
    env: { JWT_SECRET: drf.signingKey, ALICE_PASSWORD: 'alice-pw-1', BOB_PASSWORD: 'bob-pw-1', REDIS_URL: redis.url, DRF_URL: drf.origin },
    // In the container, examples/drf/openapi.yaml is mounted next to the config.
    baseDir: join(ROOT, 'examples/drf')
  })
  const app = await buildGateway(config)
  t.teardown(() => app.close())
  const gw = await app.listen({ host: '127.0.0.1', port: 0 })
  const json = { 'content-type': 'application/json' }

  t.test('the README\'s docker compose walk-through works', async (t) => {
    const issued = await req(`${gw}/auth/token`, { method: 'POST', headers: json, body: JSON.stringify({ username: 'alice', password: 'alice-pw-1' }) })
    t.equal(issued.status, 200, 'alice gets a gateway token')
    t.match(issued.json, { token_type: 'Bearer', expires_in: 900 })
    const alice = { authorization: `Bearer ${String(issued.json.access_token)}` }
    // The key is shared with DRF, but DRF checks its own issuer: the gateway's token is not DRF's.
    const verified = await req(`${drf.origin}/api/token/verify/`, { method: 'POST', headers: json, body: JSON.stringify({ token: issued.json.access_token }) })
    t.equal(verified.status, 401, 'DRF refuses the gateway\'s token (iss portcullis, not DRF_JWT_ISSUER)')

    const bob = await req(`${gw}/api/whoami/`, { headers: { authorization: `Basic ${Buffer.from('bob:bob-pw-1').toString('base64')}` } })
    t.match(bob, { status: 200, json: { username: 'bob', scopes: ['people:read'], via: 'basic' } }, 'bob over Basic, as DRF sees him')

    const pair = await req(`${gw}/api/token/`, { method: 'POST', headers: json, body: JSON.stringify({ username: 'carol', password: 'carol-pw-1' }) })
    t.equal(pair.status, 200, 'carol gets a simplejwt pair from DRF through the gateway')
    const carol = { authorization: `Bearer ${String(pair.json.access)}` }
    t.equal((await req(`${gw}/api/people/`, { headers: carol })).status, 200, 'DRF\'s access token is accepted')
    t.equal((await req(`${gw}/api/people/`, { headers: { authorization: `Bearer ${String(pair.json.refresh)}` } })).status, 401, 'its refresh token is not')

    const created = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, ...alice }, body: JSON.stringify({ name: 'Ada', age: 36 }) })
    t.match(created, { status: 201, json: { name: 'Ada', age: 36 } })
    const id = String(created.json.id)
    const extra = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, ...alice }, body: JSON.stringify({ name: 'Ada', age: 36, admin: true }) })
    t.match(extra, { status: 400, json: { errors: [{ pointer: '/admin' }] } }, 'the strict create rule refuses extra fields')
    const put = await req(`${gw}/api/people/${id}/`, { method: 'PUT', headers: { ...json, ...carol }, body: JSON.stringify({ name: 'Ada', age: '37' }) })
    t.match(put, { status: 400, json: { errors: [{ pointer: '/age' }] } }, 'the strict replace rule: no coercion')
    t.equal((await req(`${gw}/api/people/?page=two`, { headers: carol })).status, 400, 'DRF\'s OpenAPI document validates the query')
    t.equal((await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, authorization: `Basic ${Buffer.from('bob:bob-pw-1').toString('base64')}` }, body: JSON.stringify({ name: 'B', age: 1 }) })).status, 403, 'bob may not write')
    const limited = await call(`${gw}/api/people/`, { headers: carol })
    t.match(String(limited.headers.ratelimit), /^"people";r=[0-9]+;t=[0-9]+$/, 'limited per consumer, counted in Redis')
    t.equal((await req(`${gw}/readyz`)).status, 200, 'ready (Redis reachable)')
  })
}

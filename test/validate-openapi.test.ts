/**
 * OpenAPI import: the operations of a 3.0 / 3.1 document validate matching requests (params,
 * query, headers, JSON body, local $refs), against a recording upstream; then against the schema
 * the DRF example generates (examples/drf/openapi.yaml), with a recording upstream and with the
 * real DRF app under gunicorn.
 */
import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { call, startDrf, startTestGateway, startUpstream, type CallResult, type Upstream } from './helper.js'

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url))
const DRF_OPENAPI = fileURLToPath(new URL('../examples/drf/openapi.yaml', import.meta.url))

interface Problem { status: number, type: string, errors?: Array<{ pointer: string, message: string }> }

function send (url: string, method: string, body?: string, headers: Record<string, string> = body === undefined ? {} : { 'content-type': 'application/json' }): Promise<CallResult> {
  return call(url, { method, headers, body })
}

function violations (res: CallResult): string[] {
  return ((res.json as Problem).errors ?? []).map((e) => `${e.pointer} ${e.message}`).sort()
}

async function shop (t: Test, up: Upstream, extra: Record<string, unknown> = {}): Promise<string> {
  const { url } = await startTestGateway(t, {
    routes: [{ name: 'shop', prefix: '/shop', upstream: `${up.origin}/v1`, validate: { openapi: `${FIXTURES}openapi-3.1.yaml`, ...extra } }]
  })
  return url
}

t.test('OpenAPI 3.1: JSON bodies through $refs, under the document\'s server path', async (t) => {
  const up = await startUpstream(t)
  const gw = await shop(t, up)
  const valid = '{ "items": [ { "sku": "A-1", "qty": 2 } ], "coupon": null }'
  const ok = await send(`${gw}/shop/orders`, 'POST', valid)
  t.equal(ok.status, 200)
  t.equal(up.requests[0].url, '/v1/orders')
  t.equal(up.requests[0].body.toString(), JSON.stringify(JSON.parse(valid)), 'the validated JSON, re-serialized')

  const bad = await send(`${gw}/shop/orders`, 'POST', '{"items":[{"sku":"A-1","qty":0},{"qty":"1"}],"extra":1}')
  t.equal(bad.status, 400)
  t.same(violations(bad), ['/extra is not allowed', '/items/0/qty must be >= 1', '/items/1/qty must be integer', '/items/1/sku is required'])
  t.equal((await send(`${gw}/shop/orders`, 'POST', '{"items":[]}')).status, 400, 'minItems')
  t.equal((await send(`${gw}/shop/orders`, 'POST')).status, 415, 'a required body that is missing: no JSON content type')
  t.equal((await send(`${gw}/shop/orders`, 'POST', 'items=1', { 'content-type': 'application/x-www-form-urlencoded' })).status, 415)
  t.equal(up.requests.length, 1, 'only the valid request arrived')
})

t.test('OpenAPI 3.1: path, query and header parameters (path-level and $ref\'d), literal paths first', async (t) => {
  const up = await startUpstream(t)
  const gw = await shop(t, up)
  const tenant = { 'x-tenant': 'acme' }
  t.equal((await call(`${gw}/shop/orders?status=open&limit=5`)).status, 200)
  t.equal(up.requests.at(-1)?.url, '/v1/orders?status=open&limit=5', 'the query string as sent')
  const q = await call(`${gw}/shop/orders?status=lost&limit=0`)
  t.same(violations(q), ['/querystring/limit must be >= 1', '/querystring/status must be equal to one of the allowed values'])

  t.equal((await call(`${gw}/shop/orders/7`, { headers: tenant })).status, 200)
  t.same(violations(await call(`${gw}/shop/orders/abc`, { headers: tenant })), ['/params/orderId must be integer'])
  t.same(violations(await call(`${gw}/shop/orders/99999999999`, { headers: tenant })), ['/params/orderId must match format "int32"'])
  t.same(violations(await call(`${gw}/shop/orders/7`)), ['/headers/x-tenant is required'])
  t.equal((await call(`${gw}/shop/orders/latest`)).status, 200, '/orders/latest is its own operation, not /orders/{orderId}')

  const patch = (body: string): Promise<CallResult> => send(`${gw}/shop/orders/7`, 'PATCH', body, { 'content-type': 'application/merge-patch+json' })
  t.equal((await patch('{"note":null}')).status, 200, 'a +json media type, and a 3.1 null type')
  t.same(violations(await patch('{"note":5}')), ['/note must be null,string'.replace('null,string', 'string,null')])
  t.same(violations(await send(`${gw}/shop/orders/x`, 'PATCH', '{"note":"x"}')), ['/params/orderId must be integer'], 'params are checked before the body is read')

  const multipart = await call(`${gw}/shop/uploads`, { method: 'POST', headers: { 'content-type': 'multipart/form-data; boundary=b' }, body: '--b--\r\n' })
  t.equal(multipart.status, 200, 'an operation with no JSON body is not body-validated')
  t.equal(up.requests.at(-1)?.body.toString(), '--b--\r\n', 'and its body streams untouched')
})

t.test('OpenAPI: requests matching no operation pass, or are refused with 404 (unmatched: reject)', async (t) => {
  const up = await startUpstream(t)
  const pass = await shop(t, up)
  t.equal((await call(`${pass}/shop/orders/7`, { method: 'DELETE' })).status, 200, 'no DELETE operation: passed')
  t.equal((await call(`${pass}/shop/elsewhere`)).status, 200)
  const before = up.requests.length
  const strict = await shop(t, up, { unmatched: 'reject' })
  const res = await call(`${strict}/shop/orders/7`, { method: 'DELETE' })
  t.equal(res.status, 404)
  t.equal((res.json as Problem).type, 'urn:portcullis:problem:not-found')
  t.equal((await call(`${strict}/shop/elsewhere`)).status, 404)
  t.equal((await call(`${strict}/shop/orders/7`, { headers: { 'x-tenant': 'a' } })).status, 200)
  t.equal((await call(`${strict}/shop/orders/7`, { method: 'HEAD', headers: { 'x-tenant': 'a' } })).status, 200, 'HEAD follows the GET operation')
  t.equal((await call(`${strict}/shop/orders/7`, { method: 'HEAD' })).status, 400, 'with its parameters')
  t.equal(up.requests.length, before + 2)
})

t.test('OpenAPI 3.0: nullable and boolean exclusiveMinimum are read as 3.0 means them', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'legacy', prefix: '/legacy', upstream: `${up.origin}/legacy`, validate: { openapi: `${FIXTURES}openapi-3.0.json` } }]
  })
  const url = `${gw}/legacy/things/`
  t.equal((await send(url, 'POST', '{"label":null,"price":1,"kind":null,"nullable":true,"owner":null}')).status, 200)
  t.equal((await send(url, 'POST', '{"label":"x","price":0.5,"kind":"a","owner":{"id":7}}')).status, 200)
  t.same(violations(await send(url, 'POST', '{"label":"x","price":0}')), ['/price must be > 0'])
  t.ok(violations(await send(url, 'POST', '{"label":"x","price":1,"kind":"c"}')).includes('/kind must be equal to one of the allowed values'))
  t.ok(violations(await send(url, 'POST', '{"label":"x","price":1,"owner":{}}')).includes('/owner/id is required'))
  t.same(violations(await send(url, 'POST', '{"label":"x","price":1,"nullable":"yes"}')), ['/nullable must be boolean'], 'a property named "nullable" is a property')
  t.equal(up.requests.length, 2)
})

t.test('OpenAPI documents fetched from a URL at start, and documents refused at start', async (t) => {
  const text = readFileSync(`${FIXTURES}openapi-3.1.yaml`, 'utf8')
  const docs = await startUpstream(t, (req, res) => {
    if (req.url === '/openapi.yaml') { res.writeHead(200, { 'content-type': 'application/yaml' }); res.end(text) } else { res.writeHead(404); res.end() }
  })
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'shop', prefix: '/shop', upstream: `${up.origin}/v1`, validate: { openapi: `${docs.origin}/openapi.yaml` } }]
  })
  t.equal((await send(`${gw}/shop/orders`, 'POST', '{"items":[]}')).status, 400, 'the fetched document validates')
  t.equal(docs.requests.length, 1, 'fetched once, at start')

  async function startError (openapi: string): Promise<string> {
    try {
      const app = await buildGateway(parseConfig({ logging: { level: 'silent' }, routes: [{ name: 'shop', prefix: '/shop', upstream: up.origin, validate: { openapi } }] }))
      await app.close()
    } catch (err) {
      return (err as Error).message
    }
    return 'no error'
  }
  t.match(await startError(`${docs.origin}/missing.yaml`), /routes\[0\]\.validate\.openapi: cannot fetch http:\/\/127\.0\.0\.1:\d+\/missing\.yaml: HTTP 404/)
  t.match(await startError(`${FIXTURES}schemas.ts`), /routes\[0\]\.validate\.openapi: .*not (valid YAML|an OpenAPI document)|only OpenAPI 3\.0 and 3\.1/)
  const swagger = `${FIXTURES}swagger-2.0.json`
  t.match(await startError(swagger), /routes\[0\]\.validate\.openapi: only OpenAPI 3\.0 and 3\.1 documents are supported \(this one says openapi: "2\.0"\)/)
  const broken = `${FIXTURES}openapi-bad-ref.yaml`
  t.match(await startError(broken), /routes\[0\]\.validate\.openapi: POST \/x body: invalid schema: can't resolve reference/)
})

t.test('the schema DRF generates (examples/drf/openapi.yaml): a valid create passes, an invalid one is refused with pointers', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, validate: { openapi: DRF_OPENAPI } }]
  })
  const created = await send(`${gw}/api/people/`, 'POST', '{"name": "Ada Lovelace", "age": 36}')
  t.equal(created.status, 200)
  t.equal(up.requests[0].body.toString(), '{"name":"Ada Lovelace","age":36}')
  const invalid = await send(`${gw}/api/people/`, 'POST', '{"age":"36","nickname":"x"}')
  t.equal(invalid.status, 400)
  t.same(violations(invalid), ['/age must be integer', '/name is required'])
  t.same(violations(await send(`${gw}/api/people/`, 'POST', '{"name":"","age":151}')), ['/age must be <= 150', '/name must NOT have fewer than 1 characters'])
  t.equal((await send(`${gw}/api/people/`, 'POST', 'name=Ada&age=36', { 'content-type': 'application/x-www-form-urlencoded' })).status, 415, 'DRF would parse a form; the gateway takes JSON only')
  t.same(violations(await call(`${gw}/api/people/?page=two`)), ['/querystring/page must be integer'])
  t.equal((await send(`${gw}/api/people/7/`, 'PUT', '{"name":"Ada","age":37}')).status, 200)
  t.equal(up.requests.length, 2)
})

t.test('the real DRF app behind an OpenAPI-validated route', async (t) => {
  const drf = await startDrf(t, { users: [{ username: 'alice', password: 'alice-pw-1', scopes: ['people:read', 'people:write'] }] })
  if (drf === null) return
  const { url: gw } = await startTestGateway(t, {
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${drf.origin}/api/people`, validate: { openapi: DRF_OPENAPI } },
      { name: 'drf-token', prefix: '/api/token', upstream: `${drf.origin}/api/token`, validate: { openapi: DRF_OPENAPI } }
    ]
  })
  t.same(violations(await send(`${gw}/api/token/`, 'POST', '{"username":"alice"}')), ['/password is required'], 'the token endpoint\'s schema applies too')
  const token = await send(`${gw}/api/token/`, 'POST', JSON.stringify({ username: 'alice', password: 'alice-pw-1' }))
  t.equal(token.status, 200)
  const auth = { authorization: `Bearer ${(token.json as { access: string }).access}`, 'content-type': 'application/json' }
  const count = async (): Promise<number> => ((await call(`${gw}/api/people/`, { headers: auth })).json as { count: number }).count
  const before = await count()
  const created = await send(`${gw}/api/people/`, 'POST', '{"name":"Grace Hopper","age":85}', auth)
  t.equal(created.status, 201, 'DRF created it')
  t.match(created.json, { id: Number, name: 'Grace Hopper', age: 85 })
  const refused = await send(`${gw}/api/people/`, 'POST', '{"name":"Grace Hopper","age":"85"}', auth)
  t.equal(refused.status, 400)
  t.equal((refused.json as Problem).type, 'urn:portcullis:problem:validation', 'refused by the gateway, not DRF')
  t.same(violations(refused), ['/age must be integer'])
  t.equal(await count(), before + 1, 'DRF saw only the valid create')
})

/**
 * A user's own plugins and `request.identity`: the example authorization plugin
 * (examples/plugins/tenant-guard.ts) on a protected route, and a plugin that authenticates by
 * itself on a route without `auth`, whose identity the gateway still forwards.
 */
import t, { type Test } from 'tap'
import { join } from 'node:path'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import type { AddressInfo } from 'node:net'
import { startUpstream } from './helper.js'
import { gatewayFrom, hsToken, SECRET } from './auth-helper.js'

const EXAMPLE = join(import.meta.dirname, '..', 'examples', 'plugins', 'tenant-guard.ts')

/** A route plugin file `name` with the given hook body, in a temp folder removed after the test. */
function writePlugin (t: Test, name: string, hook: 'onRequest' | 'preHandler', body: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-plugin-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const plugin = join(dir, `${name}.mjs`)
  writeFileSync(plugin, `
export default Object.assign(async function ${name.replace(/-/g, '')} (scope) {
  scope.addHook('${hook}', async (request) => {
${body}
  })
}, { [Symbol.for('skip-override')]: true })
`)
  return plugin
}

t.test('the tenant-guard example reads request.identity after the gateway authenticated', async (t) => {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    jwt: { algorithms: ['HS256'], secret: SECRET },
    routes: [{
      name: 'people',
      prefix: '/api/people',
      upstream: `${upstream.origin}/api/people`,
      auth: ['jwt'],
      plugins: [{ path: EXAMPLE, options: { header: 'x-tenant', claim: 'tenants' } }]
    }]
  })
  const token = hsToken({ sub: 'alice', tenants: ['acme', 'globex'] })
  const ok = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${token}`, 'x-tenant': 'acme' } })
  t.equal(ok.statusCode, 200)
  t.match(upstream.requests[0].headers, { 'x-checked-tenant': 'acme', 'x-authenticated-user': 'alice' })
  const other = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${token}`, 'x-tenant': 'initech' } })
  t.equal(other.statusCode, 403)
  t.equal(other.json().detail, 'Not a member of tenant initech.')
  const anonymous = await app.inject({ url: '/api/people/', headers: { 'x-tenant': 'acme' } })
  t.equal(anonymous.statusCode, 401, 'the gateway refuses before the plugin runs')
  t.equal(upstream.requests.length, 1)
})

t.test('a plugin that authenticates by itself: its identity is forwarded, spoofed copies are not', async (t) => {
  const plugin = writePlugin(t, 'hmac-auth', 'onRequest', `
    if (request.headers['x-partner'] === 'trusted-partner') {
      request.identity = { subject: 'partner-7', scopes: ['people:read'], scheme: 'partner', claims: {} }
    }`)
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    routes: [{ name: 'partner', prefix: '/partner', upstream: `${upstream.origin}/partner`, plugins: [plugin] }]
  })
  await app.inject({ url: '/partner/x', headers: { 'x-partner': 'trusted-partner', 'x-authenticated-user': 'admin' } })
  t.match(upstream.requests[0].headers, { 'x-authenticated-user': 'partner-7', 'x-authenticated-scopes': 'people:read', 'x-authenticated-via': 'partner' })
  await app.inject({ url: '/partner/x', headers: { 'x-authenticated-user': 'admin' } })
  t.equal(upstream.requests[1].headers['x-authenticated-user'], undefined, 'without the plugin\'s identity, nothing')
})

t.test('an identity set as late as preHandler is forwarded, request by request (the forwarder asks at dispatch)', async (t) => {
  // Not frozen, so never remembered: each request's identity is its own.
  const plugin = writePlugin(t, 'late-auth', 'preHandler', `
    const who = request.headers['x-partner-name']
    if (typeof who === 'string') request.identity = { subject: decodeURIComponent(who), scopes: ['a', 'b'], scheme: 'late', claims: {} }`)
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    routes: [{ name: 'partner', prefix: '/partner', upstream: `${upstream.origin}/partner`, plugins: [plugin] }]
  })
  for (const name of ['ann', 'jürgen', 'ann']) {
    const res = await app.inject({ method: 'POST', url: '/partner/x', headers: { 'x-partner-name': encodeURIComponent(name), 'x-authenticated-via': 'spoofed' }, payload: { n: 1 } })
    t.equal(res.statusCode, 200)
  }
  t.same(upstream.requests.map((r) => [r.headers['x-authenticated-user'], r.headers['x-authenticated-scopes'], r.headers['x-authenticated-via']]),
    [['ann', 'a b', 'late'], ['j%C3%BCrgen', 'a b', 'late'], ['ann', 'a b', 'late']])
  t.same(upstream.requests.map((r) => r.body.toString()), ['{"n":1}', '{"n":1}', '{"n":1}'], 'the body still reaches the upstream')
  await app.inject({ url: '/partner/x' })
  t.equal(upstream.requests[3].headers['x-authenticated-user'], undefined, 'no identity, no identity headers')
})

t.test('a malformed identity from a plugin is a 500 problem, never a crash, on a buffered body too', async (t) => {
  const plugin = writePlugin(t, 'broken-auth', 'preHandler', `
    request.identity = { subject: 'x', scheme: 'broken', claims: {} } // no scopes`)
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    routes: [{ name: 'partner', prefix: '/partner', upstream: `${upstream.origin}/partner`, plugins: [plugin] }]
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  // Over a real socket: the buffered body is read from the stream, and the dispatch after it runs
  // in the stream's 'end' event, not in the route handler.
  for (const init of [{ method: 'GET' }, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":1}' }]) {
    const res = await fetch(`${url}/partner/x`, init)
    t.equal(res.status, 500, `${init.method}: 500`)
    t.match(res.headers.get('content-type'), /^application\/problem\+json/)
    const text = await res.text()
    t.notMatch(text, /join|TypeError|Cannot read/, `${init.method}: no internal detail`)
  }
  t.equal(upstream.requests.length, 0, 'nothing reached the upstream')
  t.equal((await fetch(`${url}/healthz`)).status, 200, 'the gateway still serves')
})

/**
 * A user's own plugins and `request.identity`: the example authorization plugin
 * (examples/plugins/tenant-guard.ts) on a protected route, and a plugin that authenticates by
 * itself on a route without `auth`, whose identity the gateway still forwards.
 */
import t from 'tap'
import { join } from 'node:path'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { startUpstream } from './helper.js'
import { gatewayFrom, hsToken, SECRET } from './auth-helper.js'

const EXAMPLE = join(import.meta.dirname, '..', 'examples', 'plugins', 'tenant-guard.ts')

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
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-plugin-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const plugin = join(dir, 'hmac-auth.mjs')
  writeFileSync(plugin, `
export default Object.assign(async function hmacAuth (scope) {
  scope.addHook('onRequest', async (request) => {
    if (request.headers['x-partner'] === 'trusted-partner') {
      request.identity = { subject: 'partner-7', scopes: ['people:read'], scheme: 'partner', claims: {} }
    }
  })
}, { [Symbol.for('skip-override')]: true })
`)
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    routes: [{ name: 'partner', prefix: '/partner', upstream: `${upstream.origin}/partner`, plugins: [plugin] }]
  })
  await app.inject({ url: '/partner/x', headers: { 'x-partner': 'trusted-partner', 'x-authenticated-user': 'admin' } })
  t.match(upstream.requests[0].headers, { 'x-authenticated-user': 'partner-7', 'x-authenticated-scopes': 'people:read', 'x-authenticated-via': 'partner' })
  await app.inject({ url: '/partner/x', headers: { 'x-authenticated-user': 'admin' } })
  t.equal(upstream.requests[1].headers['x-authenticated-user'], undefined, 'without the plugin\'s identity, nothing')
})

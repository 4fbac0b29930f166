/**
 * The pipeline list (src/pipeline.ts) is the one place stages are wired: every stage a concern
 * exports is listed once, in an order a request can be seen to follow over real HTTP; your own
 * plugins run where they are placed (beforeAuth / afterAuth) and see refused requests.
 */
import t from 'tap'
import { readdirSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'
import { GATEWAY_STAGES, ROUTE_STAGES } from '../src/pipeline.js'
import { mergePolicy } from '../plugins/core/stage.js'
import { call, startUpstream } from './helper.js'
import { basic, cheapHash } from './auth-helper.js'

const PLUGINS = join(import.meta.dirname, '..', 'plugins')

t.test('every stage a concern exports is in the pipeline list exactly once', async (t) => {
  const listed = [...GATEWAY_STAGES, ...ROUTE_STAGES]
  const exported: unknown[] = []
  const folders = readdirSync(PLUGINS, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)
  t.ok(folders.length >= 8, 'one folder per concern')
  for (const folder of folders) {
    t.ok(existsSync(join(PLUGINS, folder, 'index.ts')), `plugins/${folder}/index.ts exports the concern's stages`)
    const mod = await import(`../plugins/${folder}/index.js`) as Record<string, unknown>
    for (const value of Object.values(mod)) {
      if (typeof value === 'object' && value !== null && 'setup' in value && 'phase' in value) exported.push(value)
    }
  }
  t.equal(exported.length, listed.length, 'as many stages exported as listed')
  for (const stage of exported) t.equal(listed.filter((s) => s === stage).length, 1, `${(stage as { name: string }).name}: listed once`)
  const names = listed.map((s) => s.name)
  t.same([...new Set(names)], names, 'stage names are unique')
})

t.test('the forwarding policy merges the contributions of the stages that are on', async (t) => {
  const trusted = (): boolean => true
  const policy = mergePolicy([
    { stripHeaders: ['a'], hideResponseHeaders: ['server'] },
    { stripHeaders: ['b'], bearerOnlyAuthorization: true, underscoreHeaders: 'allow' },
    { responseHeaders: [['x-frame-options', 'DENY']], trustBearing: { names: ['x-forwarded-for'], trusted } }
  ])
  t.same(policy.stripHeaders, ['a', 'b'])
  t.same(policy.hideResponseHeaders, ['server'])
  t.same(policy.responseHeaders, [['x-frame-options', 'DENY']])
  t.equal(policy.bearerOnlyAuthorization, true)
  t.equal(policy.underscoreHeaders, 'allow')
  t.equal(policy.trustBearing?.trusted, trusted)
  const none = mergePolicy([])
  t.equal(none.bearerOnlyAuthorization, false)
  t.equal(none.underscoreHeaders, 'drop', 'underscore names are dropped unless a stage allows them')
})

const users = [{ username: 'alice', passwordHash: cheapHash('wonderland'), scopes: ['people:read'] }]

interface Seen { at: string, url: string, status?: number, subject?: string | null }

/** A plugin that records what it sees, as a user would write one (plain, not fastify-plugin). */
function recorder (seen: Seen[], at: string) {
  return async function record (scope: FastifyInstance): Promise<void> {
    scope.addHook('onRequest', async (request: FastifyRequest) => {
      seen.push({ at, url: request.url, subject: request.identity?.subject ?? null })
    })
    scope.addHook('onResponse', async (request, reply) => { seen.push({ at: `${at}:done`, url: request.url, status: reply.statusCode }) })
  }
}

t.test('your plugins run where they are placed, and see the requests authentication refuses', async (t) => {
  const upstream = await startUpstream(t)
  const seen: Seen[] = []
  const config = parseConfig({
    logging: { level: 'silent' },
    users,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['basic'], scopes: { '*': ['people:read'] } }]
  })
  const app = await buildGateway(config, {
    plugins: [
      { plugin: recorder(seen, 'before'), at: 'beforeAuth' },
      { plugin: recorder(seen, 'after') }, // afterAuth by default
      // A guard placed before authentication can refuse what it likes, with the gateway's error contract.
      {
        plugin: async (scope: FastifyInstance) => {
          scope.addHook('onRequest', async (request) => {
            if (request.headers['x-tenant'] === 'blocked') throw Object.assign(new Error('tenant blocked'), { statusCode: 403 })
          })
        },
        at: 'beforeAuth',
        name: 'tenant-guard'
      }
    ]
  })
  // And one registered the plain Fastify way, after buildGateway: its onResponse sees everything.
  const late: Seen[] = []
  await app.register(fp(async (root) => { root.addHook('onResponse', async (request, reply) => { late.push({ at: 'late', url: request.url, status: reply.statusCode }) }) }))
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })

  const refused = await call(`${url}/api/people/1`)
  t.equal(refused.status, 401, 'no credentials: 401')
  t.same(seen.filter((s) => s.url === '/api/people/1'), [
    { at: 'before', url: '/api/people/1', subject: null },
    { at: 'before:done', url: '/api/people/1', status: 401 },
    { at: 'after:done', url: '/api/people/1', status: 401 }
  ], 'the beforeAuth plugin saw the refused request arrive; the afterAuth one only its answer')
  t.equal(upstream.requests.length, 0, 'the refused request never reached the upstream')

  const ok = await call(`${url}/api/people/2`, { headers: { authorization: basic('alice', 'wonderland') } })
  t.equal(ok.status, 200)
  t.same(seen.filter((s) => s.url === '/api/people/2' && !s.at.endsWith(':done')), [
    { at: 'before', url: '/api/people/2', subject: null },
    { at: 'after', url: '/api/people/2', subject: 'alice' }
  ], 'before authentication no identity; after it, the identity')

  const blocked = await call(`${url}/api/people/3`, { headers: { authorization: basic('alice', 'wonderland'), 'x-tenant': 'blocked' } })
  t.equal(blocked.status, 403, 'a beforeAuth plugin refused it')
  t.match(blocked.headers['content-type'], /^application\/problem\+json/, 'in the error contract')
  t.equal(upstream.requests.length, 1, 'only the accepted request reached the upstream')

  const offRoute = await call(`${url}/nowhere`)
  t.equal(offRoute.status, 404)
  t.same(late.map((s) => [s.url, s.status]), [['/api/people/1', 401], ['/api/people/2', 200], ['/api/people/3', 403], ['/nowhere', 404]],
    'a plugin registered on the returned instance observes every request, refused and unrouted ones included')
})

t.test('a config plugin placed beforeAuth runs before authentication', async (t) => {
  const upstream = await startUpstream(t)
  const dir = join(import.meta.dirname, 'fixtures')
  const plugin = join(dir, 'stamp-plugin.mjs')
  t.ok(existsSync(plugin), 'the fixture plugin exists')
  const config = parseConfig({
    logging: { level: 'silent' },
    users,
    routes: [{
      name: 'people',
      prefix: '/api/people',
      upstream: `${upstream.origin}/api/people`,
      auth: ['basic'],
      plugins: [{ path: plugin, at: 'beforeAuth', options: { header: 'x-before' } }, { path: plugin, options: { header: 'x-after' } }]
    }]
  })
  const app = await buildGateway(config)
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  const refused = await call(`${url}/api/people/`)
  t.equal(refused.status, 401)
  t.equal(refused.headers['x-before'], 'seen', 'the beforeAuth plugin ran on the refused request')
  t.equal(refused.headers['x-after'], undefined, 'the afterAuth plugin did not')
  const ok = await call(`${url}/api/people/`, { headers: { authorization: basic('alice', 'wonderland') } })
  t.equal(ok.status, 200)
  t.equal(ok.headers['x-before'], 'seen')
  t.equal(ok.headers['x-after'], 'seen')
})

t.test('the order a request meets the route stages, seen from outside', async (t) => {
  const upstream = await startUpstream(t)
  const config = parseConfig({
    logging: { level: 'silent' },
    users,
    routes: [{
      name: 'people',
      prefix: '/api/people',
      upstream: `${upstream.origin}/api/people`,
      auth: ['basic'],
      scopes: { '*': ['people:write'] },
      ipFilter: { deny: ['10.0.0.0/8'] },
      rateLimit: { max: 2, window: '1m', by: 'ip' },
      validate: { rules: [{ method: 'POST', path: '/', body: 'Person' }] }
    }]
  })
  const app = await buildGateway(config)
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  // path guard before everything: no credentials, a dot segment → 400, not 401
  t.equal((await call(`${url}/api/people/./x`)).status, 400, 'path guard before authentication')
  // authentication before authorization: bad password → 401, not 403
  t.equal((await call(`${url}/api/people/`, { headers: { authorization: basic('alice', 'nope') } })).status, 401)
  // authorization before validation: alice lacks people:write → 403, even with an invalid body
  const forbidden = await call(`${url}/api/people/`, { method: 'POST', headers: { authorization: basic('alice', 'wonderland'), 'content-type': 'application/json' }, body: '{}' })
  t.equal(forbidden.status, 403, 'authorization before body validation')
  // the per-IP limit counted the two refusals above (max 2 per window): the next request is 429
  // before authentication sees it
  t.equal((await call(`${url}/api/people/`, { headers: { authorization: basic('alice', 'wonderland') } })).status, 429, 'the per-IP limit before authentication')
  t.equal(upstream.requests.length, 0, 'nothing reached the upstream')
})

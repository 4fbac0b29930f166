import t, { type Test } from 'tap'
import { ConfigError, parseConfig } from '../src/config.js'
import { hashApiKey } from '../plugins/auth/password-hash.js'
import { createApiKeyAuthenticator } from '../plugins/auth/api-key.js'
import { AuthFailure } from '../plugins/auth/auth-common.js'
import { startUpstream } from './helper.js'
import { gatewayFrom } from './auth-helper.js'

const REPORTING = 'pk_reporting-key-0123456789abcdefghijklmnop'
const OPS = 'pk_ops-key-0123456789abcdefghijklmnopqrstuvw'
const apiKeys = [
  { name: 'reporting', keyHash: hashApiKey(REPORTING), scopes: ['people:read'] },
  { name: 'ops', keyHash: hashApiKey(OPS), scopes: ['people:read', 'people:write'] }
]

async function setup (t: Test, top: Record<string, unknown> = {}, route: Record<string, unknown> = {}, env: NodeJS.ProcessEnv = {}) {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    apiKeys,
    ...top,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['apiKey'], ...route }]
  }, env)
  return { upstream, app }
}

t.test('a valid key: its name and scopes reach the upstream, the key itself does not', async (t) => {
  const { upstream, app } = await setup(t)
  t.equal((await app.inject({ url: '/api/people/', headers: { 'x-api-key': REPORTING } })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/people/', headers: { 'X-API-KEY': OPS } })).statusCode, 200)
  t.match(upstream.requests[0].headers, { 'x-authenticated-user': 'reporting', 'x-authenticated-scopes': 'people:read', 'x-authenticated-via': 'apiKey' })
  t.equal(upstream.requests[1].headers['x-authenticated-user'], 'ops')
  t.equal(upstream.requests[0].headers['x-api-key'], undefined, 'the key is not forwarded')
})

t.test('wrong, empty or oversized keys are 401 with the ApiKey challenge; the upstream sees nothing', async (t) => {
  const { upstream, app } = await setup(t)
  const cases: Array<[string, Record<string, string>]> = [
    ['no key', {}],
    ['wrong key', { 'x-api-key': 'pk_wrong' }],
    ['almost right', { 'x-api-key': REPORTING.slice(0, -1) + 'x' }],
    ['key with spaces around it', { 'x-api-key': ` ${REPORTING}x ` }],
    ['empty', { 'x-api-key': '' }],
    ['too long', { 'x-api-key': 'k'.repeat(600) }],
    ['the key as a bearer token', { authorization: `Bearer ${REPORTING}` }]
  ]
  for (const [name, headers] of cases) {
    const res = await app.inject({ url: '/api/people/', headers })
    t.equal(res.statusCode, 401, name)
    t.equal(res.headers['www-authenticate'], 'ApiKey realm="portcullis", header="X-Api-Key"', `${name}: challenge`)
  }
  t.equal(upstream.requests.length, 0)
})

t.test('the header name is configurable; forwardAuthorization: all forwards the key', async (t) => {
  const { upstream, app } = await setup(t, { apiKeyHeader: 'X-Gateway-Key' }, { forwardAuthorization: 'all' })
  t.equal((await app.inject({ url: '/api/people/', headers: { 'x-api-key': REPORTING } })).statusCode, 401, 'the default name no longer counts')
  const res = await app.inject({ url: '/api/people/', headers: { 'x-gateway-key': REPORTING } })
  t.equal(res.statusCode, 200)
  t.equal(upstream.requests[0].headers['x-gateway-key'], REPORTING)
})

t.test('a key from ${ENV} is hashed at start; a plain key in the file is refused', async (t) => {
  const env = { METRICS_KEY: 'pk_from-the-environment-0123456789' }
  const { app } = await setup(t, { apiKeys: [{ name: 'metrics', key: '${METRICS_KEY}', scopes: [] }] }, {}, env)
  t.equal((await app.inject({ url: '/api/people/', headers: { 'x-api-key': env.METRICS_KEY } })).statusCode, 200)
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people', auth: ['apiKey'] }
  const config = parseConfig({ apiKeys: [{ name: 'metrics', key: '${METRICS_KEY}' }], routes: [route] }, { env })
  t.equal(config.apiKeys[0].key, undefined)
  t.equal(config.apiKeys[0].keyHash, hashApiKey(env.METRICS_KEY))
  const problems = (raw: Record<string, unknown>): string[] => {
    try { parseConfig(raw, { env }) } catch (err) { return (err as ConfigError).problems }
    return []
  }
  t.same(problems({ apiKeys: [{ name: 'm', key: 'pk_plain-in-the-file-0123456789' }], routes: [route] }), [
    'apiKeys[0].key: a plain key is accepted only as ${ENV_VAR}; write keyHash instead (portcullis api-key)'
  ])
  t.same(problems({ apiKeys: [apiKeys[0], { ...apiKeys[1], name: 'reporting' }], routes: [route] }), ['apiKeys[1].name: "reporting" is already apiKeys[0]'])
  t.same(problems({ apiKeys: [apiKeys[0], { ...apiKeys[0], name: 'copy' }], routes: [route] }), ['apiKeys[1]: the same key as apiKeys[0]'])
  t.same(problems({ routes: [route] }), ['routes[0].auth: "apiKey" needs apiKeys, and none is configured'])
})

t.test('keys are looked up by digest: among 50,000, each finds its own identity, a near miss none, a key listed twice its last entry', async (t) => {
  const keys = Array.from({ length: 50_000 }, (_, i) => ({ name: `k${i}`, keyHash: hashApiKey(`pk_scale-${i}`), scopes: i % 2 === 0 ? ['even'] : ['odd'] }))
  keys.push({ name: 'again', keyHash: hashApiKey('pk_scale-7'), scopes: ['later'] })
  const auth = createApiKeyAuthenticator(keys, 'X-Api-Key', 'api')
  const ask = (value: string): unknown => auth.authenticate({ headers: { 'x-api-key': value } } as never, {} as never)
  for (const i of [0, 1, 24_999, 49_999]) {
    t.match(ask(`pk_scale-${i}`), { subject: `k${i}`, scopes: [i % 2 === 0 ? 'even' : 'odd'], scheme: 'apiKey' }, `key ${i}`)
  }
  t.match(ask('pk_scale-7'), { subject: 'again', scopes: ['later'] }, 'listed twice: the last entry, as the linear scan gave')
  for (const miss of ['pk_scale-50000', 'pk_scale-1 ', 'PK_SCALE-1', hashApiKey('pk_scale-1'), hashApiKey('pk_scale-1').slice('sha256$'.length)]) {
    t.match(ask(miss), { reason: 'invalid' }, `${miss.slice(0, 20)}…: invalid`)
  }
  t.equal(ask('x'.repeat(513)) instanceof AuthFailure, true, 'oversized: malformed, not hashed')
  t.equal(ask(undefined as never), null, 'no header: not this scheme')
})

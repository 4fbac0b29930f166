import t, { type Test } from 'tap'
import { ConfigError, parseConfig } from '../src/config.js'
import { startUpstream } from './helper.js'
import { basic, cheapHash, gatewayFrom } from './auth-helper.js'
import { HASH_CONCURRENCY } from '../plugins/auth/basic-auth.js'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'

const users = [
  { username: 'alice', passwordHash: cheapHash('wonderland'), scopes: ['people:read', 'people:write'] },
  { username: 'colon', passwordHash: cheapHash('pa:ss:word'), scopes: [] },
  { username: 'jürgen', passwordHash: cheapHash('pässwörd€'), scopes: ['people:read'] }
]

async function setup (t: Test, route: Record<string, unknown> = {}) {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    users,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['basic'], ...route }]
  })
  return { upstream, app }
}

function problems (raw: Record<string, unknown>): string[] {
  try { parseConfig(raw, { env: {} }) } catch (err) { return (err as ConfigError).problems }
  return []
}

t.test('valid credentials reach the upstream with identity headers, without the Basic credentials', async (t) => {
  const { upstream, app } = await setup(t)
  const res = await app.inject({ url: '/api/people/', headers: { authorization: basic('alice', 'wonderland') } })
  t.equal(res.statusCode, 200)
  t.equal(upstream.requests.length, 1)
  const seen = upstream.requests[0].headers
  t.equal(seen['x-authenticated-user'], 'alice')
  t.equal(seen['x-authenticated-scopes'], 'people:read people:write')
  t.equal(seen['x-authenticated-via'], 'basic')
  t.equal(seen.authorization, undefined, 'Basic credentials are not forwarded by default')
})

t.test('RFC 7617: scheme case-insensitive, colons in the password, UTF-8', async (t) => {
  const { upstream, app } = await setup(t)
  for (const scheme of ['basic', 'BASIC', 'bAsIc']) {
    const res = await app.inject({ url: '/api/people/', headers: { authorization: basic('alice', 'wonderland').replace('Basic', scheme) } })
    t.equal(res.statusCode, 200, `scheme spelled ${scheme}`)
  }
  const colon = await app.inject({ url: '/api/people/', headers: { authorization: basic('colon', 'pa:ss:word') } })
  t.equal(colon.statusCode, 200, 'split at the first colon')
  const utf8 = await app.inject({ url: '/api/people/', headers: { authorization: basic('jürgen', 'pässwörd€') } })
  t.equal(utf8.statusCode, 200, 'UTF-8 username and password')
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], 'j%C3%BCrgen', 'non-ASCII subject percent-encoded')
  const latin1 = await app.inject({
    url: '/api/people/',
    headers: { authorization: 'Basic ' + Buffer.from('jürgen:pässwörd€', 'latin1').toString('base64') }
  })
  t.equal(latin1.statusCode, 401, 'the same password in Latin-1 is not UTF-8: refused')
})

t.test('every malformed or wrong credential is 401 with the Basic challenge, and the upstream sees nothing', async (t) => {
  const { upstream, app } = await setup(t)
  const b64 = (s: string | Buffer): string => 'Basic ' + Buffer.from(s).toString('base64')
  const cases: Array<[string, string | undefined]> = [
    ['no Authorization header', undefined],
    ['wrong password', basic('alice', 'looking-glass')],
    ['unknown user', basic('mallory', 'wonderland')],
    ['empty user', basic('', 'wonderland')],
    ['empty password', basic('alice', '')],
    ['missing colon', b64('alicewonderland')],
    ['bad base64 characters', 'Basic !!!!'],
    ['characters base64 decoding would skip', 'Basic YWxp~Y2U6d29uZGVybGFuZA=='],
    ['base64 without padding', 'Basic ' + Buffer.from('alice:wonderland').toString('base64').replace(/=+$/, '')],
    ['control character in the password', b64('alice:wonder\x01land')],
    ['newline in the user', b64('ali\nce:wonderland')],
    ['invalid UTF-8', b64(Buffer.concat([Buffer.from('alice:'), Buffer.from([0xc3, 0x28])]))],
    ['scheme only', 'Basic'],
    ['scheme and space', 'Basic '],
    ['two spaces', 'Basic  ' + Buffer.from('alice:wonderland').toString('base64')],
    ['another scheme', 'Digest username="alice"'],
    ['bearer on a basic-only route', 'Bearer abc.def.ghi']
  ]
  for (const [name, authorization] of cases) {
    const res = await app.inject({ url: '/api/people/', headers: authorization === undefined ? {} : { authorization } })
    t.equal(res.statusCode, 401, name)
    t.equal(res.headers['www-authenticate'], 'Basic realm="portcullis", charset="UTF-8"', `${name}: challenge`)
    t.match(res.headers['content-type'], /^application\/problem\+json/, `${name}: problem+json`)
    t.equal(res.json().status, 401)
  }
  t.equal(upstream.requests.length, 0, 'the upstream saw none of them')
  const wrong = await app.inject({ url: '/api/people/', headers: { authorization: basic('alice', 'nope') } })
  const unknown = await app.inject({ url: '/api/people/', headers: { authorization: basic('nobody', 'nope') } })
  t.equal(wrong.json().detail, unknown.json().detail, 'unknown user and wrong password read the same')
})

t.test('forwardAuthorization: all passes the Basic credentials on', async (t) => {
  const { upstream, app } = await setup(t, { forwardAuthorization: 'all' })
  const authorization = basic('alice', 'wonderland')
  const res = await app.inject({ url: '/api/people/', headers: { authorization } })
  t.equal(res.statusCode, 200)
  t.equal(upstream.requests[0].headers.authorization, authorization)
})

t.test('a plain password only through ${ENV}, hashed at start', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people', auth: ['basic'] }
  const config = parseConfig({ users: [{ username: 'bob', password: '${BOB_PASSWORD}' }], routes: [route] }, { env: { BOB_PASSWORD: 'builder' } })
  t.equal(config.users[0].password, undefined, 'the plain text is not kept')
  t.match(config.users[0].passwordHash, /^scrypt\$16384\$8\$1\$/, 'ENV_SCRYPT when the file has no hashes')
  const mixed = parseConfig({
    users: [{ username: 'a', passwordHash: cheapHash('x') }, { username: 'bob', password: '${BOB_PASSWORD}' }],
    routes: [route]
  }, { env: { BOB_PASSWORD: 'builder' } })
  t.match(mixed.users[1].passwordHash, /^scrypt\$1024\$8\$1\$/, 'else the parameters of the file\'s hashes, so that all users cost the same')
  const fallback = parseConfig({ users: [{ username: 'bob', password: '${BOB_PASSWORD:-demo}' }], routes: [route] }, { env: {} })
  t.match(fallback.users[0].passwordHash, /^scrypt\$/, '${VAR:-default} counts as the environment')
  t.same(problems({ users: [{ username: 'bob', password: 'builder' }], routes: [route] }), [
    'users[0].password: a plain password is accepted only as ${ENV_VAR}; write passwordHash instead (portcullis hash-password)'
  ], 'a plain password in the file is refused')
  t.throws(() => parseConfig({ users: [{ username: 'bob', password: 'x${BOB_PASSWORD}' }], routes: [route] }, { env: { BOB_PASSWORD: 'b' } }), ConfigError, 'only a whole reference')

  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    users: [{ username: 'bob', password: '${BOB_PASSWORD}', scopes: ['x'] }],
    routes: [{ ...route, upstream: `${upstream.origin}/api/people` }]
  }, { BOB_PASSWORD: 'builder' })
  t.equal((await app.inject({ url: '/api/people/', headers: { authorization: basic('bob', 'builder') } })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/people/', headers: { authorization: basic('bob', 'Builder') } })).statusCode, 401)
})

t.test('config checks name the path', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people' }
  t.same(problems({ routes: [{ ...route, auth: ['basic'] }] }), ['routes[0].auth: "basic" needs users, and none is configured'])
  t.same(problems({ users: [{ username: 'a', passwordHash: 'scrypt$3$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA' }], routes: [route] }), [
    'users[0].passwordHash: not a valid scrypt hash (N a power of 2 from 1024 to 1048576, r 1-32, p 1-16)'
  ])
  t.same(problems({ users: [{ username: 'a', passwordHash: users[0].passwordHash }, { username: 'a', passwordHash: users[0].passwordHash }], routes: [route] }), [
    'users[1].username: "a" is already users[0]'
  ])
  t.same(problems({ users: [{ username: 'a:b', passwordHash: users[0].passwordHash }], routes: [route] }), ['users[0].username: must not contain ":" or control characters'])
  t.same(problems({ routes: [{ ...route, scopes: { GET: ['a'] } }] }), ['routes[0].scopes: a public route (no auth) cannot require scopes; add auth'])
})

t.test('a flood of wrong passwords: bounded hashing, the excess refused with 503 at once', async (t) => {
  const saved = { ...HASH_CONCURRENCY }
  Object.assign(HASH_CONCURRENCY, { running: 1, waiting: 2 })
  t.teardown(() => { Object.assign(HASH_CONCURRENCY, saved) })
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    users: [{ username: 'slow', passwordHash: hashPasswordSync('pw', { N: 2 ** 14, r: 8, p: 1 }), scopes: [] }],
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['basic'] }]
  })
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
    app.inject({ url: '/api/people/', headers: { authorization: basic('slow', `guess-${i}`) } })))
  const statuses = results.map((r) => r.statusCode)
  t.equal(statuses.filter((s) => s === 401).length, 3, 'one hashing and two waiting were checked: 401')
  t.equal(statuses.filter((s) => s === 503).length, 17, 'the rest refused at once: 503')
  t.equal(results.find((r) => r.statusCode === 503)?.headers['retry-after'], '5')
  t.equal(upstream.requests.length, 0)
  const ok = await app.inject({ url: '/api/people/', headers: { authorization: basic('slow', 'pw') } })
  t.equal(ok.statusCode, 200, 'the slots were all given back')
})

import t, { type Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { createSigner } from 'fast-jwt'
import { ConfigError, parseConfig } from '../src/config.js'
import { startUpstream, type Upstream } from './helper.js'
import { gatewayFrom, hsToken, now, rawToken, rsaPair, SECRET, signWith, startTrap } from './auth-helper.js'

async function setup (t: Test, jwt: Record<string, unknown>, extra: Record<string, unknown> = {}, route: Record<string, unknown> = {}): Promise<{ upstream: Upstream, app: Awaited<ReturnType<typeof gatewayFrom>> }> {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    jwt,
    ...extra,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'], ...route }]
  })
  return { upstream, app }
}

const hs = { algorithms: ['HS256'], secret: SECRET }
const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` })

t.test('a valid HS256 token reaches the upstream with identity headers and the bearer token', async (t) => {
  const { upstream, app } = await setup(t, hs)
  const token = hsToken({ sub: 'alice', scope: 'people:read people:write' })
  for (const [i, scheme] of ['Bearer', 'bearer', 'BEARER'].entries()) {
    const res = await app.inject({ url: '/api/people/', headers: { authorization: `${scheme} ${token}` } })
    t.equal(res.statusCode, 200, `scheme ${scheme}`)
    t.equal(upstream.requests[i].headers.authorization, `${scheme} ${token}`, `scheme ${scheme}: forwarded as a bearer token`)
  }
  const seen = upstream.requests[0].headers
  t.equal(seen['x-authenticated-user'], 'alice')
  t.equal(seen['x-authenticated-scopes'], 'people:read people:write')
  t.equal(seen['x-authenticated-via'], 'jwt')
  t.equal(seen.authorization, `Bearer ${token}`, 'bearer tokens are forwarded by default (DRF may verify them again)')
  const arrayScopes = await app.inject({ url: '/api/people/', headers: bearer(hsToken({ sub: 'a', scope: ['x:y', 'bad scope', 'z'] })) })
  t.equal(arrayScopes.statusCode, 200)
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-scopes'], 'x:y z', 'array scope claim; invalid entries dropped')
})

t.test('alg none in every spelling, unlisted algorithms and missing signatures are refused', async (t) => {
  const { upstream, app } = await setup(t, hs)
  const payload = { sub: 'mallory', exp: now() + 300 }
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    for (const sig of ['', 'c2ln']) {
      const res = await app.inject({ url: '/api/people/', headers: bearer(rawToken({ alg, typ: 'JWT' }, payload, sig)) })
      t.equal(res.statusCode, 401, `alg ${alg}, signature "${sig}"`)
    }
  }
  const hs512 = await app.inject({ url: '/api/people/', headers: bearer(hsToken({ sub: 'a' }, { algorithm: 'HS512', secret: SECRET + SECRET })) })
  t.equal(hs512.statusCode, 401, 'HS512 is not in the allow-list')
  const stripped = hsToken({ sub: 'a' }).split('.').slice(0, 2).join('.') + '.'
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(stripped) })).statusCode, 401, 'signature removed')
  const otherSecret = hsToken({ sub: 'a' }, { secret: 'another-secret-that-is-also-32-bytes-long' })
  const res = await app.inject({ url: '/api/people/', headers: bearer(otherSecret) })
  t.equal(res.statusCode, 401, 'signed with another secret')
  t.equal(res.headers['www-authenticate'], 'Bearer realm="portcullis", error="invalid_token"')
  t.equal(upstream.requests.length, 0)
})

t.test('HS/RS key confusion: an HMAC token signed with the RSA public key is refused', async (t) => {
  const pair = rsaPair()
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], publicKey: pair.publicPem })
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(pair, { sub: 'alice' })) })).statusCode, 200, 'a real RS256 token passes')
  const forged = createSigner({ key: pair.publicPem, algorithm: 'HS256' })({ sub: 'mallory', exp: now() + 300 })
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(forged) })).statusCode, 401, 'HS256 signed with the public key PEM')
  t.equal(upstream.requests.length, 1)
  let problems: string[] = []
  try {
    parseConfig({ jwt: { algorithms: ['HS256', 'RS256'], publicKey: pair.publicPem }, routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9/a', auth: ['jwt'] }] }, { env: {} })
  } catch (err) { problems = (err as ConfigError).problems }
  t.same(problems, ['jwt.algorithms: HS256 needs a shared secret; with publicKey list only asymmetric algorithms (key confusion)'], 'the config cannot even ask for it')
})

t.test('exp is required, nbf honoured, clockTolerance applied', async (t) => {
  const { upstream, app } = await setup(t, { ...hs, clockTolerance: '5s' })
  const cases: Array<[string, Record<string, unknown>, number]> = [
    ['expired', { exp: now() - 60 }, 401],
    ['expired within tolerance', { exp: now() - 2 }, 200],
    ['nbf in the future', { nbf: now() + 60 }, 401],
    ['nbf within tolerance', { nbf: now() + 2 }, 200]
  ]
  for (const [name, claims, status] of cases) {
    const res = await app.inject({ url: '/api/people/', headers: bearer(hsToken({ sub: 'a', ...claims })) })
    t.equal(res.statusCode, status, name)
  }
  const input = rawToken({ alg: 'HS256', typ: 'JWT' }, { sub: 'a', exp: String(now() + 300) }).slice(0, -1)
  const stringExp = `${input}.${createHmac('sha256', SECRET).update(input).digest('base64url')}`
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(stringExp) })).statusCode, 401, 'exp as a string')
  const noExp = createSigner({ key: SECRET, algorithm: 'HS256', noTimestamp: true })({ sub: 'a' })
  const res = await app.inject({ url: '/api/people/', headers: bearer(noExp) })
  t.equal(res.statusCode, 401, 'no exp')
  t.match(res.json().detail, /expiry/)
  t.equal(upstream.requests.length, 2)
})

t.test('a verified token is remembered, but never past its exp', async (t) => {
  const { upstream, app } = await setup(t, { ...hs, clockTolerance: '0s' })
  const token = hsToken({ sub: 'brief', exp: now() + 2 })
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(token) })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(token) })).statusCode, 200, 'again, from the cache')
  await new Promise((resolve) => setTimeout(resolve, 3100))
  const late = await app.inject({ url: '/api/people/', headers: bearer(token) })
  t.equal(late.statusCode, 401, 'expired, though it was remembered')
  t.equal(late.json().detail, 'The bearer token has expired.')
  t.equal(upstream.requests.length, 2)
})

t.test('issuer and audience are checked when configured; an iss array is refused', async (t) => {
  const { upstream, app } = await setup(t, { ...hs, issuer: 'https://idp.example', audience: 'people-api' })
  const cases: Array<[string, Record<string, unknown>, number]> = [
    ['right iss and aud', { iss: 'https://idp.example', aud: 'people-api' }, 200],
    ['aud array containing ours', { iss: 'https://idp.example', aud: ['other', 'people-api'] }, 200],
    ['wrong iss', { iss: 'https://evil.example', aud: 'people-api' }, 401],
    ['no iss', { aud: 'people-api' }, 401],
    ['iss array', { iss: ['https://idp.example'], aud: 'people-api' }, 401],
    ['wrong aud', { iss: 'https://idp.example', aud: 'other-api' }, 401],
    ['no aud', { iss: 'https://idp.example' }, 401]
  ]
  for (const [name, claims, status] of cases) {
    const res = await app.inject({ url: '/api/people/', headers: bearer(hsToken({ sub: 'a', ...claims })) })
    t.equal(res.statusCode, status, name)
  }
  t.equal(upstream.requests.length, 2)
})

t.test('crit, jku, x5u, jwk and x5c headers are refused and no URL they name is contacted', async (t) => {
  const trap = await startTrap(t)
  const pair = rsaPair()
  const attacker = rsaPair()
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], publicKey: pair.publicPem })
  const jwk = { ...attacker.publicKey.export({ format: 'jwk' }), kid: 'evil' }
  const headers: Array<[string, Record<string, unknown>, AnyKey]> = [
    ['crit', { crit: ['exp'] }, pair],
    ['crit with an extension', { crit: ['http://example/ext'], 'http://example/ext': true }, pair],
    ['jku', { jku: trap.url }, attacker],
    ['jku with our own key', { jku: trap.url }, pair],
    ['x5u', { x5u: trap.url }, attacker],
    ['embedded jwk', { jwk }, attacker],
    ['x5c', { x5c: ['MIIB'] }, attacker]
  ]
  for (const [name, header, key] of headers) {
    const token = signWith(key, { sub: 'mallory' }, { header })
    const res = await app.inject({ url: '/api/people/', headers: bearer(token) })
    t.equal(res.statusCode, 401, name)
  }
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(trap.connections(), 0, 'the jku/x5u listener received no connection')
  t.equal(upstream.requests.length, 0)
})
type AnyKey = ReturnType<typeof rsaPair>

t.test('tokens only from Authorization (never the query string); malformed headers are 401, never 500', async (t) => {
  const { upstream, app } = await setup(t, hs)
  const token = hsToken({ sub: 'alice' })
  for (const url of [`/api/people/?access_token=${token}`, `/api/people/?token=${token}`, `/api/people/?jwt=${token}`]) {
    const res = await app.inject({ url })
    t.equal(res.statusCode, 401, url.slice(0, 30))
    t.equal(res.headers['www-authenticate'], 'Bearer realm="portcullis"', 'challenge without error: no token was sent')
  }
  const malformed = [
    'Bearer', 'Bearer ', 'Bearer  ' + token, `Bearer ${token} extra`, 'Bearer a.b', 'Bearer a.b.c.d', 'Bearer ...',
    'Bearer %%%.%%%.%%%', `Bearer ${Buffer.from('not json').toString('base64url')}.e30.c2ln`,
    `Bearer ${rawToken({ alg: 'HS256' }, { sub: 'a' }).slice(0, -1)}`, 'Bearer eyJ', `Bearer ${'x'.repeat(9000)}`,
    `Bearer ${rawToken({ alg: 'HS256', kid: { a: 1 } }, { sub: 'a', exp: now() + 60 }, 'c2ln')}`,
    `Bearer ${Buffer.from('[]').toString('base64url')}.${Buffer.from('[]').toString('base64url')}.c2ln`,
    'Bearer ' + Buffer.from('{"alg":"HS256"}').toString('base64url') + '.' + Buffer.from('null').toString('base64url') + '.c2ln'
  ]
  for (const authorization of malformed) {
    const res = await app.inject({ url: '/api/people/', headers: { authorization } })
    t.equal(res.statusCode, 401, authorization.slice(0, 40))
    t.match(res.headers['content-type'], /^application\/problem\+json/)
  }
  const noSubject = await app.inject({ url: '/api/people/', headers: bearer(hsToken({ scope: 'a' })) })
  t.equal(noSubject.statusCode, 401, 'a token without a subject')
  t.equal(upstream.requests.length, 0)
})

function rawGet (url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, agent: false }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)) })
    req.on('error', reject)
    req.end()
  })
}

t.test('a 20 KB Authorization header: 431 by default, 401 (too long) when the head limit allows it', async (t) => {
  const upstream = await startUpstream(t)
  const big = `Bearer ${'a'.repeat(10_000)}.${'b'.repeat(5_000)}.${'c'.repeat(5_000)}`
  const route = { name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'] }
  const small = await gatewayFrom(t, { jwt: hs, routes: [route] })
  const smallUrl = await small.listen({ host: '127.0.0.1', port: 0 })
  t.equal(await rawGet(`${smallUrl}/api/people/`, { authorization: big }), 431)
  const roomy = await gatewayFrom(t, { server: { maxHeaderSize: '64kb' }, jwt: hs, routes: [route] })
  const roomyUrl = await roomy.listen({ host: '127.0.0.1', port: 0 })
  t.equal(await rawGet(`${roomyUrl}/api/people/`, { authorization: big }), 401)
  t.equal(upstream.requests.length, 0)
})

t.test('subjectClaim governs incoming tokens; the token endpoint\'s own (iss = jwt.issuer, else "portcullis") are read with sub', async (t) => {
  const { upstream, app } = await setup(t, { ...hs, subjectClaim: 'user_id' })
  const status = async (claims: Record<string, unknown>): Promise<number> =>
    (await app.inject({ url: '/api/people/', headers: bearer(hsToken(claims)) })).statusCode
  t.equal(await status({ iss: 'portcullis', sub: 'gw-user' }), 200, 'own token: subject from sub')
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], 'gw-user')
  t.equal(await status({ iss: 'portcullis', user_id: 5 }), 401, 'own token without sub: no subject, even with a user_id')
  t.equal(await status({ iss: 'portcullis', sub: 'gw-user', user_id: 5 }), 200)
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], 'gw-user', 'own token: its user_id is not the subject')
  t.equal(await status({ sub: 'someone', user_id: 7 }), 200, 'an incoming token (no iss): subject from user_id')
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], '7')
  t.equal(await status({ iss: 'drf', sub: 'someone' }), 401, 'another issuer without user_id: no subject')

  // With jwt.issuer set, that is the token endpoint's issuer.
  const named = await setup(t, { ...hs, subjectClaim: 'user_id', issuer: 'https://gw.example' })
  const viaNamed = await named.app.inject({ url: '/api/people/', headers: bearer(hsToken({ iss: 'https://gw.example', sub: 'gw-user' })) })
  t.equal(viaNamed.statusCode, 200)
  t.equal(named.upstream.requests.at(-1)?.headers['x-authenticated-user'], 'gw-user')
  const notOurs = await named.app.inject({ url: '/api/people/', headers: bearer(hsToken({ iss: 'portcullis', sub: 'gw-user' })) })
  t.equal(notOurs.statusCode, 401, '"portcullis" is not the issuer then')
})

t.test('djangorestframework-simplejwt tokens: user_id subject, requiredClaims refuses refresh tokens', async (t) => {
  const jwt = { ...hs, subjectClaim: 'user_id', requiredClaims: { token_type: 'access' } }
  const { upstream, app } = await setup(t, jwt)
  const shaped = (type: string): string => hsToken({ token_type: type, user_id: 42, iat: now(), jti: 'b6f6c1b2e1a94d0c9a7f1e0c2d3b4a59' })
  const access = await app.inject({ url: '/api/people/', headers: bearer(shaped('access')) })
  t.equal(access.statusCode, 200, 'access token')
  t.equal(upstream.requests[0].headers['x-authenticated-user'], '42', 'numeric user_id as the subject')
  t.equal(upstream.requests[0].headers['x-authenticated-scopes'], '', 'no scopes')
  const refresh = await app.inject({ url: '/api/people/', headers: bearer(shaped('refresh')) })
  t.equal(refresh.statusCode, 401, 'refresh token used as an access token')

  // The same with tokens minted by the real library, when it is installed.
  const script = [
    'import django', 'from django.conf import settings',
    `settings.configure(SECRET_KEY='x'*50, INSTALLED_APPS=['django.contrib.auth','django.contrib.contenttypes','rest_framework_simplejwt'], SIMPLE_JWT={'SIGNING_KEY': '${SECRET}', 'ALGORITHM': 'HS256'})`,
    'django.setup()', 'from rest_framework_simplejwt.tokens import AccessToken, RefreshToken',
    'a = AccessToken(); a["user_id"] = 7', 'r = RefreshToken(); r["user_id"] = 7', 'print(str(a)); print(str(r))'
  ].join('\n')
  const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import rest_framework_simplejwt'], { stdio: 'ignore' }).status === 0)
  if (python === undefined) {
    t.comment('SKIPPED real simplejwt tokens: apt-get install python3-djangorestframework-simplejwt')
    return
  }
  const out = spawnSync(python, ['-c', script], { encoding: 'utf8' })
  t.equal(out.status, 0, out.stderr)
  const [realAccess, realRefresh] = out.stdout.trim().split('\n')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(realAccess) })).statusCode, 200, 'real simplejwt access token')
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], '7')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(realRefresh) })).statusCode, 401, 'real simplejwt refresh token')
})

t.test('a token from the configured cookie, only when configured', async (t) => {
  const token = hsToken({ sub: 'cookie-user' })
  const plain = await setup(t, hs)
  t.equal((await plain.app.inject({ url: '/api/people/', headers: { cookie: `access_token=${token}` } })).statusCode, 401)
  const withCookie = await setup(t, { ...hs, cookie: 'access_token' })
  t.equal((await withCookie.app.inject({ url: '/api/people/', headers: { cookie: `theme=dark; access_token=${token}` } })).statusCode, 200)
  t.equal(withCookie.upstream.requests[0].headers['x-authenticated-user'], 'cookie-user')
})

t.test('several issuers, each with its own keys', async (t) => {
  const pair = rsaPair()
  const { upstream, app } = await setup(t, {
    algorithms: ['HS256'],
    secret: SECRET,
    issuer: 'gateway',
    issuers: [{ issuer: 'https://idp.example', algorithms: ['RS256'], publicKey: pair.publicPem }]
  })
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(hsToken({ sub: 'a', iss: 'gateway' })) })).statusCode, 200, 'first issuer, HS256')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(pair, { sub: 'b', iss: 'https://idp.example' })) })).statusCode, 200, 'second issuer, RS256')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(hsToken({ sub: 'c', iss: 'https://idp.example' })) })).statusCode, 401, 'HS256 claiming the RS256 issuer')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(pair, { sub: 'd', iss: 'gateway' })) })).statusCode, 401, 'RS256 claiming the HS256 issuer')
  t.equal(upstream.requests.length, 2)
})

t.test('jwt config checks', async (t) => {
  const route = { name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9/a', auth: ['jwt'] }
  const problems = (jwt: unknown, extra: Record<string, unknown> = {}): string[] => {
    try { parseConfig({ jwt, ...extra, routes: [route] }, { env: {} }) } catch (err) { return (err as ConfigError).problems }
    return []
  }
  t.same(problems({ secret: SECRET }), ['jwt.algorithms: required'])
  t.same(problems({ algorithms: ['HS256'] }), ['jwt: one of secret, publicKey or jwksUrl is required'])
  t.same(problems({ algorithms: ['HS256'], secret: 'short' }), ['jwt.secret: HS256 needs a secret of at least 32 bytes (this one has 5)'])
  t.same(problems({ algorithms: ['RS256'], secret: SECRET }), ['jwt.algorithms: RS256 cannot be verified with a shared secret (use publicKey or jwksUrl)'])
  t.match(problems({ algorithms: ['none'], secret: SECRET }), [/^jwt\.algorithms\[0\]: must be/], '"none" cannot be listed')
  t.same(problems({ algorithms: ['ES256'], publicKey: rsaPair().publicPem }), ['jwt.algorithms: ES256 cannot be verified with this rsa key'])
  t.same(problems({ algorithms: ['RS256'], publicKey: './missing.pem' }), ['jwt.publicKey: cannot read ./missing.pem: ENOENT'])
  t.same(problems({ algorithms: ['RS256'], jwksUrl: 'http://idp.example/jwks.json' }), ['jwt.jwksUrl: must be https (http only on loopback)'])
  t.same(problems({ algorithms: ['HS256'], secret: SECRET, publicKey: rsaPair().publicPem }), ['jwt: give one of secret, publicKey, jwksUrl (not secret and publicKey)'])
  t.same(problems(undefined), ['routes[0].auth: "jwt" needs a jwt section, and none is configured'])
  t.ok(parseConfig({ jwt: hs, routes: [route] }, { env: {} }), 'a good one passes')
  t.type(ConfigError, 'function')
})

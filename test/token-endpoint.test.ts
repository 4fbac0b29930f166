import t from 'tap'
import { createDecoder } from 'fast-jwt'
import { ConfigError, parseConfig } from '../src/config.js'
import { startUpstream } from './helper.js'
import { cheapHash, gatewayFrom, rsaPair, SECRET } from './auth-helper.js'

const users = [
  { username: 'alice', passwordHash: cheapHash('wonderland'), scopes: ['people:read', 'people:write'] },
  { username: 'bob', passwordHash: cheapHash('builder'), scopes: ['people:read'] }
]
const decode = createDecoder({ complete: true })

function problems (raw: Record<string, unknown>): string[] {
  try { parseConfig(raw, { env: {} }) } catch (err) { return (err as ConfigError).problems }
  return []
}

t.test('issue a token, then use it on a route', async (t) => {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    users,
    jwt: { algorithms: ['HS256'], secret: SECRET, issuer: 'portcullis', audience: 'people-api' },
    tokenEndpoint: { path: '/auth/token', expiresIn: '15m' },
    routes: [{
      name: 'people',
      prefix: '/api/people',
      upstream: `${upstream.origin}/api/people`,
      auth: ['jwt'],
      scopes: { GET: ['people:read'], '*': ['people:write'] }
    }]
  })
  const res = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'bob', password: 'builder' } })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'no-store')
  const body = res.json()
  t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'token_type'])
  t.equal(body.token_type, 'Bearer')
  t.equal(body.expires_in, 900)
  const { header, payload } = decode(body.access_token) as { header: Record<string, unknown>, payload: Record<string, unknown> }
  t.equal(header.alg, 'HS256')
  t.same(Object.keys(payload).sort(), ['aud', 'exp', 'iat', 'iss', 'jti', 'scope', 'sub', 'token_type'], 'exactly these claims')
  t.match(payload, { sub: 'bob', scope: 'people:read', iss: 'portcullis', aud: 'people-api', token_type: 'access' })
  t.equal((payload.exp as number) - (payload.iat as number), 900)
  t.match(payload.jti, /^[0-9a-f-]{36}$/)

  const get = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${body.access_token}` } })
  t.equal(get.statusCode, 200, 'the token works')
  t.equal(upstream.requests[0].headers['x-authenticated-user'], 'bob')
  t.equal(upstream.requests[0].headers['x-authenticated-scopes'], 'people:read')
  const post = await app.inject({ method: 'POST', url: '/api/people/', headers: { authorization: `Bearer ${body.access_token}` }, payload: { name: 'x' } })
  t.equal(post.statusCode, 403, 'bob may not write')
  t.equal(post.json().detail, 'Missing scope people:write.')
  t.equal(upstream.requests.length, 1)
})

t.test('the claim set is fixed: sub, never an upstream\'s subject claim; iss "portcullis" without jwt.issuer', async (t) => {
  const upstream = await startUpstream(t)
  const numeric = [{ username: '1', passwordHash: cheapHash('one-pw'), scopes: ['people:read'] }, ...users]
  const route = { name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'] }
  // The README's simplejwt setup: incoming tokens name their user in user_id.
  const app = await gatewayFrom(t, {
    users: numeric,
    jwt: { algorithms: ['HS256'], secret: SECRET, subjectClaim: 'user_id', scopeClaim: 'scp', requiredClaims: { token_type: 'access' } },
    tokenEndpoint: {},
    routes: [route]
  })
  for (const username of ['1', 'alice']) {
    const res = await app.inject({ method: 'POST', url: '/auth/token', payload: { username, password: username === '1' ? 'one-pw' : 'wonderland' } })
    t.equal(res.statusCode, 200)
    const token = res.json().access_token as string
    const { payload } = decode(token) as { payload: Record<string, unknown> }
    t.same(Object.keys(payload).sort(), ['exp', 'iat', 'iss', 'jti', 'scp', 'sub', 'token_type'], `${username}: exactly these claims (no aud configured)`)
    t.match(payload, { sub: username, iss: 'portcullis', token_type: 'access' })
    t.notOk('user_id' in payload, 'no user_id, although jwt.subjectClaim is user_id')
    // The gateway reads its own tokens' subject from sub.
    const get = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${token}` } })
    t.equal(get.statusCode, 200, `${username}: the gateway accepts its own token`)
    t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], username, 'as the gateway user')
  }
})

t.test('wrong credentials: 401 with the same answer for unknown users; bad bodies are validated', async (t) => {
  const app = await gatewayFrom(t, {
    users,
    jwt: { algorithms: ['HS256'], secret: SECRET },
    tokenEndpoint: {},
    routes: [{ name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people', auth: ['jwt'] }]
  })
  const wrong = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: 'nope' } })
  const unknown = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'mallory', password: 'nope' } })
  t.equal(wrong.statusCode, 401)
  t.equal(unknown.statusCode, 401)
  t.equal(wrong.json().detail, unknown.json().detail)
  t.match(wrong.headers['content-type'], /^application\/problem\+json/)
  t.notOk(wrong.body.includes('access_token'), 'no token in a refusal')

  const missing = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice' } })
  t.equal(missing.statusCode, 400)
  t.same(missing.json().errors.map((e: { pointer: string }) => e.pointer), ['/password'])
  const extra = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: 'wonderland', admin: true } })
  t.equal(extra.statusCode, 400, 'unknown keys are refused')
  const number = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: 12345678 } })
  t.equal(number.statusCode, 400, 'no type coercion')
  const form = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'username=alice&password=wonderland' })
  t.equal(form.statusCode, 415, 'JSON only')
  const broken = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/json' }, payload: '{"username":' })
  t.equal(broken.statusCode, 400)
  const proto = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/json' }, payload: '{"username":"alice","password":"x","__proto__":{"a":1}}' })
  t.equal(proto.statusCode, 400, '__proto__ refused')
  const get = await app.inject({ url: '/auth/token' })
  t.equal(get.statusCode, 405)
  t.equal(get.headers.allow, 'POST')
  const ok = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: 'wonderland' } })
  t.equal(ok.statusCode, 200, 'after all that, the right password still works')
})

t.test('brute force: the endpoint is rate-limited per client IP, failed attempts count', async (t) => {
  const app = await gatewayFrom(t, {
    users,
    jwt: { algorithms: ['HS256'], secret: SECRET },
    tokenEndpoint: { rateLimit: { max: 3, window: '1m' } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people', auth: ['jwt'] }]
  })
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) {
    const res = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: `guess-${i}` } })
    statuses.push(res.statusCode)
  }
  t.same(statuses, [401, 401, 401, 429, 429])
  const right = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: 'wonderland' } })
  t.equal(right.statusCode, 429, 'even the right password waits out the window')
  t.ok(Number(right.headers['retry-after']) > 0, 'Retry-After')
  t.match(right.headers['content-type'], /^application\/problem\+json/)
  const other = await app.inject({ method: 'POST', url: '/auth/token', remoteAddress: '10.9.8.7', payload: { username: 'alice', password: 'wonderland' } })
  t.equal(other.statusCode, 200, 'another client IP is not affected')
})

t.test('RS256 tokens signed with tokenEndpoint.privateKey verify against jwt.publicKey', async (t) => {
  const pair = rsaPair()
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    users,
    jwt: { algorithms: ['RS256'], publicKey: pair.publicPem },
    tokenEndpoint: { privateKey: pair.privatePem },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'] }]
  })
  const res = await app.inject({ method: 'POST', url: '/auth/token', payload: { username: 'alice', password: 'wonderland' } })
  t.equal(res.statusCode, 200)
  const token = res.json().access_token as string
  t.equal((decode(token) as { header: { alg: string } }).header.alg, 'RS256')
  t.equal((await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${token}` } })).statusCode, 200)
})

t.test('token endpoint config checks', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people' }
  const jwt = { algorithms: ['HS256'], secret: SECRET }
  t.same(problems({ users, tokenEndpoint: {}, routes: [route] }), ['tokenEndpoint: needs a jwt section (the key and algorithms its tokens are signed and verified with)'])
  t.same(problems({ jwt, tokenEndpoint: {}, routes: [route] }), ['tokenEndpoint: there are no users to issue tokens to'])
  t.same(problems({ users, jwt, tokenEndpoint: { path: '/api/people/token' }, routes: [route] }), ['tokenEndpoint.path: "/api/people/token" is under routes[0].prefix "/api/people"'])
  t.same(problems({ users, jwt, tokenEndpoint: { path: '/healthz' }, routes: [route] }), ['tokenEndpoint.path: "/healthz" is the gateway\'s own /healthz'])
  const pair = rsaPair()
  t.same(problems({ users, jwt: { algorithms: ['RS256'], publicKey: pair.publicPem }, tokenEndpoint: {}, routes: [route] }), ['tokenEndpoint.privateKey: required to sign RS256 tokens'])
  t.same(problems({ users, jwt: { algorithms: ['RS256'], publicKey: pair.publicPem }, tokenEndpoint: { privateKey: rsaPair().privatePem }, routes: [route] }), [
    'tokenEndpoint.privateKey: does not match jwt.publicKey, so its tokens would not verify'
  ])
  t.same(problems({ users, jwt, tokenEndpoint: { algorithm: 'HS512' }, routes: [route] }), ['tokenEndpoint.algorithm: HS512 is not in jwt.algorithms, so its tokens would not verify'])
})

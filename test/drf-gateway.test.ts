/**
 * The real DRF example behind a gateway with every protection on — simplejwt tokens verified by
 * the gateway, scopes, the DRF-generated OpenAPI document as the validator, the gateway's own
 * users and token endpoint, a rate-limited public token route — always called through the
 * gateway. "DRF never reached" is read from gunicorn's own access log.
 */
import { request } from 'node:http'
import t from 'tap'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'
import { call, startDrf, startTestGateway, type CallOptions, type CallResult, type DrfServer } from './helper.js'

async function req (url: string, options: CallOptions = {}): Promise<CallResult & { json: any, text: string }> {
  const res = await call(url, options)
  return { ...res, text: res.body.toString('utf8') }
}

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
const json = { 'content-type': 'application/json' }
const STRICT_PERSON = {
  type: 'object',
  required: ['name', 'age'],
  additionalProperties: false,
  properties: { name: { type: 'string', minLength: 1, maxLength: 100 }, age: { type: 'integer', minimum: 0, maximum: 150 } }
}
const hash = (password: string): string => hashPasswordSync(password, { N: 1024, r: 8, p: 1 })
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

const drfUsers = [
  { username: 'alice', password: 'alice-pw-1', scopes: ['people:read', 'people:write'] },
  { username: 'bob', password: 'bob-pw-1', scopes: ['people:read'] }
]
const drf = await startDrf(t, { users: drfUsers })
if (drf !== null) await run(drf)
if (drf !== null) await neverAlias(drf)

async function run (drf: DrfServer): Promise<void> {
  const { url: gw } = await startTestGateway(t, {
    users: [
      { username: 'gwwriter', passwordHash: hash('gw-writer-pw'), scopes: ['people:read', 'people:write'] },
      { username: 'gwreader', passwordHash: hash('gw-reader-pw'), scopes: ['people:read'] }
    ],
    jwt: { algorithms: ['HS256'], secret: drf.signingKey, requiredClaims: { token_type: 'access' } },
    tokenEndpoint: { path: '/auth/token' },
    routes: [
      {
        name: 'people',
        prefix: '/api/people',
        upstream: `${drf.origin}/api/people`,
        auth: ['jwt', 'basic'],
        scopes: { GET: ['people:read'], HEAD: ['people:read'], OPTIONS: ['people:read'], '*': ['people:write'] },
        validate: {
          // DRF's generated document (parameters, limits, required fields)…
          openapi: new URL('../examples/drf/openapi.yaml', import.meta.url).pathname,
          // …plus a rule for creates that also refuses fields DRF does not know (DRF's schema has
          // no additionalProperties: false; DRF itself would silently drop them).
          rules: [{ method: 'POST', path: '/', body: STRICT_PERSON }]
        }
      },
      { name: 'whoami', prefix: '/api/whoami', upstream: `${drf.origin}/api/whoami`, methods: ['GET'], auth: ['jwt', 'basic'] },
      { name: 'drf-token', prefix: '/api/token', upstream: `${drf.origin}/api/token`, methods: ['POST'], rateLimit: { max: 8, window: '1m', by: 'ip' } }
    ]
  })
  const drfSaw = (method: string, path: string): number => drf.requests().filter((r) => r.method === method && r.path.startsWith(path)).length
  /** drfSaw once gunicorn's access log has caught up (it writes a line after the response has gone): every count the tests compare goes through this. */
  const drfSawSettled = async (method: string, path: string): Promise<number> => {
    let count = drfSaw(method, path)
    for (let i = 0; i < 20; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      const next = drfSaw(method, path)
      if (next === count) return count
      count = next
    }
    return count
  }
  const tokens = async (username: string, password: string): Promise<{ access: string, refresh: string }> => {
    const res = await req(`${gw}/api/token/`, { method: 'POST', headers: json, body: JSON.stringify({ username, password }) })
    if (res.status !== 200) throw new Error(`token for ${username}: ${res.status} ${res.text}`)
    return res.json
  }
  const alice = await tokens('alice', 'alice-pw-1')
  const bob = await tokens('bob', 'bob-pw-1')

  await t.test('simplejwt access tokens pass the gateway; refresh tokens and foreign keys do not', async (t) => {
    const ok = await req(`${gw}/api/people/`, { headers: bearer(alice.access) })
    t.equal(ok.status, 200, 'access token: 200 from DRF')
    t.type(ok.json.count, 'number')

    const before = await drfSawSettled('GET', '/api/people/')
    const refresh = await req(`${gw}/api/people/`, { headers: bearer(alice.refresh) })
    t.equal(refresh.status, 401, 'a refresh token used as an access token: 401')
    t.match(refresh.headers['content-type'], /^application\/problem\+json/)
    t.match(refresh.headers['www-authenticate'], /Bearer/)
    const [h, p] = alice.access.split('.')
    const forged = `${h ?? ''}.${p ?? ''}.${Buffer.from('not the signature').toString('base64url')}`
    t.equal((await req(`${gw}/api/people/`, { headers: bearer(forged) })).status, 401, 'a bad signature: 401')
    t.equal((await req(`${gw}/api/people/`)).status, 401, 'no credentials: 401')
    t.equal(await drfSawSettled('GET', '/api/people/'), before, 'DRF saw none of the refused requests')
  })

  await t.test('scope people:read lists but cannot create: 403 from the gateway, DRF never reached', async (t) => {
    t.equal((await req(`${gw}/api/people/`, { headers: bearer(bob.access) })).status, 200, 'bob lists')
    const posts = await drfSawSettled('POST', '/api/people/')
    const create = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, ...bearer(bob.access) }, body: JSON.stringify({ name: 'Eve', age: 30 }) })
    t.equal(create.status, 403)
    t.match(create.json, { status: 403, type: 'urn:portcullis:problem:forbidden' })
    t.match(create.json.detail, /people:write/, 'names the missing scope')
    t.equal(await drfSawSettled('POST', '/api/people/'), posts, 'DRF never saw the POST')
  })

  await t.test('invalid bodies are refused by the gateway; DRF (which would coerce "42") gets only valid rows', async (t) => {
    const posts = await drfSawSettled('POST', '/api/people/')
    const post = (body: unknown, headers: Record<string, string> = json): ReturnType<typeof req> =>
      req(`${gw}/api/people/`, { method: 'POST', headers: { ...headers, ...bearer(alice.access) }, body: JSON.stringify(body) })
    const asString = await post({ name: 'Ada', age: '42' })
    t.equal(asString.status, 400, 'age "42": 400')
    t.match(asString.json, { type: 'urn:portcullis:problem:validation', errors: [{ pointer: '/age' }] })
    const noName = await post({ age: 42 })
    t.equal(noName.status, 400, 'missing name: 400')
    t.ok(noName.json.errors.some((e: { pointer: string, message: string }) => /name/.test(`${e.pointer} ${e.message}`)), 'the error names `name`')
    const extra = await post({ name: 'Ada', age: 42, admin: true })
    t.equal(extra.status, 400, 'an extra field: 400')
    t.match(extra.json.errors, [{ pointer: '/admin', message: 'is not allowed' }])
    t.equal((await post({ name: 'x'.repeat(101), age: 42 })).status, 400, 'name over 100 characters: 400')
    t.equal((await post({ name: 'Ada', age: 151 })).status, 400, 'age over 150: 400')
    const form = await req(`${gw}/api/people/`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...bearer(alice.access) }, body: 'name=Ada&age=42' })
    t.equal(form.status, 415, 'a form body (which DRF would parse): 415')
    t.equal(await drfSawSettled('POST', '/api/people/'), posts, 'DRF received none of them')

    const valid = await post({ name: 'Ada', age: 42 })
    t.equal(valid.status, 201, 'a valid body: 201 from DRF')
    t.same({ name: valid.json.name, age: valid.json.age }, { name: 'Ada', age: 42 })
    t.equal(await drfSawSettled('POST', '/api/people/'), posts + 1, 'DRF received exactly the valid one')

    // What DRF does on its own with "42": coerces it (so only the gateway stood in the way).
    const direct = await req(`${drf.origin}/api/people/`, { method: 'POST', headers: { ...json, ...bearer(alice.access) }, body: JSON.stringify({ name: 'Coerced', age: '42' }) })
    t.equal(direct.status, 201, 'DRF alone accepts age "42"')
    t.equal(direct.json.age, 42, 'and coerces it')
    const all = await req(`${gw}/api/people/?page_size=100`, { headers: bearer(alice.access) })
    t.ok(all.json.results.every((p: { age: unknown }) => Number.isInteger(p.age)), 'every stored age is an integer')
    t.equal(all.json.results.filter((p: { name: string }) => p.name === 'Ada').length, 1, 'only the valid Ada reached the database')
  })

  await t.test('the gateway\'s own token endpoint and Basic users reach DRF, which reads the identity headers', async (t) => {
    const issued = await req(`${gw}/auth/token`, { method: 'POST', headers: json, body: JSON.stringify({ username: 'gwwriter', password: 'gw-writer-pw' }) })
    t.equal(issued.status, 200, 'the gateway issued a token')
    const token = issued.json.access_token as string
    const viaJwt = await req(`${gw}/api/whoami/`, { headers: bearer(token) })
    t.equal(viaJwt.status, 200)
    t.match(viaJwt.json, { username: 'gwwriter', via: 'jwt', authenticator: 'GatewayIdentityAuthentication', known_user: false })
    t.same(viaJwt.json.scopes, ['people:read', 'people:write'])
    const created = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, ...bearer(token) }, body: JSON.stringify({ name: 'Grace', age: 85 }) })
    t.equal(created.status, 201, 'DRF accepts a create from a gateway-only user (its scope check reads the headers)')

    const viaBasic = await req(`${gw}/api/whoami/`, { headers: { authorization: basic('gwreader', 'gw-reader-pw'), 'x-authenticated-user': 'alice', 'x-authenticated-scopes': 'people:write' } })
    t.equal(viaBasic.status, 200)
    t.match(viaBasic.json, { username: 'gwreader', via: 'basic', scopes: ['people:read'] }, 'the client\'s copies of the headers were replaced')
    const readerPost = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, authorization: basic('gwreader', 'gw-reader-pw') }, body: JSON.stringify({ name: 'No', age: 1 }) })
    t.equal(readerPost.status, 403, 'gwreader cannot create')
    t.equal((await req(`${gw}/api/whoami/`, { headers: { authorization: basic('gwreader', 'wrong') } })).status, 401)

    // Straight to DRF from an address that is not the gateway's: the headers are not believed.
    const spoofed = await new Promise<number>((resolve, reject) => {
      const r = request(`${drf.origin}/api/whoami/`, { localAddress: '127.0.0.3', headers: { 'x-authenticated-user': 'alice', 'x-authenticated-scopes': 'people:read people:write' } }, (res) => {
        res.resume(); resolve(res.statusCode ?? 0)
      })
      r.once('error', reject)
      r.end()
    })
    t.equal(spoofed, 401, 'DRF refuses identity headers from a non-gateway address')
  })

  await t.test('DRF\'s token endpoint is public but rate-limited per IP through the gateway', async (t) => {
    const attempt = (): ReturnType<typeof req> => req(`${gw}/api/token/`, { method: 'POST', headers: json, body: JSON.stringify({ username: 'alice', password: 'guess' }) })
    const start = await drfSawSettled('POST', '/api/token/')
    const first = await attempt()
    const remaining = Number(/;r=([0-9]+)/.exec(String(first.headers.ratelimit ?? ''))?.[1])
    t.equal(first.status, 401, 'a wrong password is DRF\'s 401')
    t.ok(Number.isInteger(remaining), `RateLimit header says ${remaining} left`)
    for (let i = 0; i < remaining; i++) t.equal((await attempt()).status, 401)
    // gunicorn writes its access line after the response has gone: wait for the allowed ones.
    const allowed = start + 1 + remaining
    for (let i = 0; i < 100 && drfSaw('POST', '/api/token/') < allowed; i++) await new Promise((resolve) => setTimeout(resolve, 50))
    t.equal(drfSaw('POST', '/api/token/'), allowed, 'DRF saw every allowed attempt')
    const limited = await attempt()
    t.equal(limited.status, 429, 'over the limit: 429 from the gateway')
    t.match(limited.json, { type: 'urn:portcullis:problem:rate-limited' })
    t.ok(Number(limited.headers['retry-after']) >= 1, 'with Retry-After')
    await new Promise((resolve) => setTimeout(resolve, 300)) // time for an access line, had DRF seen it
    t.equal(drfSaw('POST', '/api/token/'), allowed, 'DRF did not see the limited attempt')
  })
}

/**
 * A gateway user whose name is a DRF user's id (`1` is alice, `2` is bob, seeded in that order)
 * gets a token from the gateway's token endpoint; it never acts as that DRF user: its claims are
 * sub/iss/… (never user_id), its iss is not DRF's, and in the README's setup its key is not DRF's.
 */
async function neverAlias (drf: DrfServer): Promise<void> {
  const ids = JSON.parse(drf.manage(['shell', '-c', 'import json; from django.contrib.auth.models import User; print(json.dumps({u.username: u.id for u in User.objects.all()}))'])) as Record<string, number>
  t.same(ids, { alice: 1, bob: 2 }, 'DRF\'s users 1 and 2')
  const gwUsers = [
    { username: '1', passwordHash: hash('one-pw'), scopes: ['people:read'] },
    { username: '2', passwordHash: hash('two-pw'), scopes: ['people:read'] },
    { username: 'alice', passwordHash: hash('gw-alice-pw'), scopes: ['people:read'] }
  ]
  const passwords: Record<string, string> = { 1: 'one-pw', 2: 'two-pw', alice: 'gw-alice-pw' }
  const routes = (origin: string): unknown[] => [
    { name: 'whoami', prefix: '/api/whoami', upstream: `${origin}/api/whoami`, methods: ['GET'], auth: ['jwt'] },
    { name: 'people', prefix: '/api/people', upstream: `${origin}/api/people`, auth: ['jwt'] }
  ]
  const issue = async (gw: string, username: string): Promise<string> => {
    const res = await req(`${gw}/auth/token`, { method: 'POST', headers: json, body: JSON.stringify({ username, password: passwords[username] }) })
    if (res.status !== 200) throw new Error(`gateway token for ${username}: ${res.status} ${res.text}`)
    return res.json.access_token as string
  }
  const claimsOf = (token: string): Record<string, unknown> => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
  const verify = async (origin: string, token: string): Promise<number> =>
    (await req(`${origin}/api/token/verify/`, { method: 'POST', headers: json, body: JSON.stringify({ token }) })).status

  await t.test('the README\'s DRF setup: the gateway\'s own key and issuer, DRF\'s tokens by their iss; gateway tokens never verify at DRF', async (t) => {
    const { url: gw } = await startTestGateway(t, {
      users: gwUsers,
      jwt: {
        algorithms: ['HS256'],
        secret: 'g'.repeat(48), // the gateway's own key, not DRF's
        issuer: 'portcullis',
        subjectClaim: 'user_id', // stock simplejwt: DRF's tokens name their user by id
        requiredClaims: { token_type: 'access' },
        issuers: [{ issuer: 'people-drf', secret: drf.signingKey }]
      },
      tokenEndpoint: {},
      routes: routes(drf.origin)
    })
    for (const username of ['1', '2', 'alice']) {
      const token = await issue(gw, username)
      t.same(Object.keys(claimsOf(token)).sort(), ['exp', 'iat', 'iss', 'jti', 'scope', 'sub', 'token_type'], `${username}: no user_id in the gateway's token`)
      t.equal(await verify(drf.origin, token), 401, `${username}: DRF's /api/token/verify/ refuses it`)
      const direct = await req(`${drf.origin}/api/whoami/`, { headers: bearer(token) })
      t.equal(direct.status, 401, `${username}: straight to DRF: 401, not DRF's user`)
      const through = await req(`${gw}/api/whoami/`, { headers: bearer(token) })
      t.equal(through.status, 200, `${username}: through the gateway`)
      t.match(through.json, { username, authenticator: 'GatewayIdentityAuthentication' }, `${username}: DRF sees the gateway user ${username}, by name`)
      if (username !== 'alice') t.equal(through.json.known_user, false, `${username}: not DRF's user ${username}`)
    }
    // DRF's own tokens still work through the gateway (verified with DRF's key, by their iss).
    const pair = await req(`${gw}/api/people/`, { headers: bearer((await req(`${drf.origin}/api/token/`, { method: 'POST', headers: json, body: JSON.stringify({ username: 'bob', password: 'bob-pw-1' }) })).json.access) })
    t.equal(pair.status, 200, 'a DRF access token passes the gateway')
  })

  await t.test('even with one shared key: DRF refuses the gateway\'s tokens (iss), and without DRF\'s issuer check they name no DRF user', async (t) => {
    // The key shared (what the README used to show), DRF with its default issuer check.
    const { url: shared } = await startTestGateway(t, {
      users: gwUsers,
      jwt: { algorithms: ['HS256'], secret: drf.signingKey, subjectClaim: 'user_id', requiredClaims: { token_type: 'access' } },
      tokenEndpoint: {},
      routes: routes(drf.origin)
    })
    const one = await issue(shared, '1')
    t.equal(claimsOf(one).iss, 'portcullis')
    t.equal(await verify(drf.origin, one), 401, 'DRF\'s /api/token/verify/ refuses it: not its issuer')
    t.equal((await req(`${drf.origin}/api/people/`, { headers: bearer(one) })).status, 401, 'straight to DRF: 401')

    // A DRF that checks no issuer (DRF_JWT_ISSUER empty, simplejwt's default) and shares the key:
    // the signature verifies, but the token names no DRF user: 401, never alice, never a 500.
    const bare = await startDrf(t, { users: drfUsers, env: { DRF_JWT_ISSUER: '' } })
    if (bare === null) return
    const { url: gw } = await startTestGateway(t, {
      users: gwUsers,
      jwt: { algorithms: ['HS256'], secret: bare.signingKey, subjectClaim: 'user_id', requiredClaims: { token_type: 'access' } },
      tokenEndpoint: {},
      routes: routes(bare.origin)
    })
    for (const username of ['1', '2', 'alice']) {
      const token = await issue(gw, username)
      const direct = await req(`${bare.origin}/api/whoami/`, { headers: bearer(token) })
      t.equal(direct.status, 401, `${username}: straight to DRF: 401 (not DRF's user ${username}, not a 500)`)
      t.notMatch(direct.text, /alice|bob/, 'names no DRF user')
      const list = await req(`${bare.origin}/api/people/`, { headers: bearer(token) })
      t.equal(list.status, 401, `${username}: /api/people/ too`)
      const through = await req(`${gw}/api/whoami/`, { headers: bearer(token) })
      t.match(through.json, { username, authenticator: 'GatewayIdentityAuthentication' }, `${username}: through the gateway, the gateway user`)
    }
  })
}

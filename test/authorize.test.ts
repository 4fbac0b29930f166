import t, { type Test } from 'tap'
import { request as httpRequest } from 'node:http'
import { channels } from '../schemas/events.js'
import { hashApiKey } from '../plugins/auth/password-hash.js'
import { startUpstream } from './helper.js'
import { basic, cheapHash, gatewayFrom, hsToken, SECRET } from './auth-helper.js'

const KEY = 'pk_reader-key-0123456789abcdefghijklmn'
const top = {
  users: [
    { username: 'writer', passwordHash: cheapHash('w-pass'), scopes: ['people:read', 'people:write'] },
    { username: 'reader', passwordHash: cheapHash('r-pass'), scopes: ['people:read'] }
  ],
  apiKeys: [{ name: 'reader-key', keyHash: hashApiKey(KEY), scopes: ['people:read'] }],
  jwt: { algorithms: ['HS256'], secret: SECRET }
}
const scopes = { GET: ['people:read'], '*': ['people:write'] }

async function setup (t: Test, route: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    ...top,
    ...extra,
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt', 'basic', 'apiKey'], scopes, ...route },
      { name: 'public', prefix: '/public', upstream: `${upstream.origin}/public` }
    ]
  })
  return { upstream, app }
}

t.test('401 carries a challenge for each accepted scheme, in order; 403 names the missing scope', async (t) => {
  const { upstream, app } = await setup(t)
  const none = await app.inject({ url: '/api/people/' })
  t.equal(none.statusCode, 401)
  t.same(none.headers['www-authenticate'], ['Bearer realm="portcullis"', 'Basic realm="portcullis", charset="UTF-8"', 'ApiKey realm="portcullis", header="X-Api-Key"'])
  t.equal(none.json().detail, 'Credentials are required (jwt or basic or apiKey).')
  const badToken = await app.inject({ url: '/api/people/', headers: { authorization: 'Bearer nope.nope.nope' } })
  t.equal(badToken.statusCode, 401)
  t.same(badToken.headers['www-authenticate'], ['Bearer realm="portcullis", error="invalid_token"', 'Basic realm="portcullis", charset="UTF-8"', 'ApiKey realm="portcullis", header="X-Api-Key"'])

  const readerToken = hsToken({ sub: 'r', scope: 'people:read' })
  t.equal((await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${readerToken}` } })).statusCode, 200, 'GET needs people:read')
  t.equal((await app.inject({ method: 'HEAD', url: '/api/people/', headers: { authorization: `Bearer ${readerToken}` } })).statusCode, 200, 'HEAD needs what GET needs')
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE'] as const) {
    const res = await app.inject({ method, url: '/api/people/1', headers: { authorization: `Bearer ${readerToken}` } })
    t.equal(res.statusCode, 403, `${method} needs people:write ("*")`)
    t.equal(res.json().detail, 'Missing scope people:write.')
    t.equal(res.headers['www-authenticate'], 'Bearer realm="portcullis", error="insufficient_scope", scope="people:write"')
  }
  const basicReader = await app.inject({ method: 'POST', url: '/api/people/', headers: { authorization: basic('reader', 'r-pass') }, payload: { name: 'x' } })
  t.equal(basicReader.statusCode, 403, 'the same for a Basic user')
  t.equal(basicReader.headers['www-authenticate'], undefined, 'no bearer challenge for a Basic identity')
  const basicWriter = await app.inject({ method: 'POST', url: '/api/people/', headers: { authorization: basic('writer', 'w-pass') }, payload: { name: 'x' } })
  t.equal(basicWriter.statusCode, 200)
  const key = await app.inject({ method: 'DELETE', url: '/api/people/1', headers: { 'x-api-key': KEY } })
  t.equal(key.statusCode, 403, 'and for an API key')
  t.equal(upstream.requests.length, 3, 'only the allowed requests reached the upstream')
})

t.test('the first scheme the request carries credentials for decides', async (t) => {
  const { app } = await setup(t)
  const res = await app.inject({ url: '/api/people/', headers: { authorization: 'Bearer bad.bad.bad', 'x-api-key': KEY } })
  t.equal(res.statusCode, 401, 'a bad bearer token is not rescued by a good API key')
  const ok = await app.inject({ url: '/api/people/', headers: { 'x-api-key': KEY } })
  t.equal(ok.statusCode, 200)
})

t.test('require: claims the identity must carry', async (t) => {
  const { upstream, app } = await setup(t, { auth: ['jwt'], scopes: {}, require: { token_type: 'access', tier: ['gold', 'silver'] } })
  const ok = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${hsToken({ sub: 'a', token_type: 'access', tier: 'gold' })}` } })
  t.equal(ok.statusCode, 200)
  const refresh = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${hsToken({ sub: 'a', token_type: 'refresh', tier: 'gold' })}` } })
  t.equal(refresh.statusCode, 403)
  t.equal(refresh.json().detail, 'The token_type claim does not have an accepted value.')
  const bronze = await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${hsToken({ sub: 'a', token_type: 'access', tier: 'bronze' })}` } })
  t.equal(bronze.statusCode, 403)
  t.equal(upstream.requests.length, 1)
})

t.test('authFailure and authzDenied events are published', async (t) => {
  const { app } = await setup(t)
  const failures: unknown[] = []
  const denials: unknown[] = []
  // Each event names its request; the rest is compared.
  const withoutRequest = (m: unknown): unknown => { const { request, ...rest } = m as { request?: { id?: unknown } }; return typeof request?.id === 'string' ? rest : { missingRequest: m } }
  const onFailure = (m: unknown): void => { failures.push(withoutRequest(m)) }
  const onDenied = (m: unknown): void => { denials.push(withoutRequest(m)) }
  channels.authFailure.subscribe(onFailure)
  channels.authzDenied.subscribe(onDenied)
  t.teardown(() => { channels.authFailure.unsubscribe(onFailure); channels.authzDenied.unsubscribe(onDenied) })
  await app.inject({ url: '/api/people/' })
  await app.inject({ url: '/api/people/', headers: { authorization: basic('reader', 'wrong') } })
  await app.inject({ method: 'POST', url: '/api/people/', headers: { authorization: basic('reader', 'r-pass') } })
  t.same(failures, [{ route: 'people', scheme: 'none', reason: 'missing' }, { route: 'people', scheme: 'basic', reason: 'invalid' }])
  t.same(denials, [{ route: 'people', scope: 'people:write' }])
})

t.test('spoofed identity headers never reach the upstream, on public and protected routes', async (t) => {
  const { upstream, app } = await setup(t)
  const spoof = { 'x-authenticated-user': 'admin', 'x-authenticated-scopes': 'people:write admin', 'x-authenticated-via': 'jwt' }
  t.equal((await app.inject({ url: '/public/x', headers: spoof })).statusCode, 200)
  const onPublic = upstream.requests[0].headers
  t.equal(onPublic['x-authenticated-user'], undefined, 'public route: user removed')
  t.equal(onPublic['x-authenticated-scopes'], undefined, 'public route: scopes removed')
  t.equal(onPublic['x-authenticated-via'], undefined, 'public route: via removed')

  const token = hsToken({ sub: 'reader', scope: 'people:read' })
  const res = await app.inject({
    url: '/api/people/',
    headers: { ...spoof, authorization: `Bearer ${token}`, connection: 'x-authenticated-user, x-authenticated-scopes' }
  })
  t.equal(res.statusCode, 200)
  const seen = upstream.requests[1]
  t.equal(seen.headers['x-authenticated-user'], 'reader', 'the gateway\'s value, even when the client names it in Connection')
  t.equal(seen.headers['x-authenticated-scopes'], 'people:read')
  t.equal(seen.rawHeaders.filter((h) => h.toLowerCase() === 'x-authenticated-user').length, 1, 'exactly one copy')
})

t.test('identity header names are configurable, and the custom names are stripped too', async (t) => {
  const { upstream, app } = await setup(t, {}, { identityHeaders: { user: 'X-Remote-User', scopes: 'X-Remote-Scopes', via: 'X-Remote-Via' } })
  await app.inject({ url: '/public/x', headers: { 'x-remote-user': 'admin' } })
  t.equal(upstream.requests[0].headers['x-remote-user'], undefined)
  await app.inject({ url: '/api/people/', headers: { authorization: basic('reader', 'r-pass') } })
  t.match(upstream.requests[1].headers, { 'x-remote-user': 'reader', 'x-remote-scopes': 'people:read', 'x-remote-via': 'basic' })
  t.equal(upstream.requests[1].headers['x-authenticated-user'], undefined)
})

t.test('forwardAuthorization: bearer (default) on a public route, and none', async (t) => {
  const { upstream, app } = await setup(t, { forwardAuthorization: 'none' })
  await app.inject({ url: '/public/a', headers: { authorization: 'Bearer abc' } })
  await app.inject({ url: '/public/b', headers: { authorization: basic('x', 'y'), 'x-api-key': KEY } })
  t.equal(upstream.requests[0].headers.authorization, 'Bearer abc', 'public route forwards bearer tokens')
  t.equal(upstream.requests[1].headers.authorization, undefined, 'public route strips Basic credentials')
  t.equal(upstream.requests[1].headers['x-api-key'], undefined, 'and API keys')
  await app.inject({ url: '/api/people/', headers: { authorization: `Bearer ${hsToken({ sub: 'a', scope: 'people:read' })}` } })
  t.equal(upstream.requests[2].headers.authorization, undefined, 'forwardAuthorization: none strips the bearer token')
})

t.test('a failed authentication never reads the body: 5 MB with bad credentials is refused fast', async (t) => {
  const { upstream, app } = await setup(t, {}, { server: { bodyLimit: '10mb' } })
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  const started = Date.now()
  const { status, sent, connection } = await new Promise<{ status: number, sent: number, connection: string | undefined }>((resolve, reject) => {
    const req = httpRequest(`${url}/api/people/`, {
      method: 'POST',
      agent: false,
      headers: { authorization: basic('reader', 'wrong'), 'content-type': 'application/json', 'content-length': String(5 * 1024 * 1024) }
    })
    let sent = 0
    const chunk = Buffer.alloc(64 * 1024, 0x20)
    req.on('response', (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, sent, connection: res.headers.connection }))
    })
    req.on('error', reject)
    // Send slowly enough that the answer can come before the body is complete.
    const pump = (): void => {
      if (sent >= 5 * 1024 * 1024 || req.destroyed) { req.end(); return }
      sent += chunk.length
      if (req.write(chunk)) setImmediate(pump)
      else req.once('drain', pump)
    }
    req.flushHeaders()
    setTimeout(pump, 50)
  })
  t.equal(status, 401)
  t.equal(connection, 'close', 'the unread body is not drained: the connection closes after the 401')
  t.ok(Date.now() - started < 5000, 'no hang')
  t.comment(`client had sent ${sent} of ${5 * 1024 * 1024} bytes when the 401 arrived`)
  t.equal(upstream.requests.length, 0, 'the upstream was never contacted')
})

t.test('with request validation on the route: auth first, then validation, and the upstream gets both', async (t) => {
  const { upstream, app } = await setup(t, { validate: [{ method: 'POST', path: '/', body: 'Person' }] })
  const writer = { authorization: basic('writer', 'w-pass'), 'content-type': 'application/json' }
  const bad = await app.inject({ method: 'POST', url: '/api/people/', headers: { ...writer, authorization: basic('writer', 'nope') }, payload: '{"name":5}' })
  t.equal(bad.statusCode, 401, 'credentials are checked before the body')
  const invalid = await app.inject({ method: 'POST', url: '/api/people/', headers: writer, payload: '{"name":5}' })
  t.equal(invalid.statusCode, 400, 'then the body')
  const ok = await app.inject({ method: 'POST', url: '/api/people/', headers: writer, payload: '{"name":"Ada","age":36}' })
  t.equal(ok.statusCode, 200)
  t.equal(upstream.requests.length, 1)
  t.equal(upstream.requests[0].headers['x-authenticated-user'], 'writer', 'identity headers on a validated request')
  t.same(JSON.parse(upstream.requests[0].body.toString()), { name: 'Ada', age: 36 })
})

/**
 * Ambiguous path spellings (the "Hostile clients" issue): a path that some upstream would resolve
 * to another resource than the one the gateway checked is refused by the route's path guard
 * (plugins/edge/path-guard.ts), before any other stage; and no spelling of a validated rule's path reaches the
 * upstream with a body the validator did not check (plugins/validation/validate.ts matches a lenient
 * upstream's reading of the path too). Raw request lines over node:net: fetch and undici would
 * normalise these paths before sending them.
 */
import t, { type Test } from 'tap'
import { ERRORS, problemType } from '../schemas/errors.js'
import { hashApiKey } from '../plugins/auth/password-hash.js'
import { startTestGateway, startUpstream, type Upstream } from './helper.js'
import { sendRaw, type RawResponse } from './raw-http.js'

/** A POST with a JSON body, `Connection: close`, the target exactly as given. */
function post (target: string, body: string): string {
  return `POST ${target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
}

const INVALID = '{"name":5,"age":"x"}'
const VALID = '{"name":"Ada","age":36}'

function people (upstream: Upstream, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'people',
    prefix: '/api/people',
    upstream: `${upstream.origin}/api/people`,
    methods: ['GET', 'POST'],
    validate: [{ method: 'POST', path: '/', body: 'Person' }],
    ...extra
  }
}

function problem (t: Test, res: RawResponse, status: number, what: string): Record<string, unknown> {
  t.equal(res.status, status, `${what}: ${status}`)
  t.match(res.headers['content-type'], /^application\/problem\+json/, `${what}: problem+json`)
  return JSON.parse(res.body) as Record<string, unknown>
}

t.test('every spelling of a validated rule\'s path, with an invalid body: 400 or 404, never the upstream', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [people(up)] })
  const port = Number(new URL(url).port)
  const table = [
    '/api/people/', '/api/people//', '/api/people///', '/api/people',
    '/api/people/%2F', '/api/people/%2f', '/api/people%2F', '/api/people/%2F%2F',
    '/api/people/;', '/api/people/;x=1', '/api/people;x=1/', '/api/people;/', '/api/people/..;/',
    '/api/people/%00', '/api/people/%00/', '/api/people/%0d%0a', '/api/people/%09', '/api/people/%7F',
    '/api/people/\\', '/api/people\\', '/api/people/%5C', '/api/people/%5c',
    '/api/people/%20', '/api/people/%20/', '/api/people/%20%20', '/api/people/%C2%A0',
    '/api/people/%2e', '/api/people/%2E', '/api/people/./', '/api/people/.', '/api/people/%2e/',
    '/api/people/%252F', '/api/people/%252f', '/api/people/%25252F', '/api/people/%255C', '/api/people/%2520',
    '/api/people/%3B', '/api/people/%3Bx=1', '/api/people/%253B',
    '/api/people/.%2e/', '/api/people/%2e%2e/', '/api/people/..',
    '/api/people/?a=b', '/api/people?a=b', '/api/people/%2F?a=b', '/api/people/?a=%2F;b',
    '/api/people/#frag', '/api/people#frag', '/api/people/#', '/api/people/%23',
    '/API/people/', '/api/People/', '/api/people/./', '//api/people/', '/api//people/',
    '/api/%70eople/', '/%61pi/people/'
  ]
  for (const target of table) {
    const before = up.requests.length
    const res = await sendRaw(port, post(target, INVALID))
    t.ok(res.status === 400 || res.status === 404, `${target}: ${res.status} (400 or 404)`)
    t.match(res.headers['content-type'], /^application\/problem\+json/, `${target}: problem+json`)
    t.equal(up.requests.length, before, `${target}: the upstream got nothing`)
  }
  // Raw control bytes: Node's parser refuses them (HPE_INVALID_URL) before the gateway sees the
  // request; the answer is a 400 problem all the same.
  for (const target of ['/api/people/\x00', '/api/people/\x01', '/api/people/\t', '/api/people/\x7f']) {
    const res = await sendRaw(port, post(target, INVALID))
    problem(t, res, 400, JSON.stringify(target))
  }
  t.equal(up.requests.length, 0, 'nothing reached the upstream')

  // And the same route does forward a valid body, also under a legitimate %20: the table above
  // was refused for its spelling or its body, not because the route forwards nothing.
  t.equal((await sendRaw(port, post('/api/people/', VALID))).status, 200, 'a valid body is forwarded')
  t.equal((await sendRaw(port, post('/api/people/%20', VALID))).status, 200, '%20 is a legitimate space: forwarded once validated')
  t.same(up.requests.map((r) => r.url), ['/api/people/', '/api/people/%20'], 'as the client spelled them')
  t.same(up.requests.map((r) => JSON.parse(r.body.toString()) as unknown), [{ name: 'Ada', age: 36 }, { name: 'Ada', age: 36 }])
})

t.test('the path guard names what it refused; the query string is not the path', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [people(up)] })
  const port = Number(new URL(url).port)
  const cases: Array<[string, string]> = [
    ['/api/people/%2F', 'The path must not contain an encoded slash (%2F).'],
    ['/api/people/a%2fb', 'The path must not contain an encoded slash (%2F).'],
    ['/api/people/a\\b', 'The path must not contain a backslash (\\ or %5C).'],
    ['/api/people/a%5Cb', 'The path must not contain a backslash (\\ or %5C).'],
    ['/api/people/a;b', 'The path must not contain ";" parameters.'],
    ['/api/people/7;jsessionid=1', 'The path must not contain ";" parameters.'],
    ['/api/people/a%00b', 'The path must not contain a NUL byte or another control character (%00-%1F, %7F).'],
    ['/api/people/a%0Ab', 'The path must not contain a NUL byte or another control character (%00-%1F, %7F).'],
    ['/api/people/a#b', 'The request target must not contain a fragment (#).'],
    ['/api/people/%2e%2e/admin', 'The path must not contain "." or ".." segments.']
  ]
  for (const [target, detail] of cases) {
    const body = problem(t, await sendRaw(port, `GET ${target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n`), 400, target)
    t.match(body, { type: problemType('GW_ERR_BAD_REQUEST'), title: ERRORS.GW_ERR_BAD_REQUEST.title, status: 400, detail }, target)
  }
  // Not refused: these are in the query string, or ordinary characters in the path.
  for (const target of ['/api/people/?a=%2F&b=\\&c=;&d=%00&e=..', '/api/people/a%20b', '/api/people/100%25', '/api/people/%3B', '/api/people/v1.2/x.json', '/api/people/...', '/api/people/.x/', '/api/people/%23']) {
    t.equal((await sendRaw(port, `GET ${target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n`)).status, 200, `${target}: forwarded`)
  }
  t.equal(up.requests.length, 8, 'only those reached the upstream')
  t.equal(up.requests[0].url, '/api/people/?a=%2F&b=\\&c=;&d=%00&e=..', 'the query string as the client sent it')
})

const KEY = 'pk_paths-key-0123456789abcdefghijklmnop'

t.test('the path guard runs before the rate limit and authentication', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    apiKeys: [{ name: 'k', keyHash: hashApiKey(KEY), scopes: [] }],
    routes: [people(up, { auth: ['apiKey'], rateLimit: { max: 1, window: '1m', by: 'ip' } })]
  })
  const port = Number(new URL(url).port)
  for (let i = 0; i < 3; i++) {
    const res = await sendRaw(port, post('/api/people/%2F', VALID))
    problem(t, res, 400, `refused path #${i + 1}, no credentials`)
    t.notOk('www-authenticate' in res.headers, 'no authentication challenge: refused before authentication')
    t.notOk('ratelimit' in res.headers, 'not counted by the rate limit')
  }
  const res = await sendRaw(port, `GET /api/people/ HTTP/1.1\r\nHost: gw\r\nX-API-Key: ${KEY}\r\nConnection: close\r\n\r\n`)
  t.equal(res.status, 200, 'the first clean request is the first the rate limit counts')
  t.equal(up.requests.length, 1)
})

t.test('routes[].allowInPath lets a route take %2F, backslashes and ";", still validated; never NUL, dot segments or #', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [people(up, { allowInPath: ['encodedSlash', 'backslash', 'semicolon'] })] })
  const port = Number(new URL(url).port)
  // Each of these is `/api/people/` to some upstream: the rule applies, the invalid body is refused.
  for (const target of ['/api/people/%2F', '/api/people/%2f%2F', '/api/people/\\', '/api/people/%5c', '/api/people/;', '/api/people/;jsessionid=1', '/api/people/%252F', '/api/people/%20;x/']) {
    const res = await sendRaw(port, post(target, INVALID))
    const body = problem(t, res, 400, target)
    t.equal(body.type, problemType('GW_ERR_VALIDATION'), `${target}: refused by validation`)
  }
  for (const [target, detail] of [
    ['/api/people/%00', 'The path must not contain a NUL byte or another control character (%00-%1F, %7F).'],
    ['/api/people/..;/admin', 'The path must not contain "." or ".." segments.'],
    ['/api/people/.;x/admin', 'The path must not contain "." or ".." segments.'],
    ['/api/people/..%2Fadmin', 'The path must not contain "." or ".." segments.'],
    ['/api/people/..\\admin', 'The path must not contain "." or ".." segments.'],
    ['/api/people/x#y', 'The request target must not contain a fragment (#).']
  ]) {
    const body = problem(t, await sendRaw(port, post(target, VALID)), 400, target)
    t.equal(body.detail, detail, target)
  }
  // The prefix is never spelled otherwise, `;` allowed or not.
  problem(t, await sendRaw(port, post('/api/people;x=1/', INVALID)), 404, '/api/people;x=1/')
  t.equal(up.requests.length, 0, 'nothing reached the upstream so far')
  for (const target of ['/api/people/%2F', '/api/people/a;v=1', '/api/people/a\\b']) {
    t.equal((await sendRaw(port, post(target, VALID))).status, 200, `${target} with a valid body: forwarded`)
  }
  t.same(up.requests.map((r) => r.url), ['/api/people/%2F', '/api/people/a;v=1', '/api/people/a\\b'], 'spelled as the client sent them')
})

t.test('allowInPath is checked by the config schema', async (t) => {
  const up = await startUpstream(t)
  await t.rejects(startTestGateway(t, { routes: [people(up, { allowInPath: ['nul'] })] }), /allowInPath/)
  await t.rejects(startTestGateway(t, { routes: [people(up, { allowInPath: ['semicolon', 'semicolon'] })] }), /allowInPath/)
})

t.test('a request target that is not a path (absolute-form, asterisk-form) is refused with 400 on every route, prefix / included: a validation rule cannot be stepped around with `POST http://x/api/people`', async (t) => {
  const up = await startUpstream(t)
  const root = { ...people(up), name: 'root', prefix: '/', upstream: up.origin, validate: [{ method: 'POST', path: '/api/people', body: 'Person' }] }
  for (const routes of [[root], [people(up)]]) {
    const { url } = await startTestGateway(t, { routes })
    const port = Number(new URL(url).port)
    for (const target of ['http://gw/api/people', 'http://gw/api/people/', 'HTTP://gw/api/people', 'https://gw/api/people', 'http://evil.example/api/people', 'http://gw', '*']) {
      const res = await sendRaw(port, post(target, INVALID))
      const body = problem(t, res, 400, `${routes[0].prefix as string} ${target}`)
      t.equal(body.detail, 'The request target must be a path: absolute-form (http://host/path) and asterisk-form (*) are not served.', `${target}: said in words`)
    }
    // The route itself works.
    t.equal((await sendRaw(port, post('/api/people', VALID))).status, 200, `${routes[0].prefix as string}: an origin-form target is forwarded`)
    t.equal((await sendRaw(port, post('/api/people', INVALID))).status, 400, `${routes[0].prefix as string}: and validated`)
  }
  t.same(up.requests.map((r) => r.url), ['/api/people', '/api/people'], 'only the origin-form targets reached the upstream')
})

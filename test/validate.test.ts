/**
 * Request validation against a real upstream on 127.0.0.1:0 that records the exact bytes it
 * receives: what passes arrives as the JSON that was validated; what fails never arrives.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { channels, type ValidationFailureEvent } from '../schemas/events.js'
import { buildGateway } from '../src/app.js'
import { parseConfig, ConfigError } from '../src/config.js'
import { jsonMediaType } from '../plugins/validation/json-body.js'
import { call, startTestGateway, startUpstream, type CallResult, type Upstream } from './helper.js'

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url))

async function gateway (t: Test, up: Upstream, validate: unknown, route: Record<string, unknown> = {}, server: Record<string, unknown> = {}): Promise<string> {
  const { url } = await startTestGateway(t, {
    server,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, validate, ...route }]
  })
  return url
}

const PERSON_RULES = [{ method: 'POST', path: '/', body: 'Person' }]

function post (url: string, body: string | Buffer, contentType: string | null = 'application/json', extra: Record<string, string> = {}): Promise<CallResult> {
  const headers: Record<string, string> = { ...extra }
  if (contentType !== null) headers['content-type'] = contentType
  return call(url, { method: 'POST', headers, body })
}

interface Problem { status: number, type: string, detail: string, requestId: string, errors?: Array<{ pointer: string, message: string }> }

function problem (t: Test, res: CallResult, status: number): Problem {
  t.equal(res.status, status, `status ${status}`)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  const body = res.json as Problem
  t.equal(body.status, status)
  t.equal(body.requestId, res.headers['x-request-id'])
  return body
}

/** Every event published on the validation channel while the test runs. */
function recordEvents (t: Test): ValidationFailureEvent[] {
  const events: ValidationFailureEvent[] = []
  // Each event names its request; the rest is compared.
  const listener = (msg: unknown): void => {
    const { request, ...rest } = msg as ValidationFailureEvent
    events.push((typeof request?.id === 'string' ? rest : { missingRequest: msg }) as ValidationFailureEvent)
  }
  channels.validationFailure.subscribe(listener)
  t.teardown(() => { channels.validationFailure.unsubscribe(listener) })
  return events
}

/** One request over a raw socket, for what node:http will not send (lying lengths, odd headers). */
async function rawExchange (url: string, head: string, body: Buffer | string = '', options: { endAfter?: boolean, firstData?: boolean } = {}): Promise<string> {
  const { hostname, port } = new URL(url)
  const socket = connect(Number(port), hostname)
  await once(socket, 'connect')
  socket.write(head)
  if (body.length > 0) socket.write(body)
  if (options.endAfter === true) socket.end()
  let text = ''
  socket.on('data', (d: Buffer) => { text += d.toString('latin1') })
  const done = options.firstData === true ? once(socket, 'data') : once(socket, 'close')
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 3000))])
  socket.destroy()
  return text
}

t.test('a valid body passes, and the upstream receives exactly the JSON that was validated', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, PERSON_RULES)
  const sent = '{ "name" : "Ada Lovelace",\n  "age": 36.0 }'
  const res = await post(`${gw}/api/people/`, sent, 'application/json; charset=UTF-8')
  t.equal(res.status, 200)
  t.equal(up.requests.length, 1)
  const got = up.requests[0]
  const expected = JSON.stringify({ name: 'Ada Lovelace', age: 36 })
  t.equal(got.body.toString('utf8'), expected, 're-serialized: the bytes the validator saw, as JSON')
  t.equal(got.headers['content-length'], String(Buffer.byteLength(expected)), 'Content-Length of what is sent')
  t.equal(got.headers['content-type'], 'application/json')
  t.equal(got.url, '/api/people/')

  // Chunked (no Content-Length) is read, validated and sent with a length.
  const chunked = await call(`${gw}/api/people/`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: (async function * () { yield Buffer.from('{"name":"Alan",'); yield Buffer.from('"age":41}') })() })
  t.equal(chunked.status, 200)
  t.equal(up.requests[1].body.toString(), '{"name":"Alan","age":41}')
  t.equal(up.requests[1].headers['content-length'], '24')
  t.notOk(up.requests[1].headers['transfer-encoding'])

  // Unicode survives as characters; escapes are normalised by re-serialization.
  const uni = await post(`${gw}/api/people/`, '{"name":"\\u00e9t\u00e9 ✓","age":1}')
  t.equal(uni.status, 200)
  t.equal(up.requests[2].body.toString('utf8'), '{"name":"été ✓","age":1}')
})

t.test('invalid bodies are refused with 400 and pointers, and never reach the upstream', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, PERSON_RULES)
  const cases: Array<[string, string, Array<{ pointer: string, message: string | RegExp }>]> = [
    ['missing field', '{"name":"Ada"}', [{ pointer: '/age', message: 'is required' }]],
    ['both missing', '{}', [{ pointer: '/name', message: 'is required' }, { pointer: '/age', message: 'is required' }]],
    ['wrong type', '{"name":"Ada","age":"thirty"}', [{ pointer: '/age', message: 'must be integer' }]],
    ['"5" for an integer (no coercion)', '{"name":"Ada","age":"5"}', [{ pointer: '/age', message: 'must be integer' }]],
    ['a float for an integer', '{"name":"Ada","age":5.5}', [{ pointer: '/age', message: 'must be integer' }]],
    ['null', 'null', [{ pointer: '', message: 'must be object' }]],
    ['true', 'true', [{ pointer: '', message: 'must be object' }]],
    ['null field', '{"name":null,"age":1}', [{ pointer: '/name', message: 'must be string' }]],
    ['boolean field', '{"name":"Ada","age":true}', [{ pointer: '/age', message: 'must be integer' }]],
    ['an array for a string', '{"name":["Ada"],"age":1}', [{ pointer: '/name', message: 'must be string' }]],
    ['2^53+1', '{"name":"Ada","age":9007199254740993}', [{ pointer: '/age', message: /2\^53/ }]],
    ['extra property', '{"name":"Ada","age":1,"admin":true}', [{ pointer: '/admin', message: 'is not allowed' }]],
    ['__proto__', '{"name":"Ada","age":1,"__proto__":{"admin":true}}', [{ pointer: '/__proto__', message: 'is a forbidden key' }]],
    ['__proto__ spelled with escapes', '{"name":"Ada","age":1,"\\u005f_proto__":{"admin":true}}', [{ pointer: '/__proto__', message: 'is a forbidden key' }]],
    ['constructor.prototype', '{"name":"Ada","age":1,"constructor":{"prototype":{"admin":true}}}', [{ pointer: '/constructor', message: 'is a forbidden key' }]],
    ['deep nesting', '{"name":"Ada","age":1,"x":' + '['.repeat(70) + ']'.repeat(70) + '}', [{ pointer: '', message: /nested deeper than 64/ }]]
  ]
  for (const [name, body, expected] of cases) {
    const res = await post(`${gw}/api/people/`, body)
    const p = problem(t, res, 400)
    t.equal(p.type, 'urn:portcullis:problem:validation', `${name}: validation problem`)
    t.match(p.errors, expected, `${name}: ${JSON.stringify(p.errors)}`)
    t.notMatch(JSON.stringify(p), /schemaPath|#\/properties|additionalProperties|"keyword"/, `${name}: no schema internals`)
  }
  for (const [name, body] of [['not JSON', '{"name":'], ['empty', ''], ['whitespace', '  '], ['BOM', '\ufeff{"name":"a","age":1}']]) {
    const res = await post(`${gw}/api/people/`, body)
    t.equal(res.status, 400, `${name}: 400`)
  }
  const latin1 = problem(t, await post(`${gw}/api/people/`, Buffer.from('{"name":"caf\xe9","age":1}', 'latin1')), 400)
  t.equal(latin1.detail, 'The body is not valid UTF-8.', 'bytes that are not UTF-8 are refused, not replaced')
  t.equal(up.requests.length, 0, 'the upstream received nothing')
})

t.test('deep nesting and huge arrays are refused in bounded time', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, {
    maxDepth: 10,
    rules: [{ method: 'POST', path: '/', body: { type: 'array', items: { type: 'integer' } } }]
  }, { bodyLimit: '2mb' })
  const deep = '['.repeat(500_000) + ']'.repeat(500_000)
  let started = Date.now()
  const res = await post(`${gw}/api/people/`, deep)
  t.equal(res.status, 400, '500 000 levels: 400, no stack overflow')
  t.match((res.json as Problem).errors, [{ pointer: '', message: /deeper than 10/ }])
  t.ok(Date.now() - started < 5000, 'answered (no hang)')

  const items = JSON.stringify(Array.from({ length: 100_000 }, () => 'x'))
  started = Date.now()
  const many = await post(`${gw}/api/people/`, items)
  const p = problem(t, many, 400)
  t.ok((p.errors ?? []).length >= 1 && (p.errors ?? []).length <= 20, 'a bounded list of violations')
  t.same(p.errors?.[0], { pointer: '/0', message: 'must be integer' })
  t.ok(Date.now() - started < 5000, 'answered (no hang)')

  const ten = JSON.stringify([[[[[[[[[[1]]]]]]]]]])
  t.equal((await post(`${gw}/api/people/`, ten)).status, 400, '10 levels of arrays, plus the outer one: refused at maxDepth 10')
  t.equal((await post(`${gw}/api/people/`, '[1,2,3]')).status, 200)
  t.equal(up.requests.length, 1)
})

t.test('only JSON media types are accepted on a validated body; everything else is 415', async (t) => {
  const up = await startUpstream(t)
  const events = recordEvents(t)
  const gw = await gateway(t, up, PERSON_RULES)
  const body = '{"name":"Ada","age":36}'
  const refused: Array<string | null> = [
    'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', null, '', 'application/jsonx',
    'text/json', 'application/json, text/plain', 'application/json; charset=latin1', 'application/json;charset="utf-16"',
    'application/+json', 'json', 'application/json/x', 'application /json', 'application/json; charset'
  ]
  for (const type of refused) {
    const res = await post(`${gw}/api/people/`, body, type)
    const p = problem(t, res, 415)
    t.equal(p.type, 'urn:portcullis:problem:unsupported-media-type', `${String(type)}: 415`)
  }
  t.equal(up.requests.length, 0, 'nothing passed through unvalidated')
  t.ok(events.some((e) => e.part === 'content-type' && !e.reportOnly), 'counted as a content-type failure')

  const accepted = ['application/json', 'APPLICATION/JSON', 'Application/Json; Charset=UTF-8', 'application/json;charset="utf-8"', 'application/merge-patch+json', 'application/vnd.api+json; ext=x']
  for (const type of accepted) {
    const res = await post(`${gw}/api/people/`, body, type)
    t.equal(res.status, 200, `${type}: accepted`)
    t.equal(up.requests.at(-1)?.body.toString(), body)
  }
  t.equal(up.requests.at(-1)?.headers['content-type'], 'application/vnd.api+json', 'the JSON media type is passed on, lower-cased')

  // Parsed values are remembered, a bounded number of them: the answers stay the same when they
  // come from memory, and for values seen after the memory is full.
  const junk = Array.from({ length: 100 }, (_, i) => jsonMediaType(`application/x-junk-${i}`))
  t.ok(junk.every((v) => v === null), 'junk values are not JSON')
  for (const type of refused) t.equal(jsonMediaType(type ?? undefined), null, `${String(type)}: still refused`)
  for (const type of accepted) t.equal(jsonMediaType(type), type.toLowerCase().split(';')[0], `${type}: still accepted`)
  t.equal(jsonMediaType('application/problem+json; charset=utf-8'), 'application/problem+json', 'a value first seen after the memory is full is parsed')

  // What node:http trims (leading spaces and tabs, RFC 9110 §5.5 OWS) is JSON; a form body is not.
  const base = `POST /api/people/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${body.length}\r\n`
  const spaced = await rawExchange(gw, base + 'Content-Type:    application/json\r\n\r\n', body)
  t.match(spaced, /^HTTP\/1\.1 200/, 'leading spaces: validated as JSON')
  const tabbed = await rawExchange(gw, base + 'Content-Type:\tapplication/json\t\r\n\r\n', body)
  t.match(tabbed, /^HTTP\/1\.1 200/, 'tabs: validated as JSON')
  const form = await rawExchange(gw, base + 'Content-Type: application/x-www-form-urlencoded\r\n\r\n', body)
  t.match(form, /^HTTP\/1\.1 415/)
  // Two Content-Type headers: node keeps the first. Text first → 415; JSON first → validated as
  // JSON, and the upstream gets one Content-Type, the gateway's.
  const textFirst = await rawExchange(gw, base + 'Content-Type: text/plain\r\nContent-Type: application/json\r\n\r\n', body)
  t.match(textFirst, /^HTTP\/1\.1 415/, 'text first: refused')
  const jsonFirst = await rawExchange(gw, base + 'Content-Type: application/json\r\nContent-Type: text/plain\r\n\r\n', body)
  t.match(jsonFirst, /^HTTP\/1\.1 200/, 'JSON first: validated as JSON')
  const last = up.requests.at(-1)
  t.same(last?.rawHeaders.filter((_, i, all) => i % 2 === 1 && /^content-type$/i.test(all[i - 1])), ['application/json'], 'one Content-Type upstream')
  const gzip = await post(`${gw}/api/people/`, body, 'application/json', { 'content-encoding': 'gzip' })
  t.equal(gzip.status, 415, 'an encoded body is not read as JSON')
  t.equal(up.requests.length, accepted.length + 3, 'the refused ones never arrived')
})

t.test('over the limit: 413, with or without an honest Content-Length, and nothing reaches the upstream', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, PERSON_RULES, { bodyLimit: '1kb' })
  const big = JSON.stringify({ name: 'x'.repeat(2000), age: 1 })
  problem(t, await post(`${gw}/api/people/`, big), 413)

  // An honest Content-Length over the limit: answered before a single body byte is sent.
  const early = await rawExchange(gw, 'POST /api/people/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n')
  t.match(early, /^HTTP\/1\.1 413/, 'refused on the header alone')
  t.notMatch(early, /connection: close/i, 'the rest is read and discarded, bounded (server.lingeringClose), so a client still sending reads this answer')

  // Chunked, so no length up front: refused as soon as the count passes the limit.
  const chunked = await call(`${gw}/api/people/`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: (async function * () {
      yield Buffer.from('{"name":"')
      for (let i = 0; i < 200; i++) yield Buffer.from('x'.repeat(100))
      yield Buffer.from('","age":1}')
    })()
  }).catch((err: Error) => err)
  if (chunked instanceof Error) t.pass(`the connection was closed on the upload (${chunked.message})`)
  else problem(t, chunked, 413)

  // A Content-Length smaller than the body: only that many bytes are the body (truncated JSON).
  const lying = await rawExchange(gw, 'POST /api/people/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n', '{"name":"Ada","age":1}')
  t.match(lying, /^HTTP\/1\.1 400/, 'the declared length is the body; the rest is not JSON')
  // A Content-Length larger than what is sent: the body never completes.
  const short = await rawExchange(gw, 'POST /api/people/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n', '{"name":"Ada","age":1}', { endAfter: true })
  t.notMatch(short, /^HTTP\/1\.1 2/, 'an incomplete body is never forwarded')
  t.equal(up.requests.length, 0, 'the upstream received nothing')
})

t.test('query string and path parameters: coerced for validation, forwarded as sent', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, [
    {
      method: ['GET', 'DELETE'],
      path: '/:id/',
      params: { type: 'object', properties: { id: { type: 'integer', minimum: 1 } }, required: ['id'] },
      querystring: { type: 'object', properties: { page: { type: 'integer', minimum: 1 }, q: { type: 'string', maxLength: 5 } }, additionalProperties: false }
    },
    { method: 'GET', path: '/', headers: { type: 'object', properties: { 'x-tenant': { type: 'string', pattern: '^[a-z]+$' } }, required: ['x-tenant'] } }
  ])
  const ok = await call(`${gw}/api/people/7/?page=02&q=%20a+b`)
  t.equal(ok.status, 200)
  t.equal(up.requests.at(-1)?.url, '/api/people/7/?page=02&q=%20a+b', 'the upstream sees the original query string')
  t.equal((await call(`${gw}/api/people/7?page=1`)).status, 200, 'a missing trailing slash still matches the rule')

  const bad = problem(t, await call(`${gw}/api/people/abc/?page=0&q=toolong&x=1`), 400)
  t.same(bad.errors?.map((e) => `${e.pointer} ${e.message}`).sort(), [
    '/params/id must be integer',
    '/querystring/page must be >= 1',
    '/querystring/q must NOT have more than 5 characters',
    '/querystring/x is not allowed'
  ])
  problem(t, await call(`${gw}/api/people/0/`, { method: 'DELETE' }), 400)
  // An encoded spelling of the same path is the same path.
  problem(t, await call(`${gw}/api/people/%61bc/`), 400)
  problem(t, await call(`${gw}/api/people//abc//`), 400)

  const header = problem(t, await call(`${gw}/api/people/`), 400)
  t.same(header.errors, [{ pointer: '/headers/x-tenant', message: 'is required' }])
  const pattern = problem(t, await call(`${gw}/api/people/`, { headers: { 'x-tenant': 'ACME' } }), 400)
  t.same(pattern.errors, [{ pointer: '/headers/x-tenant', message: 'does not match the expected pattern' }], 'the regex is not echoed')
  t.equal((await call(`${gw}/api/people/`, { headers: { 'x-tenant': 'acme' } })).status, 200)
  t.equal(up.requests.length, 3)
})

t.test('requests no rule matches keep streaming untouched', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, PERSON_RULES)
  const text = 'not json at all'
  const put = await post(`${gw}/api/people/1/`, text, 'text/plain')
  t.equal(put.status, 200)
  t.equal(up.requests[0].body.toString(), text, 'byte for byte')
  t.equal(up.requests[0].headers['content-type'], 'text/plain')
  const other = await call(`${gw}/api/people/1/`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: '{ "age" : "5" }' })
  t.equal(other.status, 200)
  t.equal(up.requests[1].body.toString(), '{ "age" : "5" }', 'no rule, no re-serialization')
})

t.test('a method no rule names skips the lookup, but a broken percent-encoding is still refused', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, [...PERSON_RULES, { method: 'GET', path: '/:id/', params: { type: 'object', properties: { id: { type: 'integer' } } } }])
  t.equal((await call(`${gw}/api/people/`, { method: 'DELETE' })).status, 200, 'DELETE: no rule, forwarded')
  t.equal((await call(`${gw}/api/people/%41/`, { method: 'DELETE' })).status, 200, 'a valid encoding on a method with no rule')
  // Refused by the path guard or by validation's own check (whichever comes first), never forwarded.
  problem(t, await call(`${gw}/api/people/%E0%A4%A/`, { method: 'DELETE' }), 400)
  problem(t, await call(`${gw}/api/people/%zz?x=%41`, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'x' }), 400)
  // HEAD is validated with GET's rule.
  t.equal((await call(`${gw}/api/people/abc/`, { method: 'HEAD' })).status, 400)
  t.equal((await call(`${gw}/api/people/7/`, { method: 'HEAD' })).status, 200)
  t.equal(up.requests.length, 3, 'only the valid requests reached the upstream')
})

t.test('report mode lets invalid requests through, logs them and counts them', async (t) => {
  const up = await startUpstream(t)
  const events = recordEvents(t)
  const gw = await gateway(t, up, { mode: 'report', rules: PERSON_RULES })
  const invalid = '{"name":"Ada","age":"5"}'
  const res = await post(`${gw}/api/people/`, invalid)
  t.equal(res.status, 200, 'let through')
  t.equal(up.requests[0].body.toString(), invalid, 'as the client sent it')
  t.equal((await post(`${gw}/api/people/`, invalid, 'text/plain')).status, 200, 'a wrong media type too')
  t.equal(up.requests[1].headers['content-type'], 'text/plain')
  t.equal((await post(`${gw}/api/people/`, '{"name":"Ada","age":5}')).status, 200)
  t.same(events.filter((e) => e.route === 'people'), [
    { route: 'people', part: 'body', reportOnly: true },
    { route: 'people', part: 'content-type', reportOnly: true }
  ], 'one event per invalid request, marked reportOnly')
  // The limit is not a validation matter: still 413.
  const { url: small } = await startTestGateway(t, { server: { bodyLimit: '16b' }, routes: [{ name: 'r', prefix: '/r', upstream: up.origin, validate: { mode: 'report', rules: PERSON_RULES } }] })
  t.equal((await post(`${small}/r/`, invalid)).status, 413)
})

t.test('report mode writes one log line per violation with the request id', async (t) => {
  const up = await startUpstream(t)
  const lines: Array<Record<string, unknown>> = []
  const config = parseConfig({ logging: { level: 'info', accessLog: false }, routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, validate: { mode: 'report', rules: PERSON_RULES } }] })
  const app = await buildGateway(config, { logger: { level: 'info', stream: { write: (l: string) => { lines.push(JSON.parse(l) as Record<string, unknown>) } } } })
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  await post(`${url}/api/people/`, '{"age":"x"}', 'application/json', { 'x-request-id': 'trace-42' })
  const line = lines.find((l) => l.validation !== undefined)
  t.match(line, { reqId: 'trace-42', validation: { route: 'people', part: 'body', errors: [{ pointer: '/name' }, { pointer: '/age' }] } })
})

t.test('enforce mode publishes validationFailure events too', async (t) => {
  const up = await startUpstream(t)
  const events = recordEvents(t)
  const gw = await gateway(t, up, PERSON_RULES)
  await post(`${gw}/api/people/`, '{}')
  t.same(events.filter((e) => e.route === 'people'), [{ route: 'people', part: 'body', reportOnly: false }])
})

t.test('errorFormat: drf renders violations the way DRF does', async (t) => {
  const up = await startUpstream(t)
  const gw = await gateway(t, up, {
    errorFormat: 'drf',
    rules: [{ method: 'POST', path: '/', body: { type: 'object', required: ['name', 'address'], properties: { name: { type: 'string' }, age: { type: 'integer' }, address: { type: 'object', required: ['city'], properties: { city: { type: 'string' } } } } } }]
  })
  const res = await post(`${gw}/api/people/`, '{"age":"5","address":{}}')
  t.equal(res.status, 400)
  t.match(res.headers['content-type'], /^application\/json/)
  t.same(res.json, { name: ['is required'], age: ['must be integer'], address: { city: ['is required'] } })
  const root = await post(`${gw}/api/people/`, '[]')
  t.same(root.json, { non_field_errors: ['must be object'] })
  const parse = await post(`${gw}/api/people/`, '{')
  t.same(parse.json, { detail: 'The body is not valid JSON.' })
  t.equal((await post(`${gw}/api/people/`, '{}', 'text/plain')).status, 415, 'other statuses stay problem+json')
  t.equal(up.requests.length, 0)
})

t.test('schemas named three ways: schemas/ export, user module, JSON Schema file, inline', async (t) => {
  const up = await startUpstream(t)
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-validate-'))
  writeFileSync(join(dir, 'tag.schema.yaml'), 'type: object\nrequired: [tag]\nproperties:\n  tag: { type: string, minLength: 2 }\nadditionalProperties: false\n')
  writeFileSync(join(dir, 'tag.schema.json'), JSON.stringify({ type: 'object', required: ['tag'], properties: { tag: { type: 'string', maxLength: 3 } } }))
  const gw = await gateway(t, up, [
    { method: 'POST', path: '/person', body: 'Person' },
    { method: 'POST', path: '/module', body: `${FIXTURES}schemas.ts#Pet` },
    { method: 'POST', path: '/yaml', body: join(dir, 'tag.schema.yaml') },
    { method: 'POST', path: '/json', body: join(dir, 'tag.schema.json') },
    { method: 'POST', path: '/inline', body: { type: 'object', properties: { n: { type: 'number' } }, required: ['n'] } }
  ])
  const cases: Array<[string, string, number]> = [
    ['/person', '{"name":"a","age":1}', 200], ['/person', '{"name":"a"}', 400],
    ['/module', '{"species":"cat"}', 200], ['/module', '{"species":"dragon"}', 400],
    ['/yaml', '{"tag":"ab"}', 200], ['/yaml', '{"tag":"a"}', 400],
    ['/json', '{"tag":"ab"}', 200], ['/json', '{"tag":"abcd"}', 400],
    ['/inline', '{"n":1.5}', 200], ['/inline', '{"n":"1"}', 400]
  ]
  for (const [path, body, status] of cases) t.equal((await post(`${gw}/api/people${path}`, body)).status, status, `${path} ${body}: ${status}`)
})

t.test('bad schemas and unknown names are config errors naming the route', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people' }
  async function startError (validate: unknown): Promise<string> {
    try {
      const app = await buildGateway(parseConfig({ logging: { level: 'silent' }, routes: [{ ...route }, { ...route, name: 'b', prefix: '/b', validate }] }))
      await app.close()
    } catch (err) {
      return (err as Error).message
    }
    return 'no error'
  }
  t.match(await startError([{ method: 'POST', path: '/', body: 'Person' }, { method: 'PUT', path: '/:id', body: 'Persn' }]), 'routes[1].validate[1].body: unknown schema "Persn"')
  t.match(await startError({ rules: [{ method: 'POST', path: '/', body: { type: 'strin' } }] }), /routes\[1\]\.validate\.rules\[0\]\.body: invalid schema: schema is invalid/)
  t.match(await startError([{ method: 'POST', path: '/', body: { type: 'object', typo: 1 } }]), /routes\[1\]\.validate\[0\]\.body: invalid schema: strict mode: unknown keyword: "typo"/)
  t.match(await startError([{ method: 'POST', path: '/', body: { type: 'object', properties: { a: { $ref: '#/$defs/missing' } } } }]), /routes\[1\]\.validate\[0\]\.body: invalid schema: can't resolve reference/)
  t.match(await startError([{ method: 'POST', path: '/', body: { type: 'object', properties: { lo: { type: 'integer' }, hi: { type: 'integer', minimum: { $data: '1/lo' } } } } }]), /routes\[1\]\.validate\[0\]\.body: \$data references are not allowed/)
  t.match(await startError([{ method: 'POST', path: '/', body: { $async: true, type: 'object' } }]), /\$async schemas are not allowed/)
  t.match(await startError([{ method: 'POST', path: '/', querystring: './nope.json' }]), /routes\[1\]\.validate\[0\]\.querystring: cannot read schema file .*nope\.json: ENOENT/)
  t.match(await startError([{ method: 'POST', path: '/', body: `${FIXTURES}schemas.ts#Nope` }]), /has no schema export named "Nope"/)
  t.match(await startError({ openapi: join(FIXTURES, 'missing.yaml') }), /routes\[1\]\.validate\.openapi: cannot read .*missing\.yaml: ENOENT/)

  function problems (validate: unknown, extra: Record<string, unknown> = {}): string[] {
    try {
      parseConfig({ routes: [{ ...route, ...extra, validate }] }, { env: {} })
    } catch (err) {
      if (err instanceof ConfigError) return err.problems
      throw err
    }
    return []
  }
  t.same(problems([{ method: 'POST', path: '/' }]), ['routes[0].validate[0]: names no schema (body, querystring, params or headers)'])
  t.same(problems([{ method: 'POST', path: '/', body: 'A' }, { method: ['PUT', 'POST'], path: '/', body: 'B' }]), ['routes[0].validate[1]: POST / is already validated by routes[0].validate[0]'])
  t.same(problems({ unmatched: 'reject', rules: [] }), ['routes[0].validate.unmatched: "reject" needs openapi (rules alone never refuse a request they do not match)'])
  t.same(problems({ openapi: 'ftp://x/y.yaml' }), ['routes[0].validate.openapi: must be an http or https URL'.replace('an http or https URL', 'a file path or an http(s) URL')])
  t.ok(problems({ mode: 'loose' }).includes('routes[0].validate.mode: must be one of "enforce", "report"'))
  t.same(problems([{ method: 'POST', path: '/', body: 'Person' }], { methods: ['GET'] }), ['routes[0].validate[0].method: POST is not one of the route\'s methods (GET)'])
  t.same(problems([{ method: 'POST', path: 'relative', body: 'Person' }]).length, 1)
  t.same(problems({ maxDepth: 0 }).length, 1)
})

t.test('default gateway.yaml validates POST /api/people/ with Person', async (t) => {
  const { loadConfig } = await import('../src/config.js')
  const config = loadConfig(fileURLToPath(new URL('../gateway.yaml', import.meta.url)), { PEOPLE_API_URL: 'http://127.0.0.1:8000/api/people' })
  t.match(config.routes[0].validate, [{ method: 'POST', path: '/', body: 'Person' }])
})

t.test('README quick start: gateway.yaml in front of the example people API accepts the POST and refuses "36"', async (t) => {
  const { createPeopleApi } = await import('../examples/people-api.js')
  const api = createPeopleApi()
  api.listen(0, '127.0.0.1')
  await once(api, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { api.closeAllConnections(); api.close(() => resolve()) }))
  const { loadConfig } = await import('../src/config.js')
  const port = (api.address() as { port: number }).port
  const config = loadConfig(fileURLToPath(new URL('../gateway.yaml', import.meta.url)), { PEOPLE_API_URL: `http://127.0.0.1:${port}/api/people` })
  const app = await buildGateway(config, { logger: false })
  t.teardown(() => app.close())
  const gw = await app.listen({ host: '127.0.0.1', port: 0 })
  // gateway.yaml's demo user (people:write), as in the README.
  const demo = { authorization: 'Basic ' + Buffer.from('demo:demo-password').toString('base64') }
  const created = await post(`${gw}/api/people/`, '{"name":"Ada","age":36}', 'application/json', demo)
  t.equal(created.status, 201, created.body.toString())
  t.match(created.json, { id: Number, name: 'Ada', age: 36 })
  const refused = problem(t, await post(`${gw}/api/people/`, '{"name":"Ada","age":"36"}', 'application/json', demo), 400)
  t.same(refused.errors, [{ pointer: '/age', message: 'must be integer' }])
})

t.test('authentication runs first: a request without valid credentials never has its body read', async (t) => {
  const up = await startUpstream(t)
  const config = parseConfig({
    logging: { level: 'silent' },
    users: [{ username: 'alice', password: '${VALIDATE_TEST_PW}', scopes: ['people:write'] }],
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, auth: ['basic'], validate: PERSON_RULES }]
  }, { env: { VALIDATE_TEST_PW: 'alice-pw-1' } })
  const app = await buildGateway(config)
  t.teardown(() => app.close())
  const gw = await app.listen({ host: '127.0.0.1', port: 0 })
  const good = `Basic ${Buffer.from('alice:alice-pw-1').toString('base64')}`
  const bad = `Basic ${Buffer.from('alice:wrong').toString('base64')}`
  t.equal((await post(`${gw}/api/people/`, '{"name":"Ada","age":36}', 'application/json', { authorization: good })).status, 200)
  t.equal((await post(`${gw}/api/people/`, '{"name":"Ada"}', 'application/json', { authorization: good })).status, 400, 'authenticated, then validated')
  t.equal((await post(`${gw}/api/people/`, 'not json', 'text/plain', { authorization: bad })).status, 401, '401, not 415: auth came first')
  // The headers promise a large body that is never sent: the 401 arrives anyway.
  const head = `POST /api/people/ HTTP/1.1\r\nHost: x\r\nAuthorization: ${bad}\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n`
  t.match(await rawExchange(gw, head, '', { firstData: true }), /^HTTP\/1\.1 401/, 'answered without reading the body')
  t.equal(up.requests.length, 1)
})

t.test('checkValidation (portcullis validate) compiles every route\'s schemas without starting', async (t) => {
  const { checkValidation } = await import('../plugins/validation/validate.js')
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people' }
  await t.resolves(checkValidation(parseConfig({ routes: [{ ...route, validate: PERSON_RULES }] })))
  await t.rejects(checkValidation(parseConfig({ routes: [{ ...route, validate: [{ method: 'POST', path: '/', body: 'Persn' }] }] })), {
    name: 'ConfigError',
    problems: ['routes[0].validate[0].body: unknown schema "Persn"']
  })
})

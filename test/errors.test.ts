/**
 * The error contract, kept in step with its documentation (as fastify's errors test does): every
 * code in schemas/errors.ts is in README.md's error table with the same status, and the table
 * lists nothing else. Then the problem+json the gateway itself answers with, for a few of them,
 * checked against schemas/problem.ts: its fields, its type and title, and an `instance` that
 * never carries the query string.
 */
import t, { type Test } from 'tap'
import { connect } from 'node:net'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Compile } from 'typebox/compile'
import { ERRORS, problemType, type ErrorCode } from '../schemas/errors.js'
import { ProblemSchema } from '../schemas/problem.js'
import { call, freePort, startTestGateway, startUpstream, type CallResult } from './helper.js'

const ROOT = join(import.meta.dirname, '..')
const problemValidator = Compile(ProblemSchema)

/** `| \`GW_ERR_…\` | 404 | … |` rows of the README's "## Errors" section. */
function readmeErrorTable (): Array<{ code: string, status: number }> {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const start = readme.indexOf('\n## Errors\n')
  if (start === -1) throw new Error('README.md has no "## Errors" section')
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  return [...section.matchAll(/^\|\s*`(GW_ERR_[A-Z_]+)`\s*\|\s*([0-9]{3})\s*\|/gm)].map((m) => ({ code: m[1], status: Number(m[2]) }))
}

t.test('every error code is in the README with its status, and the README lists no other', async (t) => {
  const table = readmeErrorTable()
  const documented = new Map(table.map((row) => [row.code, row.status]))
  t.equal(documented.size, table.length, 'no code is listed twice')
  for (const [code, def] of Object.entries(ERRORS)) {
    t.ok(documented.has(code), `${code} is in the README's error table`)
    t.equal(documented.get(code), def.status, `${code}: the README says ${def.status}`)
  }
  for (const { code } of table) {
    t.ok(code in ERRORS, `${code} (in the README) is defined in schemas/errors.ts`)
  }
  for (const code of Object.keys(ERRORS) as ErrorCode[]) {
    t.match(problemType(code), /^urn:portcullis:problem:[a-z]+(-[a-z]+)*$/, `${code} has a well-formed problem type`)
    t.ok(ERRORS[code].status >= 400 && ERRORS[code].status <= 599, `${code} is an error status`)
  }
  t.equal(new Set(Object.keys(ERRORS).map((c) => problemType(c as ErrorCode))).size, Object.keys(ERRORS).length, 'problem types are unique')
})

/** Checks a gateway-made response against the contract; returns its body. */
function assertProblem (t: Test, res: CallResult, code: ErrorCode, path: string): Record<string, unknown> {
  const def = ERRORS[code]
  t.equal(res.status, def.status, `${code}: status ${def.status}`)
  t.match(res.headers['content-type'], /^application\/problem\+json/, `${code}: problem+json`)
  const body = res.json as Record<string, unknown>
  t.ok(problemValidator.Check(body), `${code}: the body matches schemas/problem.ts${problemValidator.Check(body) ? '' : `: ${JSON.stringify([...problemValidator.Errors(body)])}`}`)
  t.equal(body.type, problemType(code))
  t.equal(body.title, def.title)
  t.equal(body.status, def.status)
  t.type(body.detail, 'string')
  t.ok((body.detail as string).length > 0, 'a detail for the client')
  t.equal(body.instance, path, `${code}: instance is the path, without the query string`)
  t.notMatch(String(body.instance), /\?|secret/, 'the query string never appears in instance')
  t.equal(body.requestId, res.headers['x-request-id'], 'requestId is the X-Request-Id header')
  t.notMatch(res.body.toString(), /secret-token/, 'the query\'s secret appears nowhere in the body')
  return body
}

t.test('problem+json made by the gateway: shape, type, title, instance without the query', async (t) => {
  const up = await startUpstream(t)
  const hang = await startUpstream(t, () => { /* never answers */ })
  const refusedPort = await freePort()
  const { url: gw } = await startTestGateway(t, {
    server: { maxHeaderSize: '4kb' },
    routes: [
      { name: 'people', prefix: '/api/people', upstream: up.origin, methods: ['GET', 'POST'], bodyLimit: '1kb' },
      { name: 'down', prefix: '/down', upstream: `http://127.0.0.1:${refusedPort}`, retries: 0 },
      { name: 'slow', prefix: '/slow', upstream: hang.origin, timeout: '200ms' }
    ]
  })
  const q = '?token=secret-token&x=1'
  assertProblem(t, await call(`${gw}/nowhere/at/all${q}`), 'GW_ERR_NOT_FOUND', '/nowhere/at/all')
  const r405 = await call(`${gw}/api/people/7${q}`, { method: 'DELETE' })
  assertProblem(t, r405, 'GW_ERR_METHOD_NOT_ALLOWED', '/api/people/7')
  t.equal(r405.headers.allow, 'GET, POST')
  assertProblem(t, await call(`${gw}/api/people/../admin${q}`), 'GW_ERR_BAD_REQUEST', '/api/people/../admin')
  const badUrl = await call(`${gw}/api/people/%zz${q}`)
  assertProblem(t, badUrl, 'GW_ERR_BAD_REQUEST', '/api/people/%zz')
  t.equal(JSON.parse(badUrl.body.toString()).detail, 'The request URL is malformed.', 'a malformed percent-encoding: problem+json, not Fastify\'s own body')
  assertProblem(t, await call(`${gw}/api/people/${q}`, { method: 'POST', body: 'x'.repeat(2048) }), 'GW_ERR_PAYLOAD_TOO_LARGE', '/api/people/')
  assertProblem(t, await call(`${gw}/down/x${q}`), 'GW_ERR_BAD_GATEWAY', '/down/x')
  assertProblem(t, await call(`${gw}/slow/x${q}`), 'GW_ERR_GATEWAY_TIMEOUT', '/slow/x')
  t.equal(up.requests.length, 0, 'none of these reached the upstream')

  // A request head over server.maxHeaderSize is refused by the HTTP parser itself (431), still in the contract.
  const port = Number(new URL(gw).port)
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(`GET /api/people/${q} HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(8192)}\r\n\r\n`)
  let raw = ''
  socket.setEncoding('latin1').on('data', (d: string) => { raw += d })
  await once(socket, 'end')
  const [head, payload] = raw.split('\r\n\r\n')
  t.match(head, /^HTTP\/1\.1 431 /, 'a head over the limit: 431')
  t.match(head, /content-type: application\/problem\+json/i)
  const big = JSON.parse(payload) as Record<string, unknown>
  t.ok(problemValidator.Check(big), '431: the body matches schemas/problem.ts')
  t.match(big, { type: problemType('GW_ERR_HEADERS_TOO_LARGE'), status: 431, title: ERRORS.GW_ERR_HEADERS_TOO_LARGE.title })
  t.notMatch(String(big.instance), /\?|secret/, '431: no query string in instance')
  t.notMatch(payload, /secret-token/)
})

t.test('an error thrown by a plugin is a 500 problem without its message; a 4xx keeps its status', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-errors-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const plugin = join(dir, 'faulty.mjs')
  writeFileSync(plugin, `
export default async function faulty (scope) {
  scope.addHook('onRequest', async (request) => {
    if (request.url.includes('crash')) throw new Error('connect ECONNREFUSED 10.0.0.7:5432 password=hunter2')
    if (request.url.includes('teapot')) throw Object.assign(new Error('I am a teapot'), { statusCode: 418 })
  })
}
`)
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, { routes: [{ name: 'r', prefix: '/r', upstream: up.origin, plugins: [plugin] }] })
  const crash = await call(`${gw}/r/crash?token=secret-token`)
  assertProblem(t, crash, 'GW_ERR_INTERNAL', '/r/crash')
  for (const leak of ['ECONNREFUSED', '10.0.0.7', '5432', 'hunter2', 'Error:', ' at ']) {
    t.notOk(crash.body.toString().includes(leak), `the 500 does not mention "${leak}"`)
  }
  const teapot = await call(`${gw}/r/teapot?token=secret-token`)
  t.equal(teapot.status, 418, 'a plugin\'s own 4xx status is kept')
  t.match(teapot.headers['content-type'], /^application\/problem\+json/)
  t.match(teapot.json, { status: 418, instance: '/r/teapot', requestId: teapot.headers['x-request-id'] })
  t.equal(up.requests.length, 0)
})

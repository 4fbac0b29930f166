/**
 * The example route plugin (examples/plugins/request-signature.ts), loaded the way a user loads
 * it: compiled JavaScript named in routes[].plugins as `{ path, options }`. The upstream checks
 * each signature with the shared secret by itself (plain node:crypto, not the plugin's code);
 * a route without the plugin gets no signature; bad options stop the gateway at start.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import type { IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'
import { call, startTestGateway, startUpstream, transpileProject, type RecordedRequest } from './helper.js'

const SECRET = 'a-shared-secret-of-32-characters!!'
// The compiled plugin, where `npm run build` puts it (dist/examples/plugins/…), here transpiled from the current source.
const BUILD = transpileProject(t, ['examples'])
const PLUGIN = join(BUILD, 'examples', 'plugins', 'request-signature.js')

/** What an upstream does: recompute the HMAC over what it received and compare in constant time. */
function verifies (secret: string, r: RecordedRequest, maxSkewSeconds = 30): boolean {
  const h = r.headers as IncomingHttpHeaders & Record<string, string | undefined>
  const signature = h['x-gateway-signature']
  const timestamp = h['x-gateway-timestamp']
  const requestId = h['x-request-id']
  if (signature === undefined || timestamp === undefined || requestId === undefined) return false
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > maxSkewSeconds) return false
  const base = ['v1', r.method, r.url, timestamp, requestId].join('\n')
  const expected = Buffer.from('v1=' + createHmac('sha256', secret).update(base).digest('base64url'))
  const given = Buffer.from(signature)
  return given.length === expected.length && timingSafeEqual(given, expected)
}

t.test('each forwarded request carries a signature the upstream verifies with the shared secret', async (t) => {
  const signed = await startUpstream(t)
  const plain = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${signed.origin}/v1/people`, plugins: [{ path: PLUGIN, options: { secret: SECRET } }] },
      { name: 'open', prefix: '/open', upstream: plain.origin }
    ]
  })

  const requests: Array<[string, string, string | undefined]> = [
    ['GET', '/api/people/7?x=1&y=%2F', undefined],
    ['GET', '/api/people', undefined],
    ['DELETE', '/api/people/7', undefined],
    ['POST', '/api/people/', JSON.stringify({ name: 'Ada', age: 36 })]
  ]
  for (const [method, path, body] of requests) {
    const res = await call(`${gw}${path}`, { method, headers: { 'content-type': 'application/json', 'x-request-id': `sig-${method}` }, ...(body === undefined ? {} : { body }) })
    t.equal(res.status, 200, `${method} ${path}`)
    const got = signed.requests.at(-1) as RecordedRequest
    t.ok(verifies(SECRET, got), `${method} ${path}: the upstream verifies the signature over ${got.method} ${got.url}`)
    t.equal(got.headers['x-request-id'], `sig-${method}`, 'over the request id the upstream receives')
    t.notOk(verifies('another-secret-of-32-characters!!!', got), 'and it does not verify with another secret')
    if (body !== undefined) t.equal(got.body.toString(), body, 'the body is forwarded untouched')
  }
  t.match((signed.requests[0].headers['x-gateway-signature'] as string), /^v1=[A-Za-z0-9_-]{43}$/, 'v1=<base64url HMAC-SHA256>')

  // Anything altered on the way no longer verifies.
  const original = signed.requests[0]
  for (const [what, altered] of [
    ['path', { ...original, url: '/v1/people/8?x=1&y=%2F' }],
    ['query', { ...original, url: '/v1/people/7?x=2&y=%2F' }],
    ['method', { ...original, method: 'DELETE' }],
    ['request id', { ...original, headers: { ...original.headers, 'x-request-id': 'other' } }],
    ['timestamp', { ...original, headers: { ...original.headers, 'x-gateway-timestamp': String(Number(original.headers['x-gateway-timestamp']) - 1) } }]
  ] as const) {
    t.notOk(verifies(SECRET, altered), `a changed ${what} fails verification`)
  }
  t.notOk(verifies(SECRET, { ...original, headers: { ...original.headers, 'x-gateway-timestamp': String(Math.floor(Date.now() / 1000) - 3600) } }), 'an old timestamp fails')

  // A client cannot bring its own signature: its copies are dropped, the gateway's go upstream.
  await call(`${gw}/api/people/1`, { headers: { 'x-gateway-signature': 'v1=forged', 'x-gateway-timestamp': '1' } })
  const forged = signed.requests.at(-1) as RecordedRequest
  t.equal(forged.rawHeaders.filter((v) => v.toLowerCase() === 'x-gateway-signature').length, 1, 'one signature header upstream')
  t.ok(verifies(SECRET, forged), 'and it is the gateway\'s')

  // The plugin's hooks see only its route.
  const res = await call(`${gw}/open/x`)
  t.equal(res.status, 200)
  const unsigned = plain.requests.at(-1) as RecordedRequest
  t.notOk(unsigned.headers['x-gateway-signature'], 'a route without the plugin: no signature')
  t.notOk(unsigned.headers['x-gateway-timestamp'], 'and no timestamp')
})

t.test('bodies are still streamed on a signed route', async (t) => {
  const up = await startUpstream(t, async (req, res) => {
    const hash = createHash('sha256')
    for await (const chunk of req) hash.update(chunk as Buffer)
    res.end(hash.digest('hex'))
  }, { stream: true })
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'files', prefix: '/files', upstream: up.origin, bodyLimit: '16mb', plugins: [{ path: PLUGIN, options: { secret: SECRET, header: 'x-sig', timestampHeader: 'x-sig-time' } }] }]
  })
  const sent = createHash('sha256')
  const body = (async function * () {
    for (let i = 0; i < 128; i++) { const chunk = Buffer.alloc(64 * 1024, i); sent.update(chunk); yield chunk }
  })()
  const res = await call(`${gw}/files/big`, { method: 'PUT', body })
  t.equal(res.status, 200)
  t.equal(res.body.toString(), sent.digest('hex'), '8 MB arrive intact')
  const got = up.requests.at(-1) as RecordedRequest
  t.ok(got.headers['x-sig'], 'the header names are options')
  t.ok(got.headers['x-sig-time'])
  t.notOk(got.headers['x-gateway-signature'])
})

t.test('bad options stop the gateway at start, naming the option', async (t) => {
  const build = (plugin: unknown): Promise<unknown> => buildGateway(parseConfig({
    logging: { level: 'silent' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/x', plugins: [plugin] }]
  }))
  await t.rejects(build(PLUGIN), /request-signature: options\.secret: required/, 'no options at all')
  await t.rejects(build({ path: PLUGIN, options: { secret: 'short' } }), /options\.secret: must be at least 32 characters/)
  await t.rejects(build({ path: PLUGIN, options: { secret: SECRET, algorithm: 'md5' } }), /options\.algorithm: unknown option/)
  await t.rejects(build({ path: PLUGIN, options: { secret: SECRET, header: 'X Signature' } }), /options\.header: must be a lower-case header name/)
  await t.rejects(build({ path: PLUGIN, options: { secret: 42 } }), /options\.secret: /)
})

t.test('a TypeScript plugin named by the .js it was never compiled to: the start fails saying so', async (t) => {
  // Plain node (tap's own loader would find the .ts): the CLI from the same transpiled build.
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-plugin-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  copyFileSync(join(import.meta.dirname, '..', 'examples', 'plugins', 'request-signature.ts'), join(dir, 'request-signature.ts'))
  writeFileSync(join(dir, 'gateway.yaml'), `
logging: { level: silent }
routes:
  - name: people
    prefix: /api/people
    upstream: http://127.0.0.1:9/x
    plugins: [{ path: ./request-signature.js, options: { secret: "${SECRET}" } }]
`)
  const run = spawnSync(process.execPath, [join(BUILD, 'src', 'cli.js'), 'start', '--config', join(dir, 'gateway.yaml'), '--port', '0'], { encoding: 'utf8', timeout: 60_000 })
  t.equal(run.status, 1, 'exit 1')
  t.match(run.stderr, /plugin .*request-signature\.js: cannot be loaded: .*only its TypeScript source exists: compile it; `npm run build` puts examples\/ in dist\/examples\//)
})

/**
 * Security headers (`securityHeaders`) on proxied responses and on everything the gateway answers
 * itself (errors, 429, /healthz), the upstream's own values replaced, and no Server / X-Powered-By
 * version leaks from the upstream unless configured.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { call, startTestGateway, startUpstream, type CallResult } from './helper.js'
import { parseConfig } from '../src/config.js'

async function gateway (t: Test, securityHeaders?: Record<string, unknown>): Promise<string> {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, {
      'content-type': 'text/html',
      server: 'Apache/2.4.1 (Unix) OpenSSL/1.0.2',
      'x-powered-by': 'PHP/5.6.40',
      'referrer-policy': 'unsafe-url',
      'x-frame-options': 'ALLOWALL',
      'x-total-count': '42'
    })
    res.end('<p>hi</p>')
  })
  const { url } = await startTestGateway(t, {
    ...(securityHeaders === undefined ? {} : { securityHeaders }),
    routes: [
      { name: 'people', prefix: '/api/people', upstream: up.origin, rateLimit: { max: 1 } },
      { name: 'down', prefix: '/down', upstream: 'http://127.0.0.1:9', retries: 0 }
    ]
  })
  return url
}

function assertDefaults (t: Test, res: CallResult, what: string): void {
  t.equal(res.headers['x-content-type-options'], 'nosniff', `${what}: nosniff`)
  t.equal(res.headers['referrer-policy'], 'no-referrer', `${what}: Referrer-Policy`)
  t.equal(res.headers['x-frame-options'], 'DENY', `${what}: X-Frame-Options`)
  t.equal(res.headers['strict-transport-security'], undefined, `${what}: no HSTS unless configured`)
}

t.test('defaults: on proxied responses, the upstream\'s values replaced and its version leaks removed', async (t) => {
  const url = await gateway(t)
  const res = await call(`${url}/api/people/`)
  t.equal(res.status, 200)
  t.equal(res.body.toString(), '<p>hi</p>')
  assertDefaults(t, res, 'proxied')
  t.equal(res.headers.server, undefined, 'no Server header')
  t.equal(res.headers['x-powered-by'], undefined, 'no X-Powered-By header')
  t.equal(res.headers['x-total-count'], '42', 'other upstream headers pass')
  t.equal(res.headers['content-type'], 'text/html', 'the upstream\'s content type is kept')
})

t.test('defaults: on what the gateway answers itself', async (t) => {
  const url = await gateway(t)
  await call(`${url}/api/people/`)
  assertDefaults(t, await call(`${url}/api/people/`), '429')
  assertDefaults(t, await call(`${url}/nowhere`), '404')
  assertDefaults(t, await call(`${url}/down/`), '502')
  assertDefaults(t, await call(`${url}/healthz`), '/healthz')
  // Malformed HTTP is answered on the raw socket, before Fastify (clientErrorHandler).
  const { hostname, port } = new URL(url)
  const raw = await new Promise<string>((resolve, reject) => {
    let out = ''
    const socket = connect(Number(port), hostname, () => { socket.write('GET /api/people/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n') })
    socket.setEncoding('latin1').on('data', (d: string) => { out += d }).on('end', () => { resolve(out) }).on('error', reject)
  })
  t.match(raw, /^HTTP\/1\.1 400 /, 'malformed HTTP: 400')
  t.match(raw, /\r\nx-content-type-options: nosniff\r\n/i, 'malformed HTTP: nosniff')
  t.match(raw, /\r\nx-frame-options: DENY\r\n/i, 'malformed HTTP: X-Frame-Options')
  t.match(raw, /\r\nreferrer-policy: no-referrer\r\n/i, 'malformed HTTP: Referrer-Policy')
  const malformed = await call(`${url}/api/people/%zz`)
  t.equal(malformed.status, 400)
  assertDefaults(t, malformed, 'malformed URL')
})

t.test('HSTS when configured; upstream headers passed when asked', async (t) => {
  const url = await gateway(t, {
    hsts: { maxAge: '8760h', includeSubDomains: true, preload: true },
    referrerPolicy: 'strict-origin-when-cross-origin',
    frameOptions: false,
    hideUpstreamHeaders: ['x-powered-by']
  })
  const res = await call(`${url}/api/people/`)
  t.equal(res.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains; preload')
  t.equal(res.headers['referrer-policy'], 'strict-origin-when-cross-origin')
  t.equal(res.headers['x-frame-options'], 'ALLOWALL', 'frameOptions: false leaves the upstream\'s')
  t.equal(res.headers.server, 'Apache/2.4.1 (Unix) OpenSSL/1.0.2', 'Server passes when not in hideUpstreamHeaders')
  t.equal(res.headers['x-powered-by'], undefined)
  t.equal(res.headers['x-content-type-options'], 'nosniff')
})

t.test('headers set with reply.header() before forwarding reach the proxied response', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-plugin-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const plugin = join(dir, 'headers.mjs')
  writeFileSync(plugin, `
    export default function headers (scope, _opts, done) {
      scope.addHook('onRequest', (request, reply, next) => {
        reply.header('x-from-plugin', 'yes')
        reply.header('x-total-count', '7')
        reply.header('set-cookie', 'gw=1')
        reply.header('content-type', 'text/plain')
        reply.header('x-frame-options', 'SAMEORIGIN')
        next()
      })
      done()
    }
    headers[Symbol.for('skip-override')] = true`)
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'x-total-count': '42', 'set-cookie': 'up=1' })
    res.end('{}')
  })
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin, plugins: [plugin] }] })
  const res = await call(`${url}/api/people/`)
  t.equal(res.status, 200)
  t.equal(res.headers['x-from-plugin'], 'yes', 'a header the pipeline set is sent')
  t.equal(res.headers['x-total-count'], '7', 'and replaces the upstream\'s of the same name')
  t.same(res.headers['set-cookie'], ['up=1', 'gw=1'], 'Set-Cookie is merged, not replaced')
  t.equal(res.headers['content-type'], 'application/json', 'the body\'s own headers stay the upstream\'s')
  t.equal(res.headers['x-content-type-options'], 'nosniff')
  t.equal(res.headers['x-frame-options'], 'SAMEORIGIN', 'a security header the pipeline set itself is not replaced')
})

t.test('config defaults', async (t) => {
  const config = parseConfig({ routes: [{ name: 'p', prefix: '/p', upstream: 'http://127.0.0.1:9/p' }] }, { env: {} })
  t.same(config.securityHeaders, {
    contentTypeOptions: true, referrerPolicy: 'no-referrer', frameOptions: 'DENY', hideUpstreamHeaders: ['server', 'x-powered-by']
  })
})

/**
 * Which client IP the gateway believes (`server.trustProxy`), and that rate limits, the access
 * log and the X-Forwarded-For sent upstream all use that same address: with trustProxy off a
 * client rotating X-Forwarded-For / X-Real-IP / Forwarded stays in one bucket; behind a trusted
 * hop (count or CIDR list) the forwarded client address is used, and only as far as trusted.
 */
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { call, startUpstream, type Upstream } from './helper.js'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'

/** A gateway (max 3 per IP) whose access-log lines are kept. */
async function gateway (t: Test, trustProxy: unknown): Promise<{ url: string, up: Upstream, access: Array<Record<string, unknown>> }> {
  const up = await startUpstream(t)
  const access: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) {
        if (line === '') continue
        const entry = JSON.parse(line) as Record<string, unknown>
        if (entry.msg === 'request completed') access.push(entry)
      }
      cb()
    }
  })
  const config = parseConfig({
    server: { trustProxy },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, rateLimit: { max: 3, window: '1m' } }]
  })
  const app = await buildGateway(config, { logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { url, up, access }
}

const SPOOFS: Array<Record<string, string>> = [
  { 'x-forwarded-for': '203.0.113.1' },
  { 'x-forwarded-for': '203.0.113.2, 198.51.100.2' },
  { 'x-real-ip': '203.0.113.3' },
  { forwarded: 'for=203.0.113.4;proto=https' },
  { 'x-forwarded-for': '2001:db8::5', 'x-real-ip': '203.0.113.5', forwarded: 'for="[2001:db8::5]"' },
  { 'x-forwarded-for': '10.0.0.6' }
]

t.test('trustProxy off: rotating X-Forwarded-For / X-Real-IP / Forwarded stays in one bucket', async (t) => {
  const { url, up, access } = await gateway(t, false)
  const statuses = []
  for (const headers of SPOOFS) statuses.push((await call(`${url}/api/people/`, { headers })).status)
  t.same(statuses, [200, 200, 200, 429, 429, 429], 'one bucket: the peer address')
  t.equal(up.requests.length, 3)
  for (const seen of up.requests) {
    t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'the upstream gets the peer address only')
    t.equal(seen.headers['x-real-ip'], undefined, 'X-Real-IP removed')
    t.equal(seen.headers.forwarded, undefined, 'Forwarded removed')
  }
  t.equal(access.length, 6)
  t.ok(access.every((l) => l.ip === '127.0.0.1'), 'the access log names the peer address')
})

t.test('trustProxy: 1 hop: the forwarded client address is the client, in limits, logs and upstream', async (t) => {
  const { url, up, access } = await gateway(t, 1)
  const as = async (xff: string): Promise<number> => (await call(`${url}/api/people/`, { headers: { 'x-forwarded-for': xff } })).status
  t.same([await as('203.0.113.7'), await as('203.0.113.7'), await as('203.0.113.7'), await as('203.0.113.7')], [200, 200, 200, 429], 'client 203.0.113.7: its own bucket')
  t.equal(await as('198.51.100.9'), 200, 'another client behind the same proxy has its own bucket')
  // Only one hop is trusted: what the client wrote to the left of it is not believed.
  t.equal(await as('1.2.3.4, 203.0.113.7'), 429, 'a spoofed entry left of the trusted hop changes nothing')
  t.equal(up.requests[0].headers['x-forwarded-for'], '203.0.113.7, 127.0.0.1', 'the upstream gets the trusted chain')
  t.equal(up.requests[3].headers['x-forwarded-for'], '198.51.100.9, 127.0.0.1')
  t.same(access.map((l) => l.ip), ['203.0.113.7', '203.0.113.7', '203.0.113.7', '203.0.113.7', '198.51.100.9', '203.0.113.7'], 'the access log names the same client')
})

t.test('trustProxy as a CIDR list: believed only from a trusted peer', async (t) => {
  const trusted = await gateway(t, ['127.0.0.0/8', '::1/128'])
  const res = await call(`${trusted.url}/api/people/`, { headers: { 'x-forwarded-for': '203.0.113.8' } })
  t.equal(res.status, 200)
  t.equal(trusted.up.requests[0].headers['x-forwarded-for'], '203.0.113.8, 127.0.0.1')
  t.equal(trusted.access[0].ip, '203.0.113.8')

  const untrusted = await gateway(t, ['10.0.0.0/8'])
  const statuses = []
  for (const headers of SPOOFS.slice(0, 4)) statuses.push((await call(`${untrusted.url}/api/people/`, { headers })).status)
  t.same(statuses, [200, 200, 200, 429], 'the peer is not a trusted proxy: one bucket')
  t.equal(untrusted.up.requests[0].headers['x-forwarded-for'], '127.0.0.1')
})

/**
 * Slow and oversized clients, on loopback only and bounded in time: 500 slow-loris sockets (one
 * header byte every 1.5 s) are all closed by `server.timeouts.headers` while normal requests keep
 * being answered; slow bodies are closed by `server.timeouts.request`; header floods (too many
 * fields, or too many bytes) get 431.
 */
import { connect, type Socket } from 'node:net'
import t from 'tap'
import { call, startTestGateway, startUpstream } from './helper.js'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

interface Slow { socket: Socket, closedAt: number | null, received: string }

/** A socket on `port` that sends `head` and then one byte of `drip` every `everyMs`, until closed. */
function slowSocket (port: number, head: string): Slow {
  const slow: Slow = { socket: connect(port, '127.0.0.1'), closedAt: null, received: '' }
  slow.socket.setNoDelay(true)
  slow.socket.on('data', (d: Buffer) => { slow.received += d.toString('latin1') })
  slow.socket.on('error', () => {})
  slow.socket.on('close', () => { slow.closedAt = Date.now() })
  slow.socket.write(head)
  return slow
}

t.test('500 slow-loris sockets are closed by the headers timeout; normal requests still succeed', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    server: { timeouts: { headers: '2s', request: '4s' } },
    routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin }]
  })
  const port = Number(new URL(url).port)

  const baseline: number[] = []
  for (let i = 0; i < 20; i++) {
    const started = performance.now()
    t.equal((await call(`${url}/api/people/`)).status, 200)
    baseline.push(performance.now() - started)
  }

  const started = Date.now()
  const sockets: Slow[] = Array.from({ length: 500 }, () => slowSocket(port, 'GET /api/people/ HTTP/1.1\r\nHost: gw\r\nX-Slow: '))
  const bodies: Slow[] = Array.from({ length: 10 }, () => slowSocket(port, 'POST /api/people/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n'))
  const all = [...sockets, ...bodies]
  const drip = setInterval(() => {
    for (const s of all) if (s.closedAt === null && !s.socket.destroyed) s.socket.write('a')
  }, 1500)
  t.teardown(() => { clearInterval(drip); for (const s of all) s.socket.destroy() })

  // Normal requests while the slow sockets hang on.
  const during: number[] = []
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now()
    const res = await call(`${url}/api/people/`)
    during.push(performance.now() - t0)
    t.equal(res.status, 200, `normal request ${i + 1} answered while 500 sockets drip`)
  }

  // Bounded wait: headers timeout 2 s (+ Node's 1 s check interval); request timeout 4 s.
  const deadline = started + 12_000
  while (all.some((s) => s.closedAt === null) && Date.now() < deadline) await sleep(100)
  clearInterval(drip)
  const open = all.filter((s) => s.closedAt === null).length
  t.equal(open, 0, 'every slow socket was closed by the gateway')
  const timedOut = sockets.filter((s) => s.received.startsWith('HTTP/1.1 408')).length
  t.equal(timedOut, 500, 'each slow-loris socket got a 408 before the close')
  t.equal(bodies.filter((s) => s.closedAt !== null).length, 10, 'the slow bodies were closed too')
  const closedWithin = Math.max(...sockets.map((s) => (s.closedAt ?? Infinity) - started))
  t.ok(closedWithin < 12_000, `last slow-loris socket closed ${closedWithin} ms after opening`)

  const p99 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.ceil(xs.length * 0.99) - 1]
  t.comment(`normal request p99: ${p99(baseline).toFixed(1)} ms alone, ${p99(during).toFixed(1)} ms with 500 slow-loris sockets (not asserted)`)
  t.ok(p99(during) < 5000, 'no normal request hung')
  t.equal((await call(`${url}/api/people/`)).status, 200, 'and the gateway serves normally afterwards')
})

t.test('header floods get 431', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    server: { maxHeaders: 50, maxHeaderSize: '8kb' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin }]
  })
  const fields = (n: number): string[] => Array.from({ length: n }, (_, i) => [`x-h${i}`, 'v']).flat()

  const ok = await call(`${url}/api/people/`, { headers: fields(40) })
  t.equal(ok.status, 200, '40 fields (+ host) pass')

  const many = await call(`${url}/api/people/`, { headers: fields(60) })
  t.equal(many.status, 431, '60 fields: 431')
  t.match(many.headers['content-type'], /^application\/problem\+json/)
  t.match(many.json, { type: 'urn:portcullis:problem:headers-too-large', status: 431 })

  const flood = await call(`${url}/api/people/`, { headers: fields(1000) })
  t.equal(flood.status, 431, '1000 small fields: 431')

  const big = await call(`${url}/api/people/`, { headers: { 'x-big': 'a'.repeat(10_000) } })
  t.equal(big.status, 431, 'one 10 kB field (over maxHeaderSize): 431')
  t.match(big.json, { status: 431 })
  t.equal(up.requests.length, 1, 'only the normal request reached the upstream')
})

/**
 * Refusals arrive: a client still uploading when the gateway answers (413, 401) reads the answer,
 * because the rest of its body is read and discarded, bounded (server.lingeringClose), before the
 * connection closes; a client waiting for `100 Continue` gets the final status instead.
 */
import t, { type Test } from 'tap'
import { connect } from 'node:net'
import { call, startTestGateway, startUpstream } from './helper.js'
import { cheapHash } from './auth-helper.js'

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const basicUser = { username: 'alice', passwordHash: cheapHash('pw'), scopes: [] }

/** A gateway with a Basic-auth route /basic and a public route /pub, both to one upstream. */
async function basicAndPublic (t: Test): Promise<{ up: Awaited<ReturnType<typeof startUpstream>>, gw: string }> {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    users: [basicUser],
    routes: [{ name: 'basic', prefix: '/basic', upstream: up.origin, auth: ['basic'] }, { name: 'pub', prefix: '/pub', upstream: up.origin }]
  })
  return { up, gw }
}

t.test('fetch uploading 16 MB to a 1 MB route gets 413 ten times in ten; 3 MB without credentials to a Basic route gets 401 ten in ten', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    users: [basicUser],
    routes: [
      { name: 'small', prefix: '/small', upstream: up.origin, bodyLimit: '1mb' },
      { name: 'basic', prefix: '/basic', upstream: up.origin, auth: ['basic'], bodyLimit: '8mb' }
    ]
  })
  const big = Buffer.alloc(16 * 1024 * 1024, 120)
  const three = Buffer.alloc(3 * 1024 * 1024, 120)
  const outcomes: string[] = []
  for (let i = 0; i < 10; i++) {
    const res = await fetch(`${gw}/small/upload`, { method: 'POST', body: big }).then((r) => String(r.status), (e: Error) => `${e.name}: ${(e.cause as Error | undefined)?.message ?? e.message}`)
    outcomes.push(res)
  }
  t.same(outcomes, Array(10).fill('413'), '16 MB to a 1 MB route: 413 each time')
  const refusals: string[] = []
  for (let i = 0; i < 10; i++) {
    const res = await fetch(`${gw}/basic/upload`, { method: 'PUT', body: three }).then((r) => String(r.status), (e: Error) => `${e.name}: ${(e.cause as Error | undefined)?.message ?? e.message}`)
    refusals.push(res)
  }
  t.same(refusals, Array(10).fill('401'), '3 MB without credentials to a Basic route: 401 each time')
  t.equal(up.requests.length, 0, 'nothing reached the upstream')
})

t.test('Expect: 100-continue on a request that is refused gets the final status, never 100, and the connection closes', async (t) => {
  const { up, gw } = await basicAndPublic(t)
  const port = Number(new URL(gw).port)
  const ask = async (path: string, extra = ''): Promise<string> => {
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nExpect: 100-continue\r\n${extra}\r\n`)
    let got = ''
    socket.on('data', (d: Buffer) => { got += d.toString() })
    await sleep(400)
    socket.destroy()
    return got
  }
  const refused = await ask('/basic/x')
  t.match(refused, /^HTTP\/1\.1 401 /, 'the first line is the final status')
  t.notMatch(refused, /100 Continue/, 'no 100 was sent')
  t.match(refused, /connection: close/i, 'and the connection closes (the client sent no body)')
  const accepted = await ask('/pub/y')
  t.match(accepted, /^HTTP\/1\.1 100 Continue\r\n\r\n/, 'an accepted request gets its 100 when the gateway starts reading the body')
  t.equal(up.requests.length, 0, 'the upstream saw no body-less request (the body never came)')
})

t.test('the lingering is bounded: past lingeringClose.size or .time the connection closes', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    server: { lingeringClose: { time: '600ms', size: '64kb' } },
    routes: [{ name: 'small', prefix: '/small', upstream: up.origin, bodyLimit: '1kb' }]
  })
  const port = Number(new URL(gw).port)
  // Size: keeps sending well past 64 KB of discarded body.
  const fast = connect(port, '127.0.0.1')
  fast.on('error', () => {})
  fast.write('POST /small/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n')
  let answer = ''
  fast.on('data', (d: Buffer) => { answer += d.toString() })
  const fastClosed = new Promise((resolve) => { fast.once('close', resolve) })
  for (let i = 0; i < 40 && !fast.destroyed; i++) { fast.write(Buffer.alloc(8192)); await sleep(5) }
  await Promise.race([fastClosed, sleep(2000)])
  t.match(answer, /^HTTP\/1\.1 413 /, 'the 413 arrived')
  t.ok(fast.destroyed || fast.readableEnded, 'past the size bound the connection was closed')

  // Time: trickles slowly, under the size bound, past the time bound.
  const slow = connect(port, '127.0.0.1')
  slow.on('error', () => {})
  slow.write('POST /small/y HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n')
  const started = Date.now()
  const slowClosed = new Promise((resolve) => { slow.once('close', resolve) })
  const trickle = setInterval(() => { if (!slow.destroyed) slow.write('x') }, 50)
  await Promise.race([slowClosed, sleep(3000)])
  clearInterval(trickle)
  t.ok(slow.destroyed, 'the slow client was disconnected')
  t.ok(Date.now() - started < 2500, 'within about lingeringClose.time')
  t.equal(up.requests.length, 0)
  // And a refused body sent in full leaves the connection usable.
  const res = await call(`${gw}/small/z`, { method: 'POST', body: Buffer.alloc(4096) })
  t.equal(res.status, 413)
})

t.test('a client that asked for Connection: close and is still uploading when refused (401) reads the answer: the gateway half-closes and drains, bounded', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    users: [basicUser],
    server: { lingeringClose: { time: '2s', size: '64mb' } },
    routes: [{ name: 'basic', prefix: '/basic', upstream: up.origin, auth: ['basic'], bodyLimit: '8mb' }]
  })
  const port = Number(new URL(gw).port)
  const size = 4 * 1024 * 1024
  for (const version of ['1.1', '1.0']) {
    const socket = connect(port, '127.0.0.1')
    let answer = ''
    let error = ''
    socket.on('error', (e: Error) => { error = e.message })
    const closed = new Promise<string>((resolve) => { socket.once('close', () => { resolve('closed') }) })
    // The client reads nothing until it has sent everything, as a busy client would. Before the
    // half-close, Node destroyed the socket as soon as the 401 was written (the response says
    // Connection: close), the rest of the body made the kernel reset the connection, and the
    // reset threw the unread 401 away.
    socket.pause()
    const head = `PUT /basic/x HTTP/${version}\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${size}\r\n\r\n`
    socket.write(head)
    await sleep(100)
    await new Promise<void>((resolve) => { socket.write(Buffer.alloc(size, 120), () => { resolve() }) })
    await sleep(100)
    socket.on('data', (d: Buffer) => { answer += d.toString('latin1') })
    socket.resume()
    const outcome = await Promise.race([closed, sleep(8000).then(() => 'still open after 8 s')])
    t.equal(error, '', `HTTP/${version}: no reset`)
    socket.destroy()
    t.equal(outcome, 'closed', `HTTP/${version}: the connection closed once the client had sent everything`)
    t.match(answer, /^HTTP\/1\.1 401 Unauthorized\r\n/, `HTTP/${version}: the client read the 401`)
    t.match(answer, /connection: close/i, `HTTP/${version}: which said the connection closes`)
  }
  // Half-closed is still bounded: a client that sends part of its body, then only a trickle, and
  // never closes its side, is cut off at lingeringClose.time (2 s here), with the 401 delivered.
  // Its writes start failing (a reset) once the gateway has closed the socket.
  const idle = connect({ port, host: '127.0.0.1', allowHalfOpen: true }) // it does not close its side on the gateway's FIN
  let idleAnswer = ''
  let idleError = ''
  idle.on('error', (e: Error) => { idleError = e.message })
  idle.on('data', (d: Buffer) => { idleAnswer += d.toString('latin1') })
  const started = Date.now()
  idle.write(`PUT /basic/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${size}\r\n\r\n`)
  idle.write(Buffer.alloc(64 * 1024, 120))
  const failed = (): boolean => idleError !== '' || idle.destroyed
  while (!failed() && Date.now() - started < 6000) {
    await sleep(200)
    if (!idle.destroyed) idle.write(Buffer.alloc(1024, 120))
  }
  const took = Date.now() - started
  idle.destroy()
  t.match(idleError, /ECONNRESET|EPIPE/, 'the gateway closed the idle half-closed connection')
  t.ok(took >= 1500 && took < 4500, `at about lingeringClose.time (${took} ms)`)
  t.match(idleAnswer, /^HTTP\/1\.1 401 /, 'after its 401')
  t.equal(up.requests.length, 0, 'nothing reached the upstream')
})

t.test('a request pipelined behind a refused Connection: close upload is never served (RFC 9112 §9.6), though the connection is still read', async (t) => {
  const { up, gw } = await basicAndPublic(t)
  const socket = connect(Number(new URL(gw).port), '127.0.0.1')
  let got = ''
  socket.on('data', (d: Buffer) => { got += d.toString('latin1') })
  socket.on('error', () => {})
  socket.write('PUT /basic/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n')
  await sleep(200) // the 401 is sent while the body is unread: the gateway half-closes and drains
  socket.write(Buffer.alloc(100, 120))
  socket.write('GET /pub/y HTTP/1.1\r\nHost: x\r\n\r\n')
  await sleep(500)
  socket.destroy()
  t.match(got, /^HTTP\/1\.1 401 /)
  t.equal(got.match(/HTTP\/1\.1 /g)?.length, 1, 'one answer on the connection')
  t.same(up.requests.map((r) => r.url), [], 'the pipelined GET to a public route never reached the upstream')
})

t.test('a Connection: close client that goes away while the gateway lingers: the socket is released and the next request is served', async (t) => {
  const { up, gw } = await basicAndPublic(t)
  const socket = connect(Number(new URL(gw).port), '127.0.0.1')
  let got = ''
  socket.on('data', (d: Buffer) => { got += d.toString('latin1') })
  socket.on('error', () => {})
  socket.write('PUT /basic/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000000\r\n\r\n')
  socket.write(Buffer.alloc(64 * 1024, 120))
  for (let i = 0; i < 50 && !got.includes('\r\n\r\n'); i++) await sleep(20)
  t.match(got, /^HTTP\/1\.1 401 /, 'the 401 came while the body was unread')
  socket.destroy() // gone mid-linger, body unfinished
  await sleep(100)
  const next = await call(`${gw}/pub/after`)
  t.equal(next.status, 200, 'the next request is served')
  t.same(up.requests.map((r) => r.url), ['/after'], 'only it reached the upstream (the route strips its prefix)')
})

t.test('a request Node\'s parser refuses (an obs-fold header) while its 4 MB body is still coming: the 400 arrives, the rest is drained, the connection closes', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    server: { lingeringClose: { time: '2s', size: '64mb' } },
    routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }]
  })
  const port = Number(new URL(gw).port)
  const size = 4 * 1024 * 1024
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  let answer = ''
  let error = ''
  socket.on('error', (e: Error) => { error = e.message })
  const closed = new Promise<string>((resolve) => { socket.once('close', () => { resolve('closed') }) })
  // The client reads nothing until it has sent everything, as a busy client would. Before the
  // drain, the gateway destroyed the socket at the next chunk after the 400: the reset threw away
  // the 400 still unread in the client's receive buffer (ECONNRESET, no answer).
  socket.pause()
  socket.write(`POST /pub/x HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\nTransfer-Encoding: chunked\r\n\r\n${size.toString(16)}\r\n`)
  socket.write(Buffer.alloc(size, 120))
  await new Promise<void>((resolve) => { socket.end('\r\n0\r\n\r\n', () => { resolve() }) })
  await sleep(100)
  socket.on('data', (d: Buffer) => { answer += d.toString('latin1') })
  socket.resume()
  const outcome = await Promise.race([closed, sleep(8000).then(() => 'still open after 8 s')])
  t.equal(error, '', 'no reset')
  socket.destroy()
  t.equal(outcome, 'closed', 'the connection closed once the client had sent everything')
  t.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n/, 'the client read the 400')
  t.match(answer, /application\/problem\+json/, 'as problem+json')
  t.equal(up.requests.length, 0, 'nothing reached the upstream')
})

t.test('after a parse error the drain is bounded too: a client that never stops sending is cut off past lingeringClose.size', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, {
    server: { lingeringClose: { time: '5s', size: '256kb' } },
    routes: [{ name: 'pub', prefix: '/pub', upstream: up.origin }]
  })
  const port = Number(new URL(gw).port)
  // allowHalfOpen: the client goes on sending after the gateway's FIN, as a hostile one would.
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
  socket.on('error', () => {})
  let answer = ''
  socket.on('data', (d: Buffer) => { answer += d.toString('latin1') })
  const closed = new Promise<void>((resolve) => { socket.once('close', () => { resolve() }) })
  socket.write('POST /pub/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\nContent-Length: 100000000\r\n\r\n')
  let sent = 0
  for (let i = 0; i < 400 && !socket.destroyed; i++) {
    socket.write(Buffer.alloc(16384))
    sent += 16384
    await sleep(2)
  }
  const outcome = await Promise.race([closed.then(() => 'closed'), sleep(5000).then(() => 'still open')])
  socket.destroy()
  t.equal(outcome, 'closed', `the gateway closed the connection (after ${sent} bytes sent)`)
  t.ok(sent >= 256 * 1024, `the rest was drained up to the bound first, not cut at once (${sent} bytes sent)`)
  t.ok(sent < 400 * 16384, 'and the client could not go on sending for ever')
  t.match(answer, /^HTTP\/1\.1 400 /, 'the 400 was read before the close')
  t.equal(up.requests.length, 0, 'nothing reached the upstream')
})

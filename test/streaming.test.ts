/**
 * Bodies are streamed, not buffered: 50 MB each way through the gateway arrives intact (sha256
 * compared at the other end) while the process's memory stays flat; bodies over the limit are
 * refused before (honest Content-Length) or while (chunked) they arrive, and the upstream never
 * gets a complete one. With routes[].requestBuffering (the default) every body is read whole before
 * the upstream is contacted (test/request-buffering.test.ts); with it off, only small bodies
 * (server.requestBuffer) are, and the rest stream.
 */
import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { call, startTestGateway, startUpstream } from './helper.js'

const MB = 1024 * 1024
const SIZE = 50 * MB
const CHUNK = 64 * 1024

/** SIZE bytes of random data in CHUNK pieces, hashed as they are produced. */
function source (size: number, hash: ReturnType<typeof createHash>): AsyncGenerator<Buffer> {
  return (async function * () {
    const block = randomBytes(CHUNK)
    for (let sent = 0; sent < size; sent += CHUNK) {
      // A different chunk each time (so a repeated or dropped chunk changes the hash), cheaply.
      block.writeUInt32BE(sent / CHUNK, 0)
      const chunk = Buffer.from(block.subarray(0, Math.min(CHUNK, size - sent)))
      hash.update(chunk)
      yield chunk
    }
  })()
}

// A full GC on demand, so that what is measured is memory held, not garbage awaiting collection.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

interface Growth { rss: number, held: number }

/**
 * Samples this process's memory (gateway, upstream and client all live here) while `work` runs,
 * collecting garbage before each sample. Returns the largest growth over the starting values of
 * RSS and of the memory held in Buffers (`arrayBuffers`: where a buffered body would be, and
 * not moved by V8 compiling code or by the allocator). RSS also moves with the allocator (freed
 * Buffers are not always handed back to the OS), so its bound is loose.
 */
async function growthDuring (work: () => Promise<void>): Promise<Growth> {
  const held = (): number => process.memoryUsage().arrayBuffers
  gc()
  const start = { rss: process.memoryUsage().rss, held: held() }
  const peak = { ...start }
  const sample = (): void => {
    gc()
    peak.rss = Math.max(peak.rss, process.memoryUsage().rss)
    peak.held = Math.max(peak.held, held())
  }
  const timer = setInterval(sample, 250)
  try {
    await work()
  } finally {
    clearInterval(timer)
  }
  sample()
  return { rss: peak.rss - start.rss, held: peak.held - start.held }
}

// Buffering a 50 MB body would add at least 50 MB to both. Streaming stays below, but a sample
// can still count Buffers that are dead and not yet swept (V8 frees their memory concurrently,
// after the GC): figures of 0 to 20 MB have been seen for the same run, hence generous bounds.
const MAX_RSS_GROWTH = 40 * MB
const MAX_HELD_GROWTH = 40 * MB

function assertFlat (t: Test, growth: Growth, what: string): void {
  const mb = (n: number): string => (n / MB).toFixed(1)
  t.comment(`${what}: RSS grew ${mb(growth.rss)} MB, Buffers grew ${mb(growth.held)} MB while 50 MB passed`)
  t.ok(growth.held < MAX_HELD_GROWTH, `${what}: memory held in Buffers stays flat (${mb(growth.held)} MB < ${mb(MAX_HELD_GROWTH)} MB)`)
  t.ok(growth.rss < MAX_RSS_GROWTH, `${what}: RSS stays well under the body size (${mb(growth.rss)} MB < ${mb(MAX_RSS_GROWTH)} MB)`)
}

t.test('a 50 MB upload reaches the upstream intact, streamed', async (t) => {
  const up = await startUpstream(t, async (req, res) => {
    const hash = createHash('sha256')
    let bytes = 0
    for await (const chunk of req) { hash.update(chunk as Buffer); bytes += (chunk as Buffer).length }
    const text = JSON.stringify({ bytes, sha256: hash.digest('hex') })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  }, { stream: true })
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'files', prefix: '/files', upstream: `${up.origin}/store`, bodyLimit: '64mb' }]
  })

  for (const framing of ['content-length', 'chunked'] as const) {
    const sent = createHash('sha256')
    let res: Awaited<ReturnType<typeof call>> | undefined
    const growth = await growthDuring(async () => {
      res = await call(`${gw}/files/big.bin`, {
        method: 'PUT',
        headers: framing === 'content-length'
          ? { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) }
          : { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
        body: source(SIZE, sent)
      })
    })
    t.equal(res?.status, 200, `${framing}: 200`)
    t.same(res?.json, { bytes: SIZE, sha256: sent.digest('hex') }, `${framing}: the upstream got every byte, in order`)
    t.equal(up.requests.at(-1)?.url, '/store/big.bin')
    assertFlat(t, growth, `${framing} upload`)
  }
})

t.test('a 50 MB download reaches the client intact, streamed', async (t) => {
  let sentHash = ''
  const up = await startUpstream(t, async (_req, res) => {
    const hash = createHash('sha256')
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': SIZE })
    for await (const chunk of source(SIZE, hash)) {
      if (!res.write(chunk)) await once(res, 'drain')
    }
    sentHash = hash.digest('hex')
    res.end()
  })
  const { url: gw } = await startTestGateway(t, { routes: [{ name: 'files', prefix: '/files', upstream: up.origin }] })

  const path = '/files/big.bin'
  const received = createHash('sha256')
  let bytes = 0
  let status = 0
  let length: string | undefined
  const growth = await growthDuring(async () => {
    const req = httpRequest(`${gw}${path}`, { agent: false })
    req.end()
    const [res] = await once(req, 'response') as [IncomingMessage]
    status = res.statusCode ?? 0
    length = res.headers['content-length']
    for await (const chunk of res) { received.update(chunk as Buffer); bytes += (chunk as Buffer).length }
  })
  t.equal(status, 200)
  t.equal(bytes, SIZE, `${path}: every byte arrived`)
  t.equal(received.digest('hex'), sentHash, `${path}: sha256 matches what the upstream sent`)
  t.equal(length, String(SIZE), 'the upstream\'s Content-Length passes')
  assertFlat(t, growth, `download ${path}`)
})

t.test('a body over the limit with an honest Content-Length is 413 before the upstream is contacted', async (t) => {
  let connections = 0
  const up = await startUpstream(t)
  up.server.on('connection', () => { connections++ })
  const { url: gw } = await startTestGateway(t, {
    server: { bodyLimit: '1mb' },
    routes: [
      { name: 'small', prefix: '/small', upstream: up.origin },
      { name: 'tiny', prefix: '/tiny', upstream: up.origin, bodyLimit: '1kb' }
    ]
  })

  for (const [path, length] of [['/small/x', 1024 * 1024 + 1], ['/tiny/x', 1025], ['/small/x', 50 * MB]] as const) {
    // Only the headers are sent: the answer must come without the gateway waiting for the body.
    const req = httpRequest(`${gw}${path}`, { method: 'POST', agent: false, headers: { 'content-type': 'application/octet-stream', 'content-length': String(length) } })
    req.flushHeaders()
    req.on('error', () => {})
    const [res] = await once(req, 'response') as [IncomingMessage]
    const chunks: Buffer[] = []
    for await (const c of res) chunks.push(c as Buffer)
    req.destroy()
    const body = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>
    t.equal(res.statusCode, 413, `${path} with Content-Length ${length}: 413`)
    t.match(res.headers['content-type'], /^application\/problem\+json/)
    t.match(body, { type: 'urn:portcullis:problem:payload-too-large', status: 413, instance: path })
  }
  // At the limit exactly, it passes.
  const ok = await call(`${gw}/tiny/x`, { method: 'POST', body: Buffer.alloc(1024, 97) })
  t.equal(ok.status, 200, 'a body of exactly the limit passes')
  t.equal(up.requests.length, 1, 'only that one reached the upstream')
  t.equal(connections, 1, 'the refused ones never opened a connection to the upstream')
})

t.test('a chunked body over the limit is refused and the upstream never gets it whole', async (t) => {
  const seen: Array<{ bytes: number, complete: boolean }> = []
  const up = await startUpstream(t, (req, res) => {
    const record = { bytes: 0, complete: false }
    seen.push(record)
    req.on('data', (c: Buffer) => { record.bytes += c.length })
    req.on('end', () => { record.complete = true; res.end('got it all') })
    req.on('error', () => {})
  }, { stream: true })
  const { url: gw } = await startTestGateway(t, {
    routes: [{ name: 'upload', prefix: '/upload', upstream: up.origin, bodyLimit: '1mb' }]
  })

  const result = await call(`${gw}/upload/x`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
    body: source(4 * MB, createHash('sha256'))
  }).then((res) => ({ status: res.status, json: res.json }), (err: Error) => ({ status: 0, error: err.message }))
  if (result.status === 0) {
    t.pass(`the upload was aborted (${(result as { error: string }).error})`)
  } else {
    t.equal(result.status, 413, 'chunked body over the limit: 413')
    t.match((result as { json: unknown }).json, { type: 'urn:portcullis:problem:payload-too-large', status: 413 })
  }
  // Give a partial upload time to be noticed upstream.
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.notOk(seen.some((r) => r.complete), 'the upstream never received a complete body')
  t.ok(seen.every((r) => r.bytes <= 1 * MB), `the upstream received at most the limit (${seen.map((r) => r.bytes).join(', ') || 'nothing'})`)

  // A chunked body under the limit passes, and the gateway is still serving.
  const small = await call(`${gw}/upload/y`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' }, body: source(512 * 1024, createHash('sha256')) })
  t.equal(small.status, 200)
  t.equal(small.body.toString(), 'got it all')
  t.equal(seen.at(-1)?.bytes, 512 * 1024)
})

t.test('requestBuffering: false — small bodies are read whole before the upstream is contacted (server.requestBuffer); larger ones are streamed', async (t) => {
  const heads: string[] = []
  const up = await startUpstream(t, async (req, res) => {
    heads.push(`${req.method ?? ''} ${req.url ?? ''} ${req.headers['content-length'] ?? 'chunked'}`)
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const body = Buffer.concat(chunks)
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') }))
  }, { stream: true })
  const { url: gw } = await startTestGateway(t, {
    server: { requestBuffer: '1kb' },
    routes: [{ name: 'files', prefix: '/files', upstream: up.origin, requestBuffering: false }]
  })

  // Under, at and over the buffer size: every body arrives intact, with its length.
  for (const size of [1, 1000, 1024, 1025, 200 * 1024]) {
    const body = randomBytes(size)
    const res = await call(`${gw}/files/${size}`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body })
    t.equal(res.status, 200, `${size} bytes: 200`)
    t.same(res.json, { bytes: size, sha256: createHash('sha256').update(body).digest('hex') }, `${size} bytes: the upstream got them all`)
    t.equal(heads.at(-1), `POST /${size} ${size}`, `${size} bytes: sent with a Content-Length`)
  }

  /** Sends the head and half of a body of `size` bytes, then holds back the rest. */
  async function halfSent (path: string, size: number): Promise<{ finish: () => Promise<IncomingMessage>, abort: () => void }> {
    const req = httpRequest(`${gw}${path}`, { method: 'PUT', agent: false, headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) } })
    req.on('error', () => {})
    req.write(Buffer.alloc(size / 2, 97))
    await new Promise((resolve) => setTimeout(resolve, 300))
    return {
      finish: async () => { req.end(Buffer.alloc(size / 2, 98)); return (await once(req, 'response') as [IncomingMessage])[0] },
      abort: () => { req.destroy() }
    }
  }

  // A small body the client has not finished: the upstream has not heard of the request yet.
  const before = heads.length
  const small = await halfSent('/files/held', 1000)
  t.equal(heads.length, before, 'half a small body: nothing reached the upstream')
  const res = await small.finish()
  res.resume()
  await once(res, 'end')
  t.equal(res.statusCode, 200, 'once the body is complete it is forwarded')
  t.equal(heads.at(-1), 'PUT /held 1000')

  // A client that gives up halfway: the upstream never hears of it, and the gateway goes on serving.
  const gone = await halfSent('/files/gone', 1000)
  gone.abort()
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.notOk(heads.some((h) => h.startsWith('PUT /gone')), 'an abandoned small body never reached the upstream')
  t.equal((await call(`${gw}/files/after`, { method: 'POST', body: 'x' })).status, 200, 'still serving')

  // A large body is streamed: the upstream gets the head before the client has sent everything.
  const large = await halfSent('/files/large', 64 * 1024)
  t.equal(heads.at(-1), 'PUT /large 65536', 'half a large body: the upstream already has the request')
  const done = await large.finish()
  done.resume()
  await once(done, 'end')
  t.equal(done.statusCode, 200)
})

t.test('requestBuffering: false with requestBuffer: 0b streams every body', async (t) => {
  const heads: string[] = []
  const up = await startUpstream(t, async (req, res) => {
    heads.push(req.url ?? '')
    req.resume()
    await once(req, 'end')
    res.end('ok')
  }, { stream: true })
  const { url: gw } = await startTestGateway(t, { server: { requestBuffer: '0b' }, routes: [{ name: 'files', prefix: '/files', upstream: up.origin, requestBuffering: false }] })
  const req = httpRequest(`${gw}/files/small`, { method: 'PUT', agent: false, headers: { 'content-length': '10' } })
  req.on('error', () => {})
  req.write('12345')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(heads, ['/small'], 'the upstream has the request before its body is complete')
  req.end('67890')
  const [res] = await once(req, 'response') as [IncomingMessage]
  res.resume()
  await once(res, 'end')
  t.equal(res.statusCode, 200)
})

t.test('Expect: 100-continue: the gateway says continue, then forwards a buffered or a streamed body', async (t) => {
  const up = await startUpstream(t)
  const { url: gw } = await startTestGateway(t, { server: { requestBuffer: '1kb' }, routes: [{ name: 'files', prefix: '/files', upstream: up.origin }] })
  for (const size of [10, 4096]) {
    const req = httpRequest(`${gw}/files/x`, { method: 'POST', agent: false, headers: { expect: '100-continue', 'content-type': 'text/plain', 'content-length': String(size) } })
    req.on('error', () => {})
    req.flushHeaders()
    await once(req, 'continue') // the body is sent only after the 100
    req.end(Buffer.alloc(size, 120))
    const [res] = await once(req, 'response') as [IncomingMessage]
    const chunks: Buffer[] = []
    for await (const c of res) chunks.push(c as Buffer)
    t.equal(res.statusCode, 200, `${size} bytes: 200`)
    const echoed = JSON.parse(Buffer.concat(chunks).toString()) as { body: string, headers: Record<string, string> }
    t.equal(echoed.body, 'x'.repeat(size), `${size} bytes: the upstream got the body`)
    t.equal(echoed.headers.expect, undefined, `${size} bytes: Expect is a hop-by-hop matter, not forwarded`)
  }
})

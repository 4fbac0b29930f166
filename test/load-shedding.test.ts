/**
 * Load shedding (`loadShedding`, @fastify/under-pressure): over the event-loop delay or heap
 * limit, new requests get 503 problem+json with Retry-After and never reach the upstream, while
 * /healthz (and /readyz) keep answering; when the pressure is gone, requests pass again.
 * The event-loop delay comes from an artificial block: the gateway runs in this process, and a
 * loop that busy-waits 100 ms at a time delays it the way a CPU-bound overload would.
 */
import t, { type Test } from 'tap'
import { call, startTestGateway, startUpstream, type CallResult } from './helper.js'
import { parseConfig } from '../src/config.js'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Whether a request to `url` gets a 200 within `ms` (polling). */
async function passesWithin (url: string, ms: number): Promise<boolean> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    if ((await call(url)).status === 200) return true
    await sleep(50)
  }
  return false
}

function assertShed (t: Test, res: CallResult): void {
  t.equal(res.status, 503)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.match(res.json, { type: 'urn:portcullis:problem:unavailable', status: 503 })
  t.equal(res.headers['retry-after'], '7')
}

t.test('an event-loop block sheds new requests with 503 + Retry-After; /healthz stays up; then it recovers', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    loadShedding: { maxEventLoopDelay: '30ms', sampleInterval: '100ms', retryAfter: '7s' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin }]
  })
  t.ok(await passesWithin(`${url}/api/people/`, 10_000), 'passes while idle (start-up may itself delay the loop)')

  // The artificial overload: busy for 100 ms, yield, again — until stopped.
  const load = { on: true }
  const blocker = (async () => {
    while (load.on) {
      const until = Date.now() + 100
      while (Date.now() < until) { /* busy */ }
      await new Promise((resolve) => setImmediate(resolve))
    }
  })()
  let shed: CallResult | null = null
  let healthz: CallResult | null = null
  const deadline = Date.now() + 10_000
  while (shed === null && Date.now() < deadline) {
    const res = await call(`${url}/api/people/`)
    if (res.status === 503) {
      shed = res
      healthz = await call(`${url}/healthz`)
    }
  }
  const forwardedWhileShedding = up.requests.length
  if (shed !== null) {
    assertShed(t, shed)
    const again = await call(`${url}/api/people/`)
    t.equal(again.status, 503, 'still shedding while the loop is blocked')
  } else {
    t.fail('no request was shed within 10 s of blocking the event loop')
  }
  t.equal(healthz?.status, 200, '/healthz answers while shedding')
  t.equal(up.requests.length, forwardedWhileShedding, 'a shed request never reached the upstream')
  load.on = false
  await blocker

  t.ok(await passesWithin(`${url}/api/people/`, 10_000), 'requests pass again once the loop is free')
})

t.test('over the heap limit: everything but the ops endpoints is shed', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    loadShedding: { maxHeapUsed: '1mb', sampleInterval: '50ms', retryAfter: '7s' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: up.origin }]
  })
  await sleep(200) // a sample or two
  assertShed(t, await call(`${url}/api/people/`))
  assertShed(t, await call(`${url}/nowhere`))
  t.equal((await call(`${url}/healthz`)).status, 200, '/healthz is never shed')
  t.equal((await call(`${url}/readyz`)).status, 200, '/readyz is never shed')
  t.equal(up.requests.length, 0)
})

t.test('config: nothing is sampled unless a limit is set', async (t) => {
  const config = parseConfig({ routes: [{ name: 'p', prefix: '/p', upstream: 'http://127.0.0.1:9/p' }] }, { env: {} })
  t.same(config.loadShedding, { sampleInterval: '1s', retryAfter: '10s' })
  const up = await startUpstream(t)
  const { app } = await startTestGateway(t, { routes: [{ name: 'p', prefix: '/p', upstream: up.origin }] })
  t.notOk(app.hasDecorator('isUnderPressure'), 'under-pressure is not registered')
})

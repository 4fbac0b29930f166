/**
 * Upstream resilience end to end (issue 16): real upstream processes
 * (test/fixtures/upstream-process.mjs) SIGKILLed, restarted on the same port, hung and failing,
 * under a bounded paced load (100–300 requests a second, at most 10 in flight). What the clients
 * see, what the upstreams receive (counted by the upstream processes themselves, on /__count)
 * and what the gateway logs. Figures are printed as tap comments; time is only bounded
 * generously (DEADLINE_MS), never measured against a budget.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import type { FastifyInstance } from 'fastify'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { call, type CallResult, type RawConfig, type T } from './helper.js'

const FIXTURE = new URL('./fixtures/upstream-process.mjs', import.meta.url).pathname
/** The longest any "eventually" in this file waits: a generous bound, not a measurement. */
const DEADLINE_MS = 10_000
/** Client requests in flight at once, at most. */
const CONCURRENCY = 10

// ── Upstream processes ──────────────────────────────────────────────────────────────────────

type Mode = 'ok' | 'hang' | '503'

interface UpstreamProcess {
  name: string
  port: number
  origin: string
  /** What reached it since it (last) started: requests, and health checks apart. */
  count: () => Promise<{ requests: number, checks: number }>
  /** SIGKILL; resolves when it has exited. */
  kill: () => Promise<void>
  /** Starts it again on the same port, in `mode` (default: as before); resolves when it listens. */
  restart: (mode?: Mode) => Promise<void>
  /** Processes its last (re)start spawned: more than one when the port was still busy. */
  spawned: () => number
}

/** `node test/fixtures/upstream-process.mjs --port N --name NAME --mode MODE` on a free port. */
async function upstreamProcess (t: T, name: string, mode: Mode = 'ok', delayMs = 0): Promise<UpstreamProcess> {
  let child: ChildProcess | null = null
  let port = 0
  let current = mode
  let spawned = 0
  const start = async (): Promise<void> => {
    // The port of a killed process can be busy for a moment: try again a few times.
    for (let attempt = 0; ; attempt++) {
      spawned = attempt + 1
      const proc = spawn(process.execPath, [FIXTURE, '--port', String(port), '--name', name, '--mode', current, '--delay', String(delayMs)], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, NODE_OPTIONS: '' }
      })
      let out = ''
      let err = ''
      proc.stderr.on('data', (d: Buffer) => { err += d.toString() })
      const line = await new Promise<string | null>((resolve) => {
        proc.stdout.on('data', (d: Buffer) => {
          out += d.toString()
          if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')))
        })
        proc.once('exit', () => resolve(null))
      })
      if (line !== null) {
        child = proc
        port = (JSON.parse(line) as { port: number }).port
        return
      }
      if (attempt >= 20) throw new Error(`upstream ${name} did not start on port ${port}: ${err}`)
      await sleep(100)
    }
  }
  const kill = async (): Promise<void> => {
    const proc = child
    if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = once(proc, 'exit')
    proc.kill('SIGKILL')
    await exited
  }
  t.teardown(kill)
  await start()
  return {
    name,
    port,
    origin: `http://127.0.0.1:${port}`,
    // On a connection of its own (not through the gateway), answered in every mode.
    count: async () => (await call(`http://127.0.0.1:${port}/__count`)).json as { requests: number, checks: number },
    kill,
    restart: async (mode?: Mode) => {
      current = mode ?? current
      await start()
    },
    spawned: () => spawned
  }
}

async function totalRequests (ups: UpstreamProcess[]): Promise<number> {
  let sum = 0
  for (const up of ups) sum += (await up.count()).requests
  return sum
}

// ── Gateways ────────────────────────────────────────────────────────────────────────────────

interface LogLine { time: number, level: number, msg: string, upstream?: string, from?: string, to?: string, [k: string]: unknown }

interface Gateway {
  app: FastifyInstance
  url: string
  /** Every line the gateway has logged so far (flushed first). */
  logs: () => Promise<LogLine[]>
}

/** A listening gateway that logs at info (no access lines) into a file the test reads. */
async function startGateway (t: T, raw: RawConfig): Promise<Gateway> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-resilience-'))
  const file = join(dir, 'gateway.log')
  const config = parseConfig({ logging: { level: 'info', accessLog: false }, ...raw })
  const app = await buildGateway(config, { logDestination: file })
  t.teardown(async () => { await app.close(); rmSync(dir, { recursive: true, force: true }) })
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  const logs = async (): Promise<LogLine[]> => {
    await new Promise<void>((resolve) => { (app.log as unknown as { flush: (cb: () => void) => void }).flush(resolve) })
    let text = ''
    try { text = readFileSync(file, 'utf8') } catch {}
    return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as LogLine)
  }
  return { app, url, logs }
}

// ── Load ────────────────────────────────────────────────────────────────────────────────────

interface Sample {
  /** Date.now() when it was sent and when its answer ended (comparable with log lines' `time`). */
  at: number
  end: number
  /** 0: no response (the error is in `error`). */
  status: number
  /** The upstream that answered (its JSON `name`), null when the gateway answered itself. */
  name: string | null
  problem: boolean
  retryAfter: string | null
  body: string
  error: string | null
  type: string
  /** The request headers it was sent with. */
  sent: Record<string, string>
}

async function send (agent: Agent, url: string, headers: Record<string, string> = {}): Promise<Sample> {
  const at = Date.now()
  try {
    const res = await request(url, { dispatcher: agent, headers, headersTimeout: DEADLINE_MS, bodyTimeout: DEADLINE_MS })
    const body = await res.body.text()
    const type = String(res.headers['content-type'] ?? '')
    let name: string | null = null
    if (type.startsWith('application/json')) name = (JSON.parse(body) as { name?: string }).name ?? null
    const retryAfter = res.headers['retry-after']
    return {
      at,
      end: Date.now(),
      status: res.statusCode,
      name,
      problem: type.startsWith('application/problem+json'),
      retryAfter: typeof retryAfter === 'string' ? retryAfter : null,
      body,
      error: null,
      type,
      sent: headers
    }
  } catch (err) {
    const e = err as { code?: string, message?: string }
    return { at, end: Date.now(), status: 0, name: null, problem: false, retryAfter: null, body: '', error: e.code ?? e.message ?? String(err), type: '', sent: headers }
  }
}

interface Load {
  samples: Sample[]
  stop: () => void
  done: Promise<void>
}

/**
 * GETs `url`: request i is due at i / rate seconds, sent by one of CONCURRENCY loops (so at most
 * that many in flight, and slower than `rate` when answers are slow); `limit` requests at most,
 * or until stop(). `headersOf(i)` gives request i's headers.
 */
function startLoad (agent: Agent, url: string, rate: number, limit: number, headersOf?: (i: number) => Record<string, string>): Load {
  const samples: Sample[] = []
  const state = { stopped: false, next: 0 }
  const t0 = performance.now()
  const loop = async (): Promise<void> => {
    while (!state.stopped && state.next < limit) {
      const i = state.next++
      const wait = t0 + i * 1000 / rate - performance.now()
      if (wait > 0) await sleep(wait)
      if (state.stopped) return
      samples.push(await send(agent, url, headersOf?.(i)))
    }
  }
  const done = Promise.all(Array.from({ length: CONCURRENCY }, loop)).then(() => {})
  return { samples, stop: () => { state.stopped = true }, done }
}

function clientAgent (t: T): Agent {
  const agent = new Agent({ connections: CONCURRENCY, keepAliveTimeout: 30_000 })
  t.teardown(() => agent.close())
  return agent
}

/** Waits until `ok()` (checked every `everyMs`), at most DEADLINE_MS; returns whether it came. */
async function eventually (ok: () => boolean | Promise<boolean>, everyMs = 20): Promise<boolean> {
  const deadline = Date.now() + DEADLINE_MS
  while (Date.now() < deadline) {
    if (await ok()) return true
    await sleep(everyMs)
  }
  return await ok()
}

/** Sends one request every 50 ms until `done(sample)`, at most DEADLINE_MS; returns that sample. */
async function pollUntil (agent: Agent, url: string, done: (s: Sample) => boolean): Promise<Sample | null> {
  const deadline = Date.now() + DEADLINE_MS
  while (Date.now() < deadline) {
    const s = await send(agent, url)
    if (done(s)) return s
    await sleep(50)
  }
  return null
}

function tally (samples: Sample[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const s of samples) {
    const key = s.error !== null ? `error ${s.error}` : s.name !== null ? `${s.status} ${s.name}` : `${s.status} gateway`
    out[key] = (out[key] ?? 0) + 1
  }
  return out
}

const ok = (s: Sample): boolean => s.status === 200 && s.name !== null

/** A 503 problem+json from the gateway that names no address, port or errno. */
function assertOpaque503 (t: Test, res: { status: number, type: string, body: string }, ports: number[]): void {
  t.equal(res.status, 503, '503')
  t.match(res.type, /^application\/problem\+json/, 'problem+json')
  t.match(JSON.parse(res.body), { type: 'urn:portcullis:problem:unavailable', status: 503 })
  for (const leak of ['127.0.0.1', ...ports.map(String), 'ECONN', 'errno', 'UND_ERR']) {
    t.notOk(res.body.includes(leak), `the body does not mention "${leak}"`)
  }
}

/** 150 ms of timeout: at 100 ms a stalled test process (load average 5) once failed every target's check at once. */
function healthCheck (extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { path: '/healthz', interval: '200ms', timeout: '150ms', healthyThreshold: 2, unhealthyThreshold: 2, ...extra }
}

// ── Tests ───────────────────────────────────────────────────────────────────────────────────

t.test('three targets, one SIGKILLed under steady load, then restarted on the same port', async (t) => {
  // Each answer takes 20 ms, so at 200 requests a second one or two are in flight on c at any time.
  const ups = await Promise.all(['a', 'b', 'c'].map(async (name) => await upstreamProcess(t, name, 'ok', 20)))
  const c = ups[2]
  const gw = await startGateway(t, {
    routes: [{
      name: 'api',
      prefix: '/api',
      upstream: ups.map((u) => u.origin),
      healthCheck: healthCheck(),
      outlierDetection: { baseEjectionTime: '1s' }
      // retries: 1 and retryOn [connect-failure, reset] by default
    }]
  })
  const set = gw.app.upstreams.get('api')
  t.ok(set !== undefined, 'the route has its upstream set')
  const load = startLoad(clientAgent(t), `${gw.url}/api/items`, 200, 6000)
  t.ok(await eventually(() => load.samples.length >= 300 && ['a', 'b', 'c'].every((n) => load.samples.some((s) => s.name === n))), 'all three answer before the kill')

  // The gateway's own count of requests sent to c and not finished: what the kill can break.
  const onCBefore = set?.inFlight[2] ?? 0
  const killedAt = Date.now()
  await c.kill()
  const onCAtKill = Math.max(onCBefore, set?.inFlight[2] ?? 0)
  await sleep(1500)
  const restartedAt = Date.now()
  await c.restart()
  const listeningAt = Date.now()
  const back = await eventually(() => load.samples.some((s) => s.name === 'c' && s.at >= restartedAt))
  const backAt = load.samples.filter((s) => s.name === 'c' && s.at >= restartedAt).reduce((m, s) => Math.min(m, s.end), Infinity)
  await sleep(500)
  load.stop()
  await load.done

  const samples = load.samples
  const errors = samples.filter((s) => !ok(s))
  const logs = await gw.logs()
  const out = logs.filter((l) => l.upstream === c.origin && l.time >= killedAt && /ejected|failed its health checks/.test(l.msg))
  const outAt = out.reduce((m, l) => Math.min(m, l.time), Infinity)
  const during = samples.filter((s) => s.at >= killedAt && s.at < restartedAt)
  t.comment(`${samples.length} requests at 200/s: ${JSON.stringify(tally(samples))}`)
  t.comment(`client errors: ${errors.length} (${JSON.stringify(tally(errors))}); at the kill ${onCAtKill} requests were in flight on c`)
  t.comment(`c out of rotation ${outAt - killedAt} ms after the kill: ${out.map((l) => `+${l.time - killedAt} ms ${l.msg}`).join('; ')}`)
  t.comment(`while c was dead: ${during.length} requests, ${JSON.stringify(tally(during))}`)
  t.comment(`c listening again ${listeningAt - restartedAt} ms after the restart began (${c.spawned()} process(es) spawned); answering clients ${backAt - listeningAt} ms after it listened (interval 200 ms × healthyThreshold 2 = 400 ms)`)

  t.ok(out.length > 0, 'the gateway logged c leaving the rotation (ejected or failed its health checks)')
  t.ok(errors.length <= onCAtKill, `client errors (${errors.length}) at most the requests in flight on c at the kill (${onCAtKill})`)
  t.equal(errors.filter((s) => s.at >= outAt).length, 0, 'no client error for a request sent after c left the rotation')
  t.ok(during.every((s) => s.name !== 'c'), 'nothing is answered by c while it is dead')
  t.ok(back, `after its restart c answers again (within ${DEADLINE_MS} ms)`)
  t.ok(logs.some((l) => l.upstream === c.origin && l.time >= restartedAt && /healthy again/.test(l.msg)), 'the gateway logged c healthy again')
  t.ok((await c.count()).requests > 0, 'the restarted process received requests')
})

t.test('a hung target (accepts, never answers) is ejected on try timeouts; the other carries the load', async (t) => {
  const a = await upstreamProcess(t, 'a')
  const hung = await upstreamProcess(t, 'hung', 'hang')
  const gw = await startGateway(t, {
    routes: [{
      name: 'api',
      prefix: '/api',
      upstream: [a.origin, hung.origin],
      tryTimeout: '300ms',
      retryOn: ['connect-failure', 'reset', 'timeout']
    }]
  })
  const agent = clientAgent(t)
  const first = startLoad(agent, `${gw.url}/api/items`, 100, 200)
  await first.done
  const hungAfterFirst = (await hung.count()).requests
  const second = startLoad(agent, `${gw.url}/api/items`, 100, 300)
  await second.done
  const hungAfterSecond = (await hung.count()).requests
  const logs = await gw.logs()
  const ejected = logs.filter((l) => l.upstream === hung.origin && /ejected/.test(l.msg))

  t.comment(`first 200 requests at 100/s: ${JSON.stringify(tally(first.samples))}; the hung target received ${hungAfterFirst}`)
  t.comment(`next 300 at 100/s: ${JSON.stringify(tally(second.samples))}; the hung target received ${hungAfterSecond - hungAfterFirst} more`)
  const slow = first.samples.filter((s) => s.end - s.at >= 300).map((s) => s.end - s.at)
  t.comment(`first phase: ${slow.length} requests met the hung target (try timeout 300 ms, then the other target): ${Math.min(...slow)}–${Math.max(...slow)} ms`)
  t.comment(`ejection logged: ${ejected.map((l) => JSON.stringify({ msg: l.msg, forMs: l.forMs, times: l.times })).join('; ')}`)

  t.equal(first.samples.filter(ok).length, 200, 'every request of the first phase is a 200')
  t.equal(second.samples.filter(ok).length, 300, 'every request of the second phase is a 200')
  t.ok([...first.samples, ...second.samples].every((s) => s.name === 'a'), 'all answered by the other target')
  t.ok(hungAfterFirst >= 5, `the hung target was tried (${hungAfterFirst} requests: consecutiveFailures is 5) before it was ejected`)
  t.equal(ejected.length, 1, 'ejected once, and logged')
  t.equal(hungAfterSecond, hungAfterFirst, 'once ejected, the hung target receives no request')
})

t.test('weights 1:3 over 4,000 requests', async (t) => {
  const one = await upstreamProcess(t, 'one')
  const three = await upstreamProcess(t, 'three')
  const gw = await startGateway(t, {
    routes: [{ name: 'api', prefix: '/api', upstream: [{ url: one.origin, weight: 1 }, { url: three.origin, weight: 3 }] }]
  })
  const load = startLoad(clientAgent(t), `${gw.url}/api/items`, 300, 4000)
  await load.done
  const counts = tally(load.samples)
  const atOne = (await one.count()).requests
  const atThree = (await three.count()).requests
  t.comment(`4,000 requests at 300/s: ${JSON.stringify(counts)}; at the upstreams: one ${atOne}, three ${atThree}`)
  t.equal(load.samples.filter(ok).length, 4000, 'all 200')
  const shareOne = (counts['200 one'] ?? 0) / 4000
  t.ok(Math.abs(shareOne - 0.25) <= 0.25 * 0.05, `weight 1 gets ${(shareOne * 100).toFixed(2)} % (25 % ± 5 % of it)`)
  t.ok(Math.abs((1 - shareOne) - 0.75) <= 0.75 * 0.05, `weight 3 gets ${((1 - shareOne) * 100).toFixed(2)} % (75 % ± 5 % of it)`)
  t.equal(atOne + atThree, 4000, 'each request reached exactly one upstream')
})

t.test('hash:header:x-user keeps a user on one target; a target that dies moves only its own users', async (t) => {
  const ups = await Promise.all(['x', 'y', 'z'].map(async (name) => await upstreamProcess(t, name)))
  const gw = await startGateway(t, {
    routes: [{ name: 'api', prefix: '/api', upstream: ups.map((u) => u.origin), balance: 'hash:header:x-user' }]
  })
  const agent = clientAgent(t)
  const USERS = 60
  const user = (i: number): Record<string, string> => ({ 'x-user': `user-${i % USERS}` })
  const targetsOf = (samples: Sample[]): Map<string, Set<string>> => {
    const map = new Map<string, Set<string>>()
    for (const s of samples) {
      const u = s.sent['x-user']
      const names = map.get(u) ?? new Set<string>()
      names.add(s.name ?? `status ${s.status}`)
      map.set(u, names)
    }
    return map
  }

  const before = startLoad(agent, `${gw.url}/api/items`, 200, USERS * 5, user)
  await before.done
  t.equal(before.samples.filter(ok).length, USERS * 5, 'all 200')
  const home = new Map<string, string>()
  for (const [u, names] of targetsOf(before.samples)) {
    t.equal(names.size, 1, `${u} always on one target`)
    home.set(u, [...names][0])
  }
  const owned = (n: string): number => [...home.values()].filter((h) => h === n).length
  t.comment(`users per target before: x ${owned('x')}, y ${owned('y')}, z ${owned('z')}`)
  t.ok(owned('x') > 0 && owned('y') > 0 && owned('z') > 0, 'every target owns some users')

  await ups[2].kill()
  const after = startLoad(agent, `${gw.url}/api/items`, 200, USERS * 5, user)
  await after.done
  const ejected = (await gw.logs()).filter((l) => l.upstream === ups[2].origin && /ejected/.test(l.msg))
  t.comment(`after z was killed: ${JSON.stringify(tally(after.samples))}; z ejected: ${ejected.length > 0 ? 'yes' : 'no'}`)
  t.equal(after.samples.filter(ok).length, USERS * 5, 'all 200 (the requests that found z dead were retried elsewhere)')
  let kept = 0
  let moved = 0
  for (const [u, names] of targetsOf(after.samples)) {
    const was = home.get(u) as string
    if (was !== 'z') {
      t.same([...names], [was], `${u} stays on ${was}`)
      kept++
    } else {
      t.equal(names.size, 1, `${u} moved to one target (${[...names].join(', ')})`)
      t.notOk(names.has('z'), `${u} is no longer on z`)
      moved++
    }
  }
  t.comment(`kept ${kept} users, moved ${moved} (z's)`)
  t.equal(kept + moved, USERS, 'every user was seen')
  t.equal(moved, owned('z'), 'exactly z\'s users moved')
})

t.test('circuit breaker: opens, sheds without upstream traffic, half-opens, closes — each transition logged once', async (t) => {
  const up = await upstreamProcess(t, 'single', '503')
  const gw = await startGateway(t, {
    routes: [{
      name: 'api',
      prefix: '/api',
      upstream: up.origin,
      retries: 0,
      outlierDetection: false,
      circuitBreaker: { minRequests: 10, failureRatio: 0.5, window: '5s', openFor: '1s', halfOpenRequests: 2 }
    }]
  })
  const agent = clientAgent(t)
  const url = `${gw.url}/api/items`

  // Closed: the upstream's own 503s pass through until the breaker has seen minRequests.
  const closed: Sample[] = []
  while (closed.length < 30) {
    const s = await send(agent, url)
    if (s.problem) break
    closed.push(s)
  }
  t.equal(closed.length, 10, 'the upstream answered the first 10 requests (minRequests), all 503')
  t.ok(closed.every((s) => s.status === 503 && s.name === 'single'), 'those were the upstream\'s 503s')
  t.equal((await up.count()).requests, 10, 'and it received exactly those')

  // Open: the gateway answers at once, the upstream receives nothing.
  const before = (await up.count()).requests
  const shed: Sample[] = []
  for (let i = 0; i < 20; i++) shed.push(await send(agent, url))
  const reached = (await up.count()).requests - before
  const refused = shed.filter((s) => s.problem)
  t.comment(`open: ${refused.length} of 20 refused by the gateway, the upstream received ${reached}; slowest refusal ${Math.max(...refused.map((s) => s.end - s.at))} ms`)
  t.ok(refused.length >= 1, 'the requests after the opening are refused by the gateway')
  t.equal(reached, shed.length - refused.length, 'a refused request never reaches the upstream')
  for (const s of refused.slice(0, 3)) {
    assertOpaque503(t, s, [up.port])
    t.equal(s.retryAfter, '1', 'Retry-After: the time left of openFor, in whole seconds')
  }

  // Half-open with the upstream still failing: the probe fails, it opens again.
  const probe1 = await pollUntil(agent, url, (s) => !s.problem)
  t.ok(probe1 !== null && probe1.status === 503 && probe1.name === 'single', 'after openFor a probe reaches the upstream (still failing)')
  t.ok((await send(agent, url)).problem, 'the failed probe opened it again')

  // The upstream recovers (restarted in ok mode while the breaker is open): the probes pass, it closes.
  await up.kill()
  await up.restart('ok')
  const probe2 = await pollUntil(agent, url, (s) => !s.problem)
  t.ok(probe2 !== null && ok(probe2), 'after openFor again, a probe reaches the recovered upstream')
  const after: Sample[] = []
  for (let i = 0; i < 10; i++) after.push(await send(agent, url))
  t.equal(after.filter(ok).length, 10, 'closed: every request reaches the upstream again')
  t.equal((await up.count()).requests, 11, 'the restarted upstream received the probe and those 10')

  const transitions = (await gw.logs()).filter((l) => l.upstream === up.origin && typeof l.to === 'string')
  t.same(transitions.map((l) => `${String(l.from)}→${String(l.to)}`), [
    'closed→open', 'open→half-open', 'half-open→open', 'open→half-open', 'half-open→closed'
  ], 'each transition logged once, in order')
  const times = transitions.map((l) => l.time - transitions[0].time)
  t.comment(`transitions (ms after opening): ${transitions.map((l, i) => `${String(l.to)} +${times[i]}`).join(', ')}`)
  t.ok(times[1] >= 1000 - 20, `half-opened only after openFor (${times[1]} ms)`)
  t.ok(times[3] - times[2] >= 1000 - 20, `half-opened again only after openFor (${times[3] - times[2]} ms)`)
  t.equal(transitions[0]?.level, 40, 'opening is a warning')
})

t.test('retry budget: a full outage (every target answers 503) amplifies at most by the budget', async (t) => {
  const ups = await Promise.all(['p', 'q'].map(async (name) => await upstreamProcess(t, name, '503')))
  const route = {
    name: 'api',
    prefix: '/api',
    upstream: ups.map((u) => u.origin),
    retries: 3,
    retryOn: ['503'],
    circuitBreaker: false,
    outlierDetection: false
  }
  const unbudgeted = await startGateway(t, { routes: [{ ...route, retryBudget: false }] })
  const agent = clientAgent(t)
  // The budget earns minPerSecond from the moment it exists: the elapsed time counts from there.
  const started = performance.now()
  const budgeted = await startGateway(t, { routes: [{ ...route, retryBudget: { ratio: 0.2, minPerSecond: 10 } }] })
  const load = startLoad(agent, `${budgeted.url}/api/items`, 200, 1000)
  await load.done
  const seconds = (performance.now() - started) / 1000
  const attempts = await totalRequests(ups)
  const bound = 1.2 * 1000 + 10 * seconds + 10
  const counters = budgeted.app.upstreams.get('api')?.counters
  t.comment(`the gateway's counters: ${counters?.retries ?? '?'} retries, ${counters?.retriesRefusedByBudget ?? '?'} refused by the budget`)
  t.comment(`budget { ratio: 0.2, minPerSecond: 10 }: 1,000 GETs, ${seconds.toFixed(2)} s from the gateway's start to the last answer → ${attempts} upstream attempts (${attempts - 1000} retries); bound 1.2 × 1000 + 10 × ${seconds.toFixed(2)} + 10 = ${bound.toFixed(0)}; clients: ${JSON.stringify(tally(load.samples))}`)
  t.equal(load.samples.filter((s) => s.status === 503 && s.name !== null).length, 1000, 'every client gets the upstream\'s 503')
  t.ok(attempts >= 1000, 'every request reached an upstream at least once')
  t.ok(attempts <= bound, `${attempts} ≤ 1.2 × 1000 + 10 × ${seconds.toFixed(2)} s + 10`)
  t.equal(attempts, 1000 + (counters?.retries ?? NaN), 'every attempt an upstream received is a request or a retry the gateway counted')

  const free = startLoad(agent, `${unbudgeted.url}/api/items`, 200, 1000)
  await free.done
  const unbounded = await totalRequests(ups) - attempts
  t.comment(`retryBudget: false: 1,000 GETs → ${unbounded} upstream attempts; the budget saved ${unbounded - attempts}`)
  t.equal(free.samples.filter((s) => s.status === 503 && s.name !== null).length, 1000, 'every client gets the upstream\'s 503')
  t.equal(unbounded, 4000, 'without a budget, retries: 3 makes 4 attempts per request')
})

t.test('all targets down: 503 problem+json, /readyz follows the route only when server.readiness names it', async (t) => {
  const ups = await Promise.all(['a', 'b'].map(async (name) => await upstreamProcess(t, name)))
  const base = { name: 'api', prefix: '/api', upstream: ups.map((u) => u.origin) }
  const route = { ...base, healthCheck: healthCheck() }
  const plain = await startGateway(t, { routes: [route] })
  const following = await startGateway(t, { server: { readiness: ['api'] }, routes: [route] })
  // No health check: only the failures of real requests (ejection, then the breaker) take the targets out.
  const bare = await startGateway(t, { routes: [{ ...base, circuitBreaker: { openFor: '1s' } }] })
  const ports = ups.map((u) => u.port)
  const status = async (url: string): Promise<number> => (await call(url)).status
  const refusedByGateway = (res: CallResult): boolean => res.status === 503 && String(res.headers['content-type']).startsWith('application/problem+json')

  t.equal(await status(`${plain.url}/api/items`), 200, 'up: the route answers')
  t.equal(await status(`${plain.url}/readyz`), 200, 'up: ready')
  t.equal(await status(`${following.url}/readyz`), 200, 'up: ready when following the route')

  /** Both targets fail: the route refuses (503 from the gateway, nothing leaked), and none of its refusals reaches them. */
  const outage = async (what: string): Promise<void> => {
    let refused: CallResult | null = null
    const since = Date.now()
    t.ok(await eventually(async () => {
      const res = await call(`${plain.url}/api/items`)
      if (refusedByGateway(res)) refused = res
      return refused !== null
    }), `${what}: the gateway answers 503 itself once both targets are out`)
    t.comment(`${what}: refused by the gateway ${Date.now() - since} ms later`)
    if (refused !== null) {
      const res = refused as CallResult
      assertOpaque503(t, { status: res.status, type: String(res.headers['content-type']), body: res.body.toString() }, ports)
      t.match(res.headers['retry-after'], /^[1-9][0-9]*$/, 'with Retry-After')
    }
    t.equal(await status(`${plain.url}/readyz`), 200, `${what}: /readyz stays 200 (the gateway itself is fine)`)
    let notReady: CallResult | null = null
    t.ok(await eventually(async () => {
      const res = await call(`${following.url}/readyz`)
      if (res.status === 503) notReady = res
      return notReady !== null
    }), `${what}: with server.readiness: [api], /readyz goes 503`)
    if (notReady !== null) {
      const res = notReady as CallResult
      t.match(res.json, { status: 503, checks: { 'upstream:api': String } }, 'naming the route')
      for (const p of ports) t.notOk(res.body.toString().includes(String(p)), 'and no target address')
    }
    const before = await totalRequests(ups).catch(() => null)
    const refusals: CallResult[] = []
    for (let i = 0; i < 20; i++) refusals.push(await call(`${plain.url}/api/items`))
    t.equal(refusals.filter(refusedByGateway).length, 20, `${what}: while both are out every request is refused by the gateway`)
    if (before !== null) t.equal(await totalRequests(ups) - before, 0, `${what}: and none of them reached an upstream`)
  }
  const recovery = async (what: string): Promise<void> => {
    const since = Date.now()
    t.ok(await eventually(async () => await status(`${following.url}/readyz`) === 200), `${what}: /readyz back to 200`)
    t.comment(`${what}: /readyz 200 again ${Date.now() - since} ms later`)
    t.ok(await eventually(async () => await status(`${plain.url}/api/items`) === 200), `${what}: the route answers again`)
  }

  // Alive but failing (restarted answering 503, /healthz too): the health checks take them out.
  for (const u of ups) { await u.kill(); await u.restart('503') }
  await outage('both answering 503')
  for (const u of ups) { await u.kill(); await u.restart('ok') }
  await recovery('both restarted healthy')

  // Dead (SIGKILL), then started again on the same ports.
  await Promise.all(ups.map(async (u) => { await u.kill() }))
  await outage('both killed')
  // Without health checks: 502 (no connection) until ejection and the breakers take both out, then the gateway's 503.
  const bareAnswers: CallResult[] = []
  t.ok(await eventually(async () => {
    bareAnswers.push(await call(`${bare.url}/api/items`))
    return refusedByGateway(bareAnswers[bareAnswers.length - 1])
  }, 0), 'both killed, no health check: the gateway ends up answering 503 itself')
  const bareLast = bareAnswers[bareAnswers.length - 1]
  t.comment(`both killed, no health check: ${bareAnswers.length - 1} answers before the first 503 from the gateway, statuses ${JSON.stringify(bareAnswers.reduce<Record<number, number>>((m, r) => ({ ...m, [r.status]: (m[r.status] ?? 0) + 1 }), {}))}`)
  assertOpaque503(t, { status: bareLast.status, type: String(bareLast.headers['content-type']), body: bareLast.body.toString() }, ports)
  t.ok(bareAnswers.every((r) => r.status === 502 || refusedByGateway(r)), 'before that, 502 problem+json (no connection)')
  for (const r of bareAnswers) {
    for (const p of ports) t.notOk(r.body.toString().includes(String(p)), 'no target address')
  }
  await Promise.all(ups.map(async (u) => { await u.restart() }))
  await recovery('both restarted after SIGKILL')
  t.ok(await eventually(async () => (await call(`${bare.url}/api/items`)).status === 200), 'no health check: the route answers again once a breaker half-opens')
})

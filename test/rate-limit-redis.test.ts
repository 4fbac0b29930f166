/**
 * The Redis store against a real redis-server: three gateway PROCESSES sharing it count exactly
 * (300 requests round-robin against max 100 → exactly 100 pass); and Redis going away mid-run
 * (killed, or stopped so it accepts but never answers) in both onStoreError modes: requests are
 * answered within a bound, a warning is logged, /readyz reports it, and limiting resumes when
 * Redis is back without restarting the gateway.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import ts from 'typescript'
import { request } from 'undici'
import { requireCommand, startRedis, startUpstream, type RedisServer } from './helper.js'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'

interface Res { status: number, headers: Record<string, string | string[] | undefined>, json: unknown, ms: number }

async function get (url: string): Promise<Res> {
  const started = performance.now()
  const res = await request(url, { headersTimeout: 30_000, bodyTimeout: 30_000 })
  const text = await res.body.text()
  let json: unknown
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.statusCode, headers: res.headers, json, ms: performance.now() - started }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `probe` until it returns true (or fails the test after `withinMs`). */
async function eventually (t: Test, what: string, withinMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + withinMs
  while (Date.now() < deadline) {
    if (await probe()) { t.pass(what); return }
    await sleep(100)
  }
  t.fail(`${what}: not within ${withinMs} ms`)
}

/**
 * A build of the current sources that separate processes can run `portcullis start` from:
 * dist/ when it is newer than every source file (CI builds before testing), otherwise the
 * sources transpiled without a type check into a temp folder (a few seconds).
 */
function gatewayBuild (t: Test): string {
  const root = fileURLToPath(new URL('..', import.meta.url))
  const sources = ['src', 'plugins', 'schemas'].flatMap((dir) =>
    readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
      .map((f) => join(dir, f)))
  const fresh = sources.every((file) => {
    const built = join(root, 'dist', file.replace(/\.ts$/, '.js'))
    return existsSync(built) && statSync(built).mtimeMs >= statSync(join(root, file)).mtimeMs
  })
  if (fresh) return join(root, 'dist')
  const out = mkdtempSync(join(tmpdir(), 'portcullis-build-'))
  t.teardown(() => { rmSync(out, { recursive: true, force: true }) })
  for (const file of sources) {
    const { outputText } = ts.transpileModule(readFileSync(join(root, file), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
      fileName: file
    })
    mkdirSync(dirname(join(out, file)), { recursive: true })
    writeFileSync(join(out, file.replace(/\.ts$/, '.js')), outputText)
  }
  writeFileSync(join(out, 'package.json'), JSON.stringify({ type: 'module', version: '0.0.0-test' }))
  symlinkSync(join(root, 'node_modules'), join(out, 'node_modules'))
  return out
}

/** `portcullis start --config FILE --port 0` in a process of its own; resolves to its URL. */
async function spawnGateway (t: Test, build: string, raw: Record<string, unknown>): Promise<string> {
  const file = join(mkdtempSync(join(tmpdir(), 'portcullis-config-')), 'gateway.json')
  t.teardown(() => { rmSync(dirname(file), { recursive: true, force: true }) })
  writeFileSync(file, JSON.stringify({ logging: { level: 'info', accessLog: false }, ...raw }))
  // Without tap's NODE_OPTIONS (its TypeScript loader would make the start take many seconds).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS' && !k.startsWith('TAP') && !k.startsWith('_TAP')))
  const child: ChildProcess = spawn(process.execPath, [join(build, 'src/cli.js'), 'start', '--config', file, '--port', '0'], {
    env,
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  })
  let out = ''
  return await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`gateway process did not start within 60 s: ${out}`)) }, 60_000)
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /"url":"(http:\/\/[^"]+)"/.exec(out)
      if (m !== null) { clearTimeout(timer); resolve(m[1]) }
    })
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`gateway process exited ${String(code)}: ${out}`)) })
  })
}

const hasRedis = requireCommand(t, 'redis-server', 'apt-get install redis-server')

// Generous: on a loaded machine, building and starting three processes can take a while.
t.test('three gateway processes share the counters: 300 requests round-robin, max 100 → exactly 100 pass', { skip: !hasRedis, timeout: 110_000 }, async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const raw = {
    rateLimit: { store: 'redis', redis: redis.url, onStoreError: 'deny', timeout: '2s' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, rateLimit: { max: 100, window: '10m' } }]
  }
  let mark = performance.now()
  const build = gatewayBuild(t)
  t.comment(`build: ${build.endsWith('dist') ? 'dist/ is fresh' : 'sources transpiled'} in ${Math.round(performance.now() - mark)} ms`)
  mark = performance.now()
  const gateways = await Promise.all([spawnGateway(t, build, raw), spawnGateway(t, build, raw), spawnGateway(t, build, raw)])
  t.comment(`three gateway processes listening after ${Math.round(performance.now() - mark)} ms`)
  t.equal(new Set(gateways).size, 3, 'three gateways on three ports')
  const statuses: number[] = []
  // 10 at a time, each batch spread over the three processes.
  for (let batch = 0; batch < 30; batch++) {
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => get(`${gateways[(batch * 10 + i) % 3]}/api/people/`)))
    statuses.push(...results.map((r) => r.status))
  }
  t.equal(statuses.length, 300)
  t.equal(statuses.filter((s) => s === 200).length, 100, 'exactly 100 passed')
  t.equal(statuses.filter((s) => s === 429).length, 200, 'the other 200 got 429')
  t.equal(up.requests.length, 100, 'the upstream saw exactly 100')
  for (const gw of gateways) {
    const res = await get(`${gw}/api/people/`)
    t.equal(res.status, 429, `${gw} agrees the bucket is spent`)
    t.match(res.headers.ratelimit, /^"people";r=0;t=[0-9]+$/, 'RateLimit r=0')
  }
})

/** An in-process gateway on the Redis store whose warnings are captured. */
async function redisGateway (t: Test, redis: RedisServer, onStoreError: 'allow' | 'deny'): Promise<{ url: string, logs: Array<Record<string, unknown>> }> {
  const up = await startUpstream(t)
  const logs: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    }
  })
  const config = parseConfig({
    rateLimit: { store: 'redis', redis: redis.url, onStoreError, timeout: '200ms' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/api/people`, rateLimit: { max: 1000, window: '10m' } }]
  })
  const app = await buildGateway(config, { logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { url, logs }
}

const BOUND_MS = 2000 // store timeout is 200 ms: "no stall" means well under this

for (const mode of ['allow', 'deny'] as const) {
  t.test(`Redis killed mid-run, onStoreError: ${mode}`, { skip: !hasRedis }, async (t) => {
    const redis = await startRedis(t)
    const { url, logs } = await redisGateway(t, redis, mode)

    const before = await get(`${url}/api/people/`)
    t.equal(before.status, 200)
    t.match(before.headers.ratelimit, /^"people";r=999;t=[0-9]+$/, 'counted in Redis')
    t.equal((await get(`${url}/readyz`)).status, 200, 'ready with Redis up')

    await redis.stop() // SIGKILL
    for (let i = 0; i < 5; i++) {
      const res = await get(`${url}/api/people/`)
      t.ok(res.ms < BOUND_MS, `answered in ${Math.round(res.ms)} ms`)
      if (mode === 'allow') {
        t.equal(res.status, 200, 'allowed while the store is down')
        t.equal(res.headers.ratelimit, undefined, 'no RateLimit header without a count')
      } else {
        t.equal(res.status, 503, 'denied while the store is down')
        t.match(res.json, { type: 'urn:portcullis:problem:unavailable', status: 503 })
        t.equal(res.headers['retry-after'], '1')
      }
    }
    const ready = await get(`${url}/readyz`)
    t.equal(ready.status, 503, '/readyz reports the store')
    t.match(ready.json, { checks: { rateLimitStore: `unreachable (onStoreError: ${mode})` } })
    t.ok(ready.ms < BOUND_MS, '/readyz does not hang either')
    t.ok(logs.some((l) => l.level === 40 && /rate-limit store unreachable/.test(String(l.msg))), 'a warning was logged')
    t.equal((await get(`${url}/healthz`)).status, 200, '/healthz stays up')

    await redis.start() // same port, empty
    await eventually(t, 'limiting resumes without a restart', 10_000, async () => {
      const res = await get(`${url}/api/people/`)
      return res.status === 200 && /^"people";r=[0-9]+;t=/.test(String(res.headers.ratelimit))
    })
    t.equal((await get(`${url}/readyz`)).status, 200, 'ready again')
    t.ok(logs.some((l) => /limiting resumed/.test(String(l.msg))), 'the recovery was logged')
  })
}

t.test('a Redis that accepts but never answers (SIGSTOP) costs at most the timeout', { skip: !hasRedis }, async (t) => {
  const redis = await startRedis(t)
  const { url } = await redisGateway(t, redis, 'allow')
  t.equal((await get(`${url}/api/people/`)).status, 200)
  redis.process.kill('SIGSTOP')
  t.teardown(() => { redis.process.kill('SIGCONT') })
  const results = await Promise.all(Array.from({ length: 20 }, () => get(`${url}/api/people/`)))
  for (const res of results) t.equal(res.status, 200, 'allowed')
  const slowest = Math.max(...results.map((r) => r.ms))
  t.ok(slowest < BOUND_MS, `slowest of 20 concurrent requests: ${Math.round(slowest)} ms (timeout 200 ms)`)
  t.ok(slowest >= 150, 'they did wait for the store (the timeout, not an instant failure)')
  redis.process.kill('SIGCONT')
  await eventually(t, 'counting resumes after SIGCONT', 10_000, async () => {
    const res = await get(`${url}/api/people/`)
    return res.headers.ratelimit !== undefined
  })
})

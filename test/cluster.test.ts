/**
 * `portcullis start --workers N` as a user runs it (the CLI as real processes): N workers
 * share the port and, with the Redis store, one rate limit; a killed worker is replaced with no
 * failed requests beyond the ones it held; SIGTERM drains every worker; the memory store with
 * N > 1 is refused unless explicitly allowed.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { get } from 'node:http'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { stringify } from 'yaml'
import { parseWorkers, perWorkerLimitProblem } from '../src/cluster.js'
import { parseConfig } from '../src/config.js'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'
import { echo, requireCommand, startRedis, startUpstream, transpileProject, type RawConfig } from './helper.js'
import { startCli as startProcess, type Cli } from './cli-process.js'

// The CLI as real processes, from the sources transpiled once for this file (no build needed).
const CLI = join(transpileProject(t), 'src/cli.js')

const startCli = (t: Test, args: string[], env: NodeJS.ProcessEnv = {}): Cli => startProcess(t, CLI, args, env)

function writeConfig (t: Test, raw: RawConfig): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cluster-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify({ server: { host: '127.0.0.1', port: 0, shutdownGrace: '10s' }, logging: { level: 'info' }, ...raw }))
  return file
}

/** GET on a fresh connection (so the primary hands each request to the next worker). */
function fetchFresh (url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false }, (res) => { res.resume(); res.once('end', () => resolve(res.statusCode ?? 0)); res.once('error', reject) })
    req.once('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')))
  })
}

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true } catch { return false } }

t.test('--workers values, and when per-process limits are a problem', async (t) => {
  t.equal(parseWorkers('2'), 2)
  t.equal(parseWorkers('auto'), availableParallelism())
  for (const bad of ['0', '257', 'lots', '-1', '1.5', '']) t.equal(parseWorkers(bad), null, `"${bad}" refused`)
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people' }
  const limited = parseConfig({ routes: [{ ...route, rateLimit: { max: 5 } }] }, { env: {} })
  t.equal(perWorkerLimitProblem(limited, 1), null, 'one worker: fine')
  t.match(perWorkerLimitProblem(limited, 3), /3 processes.*people.*rateLimit\.store: redis.*--allow-per-worker-limits/)
  t.equal(perWorkerLimitProblem(parseConfig({ routes: [route] }, { env: {} }), 4), null, 'nothing limited: fine')
  const shared = parseConfig({ rateLimit: { store: 'redis', redis: 'redis://127.0.0.1:6379' }, routes: [{ ...route, rateLimit: { max: 5 } }] }, { env: {} })
  t.equal(perWorkerLimitProblem(shared, 4), null, 'redis: shared')
  const tokens = parseConfig({ jwt: { algorithms: ['HS256'], secret: 'k'.repeat(32) }, tokenEndpoint: {}, users: [{ username: 'a', passwordHash: hashPasswordSync('pw', { N: 1024, r: 8, p: 1 }) }], routes: [route] }, { env: {} })
  t.match(perWorkerLimitProblem(tokens, 2), /token endpoint/, 'the token endpoint\'s limit counts too')
})

t.test('the memory store with --workers 2 and rate limits is refused unless allowed', async (t) => {
  const file = writeConfig(t, {
    routes: [{ name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:9/api/people', rateLimit: { max: 5, window: '1m' } }]
  })
  const refused = startCli(t, ['start', '--config', file, '--workers', '2'])
  const { code } = await refused.exited
  t.equal(code, 1, 'exit 1')
  t.match(refused.stderr(), /refusing to start: rateLimit\.store is memory.*2 processes.*people.*rateLimit\.store: redis.*--allow-per-worker-limits/s)
  t.notOk(refused.lines.some((l) => l.msg === 'starting workers'), 'no worker was started')

  const allowed = startCli(t, ['start', '--config', file, '--workers', '2', '--allow-per-worker-limits'])
  const up = await allowed.waitFor((l) => l.role === 'primary' && l.msg === 'portcullis listening', 'primary listening')
  t.equal(up.workers?.length, 2, 'allowed explicitly: two workers')
  t.match(allowed.stderr(), /warning: rateLimit\.store is memory/, 'with a warning')
  t.equal((await fetchFresh(`${up.url ?? ''}/healthz`)), 200)
  allowed.child.kill('SIGTERM')
  t.equal((await allowed.exited).code, 0, 'SIGTERM: drained, exit 0')
})

t.test('two workers: one Redis-backed limit, a killed worker replaced, SIGTERM drains both', async (t) => {
  if (!requireCommand(t, 'redis-server', 'apt-get install redis-server')) return
  const redis = await startRedis(t)
  const upstream = await startUpstream(t, (req, res, body) => {
    if (req.url?.includes('slow') === true) setTimeout(() => { echo(req, res, body) }, 1_000)
    else echo(req, res, body)
  })
  const file = writeConfig(t, {
    rateLimit: { store: 'redis', redis: redis.url },
    routes: [
      { name: 'limited', prefix: '/limited', upstream: `${upstream.origin}/limited`, rateLimit: { max: 10, window: '1m', by: 'ip' } },
      { name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people` }
    ]
  })
  const cli = startCli(t, ['start', '--config', file, '--workers', '2'])
  const up = await cli.waitFor((l) => l.role === 'primary' && l.msg === 'portcullis listening', 'primary listening')
  const url = up.url ?? ''
  const workers = up.workers ?? []
  t.equal(workers.length, 2, 'two workers')
  t.ok(workers.every(alive))

  // One limit across both workers: 20 requests, round-robin over the workers, exactly 10 pass.
  const statuses: number[] = []
  for (let i = 0; i < 20; i++) statuses.push(await fetchFresh(`${url}/limited/x`))
  t.equal(statuses.filter((s) => s === 200).length, 10, 'exactly max requests passed in total')
  t.equal(statuses.filter((s) => s === 429).length, 10, 'the rest were limited')
  t.same(statuses.slice(0, 10), Array(10).fill(200), 'the first ten passed')
  const servedBy = new Set(cli.lines.filter((l) => l.msg === 'request completed' && l.route === 'limited').map((l) => l.pid))
  t.equal(servedBy.size, 2, 'both workers served (so the count was shared, not per worker)')

  // Kill one worker under load: only the requests it held may fail.
  const concurrency = 4
  const run = { stop: false }
  const results: Array<{ ok: boolean, at: number }> = []
  const client = async (): Promise<void> => {
    while (!run.stop) {
      const ok = await fetchFresh(`${url}/api/people/`).then((s) => s === 200, () => false)
      results.push({ ok, at: Date.now() })
    }
  }
  const clients = Array.from({ length: concurrency }, client)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const victim = workers[0] ?? 0
  process.kill(victim, 'SIGKILL')
  const replaced = await cli.waitFor((l) => l.msg === 'worker replaced', 'worker replaced')
  await new Promise((resolve) => setTimeout(resolve, 300))
  run.stop = true
  await Promise.all(clients)
  const failed = results.filter((r) => !r.ok).length
  t.ok(results.length > 20, `requests kept flowing (${results.length})`)
  t.ok(failed <= concurrency, `failed requests (${failed}) are at most those the dead worker held (≤ ${concurrency})`)
  t.notOk(alive(victim), 'the killed worker is gone')
  const replacement = replaced.worker ?? 0
  t.ok(replacement > 0 && alive(replacement) && !workers.includes(replacement), 'a new worker took its place')
  const after: number[] = []
  for (let i = 0; i < 10; i++) after.push(await fetchFresh(`${url}/api/people/`))
  t.same(after, Array(10).fill(200), 'every request after the replacement succeeds')

  // SIGTERM to the primary: an in-flight request finishes, every worker exits, exit code 0.
  const seen = upstream.requests.length
  const slow = fetchFresh(`${url}/api/people/slow`)
  while (upstream.requests.length === seen) await new Promise((resolve) => setTimeout(resolve, 20))
  cli.child.kill('SIGTERM')
  t.equal(await slow, 200, 'the in-flight request completed during the drain')
  const { code } = await cli.exited
  t.equal(code, 0, 'the primary exited 0 after draining')
  const all = [workers[1] ?? 0, replacement]
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.ok(all.every((pid) => !alive(pid)), 'no worker outlived the primary')
  await t.rejects(fetchFresh(`${url}/healthz`), 'nothing listens any more')
})

/**
 * `portcullis start --workers 2` with `server.metrics.port`: the primary serves the sum of both
 * workers' metrics (the CLI as real processes, a real upstream, requests on fresh connections so
 * that both workers serve some).
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Agent, request } from 'undici'
import { stringify } from 'yaml'
import { freePort, startUpstream, transpileProject } from './helper.js'

const CLI = join(transpileProject(t), 'src/cli.js')

t.test('the primary serves the sum of every worker\'s metrics on server.metrics.port', async (t) => {
  const up = await startUpstream(t)
  const [port, metricsPort] = [await freePort(), await freePort()]
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-metrics-cluster-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify({
    server: { host: '127.0.0.1', port, shutdownGrace: '5s', metrics: { port: metricsPort } },
    logging: { level: 'info' },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }]
  }))
  const child = spawn(process.execPath, [CLI, 'start', '--config', file, '--workers', '2'], { stdio: ['ignore', 'pipe', 'pipe'] })
  const pids = new Set<number>()
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(() => {
    for (const pid of pids) try { process.kill(pid, 'SIGKILL') } catch {}
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const deadline = Date.now() + 45_000
  // The primary's own line, written once every worker listens (each worker logs one too).
  const primaryListening = /"role":"primary"[^\n]*"msg":"portcullis listening"/
  while (!primaryListening.test(out)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`did not start: ${out}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  for (const m of out.matchAll(/"workers":\[([0-9,]+)\]/g)) for (const pid of m[1].split(',')) pids.add(Number(pid))

  // Fresh connections: the primary hands them to the workers in turn.
  const agent = new Agent({ pipelining: 0 })
  t.teardown(() => agent.close())
  for (let i = 0; i < 20; i++) {
    const res = await request(`http://127.0.0.1:${port}/api/people/${i}`, { dispatcher: agent })
    await res.body.dump()
    t.equal(res.statusCode, 200)
  }
  const completed = (): RegExpMatchArray[] => [...out.matchAll(/"pid":([0-9]+)[^\n]*"msg":"request completed"/g)]
  const logged = Date.now() + 10_000
  while (completed().length < 20 && Date.now() < logged) await new Promise((resolve) => setTimeout(resolve, 50))
  const servedBy = new Set(completed().map((m) => m[1]))
  t.equal(servedBy.size, 2, 'both workers served requests')
  const gatewayPort = await request(`http://127.0.0.1:${port}/metrics`, { dispatcher: agent })
  await gatewayPort.body.dump()
  t.equal(gatewayPort.statusCode, 404, 'not on the gateway port')

  const res = await request(`http://127.0.0.1:${metricsPort}/metrics`)
  const text = await res.body.text()
  t.equal(res.statusCode, 200)
  t.match(text, /^portcullis_requests_total\{route="people",method="GET",status_class="2xx"\} 20$/m, 'both workers\' requests, added up')
  t.match(text, /^portcullis_request_duration_seconds_count\{route="people"\} 20$/m)
  t.match(text, /^portcullis_request_duration_seconds_bucket\{route="people",le="\+Inf"\} 20$/m)
  t.match(text, /^portcullis_requests_total\{route="unmatched",method="GET",status_class="4xx"\} 1$/m)
  t.match(text, /^process_cpu_user_seconds_total [0-9.e+-]+$/m, 'process metrics of the workers')
  t.equal(new Set(up.requests.map((r) => r.headers['x-request-id'])).size, 20)

  child.kill('SIGTERM')
  t.equal(await exited, 0, 'drains and exits 0')
})

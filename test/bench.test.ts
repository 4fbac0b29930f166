/**
 * The benchmark runner, end to end in --quick mode with 1 s runs: every scenario is either
 * measured without a single error or skipped with a reason, and the JSON report is well formed.
 * Nothing here looks at how fast anything is.
 */
import t, { type Test } from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseWrk, wrkScript } from '../bench/lib.js'
import { transpileProject } from './helper.js'

t.test('wrk output is parsed: requests, latency units, socket errors, non-2xx', async (t) => {
  const out = `Running 5s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.01ms
     99%    1.50s
  40123 requests in 5.00s, 6.12MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 7
Requests/sec:   8024.60
Transfer/sec:      1.22MB
`
  const r = parseWrk(out, 5)
  t.equal(r.requests, 40123)
  t.equal(r.rps, 8024.6)
  t.equal(r.p50Ms, 0.812)
  t.equal(r.p99Ms, 1500)
  t.equal(r.errors, 10)
  t.same(r.errorDetail, { connect: 1, read: 2, write: 3, timeout: 4 })
  t.equal(r.non2xx, 7)
  t.throws(() => parseWrk('wrk: connection refused', 5), /cannot read wrk's output/)
})

t.test('the wrk POST script carries method, body and headers, quoted for Lua', async (t) => {
  const script = wrkScript('POST', { 'content-type': 'application/json', authorization: 'Bearer a.b.c' }, '{"name":"A \\"q\\""}')
  t.match(script, /^wrk\.method = "POST"$/m)
  t.match(script, /^wrk\.body = "\{\\"name\\":\\"A \\\\\\"q\\\\\\"\\"\}"$/m)
  t.match(script, /^wrk\.headers\["authorization"\] = "Bearer a\.b\.c"$/m)
  t.throws(() => wrkScript('POST', {}, 'caf\u00e9'), /not plain ASCII/)
})

/** The current sources, transpiled once for both runner tests (no dependence on a fresh `npm run build`). */
const build = transpileProject(t, ['bench'])

/** Runs a built bench script with node; if the test is cut short, its SIGTERM handler stops every process it started. */
async function runScript (t: Test, script: string, args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM') })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c })
  child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c })
  const [code] = await once(child, 'close') as [number | null]
  return { code, stdout, stderr }
}

interface Report {
  kind: string
  ok: boolean
  pinning: unknown
  command: string
  options: { rounds: number, duration: number }
  tool: { name: string, version: string }
  scenarios: Array<{ id: string, label: string, status: string, reason?: string, protections: string[] }>
  summary: Array<{ scenario: string, method: string, rps: number, p50Ms: number, p99Ms: number, errors: number, non2xx: number, vsUpstream: { median: number, rounds: number[] }, vsBare: { median: number, rounds: number[] } }>
  runs: Array<{ scenario: string, method: string, round: number, position: number, requests: number, errors: number, non2xx: number }>
  targets: Array<{ id: string, method: string, rounds: number[], median: number }>
  problems: string[]
}

t.test('--quick runs every scenario, with zero errors, and writes a well-formed report', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'report.json')
  const { code, stdout, stderr } = await runScript(t, join(build, 'bench/run.js'), ['--quick', '--duration', '1', '--warmup', '0', '--connections', '10', '--no-pin', '--out', out])
  t.equal(code, 0, 'the runner exits 0', { stdout, stderr })

  const report = JSON.parse(readFileSync(out, 'utf8')) as Report
  t.equal(report.kind, 'pinned-comparison')
  t.equal(report.pinning, null, '--no-pin')
  t.equal(report.ok, true)
  t.same(report.problems, [])
  t.equal(report.options.rounds, 1)
  t.equal(report.options.duration, 1)
  t.ok(report.tool.name === 'wrk' || report.tool.name === 'autocannon')

  const ids = report.scenarios.map((s) => s.id)
  t.same(ids.slice(0, 10), ['upstream', 'nginx', 'fast-gateway', 'bare-proxy', 'portcullis', 'node-floor', 'fastify-floor', 'portcullis-jwt-hs256', 'portcullis-jwt-rs256', 'portcullis-full'])
  t.ok(ids.includes('portcullis-full-redis') && ids.includes('portcullis-full-metrics'))
  for (const s of report.scenarios) {
    t.ok(s.status === 'measured' || (s.status === 'skipped' && typeof s.reason === 'string' && s.reason.length > 10), `${s.id}: measured, or skipped with a reason`)
  }
  t.equal(report.scenarios.find((s) => s.id === 'fast-gateway')?.status, 'skipped')
  t.match(report.scenarios.find((s) => s.id === 'fast-gateway')?.reason, /fast-proxy-lite/)
  for (const id of ['upstream', 'bare-proxy', 'portcullis', 'node-floor', 'fastify-floor', 'portcullis-jwt-hs256', 'portcullis-jwt-rs256', 'portcullis-full']) {
    t.equal(report.scenarios.find((s) => s.id === id)?.status, 'measured', `${id} is measured`)
  }
  t.same(report.scenarios.find((s) => s.id === 'portcullis-jwt-rs256')?.protections, ['RS256 JWT'], 'the RS256 scenario verifies RS256 tokens and nothing else')
  t.ok(report.scenarios.find((s) => s.id === 'portcullis-full')?.protections.includes('access log'))

  const measured = report.scenarios.filter((s) => s.status === 'measured')
  for (const method of ['GET', 'POST']) {
    t.same(report.runs.filter((r) => r.method === method).map((r) => `${r.position}:${r.scenario}`), measured.map((s, i) => `${i}:${s.id}`),
      `${method}: round 1 runs the measured scenarios in their listed order`)
  }
  for (const s of measured) {
    for (const method of ['GET', 'POST']) {
      const runs = report.runs.filter((r) => r.scenario === s.id && r.method === method)
      t.equal(runs.length, 1, `${s.id} ${method}: one run`)
      for (const r of runs) {
        t.ok(r.requests > 0, `${s.id} ${method}: requests were served`)
        t.equal(r.errors, 0, `${s.id} ${method}: no socket errors`)
        t.equal(r.non2xx, 0, `${s.id} ${method}: no non-2xx responses`)
      }
      const row = report.summary.find((x) => x.scenario === s.id && x.method === method)
      t.ok(row !== undefined, `${s.id} ${method}: a summary row`)
      if (row === undefined) continue
      for (const key of ['rps', 'p50Ms', 'p99Ms'] as const) t.ok(Number.isFinite(row[key]), `${s.id} ${method}: ${key} is a number`)
      t.ok(Number.isFinite(row.vsUpstream.median) && Number.isFinite(row.vsBare.median), `${s.id} ${method}: both ratios`)
      t.equal(row.vsUpstream.rounds.length, 1)
    }
  }
  // Issue 19's targets: a ratio per round for each whose scenarios ran (the redis and metrics
  // scenarios run here; workers only with --workers).
  const wanted = ['1-cpu', '1-rps', '1-p99', '2-redis', '3-metrics'].filter((id) => id !== '2-redis' || measured.some((s) => s.id === 'portcullis-full-redis'))
  for (const method of ['GET', 'POST']) {
    t.same(report.targets.filter((x) => x.method === method).map((x) => x.id), wanted, `${method}: the targets whose scenarios ran`)
    for (const x of report.targets.filter((y) => y.method === method)) t.ok(x.rounds.length === 1 && Number.isFinite(x.median) && x.median > 0, `${x.id} ${method}: a ratio`)
  }
  t.match(stdout, /\| scenario +\| method \| req\/s/, 'the table is printed')
  t.match(stdout, /Targets \(issue 19[^\n]*\n +everything on: CPU per request ÷ node-floor +GET/, 'the targets are printed')
  t.match(stdout, /fast-gateway cannot be installed here/, 'the fast-gateway skip is said in the output')
})

t.test('npm run ab: a revision against the working tree, alternating order, every run error-free', async (t) => {
  const root = join(import.meta.dirname, '..')
  const dir = mkdtempSync(join(tmpdir(), 'ab-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const run = async (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> =>
    await runScript(t, join(build, 'bench/ab.js'), ['--repo', root, ...args])

  const bad = await run(['--base', 'no-such-revision-anywhere'])
  t.equal(bad.code, 2, 'an unknown revision stops it')
  t.match(bad.stderr, /--base no-such-revision-anywhere: not a revision of/)

  // From a git checkout (CI's is one) the base is HEAD, built from `git archive`; from a copy
  // without .git, the same transpiled build is given as the base.
  const head = spawnSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' })
  const inGit = head.status === 0
  if (!inGit) {
    if (process.env.CI === 'true') t.fail('CI runs on a git checkout: `git rev-parse HEAD` failed here')
    t.comment('NOT A GIT CHECKOUT: `npm run ab --base REV` is tested with --base-build instead')
  }
  const base = inGit ? ['--base', 'HEAD'] : ['--base-build', build]
  const out = join(dir, 'ab.json')
  const res = await run([...base, '--scenario', 'portcullis', '--method', 'POST', '--rounds', '2', '--seconds', '1', '--warmup', '0', '--connections', '10', '--no-pin', '--out', out])
  t.equal(res.code, 0, 'it exits 0', res)
  const report = JSON.parse(readFileSync(out, 'utf8')) as {
    kind: string
    base: { commit: string }
    runs: Array<{ round: number, side: string, position: number, requests: number, errors: number, non2xx: number, cpuUsPerRequest: number }>
    summary: Record<'cpuPerRequest' | 'rps' | 'p99', { median: number, rounds: number[] }>
  }
  t.equal(report.kind, 'ab')
  t.equal(report.base.commit, inGit ? head.stdout.trim() : 'given build', 'the base is the revision asked for')
  t.same(report.runs.map((r) => `${r.round}:${r.position}:${r.side}`), ['1:0:base', '1:1:head', '2:0:head', '2:1:base'], 'the order alternates')
  for (const r of report.runs) {
    t.ok(r.requests > 0, `round ${r.round} ${r.side}: served requests`)
    t.equal(r.errors + r.non2xx, 0, `round ${r.round} ${r.side}: no errors`)
    t.ok(r.cpuUsPerRequest > 0, `round ${r.round} ${r.side}: its CPU was read`)
  }
  for (const key of ['cpuPerRequest', 'rps', 'p99'] as const) {
    t.equal(report.summary[key].rounds.length, 2)
    t.ok(report.summary[key].rounds.every((x) => Number.isFinite(x) && x > 0), `${key}: a ratio per round`)
  }
  t.match(res.stdout, /head ÷ base, per round: CPU per request [0-9.]+×/)
})

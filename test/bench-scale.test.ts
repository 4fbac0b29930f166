/**
 * `npm run bench -- --scale-quick`: the cost-growth mode end to end with tiny sizes (routes 1 and
 * 50, API keys 10 and 100, 0 and 10 idle connections, one round of 1 s): every row measured with
 * zero errors and the report well formed. Nothing here looks at how fast anything is. The other
 * dimensions (jwks, bodies, c1) are in test/bench-scale-requests.test.ts: both in one file pass
 * tap's 240 s per file on this loaded machine.
 */
import t from 'tap'
import { execFile, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { transpileProject } from './helper.js'

// One transpiled copy for every test here (each test spawns its own runner from it).
const build = transpileProject(t, ['bench'])

interface Row {
  size: number
  status: string
  reason?: string
  startupMs: number
  rssMiB: number
  cpuUsPerRequest: number
  ratio: { median: number, q1: number, q3: number, rounds: number[] }
  requests: number
  errors: number
  idle?: { open: number, failed: number, dropped: number, rssPerConnectionKiB: number | null }
}
interface Report {
  kind: string
  ok: boolean
  pinning: unknown
  options: { rounds: number }
  dimensions: Array<{ dimension: string, hit: string, loadavgAtStart: number[], loadavgAtEnd: number[], rows: Row[] }>
  problems: string[]
}

t.test('--scale-quick measures every size of routes, keys and idle clients with zero errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-scale-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'scale.json')
  // spawnSync: this test process serves nothing while it waits; SIGTERM (its handler stops every
  // process it started) if it overruns.
  const run = spawnSync(process.execPath, [join(build, 'bench/run.js'), '--scale-quick', '--only', 'routes,keys,idle', '--rounds', '1', '--no-pin', '--out', out], { encoding: 'utf8', timeout: 180_000, killSignal: 'SIGTERM' })
  const { status: code, stdout, stderr } = run
  t.equal(code, 0, 'the runner exits 0', { stdout, stderr })

  const report = JSON.parse(readFileSync(out, 'utf8')) as Report
  t.equal(report.kind, 'scale')
  t.equal(report.ok, true)
  t.same(report.problems, [])
  t.equal(report.pinning, null, '--no-pin')
  t.equal(report.options.rounds, 1)
  t.same(report.dimensions.map((d) => d.dimension), ['routes', 'keys', 'idle'])
  const sizes: Record<string, number[]> = { routes: [1, 50], keys: [10, 100], idle: [0, 10] }
  for (const d of report.dimensions) {
    t.same(d.rows.map((r) => r.size), sizes[d.dimension], `${d.dimension}: one row per size`)
    t.match(d.hit, /^GET \/api\/people\/1/, `${d.dimension}: says which request was measured`)
    t.equal(d.loadavgAtStart.length, 3, `${d.dimension}: the load average is recorded`)
    for (const r of d.rows) {
      const what = `${d.dimension} ${r.size}`
      t.equal(r.status, 'measured', `${what}: measured`, { reason: r.reason })
      t.ok(r.requests > 0, `${what}: requests were served`)
      t.equal(r.errors, 0, `${what}: no errors`)
      for (const key of ['startupMs', 'rssMiB', 'cpuUsPerRequest'] as const) t.ok(Number.isFinite(r[key]) && r[key] > 0, `${what}: ${key} is a positive number`)
      t.equal(r.ratio.rounds.length, 1, `${what}: one ratio per round`)
      t.ok(r.ratio.q1 <= r.ratio.median && r.ratio.median <= r.ratio.q3, `${what}: quartiles around the median`)
    }
    t.equal(d.rows[0].ratio.median, 1, `${d.dimension}: the smallest size is the baseline`)
  }
  const idle = report.dimensions.find((d) => d.dimension === 'idle')?.rows.find((r) => r.size === 10)?.idle
  t.same(idle && { open: idle.open, failed: idle.failed, dropped: idle.dropped }, { open: 10, failed: 0, dropped: 0 }, 'the 10 idle connections stayed open through the load')
  t.match(stdout, /\| dimension \| size \| start-up ms \|/, 'the table is printed')
})

t.test('--scale rejects a size that is not a whole number, before starting anything', async (t) => {
  const run = async (...args: string[]): Promise<{ code: number | null, stderr: string }> => await new Promise((resolve) => {
    execFile(process.execPath, [join(build, 'bench/run.js'), '--scale', ...args], { encoding: 'utf8', timeout: 60_000 }, (err, _stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stderr })
    })
  })
  const [routes, only, bodies] = await Promise.all([run('--routes', '1,ten'), run('--only', 'jwks,nope'), run('--bodies', '1kb,lots')])
  t.equal(routes.code, 1)
  t.match(routes.stderr, /--routes must be a whole number from 1 to 100000, not "ten"/)
  t.equal(only.code, 1)
  t.match(only.stderr, /--only: nope is not one of routes, keys, idle, jwks, bodies, c1/)
  t.equal(bodies.code, 1)
  t.match(bodies.stderr, /--bodies: "lots" is not a size/)
})

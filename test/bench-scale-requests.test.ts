/**
 * `npm run bench -- --scale-quick --only jwks,bodies,c1`: the cost-growth dimensions whose
 * requests differ one from the next, end to end with tiny sizes (JWKS of 1 and 3 keys and fixed
 * RS256/ES256 keys, 100 tokens a run; bodies of 1 KiB and 1 MiB both ways; 100 requests at one
 * connection), one round: every row measured with zero errors, nginx beside Portcullis, and the
 * report well formed. Nothing here looks at how fast anything is. (Apart from
 * test/bench-scale.test.ts so that each file stays within tap's 240 s on a loaded machine.)
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { transpileProject } from './helper.js'

const build = transpileProject(t, ['bench'])

interface OtherRow {
  size: number
  label: string
  status: string
  reason?: string
  requests: number
  errors: number
  cpuUsPerRequest?: number
  checkUs?: { median: number, rounds: number[] }
  mibPerSecond?: { median: number, rounds: number[] }
  vsNginx?: { median: number, rounds: number[] }
  peakRssMiB?: number | null
  latencyUs?: { p25: number, p50: number, p75: number }
  hopUs?: { median: number, rounds: number[] }
}

t.test('--scale-quick --only jwks,bodies,c1: every row measured with zero errors, nginx beside Portcullis', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-scale-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'scale.json')
  const run = spawnSync(process.execPath, [join(build, 'bench/run.js'), '--scale-quick', '--only', 'jwks,bodies,c1', '--rounds', '1', '--no-pin', '--out', out],
    { encoding: 'utf8', timeout: 240_000, killSignal: 'SIGTERM' })
  const { status: code, stdout, stderr } = run
  t.equal(code, 0, 'the runner exits 0', { stdout, stderr })
  const report = JSON.parse(readFileSync(out, 'utf8')) as { ok: boolean, problems: string[], dimensions: Array<{ dimension: string, hit: string, rows: OtherRow[] }> }
  t.equal(report.ok, true)
  t.same(report.problems, [])
  t.same(report.dimensions.map((d) => d.dimension), ['jwks', 'bodies', 'c1'])
  // Outside CI a machine without nginx gets a skipped nginx row; under CI=true the run fails instead (next test).
  const nginx = spawnSync('sh', ['-c', 'command -v nginx']).status === 0
  const proxies = nginx ? ['direct', 'nginx', 'portcullis'] : ['direct', 'portcullis']
  const rows = (name: string): OtherRow[] => report.dimensions.find((d) => d.dimension === name)?.rows ?? []
  const measured = (name: string): OtherRow[] => rows(name).filter((r) => r.status !== 'skipped')
  for (const d of report.dimensions) {
    for (const r of d.rows) {
      if (r.status === 'skipped') { t.ok(!nginx && r.label === 'nginx', `${d.dimension}: only nginx is skipped, and only where it is missing`); continue }
      t.equal(r.status, 'measured', `${d.dimension} ${r.label}: measured`, { reason: r.reason })
      t.ok(r.requests > 0, `${d.dimension} ${r.label}: requests were made`)
      t.equal(r.errors, 0, `${d.dimension} ${r.label}: no errors`, { reason: r.reason })
    }
  }

  const tokenRows = ['JWKS 1 key', 'JWKS 3 keys', 'RS256 public key', 'ES256 public key'].flatMap((g) => [`${g}, never seen`, `${g}, reused`])
  t.same(measured('jwks').map((r) => r.label), tokenRows, 'jwks: 1 and 3 keys, RS256 and ES256, each with tokens never seen and reused')
  for (const r of measured('jwks')) {
    t.equal(r.requests, 100, `${r.label}: 100 requests (--tokens in quick mode)`)
    t.ok(Number.isFinite(r.cpuUsPerRequest), `${r.label}: CPU per request read`)
  }
  for (const label of ['RS256 public key, never seen', 'ES256 public key, never seen']) {
    t.equal(measured('jwks').find((r) => r.label === label)?.checkUs?.rounds.length, 1, `${label}: the first-verification cost of the round`)
  }

  const bodyRows = ['1 KiB', '1 MiB'].flatMap((size) => ['upload', 'download'].flatMap((d) => proxies.map((p) => `${d} ${size}, ${p}`)))
  t.same(measured('bodies').map((r) => r.label), bodyRows, 'bodies: 1 KiB and 1 MiB both ways, direct, through nginx and Portcullis')
  for (const r of measured('bodies')) {
    t.equal(r.requests, r.size === 1024 ? 200 : 20, `${r.label}: the quick mode's bounded transfers`)
    t.ok((r.mibPerSecond?.median ?? 0) > 0, `${r.label}: MiB/s measured`)
    if (r.label.endsWith('portcullis') && nginx) t.equal(r.vsNginx?.rounds.length, 1, `${r.label}: paired with nginx`)
    if (r.size === 1_048_576 && !r.label.endsWith('direct')) t.ok((r.peakRssMiB ?? 0) > 0, `${r.label}: peak RSS during the largest transfers`)
  }

  t.same(measured('c1').map((r) => r.label), proxies, 'c1: direct, nginx, Portcullis')
  for (const r of measured('c1')) {
    t.equal(r.requests, 100, `c1 ${r.label}: 100 requests`)
    const l = r.latencyUs
    t.ok(l !== undefined && l.p25 > 0 && l.p25 <= l.p50 && l.p50 <= l.p75, `c1 ${r.label}: latency quartiles in order`, { latency: l })
    if (r.label !== 'direct') t.equal(r.hopUs?.rounds.length, 1, `c1 ${r.label}: what the hop adds, per round`)
  }
  t.match(stdout, /\| token check \|/, 'the jwks table is printed')
  t.match(stdout, /\| transfer, through \|/, 'the bodies table is printed')
  t.match(stdout, /\| to \| latency µs p25 \/ p50 \/ p75 \|/, 'the c1 table is printed')
})

t.test('under CI=true a missing nginx fails the run in words instead of skipping it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-scale-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // The PATH without the folders that hold nginx: `command -v nginx` finds nothing.
  const path = (process.env.PATH ?? '').split(':').filter((p) => p !== '' && !existsSync(join(p, 'nginx'))).join(':')
  const { status: code, stderr } = spawnSync(process.execPath, [join(build, 'bench/run.js'), '--scale-quick', '--only', 'c1', '--rounds', '1', '--no-pin', '--out', join(dir, 'scale.json')],
    { encoding: 'utf8', timeout: 120_000, killSignal: 'SIGTERM', env: { ...process.env, CI: 'true', PATH: path } })
  t.equal(code, 1)
  t.match(stderr, /nginx is not installed \(Debian: apt-get install nginx-light\), and CI=true needs it/)
})

/**
 * `npm run loadtest` (bench/loadtest.ts): its argument checks, the bearer token taken from
 * PORTCULLIS_TOKEN or --token-file and never from argv, and real runs of the script as its own
 * process through a gateway that requires the token: the gateway accepts it, the upstream gets it,
 * and it appears nowhere in stdout, stderr or the report (no timing is asserted).
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { defaultReportPath, formatReport, parseLoadtestArgs, runLoadtest, MAX_DURATION_S, TOKEN_ENV } from '../bench/loadtest.js'
import { hsToken, SECRET } from './auth-helper.js'
import { startTestGateway, startUpstream, transpileProject } from './helper.js'

const ROOT = join(import.meta.dirname, '..')
const SECRET_TOKEN = 'tok-9f3c1d7e5b2a4c6e8d0f'

t.test('arguments: --url required, bounded duration, headers, report under bench/results/', async (t) => {
  t.throws(() => parseLoadtestArgs([], {}), /--url is required/)
  t.throws(() => parseLoadtestArgs(['--url', 'ftp://x/'], {}), /http\(s\) URL/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--duration', String(MAX_DURATION_S + 1)], {}), /--duration must be a whole number from 1 to 600/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--connections', '0'], {}), /--connections/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--requests', 'many'], {}), /--requests/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--header', 'nocolon'], {}), /--header/)
  const o = parseLoadtestArgs(['--url', 'http://127.0.0.1:8080/api/people/', '--header', 'X-Extra: 1', '--method', 'post', '--body', '{"name":"A","age":1}'], {})
  t.match(o, { method: 'POST', duration: 10, connections: 50, tokenSource: undefined })
  t.same(o.headers, { 'x-extra': '1', 'content-type': 'application/json' }, 'no token anywhere: no Authorization')
  t.match(o.out, /^.*\/bench\/results\/loadtest-[0-9T-]+Z\.json$/, 'the default report: bench/results/loadtest-<time>.json')
  t.equal(defaultReportPath(new Date('2026-01-02T03:04:05.678Z')), join(ROOT, 'bench', 'results', 'loadtest-2026-01-02T03-04-05-678Z.json'), 'in the repository')
  t.match(readFileSync(join(ROOT, '.gitignore'), 'utf8'), /^bench\/results\/$/m, 'which git ignores')
})

t.test('the token comes from PORTCULLIS_TOKEN or --token-file, never from argv (and a refusal never quotes it)', async (t) => {
  const url = ['--url', 'http://127.0.0.1:8080/api/people/']
  const fromEnv = parseLoadtestArgs(url, { [TOKEN_ENV]: `${SECRET_TOKEN}\n` })
  t.equal(fromEnv.headers.authorization, `Bearer ${SECRET_TOKEN}`)
  t.equal(fromEnv.tokenSource, TOKEN_ENV)

  const dir = mkdtempSync(join(tmpdir(), 'portcullis-loadtest-args-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'token')
  writeFileSync(file, `${SECRET_TOKEN}\nsecond line ignored\n`, { mode: 0o600 })
  const fromFile = parseLoadtestArgs([...url, '--token-file', file], { [TOKEN_ENV]: 'from-env' })
  t.equal(fromFile.headers.authorization, `Bearer ${SECRET_TOKEN}`, '--token-file wins over the environment; its first line, trimmed')
  t.equal(fromFile.tokenSource, `--token-file ${file}`)
  writeFileSync(join(dir, 'empty'), '\n')
  t.throws(() => parseLoadtestArgs([...url, '--token-file', join(dir, 'empty')], {}), /first line is empty/)
  t.throws(() => parseLoadtestArgs([...url, '--token-file', join(dir, 'missing')], {}), /cannot read it \(ENOENT\)/)

  const refusals: Array<[string[], RegExp]> = [
    [[...url, '--token', SECRET_TOKEN], /--token is not accepted/],
    [[...url, `--token=${SECRET_TOKEN}`], /--token is not accepted/],
    [[...url, '--header', `Authorization: Bearer ${SECRET_TOKEN}`], /--header authorization is not accepted/],
    [[...url, '--header', `proxy-authorization:${SECRET_TOKEN}`], /--header proxy-authorization is not accepted/],
    [['--url', `http://u:${SECRET_TOKEN}@127.0.0.1:8080/`], /--url must not carry credentials/],
    [[...url, SECRET_TOKEN], /positional arguments are not accepted/]
  ]
  for (const [argv, message] of refusals) {
    const err = (() => { try { parseLoadtestArgs(argv, {}) } catch (e) { return e as Error } })()
    t.match(err?.message, message, argv.slice(2).join(' ').replace(SECRET_TOKEN, '<token>'))
    t.match(err?.message, /PORTCULLIS_TOKEN|--token-file|positional/, 'says where the token goes instead')
    t.notMatch(err?.message, SECRET_TOKEN, 'the message does not quote the token')
  }
})

t.test('a short run through a gateway: summary table and report', async (t) => {
  const upstream = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people` }] })
  // A count, not a duration: on a busy machine one second may not see a single response.
  const options = parseLoadtestArgs(['--url', `${url}/api/people/`, '--requests', '40', '--connections', '4', '--out', join(tmpdir(), 'unused.json')], { [TOKEN_ENV]: 'tok-123' })
  const report = await runLoadtest(options)
  t.equal(report.requests.total, 40, 'the 40 requests were made')
  t.equal(upstream.requests.length, 40, 'and all reached the upstream')
  t.equal(report.ok, report.requests.total, 'all 2xx')
  t.equal(report.statusCodes['200'], report.requests.total)
  t.equal(report.errors, 0)
  t.equal(report.connections, 4)
  t.ok(report.latencyMs.p99 >= report.latencyMs.p50)
  t.equal(upstream.requests.at(-1)?.headers.authorization, 'Bearer tok-123', 'the token was sent')
  const table = formatReport(report)
  t.match(table, /requests\/s \(avg, p50\)/)
  t.match(table, /latency ms \(avg \/ p50 \/ p90 \/ p99 \/ max\)/)
  t.match(table, new RegExp(`200: ${report.requests.total}`))
  t.notOk(existsSync(options.out), 'runLoadtest itself writes nothing; the CLI writes --out')
  t.equal(readFileSync(join(ROOT, 'package.json'), 'utf8').includes('"loadtest"'), true, 'npm run loadtest exists')
})

t.test('npm run loadtest as a process: the gateway accepts the token, the upstream gets it, no output or report shows it', async (t) => {
  const build = transpileProject(t, ['bench'])
  const script = join(build, 'bench', 'loadtest.js')
  const upstream = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    jwt: { algorithms: ['HS256'], secret: SECRET },
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'] }]
  })
  const token = hsToken({ sub: 'loadtester', scope: 'people:read' })
  const signature = token.split('.')[2] ?? ''
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-loadtest-cli-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const tokenFile = join(dir, 'token')
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 })

  const runScript = async (args: string[], env: Record<string, string>): Promise<{ code: number | null, output: string }> => {
    const child = spawn(process.execPath, [script, '--url', `${url}/api/people/`, '--requests', '20', '--connections', '2', ...args], {
      env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    child.stdout.on('data', (d: Buffer) => { output += d.toString() })
    child.stderr.on('data', (d: Buffer) => { output += d.toString() })
    const [code] = await once(child, 'exit') as [number | null]
    return { code, output }
  }

  for (const [how, args, env] of [
    ['PORTCULLIS_TOKEN', [], { [TOKEN_ENV]: token }],
    ['--token-file', ['--token-file', tokenFile], {}]
  ] as Array<[string, string[], Record<string, string>]>) {
    const before = upstream.requests.length
    const { code, output } = await runScript(args, env)
    t.equal(code, 0, `${how}: exit 0`, { output })
    const reports = readdirSync(join(build, 'bench', 'results'))
    const latest = reports.sort().at(-1) ?? ''
    t.match(latest, /^loadtest-.*\.json$/, `${how}: the report went to bench/results/ by default`)
    const reportText = readFileSync(join(build, 'bench', 'results', latest), 'utf8')
    t.match(JSON.parse(reportText), { requests: { total: 20 }, ok: 20, statusCodes: { 200: 20 } }, `${how}: the gateway accepted the token on every request (the route requires it)`)
    const seen = upstream.requests.slice(before)
    t.equal(seen.length, 20, `${how}: 20 requests reached the upstream`)
    t.ok(seen.every((r) => r.headers.authorization === `Bearer ${token}`), `${how}: each with the token`)
    t.match(output, how === '--token-file' ? `the token from --token-file ${tokenFile}` : 'the token from PORTCULLIS_TOKEN', 'the summary says where the token came from')
    for (const [where, text] of [['stdout and stderr', output], ['the report', reportText]]) {
      t.notMatch(text, token, `${how}: the token is not in ${where}`)
      t.notMatch(text, signature, `${how}: nor its signature`)
    }
    rmSync(join(build, 'bench', 'results', latest))
  }

  const refused = await runScript(['--token', token], {})
  t.equal(refused.code, 2, 'a token in argv: exit 2')
  t.match(refused.output, /--token is not accepted: .*PORTCULLIS_TOKEN/)
  t.notMatch(refused.output, signature, 'the refusal does not echo it')
  t.equal(upstream.requests.length, 40, 'and sends nothing')
})

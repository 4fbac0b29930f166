/**
 * The command line as a user runs it: the `portcullis` bin as its own process. Exit codes
 * 0 (ok), 1 (bad config, cannot start), 2 (bad command line, with the usage on stderr).
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { copyFileSync, readFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { call, freePort, startUpstream, transpileProject } from './helper.js'
import { tempFolder } from './config-helper.js'

const ROOT = join(import.meta.dirname, '..')
const build = transpileProject(t)
// The real package.json beside the transpiled sources, so that --version reports the real version.
copyFileSync(join(ROOT, 'package.json'), join(build, 'package.json'))
const CLI = join(build, 'src', 'cli.js')
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version

const { dir, file } = tempFolder(t, 'portcullis-cli-')

interface Run { code: number | null, stdout: string, stderr: string }
/** Runs the CLI to its end (several at once where a test can: each start loads the whole gateway). */
async function portcullis (args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<Run> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd, env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  const [code] = await once(child, 'close') as [number | null]
  clearTimeout(timer)
  return { code, stdout, stderr }
}

const GOOD = file('good.yaml', `
server: { port: 8080 }
routes:
  - name: people
    prefix: /api/people
    upstream: http://127.0.0.1:8000/api/people
`)

t.test('validate: a good file → "ok", exit 0', async (t) => {
  const [res, short, positional, repo] = await Promise.all([
    portcullis(['validate', '--config', GOOD]),
    portcullis(['validate', '-c', GOOD]),
    portcullis(['validate', GOOD]),
    // The repository's own gateway.yaml validates too.
    portcullis(['validate', '--config', join(ROOT, 'gateway.yaml')])
  ])
  t.equal(res.code, 0)
  t.equal(res.stdout, 'ok\n')
  t.equal(res.stderr, '')
  t.equal(short.stdout, 'ok\n', '-c works as --config')
  t.equal(positional.stdout, 'ok\n', 'and so does a FILE argument')
  t.equal(repo.code, 0, `gateway.yaml is valid${repo.stderr === '' ? '' : `: ${repo.stderr}`}`)
})

t.test('validate: a bad file → every problem as `path: message`, exit 1', async (t) => {
  const schemaErrors = file('schema.yaml', `
bogus: 1
server: { port: http }
routes:
  - name: people
    prefix: /api/people
    upstream: http://127.0.0.1:8000/api/people
    timeout: 10 seconds
    methods: [GET, FETCH]
`)
  const semanticErrors = file('semantic.yaml', `
routes:
  - name: people
    prefix: /api/people
    upstream: ftp://127.0.0.1/people
  - name: people
    prefix: /api/people/admin
    upstream: http://127.0.0.1:8000/admin
`)
  const env = file('env.yaml', 'routes: [{ name: a, prefix: /a, upstream: "${UPSTREAM_URL}" }]\n')
  const broken = file('broken.yaml', 'routes: [\n')
  const [schemaRun, semanticRun, envRun, envSetRun, missingRun, brokenRun] = await Promise.all([
    portcullis(['validate', '--config', schemaErrors]),
    portcullis(['validate', '--config', semanticErrors]),
    portcullis(['validate', '--config', env]),
    portcullis(['validate', '--config', env], { UPSTREAM_URL: 'http://127.0.0.1:1/a' }),
    // The path as given, and as resolved against the working folder.
    portcullis(['validate', 'gateway.yml'], {}, dir),
    portcullis(['validate', '--config', broken])
  ])
  let res = schemaRun
  t.equal(res.code, 1)
  t.equal(res.stdout, '')
  t.equal(res.stderr, [
    `invalid config in ${schemaErrors}:`,
    '  bogus: unknown key',
    '  routes[0].methods[1]: must be one of "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"',
    '  routes[0].timeout: must be a duration such as 500ms, 10s, 15m or 1h',
    '  server.port: must be an integer',
    ''
  ].join('\n'), 'sorted by path')

  res = semanticRun
  t.equal(res.code, 1)
  t.same(res.stderr.trimEnd().split('\n').slice(1).map((l) => l.trim()), [
    'routes[0].upstream: must be an http or https URL',
    'routes[1].name: "people" is already the name of routes[0]',
    'routes[1].prefix: "/api/people/admin" is shadowed by routes[0].prefix "/api/people"'
  ])

  res = envRun
  t.equal(res.code, 1)
  t.equal(res.stderr, `invalid config in ${env}:\n  routes[0].upstream: environment variable UPSTREAM_URL is not set (write \${UPSTREAM_URL:-default} to give a default)\n`)
  t.equal(envSetRun.code, 0, 'the same file with the variable set is valid')

  res = missingRun
  t.equal(res.code, 1)
  t.equal(res.stderr, `cannot read the config file gateway.yml (${join(dir, 'gateway.yml')}): no such file (ENOENT)\n`)
  res = brokenRun
  t.equal(res.code, 1)
  t.equal(res.stderr, [
    `invalid config in ${broken}:`,
    `  ${broken}:1:10: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]`,
    '    routes: [',
    '             ^',
    ''
  ].join('\n'), 'the line, and a caret under the column')
  t.notMatch(res.stderr, /\n\s+at /, 'no stack trace')
})

t.test('validate: every stage at once; strict JSON; lists and patterns in words', async (t) => {
  const stages = file('stages.yaml', `
bogus: 1
server: { port: "\${PORT}" }
routes:
  - { name: people, prefix: /api/people, upstream: "http://127.0.0.1:8000/people", timeout: 10 seconds, methods: GET }
  - { name: admin, prefix: /api/people/admin, upstream: "\${ADMIN_URL}" }
  - { name: other, prefix: other, upstream: ftp://127.0.0.1/other }
  - { name: last, prefix: /last, upstream: ftp://127.0.0.1/last }
`)
  const json = file('gateway.json', '{\n  "routes": [\n    { "name": "a", "prefix": "/a", "upstream": "http://127.0.0.1:1/a", }\n  ]\n}\n')
  const [stagesRun, jsonRun, startRun] = await Promise.all([
    portcullis(['validate', stages]),
    portcullis(['validate', json]),
    portcullis(['start', json])
  ])
  t.equal(stagesRun.code, 1)
  t.equal(stagesRun.stderr, [
    `invalid config in ${stages}:`,
    '  bogus: unknown key',
    '  routes[0].methods: must be a list, e.g. [GET]',
    '  routes[0].timeout: must be a duration such as 500ms, 10s, 15m or 1h',
    '  routes[1].prefix: "/api/people/admin" is shadowed by routes[0].prefix "/api/people"',
    '  routes[1].upstream: environment variable ADMIN_URL is not set (write ${ADMIN_URL:-default} to give a default)',
    "  routes[2].prefix: must start with / and hold only letters, digits and the URL path characters - . _ ~ ! $ & ' ( ) * + , ; = : @ % /",
    '  routes[3].upstream: must be an http or https URL',
    '  server.port: environment variable PORT is not set (write ${PORT:-default} to give a default)',
    ''
  ].join('\n'), 'the ${VAR}, schema and semantic problems together, sorted by path')

  const jsonError = [
    `invalid config in ${json}:`,
    `  ${json}:3:72: not valid JSON: expected double-quoted property name`,
    '        { "name": "a", "prefix": "/a", "upstream": "http://127.0.0.1:1/a", }',
    '                                                                           ^',
    ''
  ].join('\n')
  t.equal(jsonRun.code, 1)
  t.equal(jsonRun.stderr, jsonError, 'a .json file is strict JSON: a trailing comma is an error')
  t.equal(startRun.code, 1)
  t.equal(startRun.stderr, jsonError, 'start says the same')
})

t.test('bad command lines → usage on stderr, exit 2', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /a command is required/],
    [['frobnicate'], /unknown command: frobnicate/],
    [['--bogus'], /Unknown option '--bogus'/],
    [['start', '--config'], /argument missing/],
    [['validate', '--config', GOOD, '--port', '1'], /validate takes only the config file/],
    [['validate', GOOD, 'other.yaml'], /unexpected argument: other\.yaml/],
    [['api-key', GOOD], /unexpected argument: /],
    [['start', '--config', GOOD, '--port', 'http'], /--port must be a number from 0 to 65535, not "http"/],
    [['start', '--config', GOOD, '--port', '70000'], /--port must be a number/],
    [['validate', 'extra', '--config', GOOD], /unexpected argument: extra/]
  ]
  const runs = await Promise.all(cases.map(([args]) => portcullis(args)))
  for (const [i, [args, message]] of cases.entries()) {
    const res = runs[i]
    t.equal(res.code, 2, `portcullis ${args.join(' ')}: exit 2`)
    t.match(res.stderr, message, 'says what is wrong')
    t.match(res.stderr, /Usage: portcullis <command>/, 'and shows the usage')
    t.equal(res.stdout, '', 'nothing on stdout')
  }
})

t.test('--help and --version', async (t) => {
  const [help, h, version, v] = await Promise.all([['--help'], ['-h'], ['--version'], ['-v']].map((args) => portcullis(args)))
  for (const res of [help, h]) {
    t.equal(res.code, 0)
    t.match(res.stdout, /^Usage: portcullis <command> \[options\]/)
    t.match(res.stdout, /start +\[FILE\]/)
    t.match(res.stdout, /validate +\[FILE\]/)
    t.match(res.stdout, /-c, --config FILE/)
    t.equal(res.stderr, '')
  }
  for (const res of [version, v]) {
    t.equal(res.code, 0)
    t.equal(res.stdout, `${VERSION}\n`, 'the version in package.json')
  }
})

t.test('start: --port and --host override the file; a bad file or a taken port is exit 1', async (t) => {
  const up = await startUpstream(t)
  const config = file('start.yaml', `
server: { host: 0.0.0.0, port: 1 }
logging: { level: warn }
routes: [{ name: r, prefix: /r, upstream: "${up.origin}/v1" }]
`)
  // The refused starts run while the good one starts and serves (each is its own process).
  const taken = createServer()
  taken.listen(0, '127.0.0.1')
  await once(taken, 'listening')
  t.teardown(() => { taken.close() })
  const refusals = Promise.all([
    portcullis(['start', '--config', file('bad-start.yaml', 'routes: [{ name: r, prefix: /r, upstream: nope }]\n')]),
    portcullis(['start', '--config', config, '--host', '127.0.0.1', '--port', String((taken.address() as AddressInfo).port)])
  ])
  const port = await freePort()
  const child = spawn(process.execPath, [CLI, 'start', '--config', config, '--port', String(port), '--host', '127.0.0.1'], { stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = once(child, 'exit')
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let res
  for (let i = 0; i < 600; i++) {
    res = await call(`http://127.0.0.1:${port}/r/x?y=1`).catch(() => undefined)
    if (res !== undefined) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal(res?.status, 200, 'listening on the --port and --host given')
  t.equal(up.requests.at(-1)?.url, '/v1/x?y=1', 'and proxying')
  child.kill('SIGTERM')
  t.same(await exited, [0, null], 'SIGTERM → exit 0')

  const [bad, busy] = await refusals
  t.equal(bad.code, 1, 'an invalid config does not start: exit 1')
  t.match(bad.stderr, 'routes[0].upstream: must be an http or https URL')

  t.equal(busy.code, 1, 'a port in use: exit 1')
  t.match(busy.stderr, /cannot start: .*EADDRINUSE/)
})

t.test('start turns off V8\'s allocation-site pretenuring unless server.allocationSitePretenuring is true', async (t) => {
  const up = await startUpstream(t)
  /**
   * Starts the CLI under `--trace-pretenuring-statistics` (V8 prints a line at each GC that weighs
   * its pretenuring feedback, and none once pretenuring is off) with a tiny young generation so
   * that load collects often; sends 3000 requests; returns the trace lines printed after the
   * gateway said it was listening.
   */
  async function tracedRun (name: string, pretenuring: boolean | undefined): Promise<number> {
    const config = file(`${name}.yaml`, `
server: { host: 127.0.0.1${pretenuring === undefined ? '' : `, allocationSitePretenuring: ${String(pretenuring)}`} }
logging: { level: info, accessLog: false }
routes: [{ name: r, prefix: /r, upstream: "${up.origin}/v1" }]
`)
    const port = await freePort()
    const child = spawn(process.execPath, ['--trace-pretenuring-statistics', '--max-semi-space-size=1', CLI, 'start', '--config', config, '--port', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    for (let i = 0; i < 600 && !out.includes('portcullis listening'); i++) await new Promise((resolve) => setTimeout(resolve, 50))
    t.match(out, 'portcullis listening', `${name}: started`)
    const before = out.length
    for (let i = 0; i < 300; i++) {
      const batch = await Promise.all(Array.from({ length: 10 }, () => call(`http://127.0.0.1:${port}/r/${i}`)))
      if (batch.some((r) => r.status !== 200)) { t.fail(`${name}: a request failed`); break }
    }
    child.kill('SIGTERM')
    await once(child, 'exit')
    return out.slice(before).split('\n').filter((l) => l.includes('pretenuring:')).length
  }
  // Both at once: each is its own process, and each counts only its own trace lines.
  const [off, on] = await Promise.all([tracedRun('default', undefined), tracedRun('on', true)])
  t.equal(off, 0, 'by default: no pretenuring decisions while serving')
  t.ok(on > 0, 'allocationSitePretenuring: true leaves V8 deciding (so the check above can fail)')
})

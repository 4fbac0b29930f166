/**
 * No known or weak secret served on a non-loopback address: the published demo values
 * (KNOWN_DEMO_SECRETS) and HS* secrets under 32 bytes stop `portcullis start` and `portcullis
 * validate` on 0.0.0.0 / :: / any other address, with a message naming the key and the fix; on
 * loopback the demo starts with one warning naming the keys. The CLI runs as its own process.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse } from 'yaml'
import { ConfigError, parseConfig } from '../src/config.js'
import { isLoopbackHost, KNOWN_DEMO_SECRETS, knownSecretProblems } from '../schemas/secure-defaults.js'
import { freePort, transpileProject } from './helper.js'

const ROOT = join(import.meta.dirname, '..')
const GATEWAY_YAML = join(ROOT, 'gateway.yaml')
const DEMO_SECRET = 'demo-only-secret-set-JWT_SECRET-in-production'
const STRONG = 'S'.repeat(24) + 'strong-secret-of-48-bytes!' // 50 bytes
const JWT_MESSAGE = 'jwt.secret: is the published demo secret; set JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)'
const passwordMessage = (i: number, env: string): string =>
  `users[${i}].password: is a published demo password; set ${env} to a password of your own (or write passwordHash from \`portcullis hash-password\`)`

/** The problems parseConfig reports, [] when the config is valid. */
function problemsOf (raw: unknown, env: Record<string, string> = {}): string[] {
  try {
    parseConfig(raw, { env })
    return []
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
}

const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:8000/api/people', auth: ['jwt', 'basic'] }
const base = (host: string, more: Record<string, unknown> = {}): Record<string, unknown> => ({
  server: { host },
  logging: { level: 'silent' },
  users: [{ username: 'demo', password: '${DEMO_PASSWORD}', scopes: ['people:read'] }],
  jwt: { algorithms: ['HS256'], secret: '${JWT_SECRET}' },
  routes: [route],
  ...more
})

t.test('loopback is 127.0.0.0/8, ::1 and localhost; 0.0.0.0 and :: are not', async (t) => {
  for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', '0:0:0:0:0:0:0:1', 'localhost', 'LOCALHOST', '::ffff:127.0.0.1']) t.ok(isLoopbackHost(h), `${h} is loopback`)
  for (const h of ['0.0.0.0', '::', '[::]', '10.0.0.7', '192.168.1.1', '::2', '1::1', 'example.com', 'localhost.example.com', '128.0.0.1', '::ffff:10.0.0.1', '0:0:0:0:0:0:0:0']) t.notOk(isLoopbackHost(h), `${h} is not loopback`)
})

t.test('every secret the project ships in an example is in KNOWN_DEMO_SECRETS', async (t) => {
  const yaml = readFileSync(GATEWAY_YAML, 'utf8')
  const defaults = [...yaml.matchAll(/^\s*(secret|password|key):\s*\$\{[A-Z_]+:-([^}]+)\}/gm)].map((m) => m[2])
  t.same(defaults, ['demo-password', 'reader-password', DEMO_SECRET], 'gateway.yaml\'s three defaults')
  for (const d of defaults) t.ok(KNOWN_DEMO_SECRETS.includes(d ?? ''), `gateway.yaml's default ${d ?? ''} is known`)
  t.ok(Object.isFrozen(KNOWN_DEMO_SECRETS), 'the list cannot be changed at run time')
})

t.test('parseConfig on a public address: the demo JWT secret, a short HS256 secret, a demo password, a demo API key are refused', async (t) => {
  for (const host of ['0.0.0.0', '::', '10.0.0.7', 'gateway.example.com']) {
    t.same(problemsOf(base(host), { JWT_SECRET: DEMO_SECRET, DEMO_PASSWORD: 'own-password' }), [JWT_MESSAGE], `${host}: the demo JWT secret`)
  }
  t.same(problemsOf(base('0.0.0.0'), { JWT_SECRET: 'x'.repeat(31), DEMO_PASSWORD: 'own-password' }), ['jwt.secret: HS256 needs a secret of at least 32 bytes (this one has 31)'], 'a 31-byte HS256 secret')
  t.same(problemsOf(base('0.0.0.0'), { JWT_SECRET: 'x'.repeat(32), DEMO_PASSWORD: 'own-password' }), [], '32 bytes is enough')
  t.same(problemsOf(base('0.0.0.0'), { JWT_SECRET: STRONG, DEMO_PASSWORD: 'reader-password' }), [passwordMessage(0, 'DEMO_PASSWORD')], 'a demo password')
  t.same(problemsOf(base('0.0.0.0'), { JWT_SECRET: STRONG, DEMO_PASSWORD: 'replace-me-alice' }), [passwordMessage(0, 'DEMO_PASSWORD')], '.env.example\'s placeholder password')
  const withKey = base('0.0.0.0', { apiKeys: [{ name: 'reports', key: '${REPORTS_KEY}' }] })
  t.same(problemsOf(withKey, { JWT_SECRET: STRONG, DEMO_PASSWORD: 'own-password', REPORTS_KEY: 'replace-me-with-another-random-secret' }),
    ['apiKeys[0].key: is a published demo key; set REPORTS_KEY to a key of your own (or write keyHash from `portcullis api-key`)'], 'a demo API key')
  const issuers = base('0.0.0.0', { jwt: { algorithms: ['HS256'], secret: STRONG, issuers: [{ issuer: 'drf', secret: DEMO_SECRET }] } })
  t.same(problemsOf(issuers, { DEMO_PASSWORD: 'own-password' }), ['jwt.issuers[0].secret: is the published demo secret; give it your own secret of at least 32 bytes (openssl rand -base64 48)'], 'an issuer\'s secret written in the file')
  t.same(problemsOf(base('0.0.0.0'), { JWT_SECRET: STRONG, DEMO_PASSWORD: 'own-password' }), [], 'the operator\'s own secrets: valid')
})

t.test('parseConfig on loopback: valid, with one warning naming every key', async (t) => {
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const raw = parse(readFileSync(GATEWAY_YAML, 'utf8')) as Record<string, unknown>
  const config = parseConfig({ ...raw, logging: { level: 'silent' } }, { env: {} })
  t.equal(config.server.host, '127.0.0.1')
  await new Promise((resolve) => setImmediate(resolve))
  const ours = warnings.filter((w) => (w as Error & { code?: string }).code === 'PORTCULLIS_KNOWN_SECRET')
  t.equal(ours.length, 1, 'one warning')
  t.equal(ours[0]?.name, 'PortcullisWarning')
  t.equal(ours[0]?.message, 'jwt.secret, users[0].password, users[1].password: published demo values, accepted only because the gateway listens on loopback (127.0.0.1); it refuses to start with them on any other address: set JWT_SECRET, DEMO_PASSWORD, READER_PASSWORD before exposing it')
  t.same(knownSecretProblems(config, '0.0.0.0'), [JWT_MESSAGE, passwordMessage(0, 'DEMO_PASSWORD'), passwordMessage(1, 'READER_PASSWORD')], 'remembered for a --host override')
  t.same(knownSecretProblems(config, '127.0.0.2'), [], 'another loopback address is fine')

  warnings.length = 0
  parseConfig({ ...raw, logging: { level: 'silent' } }, { env: { JWT_SECRET: STRONG, DEMO_PASSWORD: 'a', READER_PASSWORD: 'b' } })
  await new Promise((resolve) => setImmediate(resolve))
  t.same(warnings.filter((w) => (w as Error & { code?: string }).code === 'PORTCULLIS_KNOWN_SECRET'), [], 'no warning with the operator\'s own values')
})

// --- the CLI as its own process ------------------------------------------------------------

const build = transpileProject(t)
const CLI = join(build, 'src', 'cli.js')
const dir = mkdtempSync(join(tmpdir(), 'portcullis-secure-'))
t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })

interface Run { code: number | null, stdout: string, stderr: string }

/** Runs `portcullis ARGS`; for `start`, waits until it listens, calls `whileUp`, then SIGTERM. */
async function portcullis (args: string[], env: Record<string, string>, whileUp?: (url: string) => Promise<void>): Promise<Run> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  const closed = once(child, 'close') as Promise<[number | null]>
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const listening = new Promise<string | null>((resolve) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
      const url = /"url":"([^"]+)"[^\n]*portcullis listening/.exec(stdout)?.[1]
      if (url !== undefined) resolve(url)
    })
    closed.then(() => { resolve(null) }, () => { resolve(null) })
  })
  const url = await listening
  if (url !== null) {
    if (whileUp !== undefined) await whileUp(url)
    child.kill('SIGTERM')
  }
  const [code] = await closed
  clearTimeout(timer)
  return { code, stdout, stderr }
}

const ownSecrets = { JWT_SECRET: STRONG, DEMO_PASSWORD: 'own-demo-password', READER_PASSWORD: 'own-reader-password' }

t.test('portcullis start: refused on 0.0.0.0 with the demo secret, a 31-byte secret or a demo password', async (t) => {
  const port = String(await freePort())
  const [demo, short, password, override] = await Promise.all([
    portcullis(['start', '--config', GATEWAY_YAML], { PORTCULLIS_HOST: '0.0.0.0', PORTCULLIS_PORT: port }),
    portcullis(['start', '--config', GATEWAY_YAML], { ...ownSecrets, JWT_SECRET: 'y'.repeat(31), PORTCULLIS_HOST: '0.0.0.0', PORTCULLIS_PORT: port }),
    portcullis(['start', '--config', GATEWAY_YAML], { ...ownSecrets, READER_PASSWORD: 'reader-password', PORTCULLIS_HOST: '::', PORTCULLIS_PORT: port }),
    // A loopback config moved onto a public address from the command line.
    portcullis(['start', '--config', GATEWAY_YAML, '--host', '0.0.0.0', '--port', port], {})
  ])
  t.equal(demo.code, 1, 'exit 1')
  t.equal(demo.stderr, `invalid config in ${GATEWAY_YAML}:\n  ${JWT_MESSAGE}\n  ${passwordMessage(0, 'DEMO_PASSWORD')}\n  ${passwordMessage(1, 'READER_PASSWORD')}\n`, 'each key named with its fix')
  t.equal(demo.stdout, '', 'never listened')
  t.equal(short.code, 1)
  t.equal(short.stderr, `invalid config in ${GATEWAY_YAML}:\n  jwt.secret: HS256 needs a secret of at least 32 bytes (this one has 31)\n`)
  t.equal(password.code, 1)
  t.equal(password.stderr, `invalid config in ${GATEWAY_YAML}:\n  ${passwordMessage(1, 'READER_PASSWORD')}\n`, 'on :: too')
  t.equal(override.code, 1, '--host 0.0.0.0 over a loopback config: exit 1')
  t.match(override.stderr, `invalid config in ${GATEWAY_YAML} with --host 0.0.0.0:\n  ${JWT_MESSAGE}\n  ${passwordMessage(0, 'DEMO_PASSWORD')}\n  ${passwordMessage(1, 'READER_PASSWORD')}\n`)
  t.notMatch(override.stdout, /listening/, 'never listened')
})

t.test('portcullis start: the demo on 127.0.0.1 starts with a warning; 0.0.0.0 with the operator\'s secrets starts without', async (t) => {
  const [loopPort, publicPort] = [await freePort(), await freePort()]
  let loopHealth = 0
  let publicHealth = 0
  const [loop, open] = await Promise.all([
    portcullis(['start', '--config', GATEWAY_YAML], { PORTCULLIS_PORT: String(loopPort) }, async (url) => {
      loopHealth = (await fetch(`${url}/healthz`)).status
    }),
    portcullis(['start', '--config', GATEWAY_YAML], { ...ownSecrets, PORTCULLIS_HOST: '0.0.0.0', PORTCULLIS_PORT: String(publicPort) }, async (url) => {
      t.match(url, `:${publicPort}`)
      publicHealth = (await fetch(`http://127.0.0.1:${publicPort}/healthz`)).status
    })
  ])
  t.equal(loopHealth, 200, 'loopback: serves')
  t.equal(loop.code, 0)
  const warnings = loop.stderr.split('\n').filter((l) => l.includes('PortcullisWarning'))
  t.equal(warnings.length, 1, `one warning: ${loop.stderr}`)
  t.match(warnings[0], 'jwt.secret, users[0].password, users[1].password: published demo values, accepted only because the gateway listens on loopback (127.0.0.1)')
  t.match(warnings[0], 'set JWT_SECRET, DEMO_PASSWORD, READER_PASSWORD before exposing it')
  t.equal(publicHealth, 200, '0.0.0.0 with strong secrets: serves')
  t.equal(open.code, 0)
  t.notMatch(open.stderr, /PortcullisWarning/, 'and warns about nothing')
})

t.test('portcullis validate reports it the same way', async (t) => {
  const file = join(dir, 'public.yaml')
  writeFileSync(file, readFileSync(GATEWAY_YAML, 'utf8'))
  const [bad, ok, good] = await Promise.all([
    portcullis(['validate', '--config', file], { PORTCULLIS_HOST: '0.0.0.0' }),
    portcullis(['validate', '--config', file], {}),
    portcullis(['validate', '--config', file], { ...ownSecrets, PORTCULLIS_HOST: '0.0.0.0' })
  ])
  t.equal(bad.code, 1)
  t.equal(bad.stderr, `invalid config in ${file}:\n  ${JWT_MESSAGE}\n  ${passwordMessage(0, 'DEMO_PASSWORD')}\n  ${passwordMessage(1, 'READER_PASSWORD')}\n`)
  t.equal(ok.code, 0, 'on loopback: valid')
  t.equal(ok.stdout, 'ok\n')
  t.match(ok.stderr, /PortcullisWarning: jwt\.secret, users\[0\]\.password, users\[1\]\.password: published demo values/, 'with the warning')
  t.equal(good.code, 0, '0.0.0.0 with the operator\'s own secrets: valid')
  t.equal(good.stderr, '')
})

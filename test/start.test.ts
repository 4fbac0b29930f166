/**
 * `npm start` itself: the script package.json names, run as its own process with the
 * repository's gateway.yaml, then every curl command of the README's quick start run with the
 * real curl against it (ports swapped for free ones), checked for real proxied data and for the
 * status each command's comment announces; SIGTERM then stops it with exit 0.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { freePort, requireCommand, transpileProject } from './helper.js'

const ROOT = join(import.meta.dirname, '..')

/** The commands of the README block that follows "With `npm start` running:", continuation lines joined. */
function quickStartCommands (): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const at = readme.indexOf('With `npm start` running:')
  if (at === -1) throw new Error('README.md has no "With `npm start` running:" block')
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at))
  if (block === null) throw new Error('README.md: no sh block after "With `npm start` running:"')
  return block[1].replace(/\\\n\s*/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
}

interface CurlResult { command: string, comment: string, status: number, headers: string, body: string }

/**
 * Runs the block as one shell script (so that a line setting a variable works for the next),
 * with a marker before each curl so that each one's `-i` output can be told apart.
 */
async function runQuickStart (commands: string[], port: number): Promise<CurlResult[]> {
  const script = commands.map((line, i) => {
    const local = line.replaceAll('127.0.0.1:8080', `127.0.0.1:${port}`).replaceAll('localhost:8080', `localhost:${port}`)
    return line.startsWith('curl ') ? `printf '\\n<<<%s>>>\\n' ${i}; ${local.replace(/^curl /, 'curl -sS --max-time 10 ')}` : local
  }).join('\n')
  const child = spawn('sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
  await once(child, 'close')
  const results: CurlResult[] = []
  const parts = out.split(/\n<<<(\d+)>>>\n/)
  for (let p = 1; p < parts.length; p += 2) {
    const line = commands[Number(parts[p])]
    const text = parts[p + 1]
    const split = text.indexOf('\r\n\r\n')
    const head = split === -1 ? text : text.slice(0, split)
    const statuses = [...head.matchAll(/^HTTP\/[0-9.]+ ([0-9]{3})/gm)].map((m) => Number(m[1]))
    results.push({
      command: line.replace(/\s+#.*$/, ''),
      comment: /\s#\s*(.*)$/.exec(line)?.[1] ?? '',
      status: statuses.at(-1) ?? 0,
      headers: head.toLowerCase(),
      body: split === -1 ? '' : text.slice(split + 4)
    })
  }
  if (results.length === 0) throw new Error(`no curl output: ${err}`)
  return results
}

t.test('npm start brings up the gateway and the example API; the README\'s curl examples work', async (t) => {
  if (!requireCommand(t, 'curl', 'apt-get install curl')) return
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  const script = /^node dist\/(\S+\.js)$/.exec(pkg.scripts.start)
  t.ok(script, `npm start runs a built file: "${pkg.scripts.start}"`)
  if (script === null) return
  // The same modules, transpiled from the current sources in dist/'s layout.
  const entry = join(transpileProject(t, ['examples']), script[1])

  const [apiPort, gatewayPort] = [await freePort(), await freePort()]
  const env: NodeJS.ProcessEnv = { ...process.env, PEOPLE_API_PORT: String(apiPort), PORTCULLIS_PORT: String(gatewayPort) }
  delete env.PORTCULLIS_CONFIG // the repository's gateway.yaml…
  delete env.PEOPLE_API_URL // …in front of the API on PEOPLE_API_PORT
  delete env.DEMO_PASSWORD // the README's credentials are the demo defaults
  delete env.READER_PASSWORD
  const child = spawn(process.execPath, [entry], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { output += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { output += d })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npm start did not come up:\n${output}`)), 30_000)
    child.stdout.on('data', () => { if (output.includes('portcullis listening')) { clearTimeout(timer); resolve() } })
    exited.then(([code]) => { clearTimeout(timer); reject(new Error(`npm start exited ${String(code)}:\n${output}`)) }, reject)
  })
  t.match(output, `http://127.0.0.1:${gatewayPort}`, 'the gateway listens on PORTCULLIS_PORT')

  const commands = quickStartCommands()
  t.ok(commands.filter((c) => c.startsWith('curl ')).length >= 4, 'the README shows curl examples')
  const results = await runQuickStart(commands, gatewayPort)
  t.equal(results.length, commands.filter((c) => c.startsWith('curl ')).length, 'every curl ran')
  for (const r of results) {
    const announced = /\b([1-5][0-9]{2})\b/.exec(r.comment)
    if (announced !== null) {
      t.equal(r.status, Number(announced[1]), `${r.command}  →  ${announced[1]}, as the README says`)
    } else {
      t.ok(r.status >= 200 && r.status < 300, `${r.command}  →  ${r.status} (2xx)`)
    }
    if (r.status >= 400) t.match(r.headers, /content-type: application\/problem\+json/, `${r.command}: problem+json`)
    if (/\b301\b/.test(r.comment)) {
      const location = /^location: (.*)$/m.exec(r.headers)?.[1]?.trim()
      const said = /Location: (\S+)/.exec(r.comment)?.[1]
      if (said !== undefined) t.equal(location, said, 'the Location the README shows')
      t.ok(location?.startsWith('/api/') === true || location?.startsWith(`http://127.0.0.1:${gatewayPort}/`) === true, 'a Location that goes back through the gateway')
    }
  }

  // Real data from the example API, through the gateway.
  const list = results.find((r) => / -i http:\/\/127\.0\.0\.1:8080\/api\/people\/\s*$/.test(r.command) || r.command.endsWith('/api/people/'))
  t.ok(list, 'the README lists people')
  const page = JSON.parse(list?.body ?? '{}') as { count?: number, results?: Array<{ name: string }> }
  t.ok((page.count ?? 0) >= 3, 'a DRF-style page with a count')
  t.ok(page.results?.some((p) => p.name === 'Ada Lovelace'), 'with the seeded people')
  const created = results.find((r) => r.command.includes('-X POST') && r.status === 201)
  t.ok(created, 'the README creates a person')
  t.match(JSON.parse(created?.body ?? '{}'), { id: Number, name: String, age: Number }, 'and gets it back with its id')

  // The demo's published secrets are accepted on loopback only, with one warning naming them.
  const warnings = output.split('\n').filter((l) => l.includes('PortcullisWarning'))
  t.equal(warnings.length, 1, 'one warning about the demo secrets')
  t.match(warnings[0], 'jwt.secret, users[0].password, users[1].password: published demo values, accepted only because the gateway listens on loopback (127.0.0.1)')

  child.kill('SIGTERM')
  t.same(await exited, [0, null], 'SIGTERM stops both with exit 0')

  // The same demo on 0.0.0.0 refuses to start, naming what to set.
  const exposed = spawn(process.execPath, [entry], { cwd: ROOT, env: { ...env, PORTCULLIS_HOST: '0.0.0.0' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let exposedOutput = ''
  exposed.stdout.setEncoding('utf8').on('data', (d: string) => { exposedOutput += d })
  exposed.stderr.setEncoding('utf8').on('data', (d: string) => { exposedOutput += d })
  t.same(await once(exposed, 'exit'), [1, null], 'npm start with PORTCULLIS_HOST=0.0.0.0 and the demo secrets: exit 1')
  t.match(exposedOutput, 'jwt.secret: is the published demo secret; set JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)')
  t.notMatch(exposedOutput, /listening/, 'nothing listened')
})

/**
 * docs/drf.md as a reader runs it. Every ```sh block of the page (except the two marked in an
 * HTML comment above them) runs, as written and in order, in one bash — a fresh $HOME, so the
 * per-user data folder starts empty, and a `python3` first on PATH that has no Django, so
 * start.sh has to find one — with the real gunicorn and the real gateway. Each ```text block
 * that follows an sh block is that block's whole stdout (`…` stands for anything).
 *
 * The one liberty: the page's fixed ports. The test allocates free ones, replaces
 * `localhost:8000` / `localhost:8080` in the commands with them, and sets DRF_BIND, DRF_URL and
 * PORTCULLIS_PORT (which start.sh and examples/drf/gateway.yaml read) to match.
 *
 * Also: the summary block at the top is made of the steps' commands (so copying it runs what
 * this test ran), the page's yaml block is the committed config, the packages it installs are
 * those .ci/run installs, and start.sh without a usable Python names the packages and exits 3.
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { freePort, requireCommand, transpileProject } from './helper.js'
import { waitFor } from './fault-helpers.js'

const ROOT = join(import.meta.dirname, '..')
const PAGE = readFileSync(join(ROOT, 'docs', 'drf.md'), 'utf8')
const START = join(ROOT, 'examples', 'drf', 'start.sh')
const DRF_MODULES = 'import django, rest_framework, rest_framework_simplejwt, gunicorn'

interface Block { lang: string, text: string, marker: string | undefined, expected?: string }

/** The fenced blocks in order, each with the `<!-- test: … -->` comment right above it, if any. */
function blocks (markdown: string): Block[] {
  const found: Block[] = []
  for (const m of markdown.matchAll(/(?:<!-- test: ([^>]*?) -->\n)?```([a-z]*)\n([\s\S]*?)```\n/g)) {
    found.push({ marker: m[1], lang: m[2] ?? '', text: m[3] ?? '' })
  }
  for (let i = 0; i < found.length - 1; i++) {
    const next = found[i + 1]
    if (found[i].lang === 'sh' && next !== undefined && next.lang === 'text') found[i].expected = next.text
  }
  return found
}

/** A block's commands: continuation lines joined, comment lines and trailing `  # …` comments dropped. */
function commands (text: string): string[] {
  return text.replace(/\s*\\\n\s*/g, ' ').split('\n')
    .map((line) => line.replace(/\s{2,}#.*$/, '').trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
}

/** `…` in an expected block stands for anything (within a line or across lines). */
function matcher (expected: string): RegExp {
  const escaped = expected.trimEnd().split('…').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('[\\s\\S]*')
  return new RegExp(`^${escaped}$`)
}

const all = blocks(PAGE)
const summary = all.filter((b) => b.marker?.startsWith('summary') === true)
const install = all.filter((b) => b.marker?.startsWith('not run') === true)
const run = all.filter((b) => b.lang === 'sh' && b.marker === undefined)

t.test('the page\'s blocks: one summary made of the steps\' commands, the committed config, CI\'s packages', async (t) => {
  t.equal(summary.length, 1, 'one summary block')
  t.ok(run.length >= 6, `${run.length} blocks to run`)
  const steps = run.flatMap((b) => commands(b.text))
  let at = 0
  for (const command of commands(summary[0]?.text ?? '')) {
    const found = steps.indexOf(command, at)
    t.ok(found >= 0, `summary command is a step, in order: ${command}`)
    if (found >= 0) at = found + 1
  }
  // The README's "in five minutes" block is this summary, word for word (so it is run too).
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## In front of Django REST Framework'))
  const readmeBlock = /```sh\n([\s\S]*?)```/.exec(section)?.[1]
  t.equal(readmeBlock, summary[0]?.text, 'the README\'s DRF block is the page\'s summary block')
  const yaml = all.find((b) => b.marker === 'the committed examples/drf/gateway.yaml')
  t.equal(yaml?.text, readFileSync(join(ROOT, 'examples', 'drf', 'gateway.yaml'), 'utf8'), 'the yaml block is examples/drf/gateway.yaml')
  t.match(PAGE, /node dist\/src\/cli\.js start --config examples\/drf\/gateway\.yaml/, 'the command that starts the gateway')

  const ci = readFileSync(join(ROOT, '.ci', 'run'), 'utf8')
  const apt = /apt-get install (.+)$/m.exec(install[0]?.text ?? '')?.[1].split(/\s+/) ?? []
  t.ok(apt.length >= 4, 'the page installs packages with apt-get')
  for (const name of apt) t.match(ci, new RegExp(`[\\s]${name.replace(/[.+]/g, '\\$&')}[\\s]`), `.ci/run installs ${name} too`)
})

/** A folder of stand-ins: `python3` and `python3.11` that cannot import Django, plus `links` to real commands. */
function fakeBin (dir: string, links: string[]): string {
  const bin = join(dir, 'bin')
  mkdirSync(bin)
  for (const name of ['python3', 'python3.11']) {
    writeFileSync(join(bin, name), '#!/bin/sh\necho "ModuleNotFoundError: No module named \'django\'" >&2\nexit 1\n')
    chmodSync(join(bin, name), 0o755)
  }
  for (const name of links) {
    const path = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).stdout.trim()
    if (path !== '') symlinkSync(path, join(bin, name))
  }
  return bin
}

/** The environment a fresh shell would have: none of this test run's DRF or gateway settings. */
function cleanEnv (home: string, path: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(DRF_|PORTCULLIS_|XDG_|PYTHON|DJANGO_|JWT_|TAP)/.test(k)) env[k] = v
  }
  return { ...env, HOME: home, PATH: path }
}

t.test('start.sh with no Python that has Django: names the packages (Debian and pip) and exits 3', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-drf-nopy-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const bin = fakeBin(dir, ['dirname', 'cat', 'sh'])
  const none = spawnSync('/bin/sh', [START], { env: cleanEnv(dir, bin), encoding: 'utf8' })
  t.equal(none.status, 3, none.stderr)
  t.match(none.stderr, /no Python on PATH can import Django, Django REST Framework, simplejwt and gunicorn/)
  t.match(none.stderr, /apt-get install python3-django python3-djangorestframework python3-djangorestframework-simplejwt gunicorn/, 'the Debian packages')
  t.match(none.stderr, /pip install Django djangorestframework djangorestframework-simplejwt gunicorn/, 'the pip packages')
  t.notOk(existsSync(join(dir, '.local')), 'nothing was created')

  const chosen = spawnSync('/bin/sh', [START], { env: { ...cleanEnv(dir, `${bin}:${process.env.PATH ?? ''}`), PYTHON: join(bin, 'python3') }, encoding: 'utf8' })
  t.equal(chosen.status, 3, 'a PYTHON without the packages is not replaced by another')
  t.match(chosen.stderr, /PYTHON=\S+python3 cannot import/)
})

const python = ['python3', '/usr/bin/python3'].find((p) => spawnSync(p, ['-c', DRF_MODULES]).status === 0)
if (!requireCommand(t, 'gunicorn', 'apt-get install gunicorn python3-djangorestframework python3-djangorestframework-simplejwt')) {
  // skipped (or failed in CI) with the reason
} else if (python === undefined) {
  const message = 'no python3 can import Django REST Framework: apt-get install python3-djangorestframework python3-djangorestframework-simplejwt'
  if (process.env.CI === 'true') t.fail(message)
  else t.comment(`SKIPPED: ${message}`)
} else {
  t.test('docs/drf.md, run as written: DRF and the gateway start, the token works, the refusals are the gateway\'s', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-drf-page-'))
    t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
    const home = join(dir, 'home')
    const cwd = join(dir, 'repo')
    mkdirSync(home)
    mkdirSync(cwd)
    // The repository as the page expects it (run from its root, dist/ built) without writing in it.
    symlinkSync(join(ROOT, 'examples'), join(cwd, 'examples'))
    symlinkSync(transpileProject(t), join(cwd, 'dist'))
    const bin = fakeBin(dir, [])
    const [drfPort, gwPort] = [await freePort(), await freePort()]
    const env = {
      ...cleanEnv(home, `${bin}:${process.env.PATH ?? ''}`),
      DRF_BIND: `127.0.0.1:${drfPort}`,
      DRF_URL: `http://127.0.0.1:${drfPort}`,
      PORTCULLIS_PORT: String(gwPort)
    }
    const ports = (text: string): string => text.replace(/localhost:8000\b/g, `localhost:${drfPort}`).replace(/localhost:8080\b/g, `localhost:${gwPort}`)
    const mark = (i: number): string => `@@drf-page-block-${i}@@`
    const script = run.map((b, i) => `${ports(b.text)}echo "${mark(i)} $?"\n`).join('')

    // Its own process group: the background DRF and gateway go with it whatever happens.
    const shell = spawn('bash', ['-c', script], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => {
      try { if (shell.pid !== undefined) process.kill(-shell.pid, 'SIGKILL') } catch {}
    })
    let stdout = ''
    let stderr = ''
    shell.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    shell.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    await once(shell, 'close')
    const logs = (): string => ['drf.log', 'gateway.log'].map((f) => existsSync(join(cwd, f)) ? `--- ${f}\n${readFileSync(join(cwd, f), 'utf8')}` : '').join('\n')

    let rest = stdout
    for (const [i, block] of run.entries()) {
      const at = rest.indexOf(mark(i))
      t.ok(at >= 0, `block ${i + 1} ran: ${commands(block.text)[0] ?? ''}`)
      if (at < 0) { t.comment(`stderr:\n${stderr}\n${logs()}`); return }
      const output = rest.slice(0, at)
      const status = Number(/^ (\d+)/.exec(rest.slice(at + mark(i).length))?.[1])
      rest = rest.slice(rest.indexOf('\n', at) + 1)
      t.equal(status, 0, `block ${i + 1} exit status`)
      if (block.expected !== undefined) {
        t.match(output.trimEnd(), matcher(block.expected), `block ${i + 1} prints what the page says: ${commands(block.text).at(-1) ?? ''}`)
      } else {
        t.equal(output, '', `block ${i + 1} prints nothing (the page shows nothing)`)
      }
    }
    t.equal(shell.exitCode, 0, `the page ran to its end\n${stderr}`)

    const data = join(home, '.local', 'state', 'portcullis-drf')
    t.ok(existsSync(join(data, 'db.sqlite3')), 'the database is in ~/.local/state/portcullis-drf')
    t.equal(statSync(data).mode & 0o777, 0o700, 'a folder for its owner only')
    t.notOk(existsSync(join(ROOT, 'examples', 'drf', 'db.sqlite3')), 'nothing written into the repository')
    t.match(readFileSync(join(cwd, 'drf.log'), 'utf8'), /Listening at: http:\/\/127\.0\.0\.1:\d+/, 'drf.log has gunicorn\'s log')
    // `kill %1 %2` does not wait: the gateway drains and writes its buffered log lines as it exits,
    // which may be after the shell has closed (CI once read the file before the last lines).
    const completed = (): Array<{ status: number, upstreamMs: number | null, path: string }> => readFileSync(join(cwd, 'gateway.log'), 'utf8').split('\n')
      .filter((l) => l.includes('"request completed"')).map((l) => JSON.parse(l) as { status: number, upstreamMs: number | null, path: string })
    await waitFor(() => completed().filter((l) => l.status === 401 || l.status === 400).length >= 2, 10_000)
    const gwLines = completed()
    t.same(gwLines.filter((l) => l.status === 401 || l.status === 400).map((l) => l.upstreamMs), [null, null], 'the 401 and the 400 never reached DRF')
    t.ok(gwLines.some((l) => l.path === '/api/token/' && l.status === 200 && l.upstreamMs !== null), 'the token came from DRF, through the gateway')
  })
}

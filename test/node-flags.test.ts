/**
 * The gateway's Node flags (src/node-flags.ts) are where they must be: the CLI's shebang, the
 * image's ENTRYPOINT, and each worker of `portcullis start --workers N` whose primary was started
 * without them — unless the operator set the same option, whose value then wins.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { stringify } from 'yaml'
import { NODE_FLAGS, withNodeFlags } from '../src/node-flags.js'
import { transpileProject } from './helper.js'
import { startCli } from './cli-process.js'

const ROOT = join(import.meta.dirname, '..')
const BUILD = transpileProject(t)
const CLI = join(BUILD, 'src/cli.js')
const cmdline = (pid: number): string[] => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((x) => x !== '')

function writeConfig (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-flags-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'gateway.yaml')
  writeFileSync(file, stringify({ server: { host: '127.0.0.1', port: 0, shutdownGrace: '2s' }, logging: { level: 'info' }, routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:9/a' }] }))
  return file
}

t.test('withNodeFlags adds each flag unless execArgv or NODE_OPTIONS sets that option', async (t) => {
  t.same(NODE_FLAGS, ['--max-semi-space-size=32'])
  t.same(withNodeFlags([], ''), ['--max-semi-space-size=32'])
  t.same(withNodeFlags(['--enable-source-maps'], ''), ['--enable-source-maps', '--max-semi-space-size=32'], 'other flags kept, in order')
  t.same(withNodeFlags(['--max-semi-space-size=64'], ''), ['--max-semi-space-size=64'], 'the operator\'s value in execArgv wins')
  t.same(withNodeFlags(['--max_semi_space_size=8'], ''), ['--max_semi_space_size=8'], 'also spelt with underscores')
  t.same(withNodeFlags([], '--max-old-space-size=512  --max-semi-space-size=8'), [], 'NODE_OPTIONS sets it: nothing added (the workers inherit NODE_OPTIONS)')
  t.same(withNodeFlags([], '--max-old-space-size=512'), ['--max-semi-space-size=32'], 'another option in NODE_OPTIONS')
  t.same(withNodeFlags([], '"--max-semi-space-size=8" "--import=file:///x.mjs"'), [], 'quoted NODE_OPTIONS values')
})

t.test('the CLI\'s shebang and the image\'s ENTRYPOINT start node with the flags', async (t) => {
  const shebang = readFileSync(join(ROOT, 'src/cli.ts'), 'utf8').split('\n')[0]
  t.equal(shebang, `#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`)
  const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))?.[1]
  t.same(JSON.parse(entrypoint ?? '[]'), ['node', ...NODE_FLAGS, 'dist/src/cli.js'])

  // Run as an installed bin runs it: the file itself, through its shebang (env -S, then node).
  t.equal(readFileSync(CLI, 'utf8').split('\n')[0], shebang, 'the compiled CLI keeps the shebang')
  chmodSync(CLI, 0o755)
  const child = spawn(CLI, ['start', '--config', writeConfig(t)], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  for (let i = 0; i < 200 && !out.includes('listening'); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  t.match(out, /listening/, 'the bin started')
  const argv = cmdline(child.pid ?? 0)
  t.match(argv[0], /node$/, 'env replaced itself with node')
  t.same(argv.slice(1, 1 + NODE_FLAGS.length), NODE_FLAGS, 'node runs with the flags')
  child.kill('SIGTERM')
  await once(child, 'exit')
})

t.test('--workers: a primary started without the flags gives them to its workers; an operator\'s own value wins', async (t) => {
  const config = writeConfig(t)
  for (const [env, expected] of [[{}, NODE_FLAGS], [{ NODE_OPTIONS: '--max-semi-space-size=8' }, []]] as const) {
    const cli = startCli(t, CLI, ['start', '--config', config, '--workers', '2'], env)
    const up = await cli.waitFor((l) => l.role === 'primary' && l.msg === 'portcullis listening', 'primary listening')
    t.notOk(cmdline(cli.child.pid ?? 0).some((a) => a.startsWith('--max-semi-space-size')), 'the primary itself has no flag')
    t.equal(up.workers?.length, 2)
    for (const pid of up.workers ?? []) {
      const flags = cmdline(pid).filter((a) => a.startsWith('--max-semi-space-size'))
      t.same(flags, expected, `worker ${pid} with NODE_OPTIONS=${env.NODE_OPTIONS ?? '(none)'}: ${expected.length === 0 ? 'no flag added' : 'the flags'}`)
    }
    cli.child.kill('SIGTERM')
    t.equal((await cli.exited).code, 0)
  }
})

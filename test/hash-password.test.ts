/**
 * `portcullis hash-password` and `portcullis api-key` as a user runs them: the real CLI in its
 * own process, the password on a pipe and on a real pseudo-terminal (no echo).
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { hashApiKey, parsePasswordHash, verifyPassword } from '../plugins/auth/password-hash.js'
import { transpileProject } from './helper.js'

const build = transpileProject(t)
const CLI = join(build, 'src', 'cli.js')
// The commands themselves, without loading the whole gateway that the CLI imports (much faster).
const COMMANDS = join(build, 'src', 'credentials-cli.js')
const direct = (command: string): string[] =>
  ['--input-type=module', '-e', `import(${JSON.stringify(COMMANDS)}).then((m) => m.${command}()).then((code) => { process.exitCode = code })`]

function run (args: string[], input?: string): { code: number | null, stdout: string, stderr: string } {
  const res = spawnSync(process.execPath, args, { input, encoding: 'utf8', timeout: 60_000 })
  return { code: res.status, stdout: res.stdout, stderr: res.stderr }
}

async function matches (hash: string, password: string): Promise<boolean> {
  const parsed = parsePasswordHash(hash)
  return parsed !== null && await verifyPassword(password, parsed)
}

t.test('from a pipe: the whole input minus one trailing newline, colons and UTF-8 kept', async (t) => {
  const res = run([CLI, 'hash-password'], 'pa:ss wörd€\n')
  t.equal(res.code, 0, res.stderr)
  const hash = res.stdout.trim()
  t.match(hash, /^scrypt\$32768\$8\$1\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]+$/)
  t.ok(await matches(hash, 'pa:ss wörd€'))
  t.notOk(await matches(hash, 'pa:ss wörd€\n'))
  const empty = run(direct('hashPasswordCommand'), '\n')
  t.equal(empty.code, 1)
  t.match(empty.stderr, /empty/)
})

t.test('on a terminal: prompts twice on stderr, never echoes the password', async (t) => {
  const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import pty'], { stdio: 'ignore' }).status === 0)
  if (python === undefined) { t.comment('SKIPPED: no python3 to drive a pseudo-terminal'); return }
  const driver = `
import os, pty, sys, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], '--input-type=module', '-e', sys.argv[2]])
out = b''
def until(marker):
    global out
    while marker not in out:
        r, _, _ = select.select([fd], [], [], 20)
        if not r: raise SystemExit('timeout waiting for %r in %r' % (marker, out))
        try:
            out += os.read(fd, 4096)
        except OSError:
            raise SystemExit('the command ended before %r: %r' % (marker, out))
until(b'Password: ')
os.write(fd, sys.argv[3].encode() + b'\\r')
until(b'Again: ')
os.write(fd, sys.argv[3].encode() + b'\\r')
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.write(out.decode('utf8', 'replace'))
`
  const secret = 'tty-s3cret:with colon'
  const res = spawnSync(python, ['-c', driver, process.execPath, direct('hashPasswordCommand')[2], secret], { encoding: 'utf8', timeout: 60_000 })
  t.equal(res.status, 0, res.stderr)
  t.notOk(res.stdout.includes('tty-s3cret'), 'the password is not echoed')
  const hash = /scrypt\$[^\s]+/.exec(res.stdout)?.[0] ?? ''
  t.ok(await matches(hash, secret), 'the hash is of the typed password')
})

t.test('api-key prints a new key and its hash', async (t) => {
  t.match(run([CLI, '--help']).stdout, /hash-password[\s\S]*api-key/, 'both commands in the usage')
  const res = run(direct('apiKeyCommand'))
  t.equal(res.code, 0)
  const key = /^key: (pk_[A-Za-z0-9_-]{43})$/m.exec(res.stdout)?.[1]
  const hash = /^keyHash: (sha256\$[0-9a-f]{64})$/m.exec(res.stdout)?.[1]
  t.ok(key !== undefined && hash !== undefined, res.stdout)
  t.equal(hash, hashApiKey(key ?? ''))
})

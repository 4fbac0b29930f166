/**
 * The `portcullis` CLI as a real process, reading its JSON log lines as they come: for the tests
 * where signals and processes matter (test/cluster.test.ts, test/reload.test.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import type { Test } from 'tap'

/** The fields of a log line these tests read (pino's, the primary's, the reload's). */
export interface LogLine {
  msg: string
  pid: number
  level: number
  role?: string
  url?: string
  workers?: number[]
  worker?: number
  route?: string
  status?: number
  generation?: number
  problems?: string[]
  added?: string[]
  removed?: string[]
  changed?: string[]
  needsRestart?: string[]
}

export interface Cli {
  child: ChildProcess
  lines: LogLine[]
  stderr: () => string
  /** Resolves with the first log line (already seen or to come) that matches. */
  waitFor: (match: (l: LogLine) => boolean, what: string, ms?: number) => Promise<LogLine>
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/** Runs `node cli …args`; killed (with the workers it named) when the test ends. */
export function startCli (t: Test, cli: string, args: string[], env: NodeJS.ProcessEnv = {}): Cli {
  const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: LogLine[] = []
  const waiters: Array<() => void> = []
  let buffered = ''
  let err = ''
  child.stdout?.on('data', (d: Buffer) => {
    buffered += d.toString()
    let nl
    while ((nl = buffered.indexOf('\n')) !== -1) {
      const text = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      try { lines.push(JSON.parse(text) as LogLine) } catch { /* not a log line */ }
    }
    for (const w of waiters.splice(0)) w()
  })
  child.stderr?.on('data', (d: Buffer) => { err += d.toString() })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { for (const w of waiters.splice(0)) w(); resolve({ code, signal }) })
  })
  t.teardown(() => {
    // Workers follow their primary out (IPC closed); kill them too in case a test failed half-way.
    for (const l of lines) for (const pid of [...(l.workers ?? []), l.worker ?? 0]) if (pid > 0) try { process.kill(pid, 'SIGKILL') } catch {}
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const waitFor = (match: (l: LogLine) => boolean, what: string, ms = 45_000): Promise<LogLine> => new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`no log line "${what}" within ${ms} ms; stderr: ${err}`)) }, ms)
    const check = (): void => {
      const hit = lines.find(match)
      if (hit !== undefined) { clearTimeout(timer); resolve(hit); return }
      if (child.exitCode !== null || child.signalCode !== null) { clearTimeout(timer); reject(new Error(`exited before "${what}"; stderr: ${err}`)); return }
      waiters.push(check)
    }
    check()
  })
  return { child, lines, stderr: () => err, waitFor, exited }
}

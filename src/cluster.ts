/**
 * `portcullis start --workers N`: a primary process forks N workers (node:cluster) that share one
 * listening port; the primary hands each new connection to a worker (round-robin), replaces a
 * worker that dies, and on SIGTERM/SIGINT tells every worker to drain, then exits when they have.
 * The primary never builds the gateway and never serves a request. SIGHUP to the primary (or
 * `portcullis reload --pid-file F`, or the watched file changing) is passed to every worker, and
 * each reloads its config file as a single process does (src/server.ts): each worker checks the
 * file itself and logs its own refusal, so an invalid file is one error line per worker. A worker
 * started later (a replacement) reads the file as it is then.
 *
 * Rate limits kept in memory are per process: with N workers each client gets N× the limit. So
 * the CLI refuses that combination (`perWorkerLimitProblem`) unless it is accepted explicitly.
 */
import cluster, { type Worker } from 'node:cluster'
import { readFileSync } from 'node:fs'
import { hostname, availableParallelism } from 'node:os'
import closeWithGrace from 'close-with-grace'
import type { GatewayConfig } from '../schemas/config.js'
import { rateLimitScaleWarning } from '../plugins/rate-limit/rate-limit.js'
import { watchConfigFile, writePidFile } from './reload.js'
import { withNodeFlags } from './node-flags.js'

export const MAX_WORKERS = 256

/** `--workers` value: a count from 1 to 256, or `auto` (one per available CPU). */
export function parseWorkers (value: string): number | null {
  if (value === 'auto') return availableParallelism()
  if (!/^[0-9]+$/.test(value)) return null
  const n = Number(value)
  return n >= 1 && n <= MAX_WORKERS ? n : null
}

/**
 * Why running `workers` processes with this config would silently multiply its rate limits, or
 * null when it would not (Redis store, one worker, or nothing limited): the rate-limit plugin's
 * own check, plus the token endpoint, whose per-IP limit uses the same store.
 */
export function perWorkerLimitProblem (config: Readonly<GatewayConfig>, workers: number): string | null {
  const routes = rateLimitScaleWarning(config, workers)
  const tokenEndpoint = config.tokenEndpoint !== undefined && config.rateLimit.store === 'memory' && workers > 1
  if (routes === null && !tokenEndpoint) return null
  const what = routes ?? `rateLimit.store is memory: each of the ${workers} processes counts on its own, so a client ` +
    `may get up to ${workers} × the token endpoint's limit; set rateLimit.store: redis to share the counters`
  return `${what}. To run ${workers} workers anyway, pass --allow-per-worker-limits.`
}

const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity } as const
type Level = Exclude<keyof typeof LEVELS, 'silent'>

export interface PrimaryOptions {
  workers: number
  /** server.shutdownGrace in ms: how long workers get to drain before they are killed. */
  graceMs: number
  /** logging.level */
  level: keyof typeof LEVELS
  /** Arguments the workers run with (default: this process's). */
  args?: string[]
  /** Write the primary's pid here (the one `portcullis reload` signals); removed when it exits. */
  pidFile?: string
  /** The config file to watch (`--watch`): a change reloads every worker. */
  watchFile?: string
}

/** The message that tells a worker to drain (the primary sends it on SIGTERM/SIGINT). */
const DRAIN = 'portcullis:drain'
/** The message that tells a worker to reload its config file (the primary sends it on SIGHUP). */
const RELOAD = 'portcullis:reload'

/**
 * `portcullis reload --pid-file F`: SIGHUP to the process whose pid F holds. Null when sent, or
 * why not, in words.
 */
export function signalReload (pidFile: string): string | null {
  let text: string
  try {
    text = readFileSync(pidFile, 'utf8')
  } catch (err) {
    return `cannot read ${pidFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`
  }
  const pid = Number(text.trim())
  if (!/^[0-9]{1,10}\s*$/.test(text) || !Number.isSafeInteger(pid) || pid < 2) return `${pidFile} does not hold a process id`
  try {
    process.kill(pid, 'SIGHUP')
    return null
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ESRCH' ? `no process ${pid} (a stale ${pidFile}?)` : `cannot signal process ${pid}: ${code ?? (err as Error).message}`
  }
}

/**
 * Run the supervising primary. Resolves with the exit code once every worker has exited after a
 * drain (0 when all drained cleanly, 1 otherwise), or when the workers fail to start (1). Throws
 * at once, before anything is started, when the pid file cannot be written.
 */
export function runPrimary (options: PrimaryOptions): Promise<number> {
  // First: a pid file that cannot be written stops the start with nothing forked or installed.
  const removePidFile = options.pidFile === undefined ? () => {} : writePidFile(options.pidFile)
  const threshold = LEVELS[options.level]
  const host = hostname()
  // pino-shaped JSON lines, like the workers' logs, so one log pipeline reads both.
  const log = (level: Level, fields: Record<string, unknown>, msg: string): void => {
    if (LEVELS[level] < threshold) return
    process.stdout.write(JSON.stringify({ level: LEVELS[level], time: Date.now(), pid: process.pid, hostname: host, role: 'primary', ...fields, msg }) + '\n')
  }
  // The workers run with the gateway's Node flags even when the primary was started without them.
  cluster.setupPrimary({ execArgv: withNodeFlags(process.execArgv), ...(options.args !== undefined ? { args: options.args } : {}) })

  return new Promise((resolve) => {
    const started = new Map<number, number>() // worker id → start time
    const listening = new Set<number>()
    let everListening = false
    let stopping = false
    let exitCode = 0
    let fastFailures = 0
    let killTimer: NodeJS.Timeout | undefined

    const fork = (): void => {
      const worker = cluster.fork()
      started.set(worker.id, Date.now())
    }
    const alive = (): Worker[] => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead())

    const reloadAll = (why: string): void => {
      if (stopping) return
      const workers = alive().filter((w) => w.isConnected())
      log('info', { reason: why, workers: workers.map((w) => w.process.pid) }, 'reloading every worker')
      for (const w of workers) w.send(RELOAD)
    }
    const onHangup = (): void => { reloadAll('SIGHUP') }
    process.on('SIGHUP', onHangup)
    const watcher = options.watchFile === undefined
      ? undefined
      : watchConfigFile(options.watchFile, () => { reloadAll('config file changed') }, (err) => {
        log('warn', { err: err.message, file: options.watchFile }, 'cannot watch the config file any more')
      })
    const finish = (): void => {
      if (alive().length > 0) return
      if (killTimer !== undefined) clearTimeout(killTimer)
      for (const s of ['SIGTERM', 'SIGINT'] as const) process.removeListener(s, onSignal)
      process.removeListener('SIGHUP', onHangup)
      watcher?.close()
      removePidFile()
      log('info', { exitCode }, 'all workers stopped')
      resolve(exitCode)
    }

    const stop = (reason: string, code: number): void => {
      if (stopping) return
      stopping = true
      if (code !== 0) exitCode = code
      log('info', { reason, count: alive().length, graceMs: options.graceMs }, 'draining all workers')
      for (const w of alive()) {
        if (w.isConnected()) w.send(DRAIN)
        else w.process.kill('SIGTERM')
      }
      killTimer = setTimeout(() => {
        const left = alive()
        if (left.length > 0) log('error', { workers: left.map((w) => w.process.pid) }, 'workers did not drain in time; killing them')
        exitCode = 1
        for (const w of left) w.process.kill('SIGKILL')
      }, options.graceMs + 2_000)
      killTimer.unref()
      finish()
    }

    function onSignal (signal: NodeJS.Signals): void {
      if (stopping) {
        // A second signal: stop waiting.
        log('error', { signal }, 'second signal, killing the workers')
        exitCode = 1
        for (const w of alive()) w.process.kill('SIGKILL')
        return
      }
      stop(signal, 0)
    }
    for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, onSignal)

    cluster.on('listening', (worker, address) => {
      listening.add(worker.id)
      if (!everListening && listening.size === options.workers) {
        everListening = true
        const shown = address.address === null || address.address === undefined || address.address === '' ? '0.0.0.0' : address.address
        const url = `http://${shown.includes(':') ? `[${shown}]` : shown}:${address.port}`
        log('info', { url, workers: alive().map((w) => w.process.pid) }, 'portcullis listening')
      } else if (everListening) {
        log('info', { worker: worker.process.pid }, 'worker replaced')
      }
    })

    cluster.on('exit', (worker, code, signal) => {
      const since = started.get(worker.id) ?? Date.now()
      started.delete(worker.id)
      const wasListening = listening.delete(worker.id)
      if (stopping) {
        if (code !== 0 && code !== null) exitCode = 1
        finish()
        return
      }
      if (!everListening && !wasListening) {
        // A worker that could not start (bad plugin, port in use…): the others would fail too.
        log('error', { worker: worker.process.pid, code, signal }, 'a worker failed to start')
        stop('a worker failed to start', 1)
        return
      }
      // Restart, backing off when workers die right after starting (a crash loop).
      fastFailures = Date.now() - since < 5_000 ? fastFailures + 1 : 0
      const delay = fastFailures === 0 ? 0 : Math.min(10_000, 250 * 2 ** (fastFailures - 1))
      log('warn', { worker: worker.process.pid, code, signal, restartInMs: delay }, 'worker died; starting a replacement')
      setTimeout(() => { if (!stopping) fork() }, delay)
    })

    log('info', { count: options.workers }, 'starting workers')
    for (let i = 0; i < options.workers; i++) fork()
  })
}

/**
 * In a worker: drain (through the same SIGTERM path as a single process) when the primary asks,
 * or when the primary is gone (the IPC channel closed), so no worker outlives its supervisor.
 */
export function superviseWorker (): void {
  const drain = (): void => {
    // close-with-grace sets `closing` once a signal started the drain (a terminal's Ctrl-C reaches
    // the workers too); a second SIGTERM would make it exit at once instead of draining.
    if ((closeWithGrace as unknown as { closing: boolean }).closing !== true) process.kill(process.pid, 'SIGTERM')
  }
  process.on('message', (message) => {
    if (message === DRAIN) drain()
    // A worker still starting has no SIGHUP handler yet (the signal would end it); it reads the
    // file as it is anyway.
    else if (message === RELOAD && process.listenerCount('SIGHUP') > 0) process.kill(process.pid, 'SIGHUP')
  })
  process.on('disconnect', drain)
}

export const isWorker = (): boolean => cluster.isWorker

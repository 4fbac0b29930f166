/**
 * Live reload, the config side: read and check a config file exactly as `portcullis validate`
 * does, say what a new config changes (routes added, removed, changed; keys that need a restart),
 * and keep the running values of the keys that only a restart can change. src/server.ts builds
 * the new generation and swaps it in; docs/operations.md "Live reload" is the user's side.
 */
import { readFileSync, rmSync, statSync, watch, writeFileSync, type FSWatcher } from 'node:fs'
import { basename, dirname } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import type { GatewayConfig, RouteConfig } from '../schemas/config.js'
import { ConfigError, loadConfig } from './config.js'
import { checkValidation } from '../plugins/validation/validate.js'
import { ValidateConfigError } from '../plugins/validation/validate-compile.js'

/**
 * Largest config file a reload reads: the file is read and parsed on the event loop that serves
 * requests, so a file replaced by something huge must not stall it (the repository's largest
 * example config is under 10 KB).
 */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024

/**
 * Keys a reload cannot change: they shape the listening socket, Node's parser, the process or the
 * one metrics registry. A reload keeps their running values and names them in its log line.
 */
export const RESTART_ONLY = [
  'server.host',
  'server.port',
  'server.maxHeaderSize',
  'server.maxHeaders',
  'server.timeouts',
  'server.shutdownGrace',
  'server.allocationSitePretenuring',
  'server.metrics'
] as const

type ServerKey = typeof RESTART_ONLY[number] extends `server.${infer K}` ? K : never

/** A reload's file could not be used: every problem, as `path: message`. */
export class ReloadRefused extends Error {
  constructor (readonly problems: string[]) {
    super(problems.join('; '))
    this.name = 'ReloadRefused'
  }
}

/**
 * The config in `file`, checked completely: schema, semantic checks, and the validation schemas
 * of routes[].validate loaded and compiled. `portcullis validate` and every reload check a file
 * with this. Throws what `isConfigError` recognises (its message is every problem, for a person).
 */
export async function checkConfigFile (file: string): Promise<Readonly<GatewayConfig>> {
  const config = loadConfig(file)
  await checkValidation(config)
  return config
}

/** A config file's problems (checkConfigFile), as opposed to a failure of the gateway's own. */
export function isConfigError (err: unknown): err is ConfigError | ValidateConfigError {
  return err instanceof ConfigError || err instanceof ValidateConfigError
}

/**
 * The config in `file`, checked as `checkConfigFile` does, or ReloadRefused with every problem.
 */
export async function readConfig (file: string): Promise<Readonly<GatewayConfig>> {
  let size: number
  try {
    size = statSync(file).size
  } catch (err) {
    throw new ReloadRefused([`cannot read the config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`])
  }
  if (size > MAX_CONFIG_BYTES) throw new ReloadRefused([`${file}: the file has ${size} bytes, more than a reload reads (${MAX_CONFIG_BYTES})`])
  try {
    return await checkConfigFile(file)
  } catch (err) {
    if (isConfigError(err)) throw new ReloadRefused(err.problems)
    throw err
  }
}

/**
 * `--pid-file F` (a single process, or the primary of `--workers`): writes this process's id to
 * `file` for `portcullis reload --pid-file F`, and removes it when the process exits. Returns
 * what removes it sooner (at close). Throws an Error that says, in words, why it cannot write it.
 */
export function writePidFile (file: string): () => void {
  try {
    writeFileSync(file, `${process.pid}\n`, { mode: 0o644 })
  } catch (err) {
    throw new Error(`cannot write the pid file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  const remove = (): void => {
    process.removeListener('exit', remove)
    rmSync(file, { force: true })
  }
  process.once('exit', remove)
  return remove
}

export interface ConfigChanges {
  /** Route names only in the new config, only in the old one, in both but configured differently. */
  added: string[]
  removed: string[]
  changed: string[]
  /** Restart-only keys whose value differs: the running value is kept. */
  needsRestart: string[]
  /** Anything outside `routes` and the restart-only keys differs (auth, rate-limit store, logging…). */
  gatewayChanged: boolean
}

/** What `next` changes compared with `running`. */
export function configChanges (running: Readonly<GatewayConfig>, next: Readonly<GatewayConfig>): ConfigChanges {
  const before = new Map<string, RouteConfig>(running.routes.map((r) => [r.name, r]))
  const after = new Map<string, RouteConfig>(next.routes.map((r) => [r.name, r]))
  const added = [...after.keys()].filter((name) => !before.has(name))
  const removed = [...before.keys()].filter((name) => !after.has(name))
  const changed = [...after.keys()].filter((name) => before.has(name) && !isDeepStrictEqual(before.get(name), after.get(name)))
  const needsRestart = RESTART_ONLY.filter((path) => {
    const key = path.slice('server.'.length) as ServerKey
    return !isDeepStrictEqual(running.server[key], next.server[key])
  })
  const { routes: _r1, server: s1, ...rest1 } = running
  const { routes: _r2, server: s2, ...rest2 } = next
  const gatewayChanged = !isDeepStrictEqual(rest1, rest2) || !isDeepStrictEqual(withoutRestartOnly(s1), withoutRestartOnly(s2))
  return { added, removed, changed, needsRestart, gatewayChanged }
}

function withoutRestartOnly (server: Readonly<GatewayConfig['server']>): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...server }
  for (const path of RESTART_ONLY) delete copy[path.slice('server.'.length)]
  return copy
}

/** `next` with the running values of the restart-only keys (and deep-frozen, as loadConfig's are). */
export function keepRestartOnly (running: Readonly<GatewayConfig>, next: Readonly<GatewayConfig>): Readonly<GatewayConfig> {
  const server: Record<string, unknown> = { ...next.server }
  for (const path of RESTART_ONLY) {
    const key = path.slice('server.'.length) as ServerKey
    server[key] = running.server[key]
  }
  return Object.freeze({ ...next, server: Object.freeze(server) as unknown as GatewayConfig['server'] })
}

/**
 * Runs `task` when asked, never twice at once: a request while it runs is remembered (any
 * number of them as one), and the task runs once more after. A SIGHUP storm is two reloads at most.
 */
export class Coalescer {
  private running: Promise<void> | null = null
  private again = false
  private stopped = false
  constructor (private readonly task: () => Promise<void>) {}

  /** Resolves when the run that covers this request has finished. */
  request (): Promise<void> {
    if (this.stopped) return Promise.resolve()
    if (this.running !== null) {
      this.again = true
      return this.running
    }
    this.running = this.loop()
    return this.running
  }

  private async loop (): Promise<void> {
    try {
      do {
        this.again = false
        await this.task()
      } while (this.again && !this.stopped)
    } finally {
      this.running = null
    }
  }

  /** No more runs; resolves when the one under way (if any) has finished. */
  async stop (): Promise<void> {
    this.stopped = true
    await this.running
  }

  get busy (): boolean { return this.running !== null }
}

/** Quiet time after the last change of a watched config file before it is reloaded. */
const WATCH_DEBOUNCE_MS = 250

/**
 * `--watch`: calls `onChange` when the file's content has changed and stayed so for 250 ms. The
 * folder is watched, not the file: editors and Kubernetes replace the file (a rename, a swap of
 * the `..data` symlink), and a watch on the file itself ends at the first rename.
 */
export function watchConfigFile (file: string, onChange: () => void, onError: (err: Error) => void): FSWatcher {
  const name = basename(file)
  let timer: NodeJS.Timeout | undefined
  let last = readQuietly(file)
  const watcher = watch(dirname(file), (_event, changed) => {
    if (changed !== null && changed !== name && !changed.startsWith('..')) return
    clearTimeout(timer)
    timer = setTimeout(() => {
      const now = readQuietly(file)
      if (now !== null && last !== null && now.equals(last)) return
      last = now
      onChange()
    }, WATCH_DEBOUNCE_MS)
    timer.unref()
  })
  watcher.unref()
  watcher.on('error', onError)
  return watcher
}

function readQuietly (file: string): Buffer | null {
  try {
    return readFileSync(file)
  } catch {
    return null
  }
}

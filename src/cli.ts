#!/usr/bin/env -S node --max-semi-space-size=32
/**
 * portcullis start | validate | reload — argv → config → server.
 * Exit codes: 0 ok, 1 bad config or failure to start, 2 bad command line.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { apiKeyCommand, hashPasswordCommand } from './credentials-cli.js'

// The gateway's modules are imported by the command that needs them, so that --help, --version
// and a bad command line answer at once, without loading the whole gateway.

const USAGE = `Usage: portcullis <command> [options]

Commands:
  start      [FILE] [--port N] [--host H]          run the gateway; SIGHUP reloads FILE
             [--workers N|auto [--allow-per-worker-limits]]
             [--pid-file F] [--watch]
  validate   [FILE]                                check a config file: print "ok", or every
                                                   problem in it as \`path: message\` (exit 1)
  reload     --pid-file F                          send SIGHUP to the gateway whose pid is in F:
                                                   it re-reads its config file, checks it as
                                                   validate does, and swaps to it without
                                                   dropping a request (an invalid file is
                                                   logged and changes nothing)
  hash-password                                    read a password on stdin (no echo on a
                                                   terminal), print its hash for users[].passwordHash
  api-key                                          print a new API key and its hash for apiKeys[].keyHash

Options:
  -c, --config FILE   the gateway config, also given as FILE: YAML, or strict JSON when its
                      name ends in .json; default ./gateway.yaml
  -p, --port N        override server.port
  -H, --host H        override server.host
  -w, --workers N     run N worker processes sharing the port (auto = one per CPU); a worker
                      that dies is replaced, SIGTERM drains them all
      --allow-per-worker-limits
                      start N > 1 workers even though rateLimit.store is memory (each worker
                      then counts on its own: N× the configured limits)
      --pid-file F    start: write the process id to F (removed on exit); reload: signal it.
                      No default: nothing is written unless asked
      --watch         start: reload when the config file changes (checked as on SIGHUP)
  -h, --help          show this help
  -v, --version       print the version
`

/** The version in portcullis's package.json: two folders up from dist/src/cli.js, one from src/cli.ts. */
function version (): string {
  for (const path of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(path, import.meta.url), 'utf8')) as { name?: string, version: string }
      if (pkg.name === 'portcullis') return pkg.version
    } catch {}
  }
  return 'unknown'
}

function usageError (message: string): never {
  process.stderr.write(`portcullis: ${message}\n\n${USAGE}`)
  process.exit(2)
}

export async function main (argv: string[]): Promise<void> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        port: { type: 'string', short: 'p' },
        host: { type: 'string', short: 'H' },
        workers: { type: 'string', short: 'w' },
        'allow-per-worker-limits': { type: 'boolean' },
        'pid-file': { type: 'string' },
        watch: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' }
      }
    })
  } catch (err) {
    usageError((err as Error).message)
  }
  const { values, positionals } = parsed
  if (values.help === true) { process.stdout.write(USAGE); return }
  if (values.version === true) { process.stdout.write(version() + '\n'); return }
  const [command, ...extra] = positionals
  if (command === undefined) usageError('a command is required')
  // start and validate take the config file as FILE or as --config FILE, once.
  const takesFile = (command === 'start' || command === 'validate') && values.config === undefined
  if (extra.length > (takesFile ? 1 : 0)) usageError(`unexpected argument: ${extra[takesFile ? 1 : 0]}`)
  const file = values.config ?? extra[0] ?? 'gateway.yaml'

  if (command !== 'start' && command !== 'reload' && values['pid-file'] !== undefined) usageError(`${command} takes no --pid-file`)
  if (command !== 'start' && values.watch !== undefined) usageError(`${command} takes no --watch`)

  switch (command) {
    case 'reload': {
      const others = Object.entries(values).filter(([k, v]) => k !== 'pid-file' && v !== undefined)
      if (others.length > 0 || extra.length > 0) usageError('reload takes only --pid-file F')
      const pidFile = values['pid-file'] ?? usageError('reload needs --pid-file F (the file `portcullis start --pid-file F` wrote)')
      const { signalReload } = await import('./cluster.js')
      const problem = signalReload(pidFile)
      if (problem !== null) { process.stderr.write(`portcullis: cannot reload: ${problem}\n`); process.exit(1) }
      process.stdout.write('reload requested\n')
      return
    }
    case 'validate': {
      if (values.port !== undefined || values.host !== undefined || values.workers !== undefined) usageError('validate takes only the config file')
      // The check a reload makes: schemas named in routes[].validate are loaded and compiled too.
      const { checkConfigFile, isConfigError } = await import('./reload.js')
      try {
        await checkConfigFile(file)
      } catch (err) {
        if (isConfigError(err)) { process.stderr.write(err.message + '\n'); process.exit(1) }
        throw err
      }
      process.stdout.write('ok\n')
      return
    }
    case 'start': {
      let port: number | undefined
      if (values.port !== undefined) {
        port = Number(values.port)
        if (!/^[0-9]+$/.test(values.port) || port > 65535) usageError(`--port must be a number from 0 to 65535, not "${values.port}"`)
      }
      const { isWorker, parseWorkers, perWorkerLimitProblem, runPrimary, superviseWorker } = await import('./cluster.js')
      let workers: number | undefined
      if (values.workers !== undefined) {
        workers = parseWorkers(values.workers) ?? usageError(`--workers must be a number from 1 to 256 or "auto", not "${values.workers}"`)
      }
      const { ConfigError, loadConfig } = await import('./config.js')
      const { startServer } = await import('./server.js')
      let config
      try {
        config = loadConfig(file)
      } catch (err) {
        if (err instanceof ConfigError) { process.stderr.write(err.message + '\n'); process.exit(1) }
        throw err
      }
      if (values.host !== undefined) {
        // The config's own server.host was checked at load; --host moves it, so check again.
        const { knownSecretProblems } = await import('../schemas/secure-defaults.js')
        const problems = knownSecretProblems(config, values.host)
        if (problems.length > 0) {
          process.stderr.write(`invalid config in ${file} with --host ${values.host}:\n  ${problems.join('\n  ')}\n`)
          process.exit(1)
        }
      }
      if (workers !== undefined && !isWorker()) {
        const problem = perWorkerLimitProblem(config, workers)
        if (problem !== null && values['allow-per-worker-limits'] !== true) {
          process.stderr.write(`portcullis: refusing to start: ${problem}\n`)
          process.exit(1)
        }
        if (problem !== null) process.stderr.write(`portcullis: warning: ${problem}\n`)
        const { parseDuration } = await import('../schemas/common.js')
        // Metrics are per process: with a metrics port the primary serves the sum of the workers'.
        const { startClusterMetrics } = await import('../plugins/observability/metrics.js')
        try {
          await startClusterMetrics(config)
        } catch (err) {
          process.stderr.write(`portcullis: cannot start: metrics port: ${(err as Error).message}\n`)
          process.exit(1)
        }
        if (workers > 1 && config.server.metrics.enabled && config.server.metrics.port === undefined) {
          process.stderr.write('portcullis: warning: each worker serves its own /metrics; set server.metrics.port to scrape them all at once\n')
        }
        let code: number
        try {
          code = await runPrimary({ workers, graceMs: parseDuration(config.server.shutdownGrace), level: config.logging.level, pidFile: values['pid-file'], watchFile: values.watch === true ? file : undefined })
        } catch (err) {
          process.stderr.write(`portcullis: cannot start: ${(err as Error).message}\n`)
          process.exit(1)
        }
        process.exit(code)
      }
      if (isWorker()) superviseWorker()
      try {
        // In a worker the primary writes the pid file and forwards SIGHUP (src/cluster.ts).
        const { url, app } = await startServer(config, {
          host: values.host,
          port,
          configFile: file,
          watch: values.watch === true && !isWorker(),
          pidFile: isWorker() ? undefined : values['pid-file']
        })
        app.log.info({ url, routes: config.routes.map((r) => `${r.name} ${r.prefix} → ${String(r.upstream)}`) }, 'portcullis listening')
      } catch (err) {
        process.stderr.write(`portcullis: cannot start: ${(err as Error).message}\n`)
        process.exit(1)
      }
      return
    }
    case 'hash-password':
    case 'api-key': {
      if (Object.values(values).some((v) => v !== undefined)) usageError(`${command} takes no options`)
      process.exitCode = command === 'api-key' ? apiKeyCommand() : await hashPasswordCommand()
      return
    }
    default:
      usageError(`unknown command: ${command}`)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`portcullis: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})

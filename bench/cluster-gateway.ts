/**
 * Portcullis in N node:cluster workers sharing one listening port, for the benchmark's
 * `--workers N` comparison (the CLI runs one process). The primary only forks and watches.
 * Usage: node dist/bench/cluster-gateway.js CONFIG_FILE PORT WORKERS
 */
import cluster from 'node:cluster'
import { loadConfig } from '../src/config.js'
import { startServer } from '../src/server.js'

const [file, portArg, workersArg] = process.argv.slice(2)
if (file === undefined || portArg === undefined) {
  process.stderr.write('usage: cluster-gateway CONFIG_FILE PORT [WORKERS]\n')
  process.exit(2)
}
const workers = Math.max(1, Number(workersArg ?? 2))

if (cluster.isPrimary) {
  let stopping = false
  for (let i = 0; i < workers; i++) cluster.fork()
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return
    process.stderr.write(`cluster-gateway: worker ${worker.process.pid ?? '?'} exited (${String(code ?? signal)})\n`)
    stopping = true
    for (const w of Object.values(cluster.workers ?? {})) w?.kill('SIGKILL')
    process.exit(1)
  })
  const stop = (): void => {
    stopping = true
    const alive = Object.values(cluster.workers ?? {}).filter((w) => w !== undefined)
    if (alive.length === 0) process.exit(0)
    let left = alive.length
    for (const w of alive) {
      w.once('exit', () => { if (--left === 0) process.exit(0) })
      w.process.kill('SIGTERM')
    }
    setTimeout(() => process.exit(1), 10_000).unref()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
} else {
  const config = loadConfig(file)
  await startServer(config, { port: Number(portArg) })
}

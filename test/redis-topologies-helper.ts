/**
 * Real Redis topologies for test/redis-topologies.test.ts, from Debian's packages (redis-server,
 * redis-sentinel, redis-tools): a primary with a replica watched by Sentinels, and a Redis
 * Cluster of three primaries; each process on 127.0.0.1, a free port, a temp dir, no persistence,
 * killed when the test ends. And `portcullis start` as separate gateway processes.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { startCli, type LogLine } from './cli-process.js'
import { freePort, sigkill } from './helper.js'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export interface RedisProcess {
  port: number
  /** SIGKILL (resolves when it has exited). */
  kill: () => Promise<void>
  /** Start it again on the same port, with the same files. */
  restart: () => Promise<void>
}

/** One redis-server (or, with `sentinel`, redis-sentinel) process; resolves once it accepts commands. */
async function startProcess (t: Test, command: 'redis-server' | 'redis-sentinel', dir: string, args: string[], port: number, ready: RegExp): Promise<RedisProcess> {
  let child: ChildProcess
  const start = async (): Promise<void> => {
    child = spawn(command, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`${command} on ${port} did not start: ${out}`)) }, 15_000)
      const seen = (d: Buffer): void => {
        out += d.toString()
        if (ready.test(out)) { clearTimeout(timer); resolve() }
      }
      child.stdout?.on('data', seen)
      child.stderr?.on('data', seen)
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${command} on ${port} exited ${String(code)}: ${out}`)) })
    })
  }
  const kill = async (): Promise<void> => { await sigkill(child) }
  await start()
  t.teardown(kill)
  return { port, kill, restart: start }
}

/** `redis-cli -p PORT args…` → its output (trimmed); throws on a non-zero exit. */
export function cli (port: number, ...args: string[]): string {
  const res = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', timeout: 10_000 })
  if (res.status !== 0) throw new Error(`redis-cli -p ${port} ${args.join(' ')}: ${res.stderr}${res.stdout}`)
  return res.stdout.trim()
}

/** Polls `probe` until it is true; throws after `withinMs`. */
export async function until (what: string, withinMs: number, probe: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + withinMs
  while (Date.now() < deadline) {
    try { if (await probe()) return } catch { /* not yet */ }
    await sleep(100)
  }
  throw new Error(`${what}: not within ${withinMs} ms`)
}

function tempDir (t: Test, name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `portcullis-${name}-`))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

const SERVER_ARGS = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes']
const READY = /Ready to accept connections/

export interface SentinelSetup {
  name: string
  primary: RedisProcess
  replica: RedisProcess
  sentinels: RedisProcess[]
  /** `host:port` of each Sentinel, for rateLimit.redis.sentinels. */
  endpoints: string[]
  /** The primary's port as the Sentinels report it now. */
  primaryPort: () => number
}

/**
 * A primary, a replica and `count` Sentinels (quorum: a majority) that consider the primary down
 * after 500 ms and may retry a failover after 2 s. `password` sets requirepass on both servers
 * (and `sentinel auth-pass`). Resolves once the Sentinels know the replica and each other.
 */
export async function startSentinels (t: Test, options: { count?: number, password?: string } = {}): Promise<SentinelSetup> {
  const name = 'portcullis-primary'
  const count = options.count ?? 3
  const auth = options.password === undefined ? [] : ['--requirepass', options.password, '--masterauth', options.password]
  const primaryPort = await freePort()
  const primary = await startProcess(t, 'redis-server', tempDir(t, 'primary'), ['--port', String(primaryPort), ...SERVER_ARGS, ...auth], primaryPort, READY)
  const replicaPort = await freePort()
  const replica = await startProcess(t, 'redis-server', tempDir(t, 'replica'), ['--port', String(replicaPort), ...SERVER_ARGS, ...auth, '--replicaof', '127.0.0.1', String(primaryPort)], replicaPort, /MASTER <-> REPLICA sync: Finished with success/)
  const sentinels: RedisProcess[] = []
  for (let i = 0; i < count; i++) {
    const dir = tempDir(t, 'sentinel')
    const port = await freePort()
    // Sentinel rewrites its config file: it must be writable, one per Sentinel.
    writeFileSync(join(dir, 'sentinel.conf'), [
      `port ${port}`,
      'bind 127.0.0.1',
      `sentinel monitor ${name} 127.0.0.1 ${primaryPort} ${Math.floor(count / 2) + 1}`,
      `sentinel down-after-milliseconds ${name} 500`,
      `sentinel failover-timeout ${name} 2000`,
      `sentinel parallel-syncs ${name} 1`,
      ...(options.password === undefined ? [] : [`sentinel auth-pass ${name} ${options.password}`]),
      ''
    ].join('\n'))
    sentinels.push(await startProcess(t, 'redis-sentinel', dir, [join(dir, 'sentinel.conf')], port, /\+monitor master/))
  }
  const reported = (port: number): number => Number(cli(port, 'SENTINEL', 'get-master-addr-by-name', name).split('\n')[1])
  await until('every Sentinel knows the replica and the other Sentinels', 30_000, () => sentinels.every((s) =>
    cli(s.port, 'SENTINEL', 'replicas', name).includes(String(replicaPort)) &&
    cli(s.port, 'SENTINEL', 'sentinels', name).split('\n').filter((l) => l === 'name').length === count - 1))
  return {
    name,
    primary,
    replica,
    sentinels,
    endpoints: sentinels.map((s) => `127.0.0.1:${s.port}`),
    primaryPort: () => reported(sentinels[0].port)
  }
}

export interface ClusterSetup {
  nodes: RedisProcess[]
  endpoints: string[]
  /** The port of the primary that owns `key`'s slot (from CLUSTER KEYSLOT and CLUSTER SLOTS of `via`). */
  ownerOf: (key: string, via?: number) => number
}

/**
 * Three primaries (no replicas) joined by `redis-cli --cluster create`, with
 * cluster-require-full-coverage no: a dead node's slots fail, the other nodes keep serving theirs.
 * A node considers another failed after 1 s (cluster-node-timeout).
 */
export async function startCluster (t: Test): Promise<ClusterSetup> {
  const nodes: RedisProcess[] = []
  for (let i = 0; i < 3; i++) {
    const port = await freePort()
    const bus = await freePort() // port + 10000 may be past 65535 for an ephemeral port
    const dir = tempDir(t, 'cluster')
    nodes.push(await startProcess(t, 'redis-server', dir, [
      '--port', String(port), ...SERVER_ARGS, '--cluster-enabled', 'yes', '--cluster-port', String(bus),
      '--cluster-config-file', join(dir, 'nodes.conf'), '--cluster-node-timeout', '1000', '--cluster-require-full-coverage', 'no'
    ], port, READY))
  }
  const endpoints = nodes.map((n) => `127.0.0.1:${n.port}`)
  const created = spawnSync('redis-cli', ['--cluster', 'create', ...endpoints, '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 })
  if (created.status !== 0) throw new Error(`redis-cli --cluster create: ${created.stdout}${created.stderr}`)
  await until('every node says cluster_state:ok', 30_000, () => nodes.every((n) => cli(n.port, 'CLUSTER', 'INFO').includes('cluster_state:ok')))
  const ownerOf = (key: string, via = nodes[0].port): number => {
    const slot = Number(cli(via, 'CLUSTER', 'KEYSLOT', key))
    // CLUSTER SHARDS would be neater; CLUSTER NODES is in every Redis 7: "<id> <ip:port@bus> <flags> … <slots…>".
    for (const line of cli(via, 'CLUSTER', 'NODES').split('\n')) {
      const fields = line.split(' ')
      if (!fields[2].includes('master')) continue
      for (const range of fields.slice(8)) {
        const [from, to] = range.split('-').map(Number)
        if (slot >= from && slot <= (to ?? from)) return Number(fields[1].split(':')[1].split('@')[0])
      }
    }
    throw new Error(`no node owns slot ${slot}`)
  }
  return { nodes, endpoints, ownerOf }
}

export interface TlsRedis {
  port: number
  /** PEM file of the CA that signed the server's certificate (for 127.0.0.1 and localhost). */
  ca: string
}

/** A redis-server that speaks only TLS, with a certificate from a CA made for it by openssl. */
export async function startTlsRedis (t: Test): Promise<TlsRedis> {
  const dir = tempDir(t, 'tls-redis')
  const openssl = (...args: string[]): void => {
    const res = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8', timeout: 30_000 })
    if (res.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${res.stderr}`)
  }
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=portcullis test CA')
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost')
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf')
  const port = await freePort()
  await startProcess(t, 'redis-server', dir, [
    '--port', '0', '--tls-port', String(port), '--tls-cert-file', 'server.pem', '--tls-key-file', 'server.key',
    '--tls-ca-cert-file', 'ca.pem', '--tls-auth-clients', 'no', ...SERVER_ARGS
  ], port, READY)
  return { port, ca: join(dir, 'ca.pem') }
}

export interface GatewayProcess {
  url: string
  /** Its JSON log lines so far. */
  logs: LogLine[]
}

/**
 * `portcullis start --config FILE --port 0` as a process of its own, from `build` (the sources
 * transpiled by helper.ts transpileProject), without tap's NODE_OPTIONS (its TypeScript loader
 * would make the start take seconds); resolves once it listens.
 */
export async function startGatewayProcess (t: Test, build: string, raw: Record<string, unknown>): Promise<GatewayProcess> {
  const file = join(tempDir(t, 'gateway'), 'gateway.json')
  writeFileSync(file, JSON.stringify({ logging: { level: 'info', accessLog: false }, ...raw }))
  const gateway = startCli(t, join(build, 'src/cli.js'), ['start', '--config', file, '--port', '0'], { NODE_OPTIONS: '' })
  const listening = await gateway.waitFor((l) => typeof l.url === 'string', 'portcullis listening', 60_000)
  return { url: String(listening.url), logs: gateway.lines }
}

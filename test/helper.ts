/**
 * Test helpers: real servers on 127.0.0.1, port 0, cleaned up by the test that started them.
 * No mocked network anywhere.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import ts from 'typescript'
import { transpileTree } from '../bench/lib.js'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'

/** The part of tap's Test these helpers use (so they work for any subtest). */
export interface T {
  teardown: (fn: () => unknown) => void
  fail: (message: string) => unknown
  skip?: (...args: never[]) => unknown
  comment: (...args: unknown[]) => void
}

export interface RecordedRequest {
  method: string
  url: string
  headers: IncomingHttpHeaders
  /** Raw header pairs as received, to see duplicates and spelling. */
  rawHeaders: string[]
  body: Buffer
}

export interface Upstream {
  server: Server
  port: number
  /** `http://127.0.0.1:PORT` */
  origin: string
  requests: RecordedRequest[]
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void | Promise<void>

/** Default upstream behaviour: answer 200 with a JSON echo of what arrived. */
export const echo: UpstreamHandler = (req, res, body) => {
  const text = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') })
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

/**
 * An upstream on 127.0.0.1:0 that records every request (with its whole body) before calling
 * `handler`. Pass `{ stream: true }` to get the request unread (for big uploads): then `body` is empty.
 */
export async function startUpstream (t: T, handler: UpstreamHandler = echo, options: { stream?: boolean } = {}): Promise<Upstream> {
  const requests: RecordedRequest[] = []
  const server = createServer((req, res) => {
    const record = (body: Buffer): void => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body })
      Promise.resolve(handler(req, res, body)).catch((err: unknown) => { res.destroy(err as Error) })
    }
    if (options.stream === true) { record(Buffer.alloc(0)); return }
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => record(Buffer.concat(chunks)))
    req.on('error', () => {})
  })
  server.keepAliveTimeout = 60_000
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { server, port, origin: `http://127.0.0.1:${port}`, requests }
}

/** A config object as it would be written in YAML: defaults and checks are applied by parseConfig. */
export type RawConfig = Record<string, unknown>

/** Build (not listen) a gateway from a raw config; logs off unless `logging` is given. */
export async function buildTestGateway (t: T, raw: RawConfig): Promise<FastifyInstance> {
  const config = parseConfig({ logging: { level: 'silent' }, ...raw })
  const app = await buildGateway(config)
  t.teardown(() => app.close())
  await app.ready()
  return app
}

/** Build and listen on 127.0.0.1:0; returns the app and its base URL. */
export async function startTestGateway (t: T, raw: RawConfig): Promise<{ app: FastifyInstance, url: string }> {
  const app = await buildTestGateway(t, raw)
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, url }
}

/** A port that was free a moment ago (for servers that cannot listen on 0 and report back). */
export async function freePort (): Promise<number> {
  const srv = createNetServer()
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  const { port } = srv.address() as AddressInfo
  await new Promise((resolve) => srv.close(resolve))
  return port
}

/**
 * Whether an external program the test needs is installed. In CI (CI=true) a missing program
 * fails the test; locally the test is skipped with a loud message saying how to install it.
 */
export function requireCommand (t: T, command: string, install: string): boolean {
  const found = spawnSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' }).status === 0
  if (found) return true
  const message = `${command} is not installed: ${install}`
  if (process.env.CI === 'true') {
    t.fail(`${message} (required in CI)`)
  } else {
    process.stderr.write(`\n!!! SKIPPING: ${message}\n\n`)
    t.comment(`SKIPPED: ${message}`)
  }
  return false
}

export interface RedisServer {
  port: number
  url: string
  process: ChildProcess
  stop: () => Promise<void>
  /** Start it again on the same port (after stop). */
  start: () => Promise<void>
}

/** SIGKILL a child process unless it has exited; resolves once it has. */
export async function sigkill (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  await exited
}

/** A throwaway redis-server on a free loopback port, no persistence. Call requireCommand first. */
export async function startRedis (t: T): Promise<RedisServer> {
  const port = await freePort()
  let child: ChildProcess
  const start = async (): Promise<void> => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes'], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), 10_000)
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString()
        if (out.includes('Ready to accept connections')) { clearTimeout(timer); resolve() }
      })
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited ${String(code)}: ${out}`)) })
    })
    child.stdout?.resume()
  }
  const stop = async (): Promise<void> => { await sigkill(child) }
  await start()
  const redis: RedisServer = { port, url: `redis://127.0.0.1:${port}`, get process () { return child }, stop, start }
  t.teardown(stop)
  return redis
}

/** Read a whole stream or response body. */
export async function readAll (stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : c)
  return Buffer.concat(chunks)
}

export interface CallResult {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
  /** The body as parsed JSON (undefined when it is not JSON). */
  json: unknown
}

export interface CallOptions {
  method?: string
  /** Header object, or raw `[name, value, name, value…]` pairs for exact control. */
  headers?: Record<string, string | string[]> | string[]
  body?: string | Buffer | AsyncIterable<Buffer> | Readable
}

/**
 * One HTTP request with node:http, on a fresh connection, with the path sent exactly as written
 * (no URL normalisation, so `/a/../b` and odd encodings reach the server as spelled). Rejects
 * when the connection breaks before the whole response has arrived (an aborted response).
 */
export async function call (url: string, options: CallOptions = {}): Promise<CallResult> {
  const m = /^(https?):\/\/([^/:]+):([0-9]+)(\/.*)?$/.exec(url)
  if (m === null) throw new Error(`call: not an http URL: ${url}`)
  const body = options.body
  let headers = options.headers ?? {}
  // node:http frames no body for GET, HEAD, DELETE, OPTIONS unless told how: say it.
  const raw = Array.isArray(headers) ? headers : Object.entries(headers).flatMap(([k, v]) => Array.isArray(v) ? v.flatMap((x) => [k, x]) : [k, v])
  const framed = raw.some((v, i) => i % 2 === 0 && /^(content-length|transfer-encoding)$/i.test(v))
  if (body !== undefined && !framed) {
    headers = typeof body === 'string' || Buffer.isBuffer(body)
      ? [...raw, 'content-length', String(Buffer.byteLength(body))]
      : [...raw, 'transfer-encoding', 'chunked']
  }
  // Given raw pairs, node:http adds no Host header of its own.
  if (Array.isArray(headers) && !headers.some((v, i) => i % 2 === 0 && v.toLowerCase() === 'host')) headers = ['host', `${m[2]}:${m[3]}`, ...headers]
  const req = httpRequest({ host: m[2], port: Number(m[3]), path: m[4] ?? '/', method: options.method ?? 'GET', headers, agent: false })
  const responded = new Promise<IncomingMessage>((resolve, reject) => {
    req.once('response', resolve)
    req.once('error', reject)
  })
  if (body === undefined) req.end()
  else if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body)
  else pipeline(Readable.from(body), req).catch(() => {}) // a refused upload surfaces as the response (or its error)
  const res = await responded
  const chunks: Buffer[] = []
  await new Promise<void>((resolve, reject) => {
    res.on('data', (c: Buffer) => chunks.push(c))
    res.once('end', resolve)
    res.once('error', reject)
    res.once('aborted', () => reject(new Error('response aborted')))
    res.once('close', () => { if (!res.complete) reject(new Error('response aborted')) })
  })
  const buf = Buffer.concat(chunks)
  let json: unknown
  try { json = JSON.parse(buf.toString('utf8')) } catch { json = undefined }
  return { status: res.statusCode ?? 0, headers: res.headers, body: buf, json }
}

export interface DrfUser {
  username: string
  password: string
  /** Group names; a simplejwt token's `scope` claim lists them. */
  scopes?: string[]
  superuser?: boolean
}

export interface DrfServer {
  port: number
  /** `http://127.0.0.1:PORT` */
  origin: string
  /** The HS256 key simplejwt signs with (DRF_JWT_SIGNING_KEY): give it to the gateway's `jwt.secret`. */
  signingKey: string
  /** The SQLite folder (removed at teardown). */
  dataDir: string
  /** Stop gunicorn (SIGTERM, waits for exit): the port refuses connections. */
  stop: () => Promise<void>
  /** Start it again on the same port with the same database. */
  start: () => Promise<void>
  /** SIGSTOP / SIGCONT gunicorn and its workers: connections are accepted but nothing answers. */
  pause: () => void
  resume: () => void
  /** Run `manage.py ARGS` with the app's environment; returns stdout. */
  manage: (args: string[]) => string
  /** Every request gunicorn has answered so far (its access log), oldest first. */
  requests: () => Array<{ method: string, path: string, status: number }>
}

const DRF_DIR = new URL('../examples/drf/', import.meta.url).pathname

/**
 * The DRF example (examples/drf) under gunicorn on a free loopback port, with a fresh SQLite
 * database in a temp folder (migrations applied by its start.sh) and `users` seeded. Returns null
 * when gunicorn or the Python packages are missing (a failure in CI, a loud skip locally).
 */
export async function startDrf (t: T, options: { users?: DrfUser[], env?: Record<string, string> } = {}): Promise<DrfServer | null> {
  const install = 'apt-get install gunicorn python3-djangorestframework python3-djangorestframework-simplejwt'
  if (!requireCommand(t, 'gunicorn', install)) return null
  // The interpreter gunicorn runs on is the one that must have Django (pyenv shims may differ).
  const gunicornPath = spawnSync('sh', ['-c', 'command -v gunicorn'], { encoding: 'utf8' }).stdout.trim()
  const shebang = /^#!(\S+)/.exec(readFileSync(gunicornPath, 'utf8').split('\n', 1)[0] ?? '')
  const python = shebang?.[1] ?? 'python3'
  const probe = spawnSync(python, ['-c', 'import django, rest_framework, rest_framework_simplejwt'], { encoding: 'utf8' })
  if (probe.status !== 0) {
    const message = `${python} cannot import Django REST Framework: ${install}`
    if (process.env.CI === 'true') t.fail(`${message} (required in CI)`)
    else { process.stderr.write(`\n!!! SKIPPING: ${message}\n\n`); t.comment(`SKIPPED: ${message}`) }
    return null
  }
  const port = await freePort()
  const dataDir = mkdtempSync(join(tmpdir(), 'portcullis-drf-'))
  const signingKey = randomBytes(32).toString('base64url')
  const accessLog = join(dataDir, 'access.log')
  const env = {
    ...process.env,
    PYTHON: python,
    DRF_JWT_SIGNING_KEY: signingKey,
    DRF_DATA_DIR: dataDir,
    DRF_BIND: `127.0.0.1:${port}`,
    DRF_WORKERS: '1',
    DRF_USERS: JSON.stringify(options.users ?? []),
    ...options.env
  }
  let child: ChildProcess | undefined
  let log = ''
  const exited = (): boolean => child === undefined || child.exitCode !== null || child.signalCode !== null
  const start = async (): Promise<void> => {
    log = ''
    // Its own process group, so pause/resume reach the workers too.
    child = spawn('./start.sh', ['--access-logfile', accessLog], { cwd: DRF_DIR, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout?.on('data', (d: Buffer) => { log += d.toString() })
    child.stderr?.on('data', (d: Buffer) => { log += d.toString() })
    const deadline = Date.now() + 30_000
    for (;;) {
      if (exited()) throw new Error(`the DRF example exited at start:\n${log}`)
      if (Date.now() > deadline) throw new Error(`the DRF example did not answer /healthz within 30 s:\n${log}`)
      const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false)
      if (ok) return
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  const signal = (sig: NodeJS.Signals): void => {
    if (!exited() && child?.pid !== undefined) process.kill(-child.pid, sig)
  }
  const stop = async (): Promise<void> => {
    if (exited() || child === undefined) return
    const done = once(child, 'exit')
    signal('SIGCONT')
    signal('SIGTERM')
    const timer = setTimeout(() => { signal('SIGKILL') }, 10_000)
    await done
    clearTimeout(timer)
  }
  t.teardown(async () => { await stop(); rmSync(dataDir, { recursive: true, force: true }) })
  await start()
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    signingKey,
    dataDir,
    stop,
    start,
    pause: () => { signal('SIGSTOP') },
    resume: () => { signal('SIGCONT') },
    manage: (args) => {
      const r = spawnSync(python, ['manage.py', ...args], { cwd: DRF_DIR, env, encoding: 'utf8' })
      if (r.status !== 0) throw new Error(`manage.py ${args.join(' ')} failed:\n${r.stderr}`)
      return r.stdout
    },
    requests: () => {
      const text = existsSync(accessLog) ? readFileSync(accessLog, 'utf8') : ''
      return [...text.matchAll(/"([A-Z]+) (\S+) HTTP\/[0-9.]+" ([0-9]{3})/g)].map((m) => ({ method: m[1] ?? '', path: m[2] ?? '', status: Number(m[3]) }))
    }
  }
}

/**
 * The project's TypeScript (src, plugins, schemas and the `extra` folders) transpiled without
 * type-checking into a temp folder that links node_modules, laid out like dist/
 * (`<dir>/src/cli.js`): for tests that spawn the gateway or the benchmark as real processes
 * without depending on a fresh `npm run build`. Removed when the test ends.
 *
 * Twenty-odd test files ask for the same sources, and transpiling them takes 1.5–4 s of CPU each
 * time (more on a loaded CI machine): the first caller writes the result to a folder in the temp
 * directory named by a hash of every source file (and TypeScript's version), and every caller gets
 * its own copy of that folder (≈ 0.1 s), so a test may change its copy freely. The cached folders
 * stay in the temp directory (one per version of the sources, ≈ 2 MB each).
 */
export function transpileProject (t: T, extra: string[] = []): string {
  const root = join(import.meta.dirname, '..')
  const dirs = ['src', 'plugins', 'schemas', ...extra]
  const modules = join(root, 'node_modules')
  const hash = createHash('sha256').update(`${ts.version}\0${modules}\0${dirs.join(',')}\0`)
  for (const dir of dirs) {
    if (!existsSync(join(root, dir))) continue
    for (const file of readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' }).sort()) {
      if (!file.endsWith('.ts') || file.endsWith('.d.ts')) continue
      hash.update(`${dir}/${file}\0`).update(readFileSync(join(root, dir, file))).update('\0')
    }
  }
  const cached = join(tmpdir(), `portcullis-transpiled-${hash.digest('hex').slice(0, 24)}`)
  if (!existsSync(cached)) {
    const staging = mkdtempSync(join(tmpdir(), 'portcullis-transpiling-'))
    transpileTree(ts, root, staging, dirs, modules)
    // Whole or not at all: another test file may be writing the same folder at this moment.
    try { renameSync(staging, cached) } catch { rmSync(staging, { recursive: true, force: true }) }
  }
  const out = mkdtempSync(join(tmpdir(), 'portcullis-build-'))
  t.teardown(() => { rmSync(out, { recursive: true, force: true }) })
  cpSync(cached, out, { recursive: true, verbatimSymlinks: true })
  return out
}

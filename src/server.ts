/**
 * Listening, reloading and stopping: the process side of the gateway.
 *
 * The listening http.Server (the "front") is made here, with the listener-level options the first
 * gateway's Fastify instance was given (timeouts, maxHeaderSize, maxHeadersCount…). Each
 * generation of the gateway is a buildGateway() instance that never listens: the front hands each
 * request (and `checkContinue`, `clientError`, `upgrade`) to the current generation's own server,
 * with one emit. A reload (SIGHUP, `reload()`, or the watched file) checks the new config
 * completely, builds the next generation beside the running one, then swaps at once: requests
 * already handed to the old generation finish there, and it is closed when they (and its
 * WebSocket tunnels) have, or after `server.shutdownGrace`: then the connections of its requests
 * still open are destroyed (counted in a log line) and it is closed. Pools, rate-limit counters
 * and metrics pass from one generation to the next by key (plugins/core/shared.ts).
 *
 * Why a front rather than one Fastify instance: Fastify cannot remove a route, and
 * a new instance per config is the only way to get everything a config shapes (routes, hooks,
 * plugins, the 404 handler) built from it alone.
 *
 * SIGTERM/SIGINT (and `close()`) stop accepting new connections, let in-flight requests finish
 * within `server.shutdownGrace`, destroy the connections of those still open then, close every
 * generation, and exit 0 (1 if requests were cut or closing failed).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type { AddressInfo } from 'node:net'
import { setFlagsFromString } from 'node:v8'
import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../schemas/config.js'
import { parseDuration } from '../schemas/common.js'
import { SharedObjects } from '../plugins/core/shared.js'
import { formatUrl } from '../plugins/observability/metrics.js'
import { buildGateway, type BuildOptions } from './app.js'
import { Coalescer, ReloadRefused, configChanges, keepRestartOnly, readConfig, watchConfigFile, writePidFile } from './reload.js'

export interface StartOptions extends BuildOptions {
  host?: string
  port?: number
  /** Install SIGTERM/SIGINT handlers that drain and exit, and SIGHUP to reload (the CLI does). Default true. */
  handleSignals?: boolean
  /**
   * Called after each generation of the gateway is built and before it serves: register your own
   * plugins or hooks here. Its `app.server` never listens; the listening one is RunningGateway.server.
   * A hook added here belongs to that generation: its onClose runs when a reload retires it.
   */
  setup?: (app: FastifyInstance) => Promise<void> | void
  /** The config file a reload re-reads (SIGHUP, `reload()` without a config, `watch`). */
  configFile?: string
  /** Reload when the config file changes (fs.watch on its folder, debounced). Needs configFile. */
  watch?: boolean
  /**
   * Write the process id to this file once listening (for `portcullis reload --pid-file`); removed
   * at close. When it cannot be written, startServer closes what it opened and rejects.
   */
  pidFile?: string
}

/** What one reload did. */
export interface ReloadOutcome {
  ok: boolean
  /** The generation serving after it. */
  generation: number
  /** When refused: every problem, as `path: message`. */
  problems?: string[]
}

export interface RunningGateway {
  /** The generation serving new requests (a reload replaces it). */
  readonly app: FastifyInstance
  /** The listening server every generation is served through. */
  readonly server: Server
  /** `http://127.0.0.1:8080` */
  url: string
  /** 1 at start, one more per reload that was applied. */
  readonly generation: number
  /**
   * Reload from `config`, or from the config file when none is given. Concurrent calls are
   * coalesced: never two reloads at once; a call while one runs is served by one more run after it.
   */
  reload: (config?: Readonly<GatewayConfig>) => Promise<ReloadOutcome>
  close: () => Promise<void>
}

/** How often a retiring generation is checked for requests and tunnels still open. */
const RETIRE_POLL_MS = 50
/** How long the requests cut at a deadline get to run their 'close' listeners before the close. */
const CUT_SETTLE_MS = 1_000
/** With signals: how long after shutdownGrace close-with-grace exits anyway (close() is stuck). */
const EXIT_BACKSTOP_MS = 2_000

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref())

interface WebSocketCount { open: () => number, closeAll: (code?: number) => Promise<void> }

/** One built gateway and the requests handed to it that have not closed. */
class Generation {
  /** The responses of the requests handed to this generation that have not closed. */
  readonly open = new Set<ServerResponse>()
  /** res 'close' listener: made once per generation, so a request costs no closure. */
  readonly done: (this: ServerResponse) => void
  readonly server: Server
  private closing: Promise<void> | undefined
  constructor (readonly app: FastifyInstance, readonly number: number, readonly config: Readonly<GatewayConfig>) {
    this.server = app.server
    const open = this.open
    this.done = function () { open.delete(this) }
  }

  get inFlight (): number { return this.open.size }

  /**
   * Destroys the connection of every request still open (the deadline has passed); resolves with
   * how many, once their 'close' listeners have run (bounded), so nothing of theirs runs on a
   * closed instance's pools or folders.
   */
  async cut (): Promise<number> {
    const n = this.open.size
    for (const res of this.open) res.destroy()
    for (let waited = 0; this.open.size > 0 && waited < CUT_SETTLE_MS; waited += 10) await pause(10)
    return n
  }

  /** Closes the instance, once (a retiring generation may meet a shutdown). */
  close (): Promise<void> {
    this.closing ??= this.app.close()
    return this.closing
  }

  /** Requests in flight plus open tunnels (task W's `app.websockets`, when there). */
  busy (): number {
    const ws = (this.app as unknown as { websockets?: WebSocketCount }).websockets
    return this.inFlight + (ws === undefined ? 0 : ws.open())
  }
}

/** The listening server, with what Fastify set on the first generation's own (unused) server. */
function createFront (model: Server): Server {
  const m = model as Server & { maxHeaderSize?: number, connectionsCheckingInterval?: number, requireHostHeader?: boolean, joinDuplicateHeaders?: boolean, insecureHTTPParser?: boolean }
  const front = createServer({
    maxHeaderSize: m.maxHeaderSize,
    connectionsCheckingInterval: m.connectionsCheckingInterval,
    requestTimeout: m.requestTimeout,
    headersTimeout: m.headersTimeout,
    requireHostHeader: m.requireHostHeader,
    joinDuplicateHeaders: m.joinDuplicateHeaders,
    insecureHTTPParser: m.insecureHTTPParser
  })
  front.keepAliveTimeout = m.keepAliveTimeout
  front.maxHeadersCount = m.maxHeadersCount as number
  front.maxRequestsPerSocket = m.maxRequestsPerSocket as number
  front.setTimeout(m.timeout)
  return front
}

export async function startServer (config: Readonly<GatewayConfig>, options: StartOptions = {}): Promise<RunningGateway> {
  // V8 decides per allocation site whether to allocate straight into the old generation. Under
  // load it decided so for request-scoped objects: each scavenge then kept alive everything they
  // point to, took 12-30 ms instead of 2, and promoted garbage until the next full GC. Off, a
  // small POST costs ≈ 20 % less CPU, a GET ≈ 9 % (bench/PROFILE.md). The flag is read when the
  // GC runs, so setting it here, before the first request, takes effect; it is process-wide.
  if (!config.server.allocationSitePretenuring) setFlagsFromString('--no-allocation-site-pretenuring')
  const shared = options.shared ?? new SharedObjects()
  const buildOptions: BuildOptions = { ...options, shared }

  async function build (cfg: Readonly<GatewayConfig>): Promise<FastifyInstance> {
    const app = await buildGateway(cfg, buildOptions)
    try {
      if (options.setup !== undefined) await options.setup(app)
      await app.ready()
    } catch (err) {
      await app.close().catch(() => {})
      throw err
    }
    return app
  }

  let generation = new Generation(await build(config), 1, config)
  const generations = new Set<Generation>([generation])
  const front = createFront(generation.server)

  // The front hands everything to the current generation: one emit (and the in-flight count).
  front.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const gen = generation
    gen.open.add(res)
    res.on('close', gen.done)
    gen.server.emit('request', req, res)
  })
  front.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    const gen = generation
    gen.open.add(res)
    res.on('close', gen.done)
    // Node's own behaviour when nothing listens for it: 100 Continue, then the request.
    if (gen.server.listenerCount('checkContinue') > 0) gen.server.emit('checkContinue', req, res)
    else {
      res.writeContinue()
      gen.server.emit('request', req, res)
    }
  })
  front.on('clientError', (err: Error, socket: Duplex) => {
    if (generation.server.listenerCount('clientError') > 0) generation.server.emit('clientError', err, socket)
    else socket.destroy()
  })
  // Only while the generation takes upgrades (WebSocket routes): without a listener, Node treats
  // an upgrade request as any other request.
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => { generation.server.emit('upgrade', req, socket, head) }
  const followUpgrades = (): void => {
    front.off('upgrade', onUpgrade)
    if (generation.server.listenerCount('upgrade') > 0) front.on('upgrade', onUpgrade)
  }
  followUpgrades()

  const host = options.host ?? config.server.host
  const port = options.port ?? config.server.port
  try {
    await new Promise<void>((resolve, reject) => {
      front.once('error', reject)
      front.listen({ host, port }, () => { front.off('error', reject); resolve() })
    })
  } catch (err) {
    await generation.app.close()
    throw err
  }
  // After listen: the pid file names a process that serves and takes SIGHUP (a reload signalled
  // before the handler is installed would end it). One that cannot be written stops the start.
  let removePidFile = (): void => {}
  if (options.pidFile !== undefined) {
    try {
      removePidFile = writePidFile(options.pidFile)
    } catch (err) {
      front.closeAllConnections()
      await new Promise<void>((resolve) => front.close(() => { resolve() }))
      await generation.app.close()
      throw err
    }
  }
  const url = formatUrl(front.address() as AddressInfo)
  const grace = parseDuration(config.server.shutdownGrace)
  const log = (): FastifyInstance['log'] => generation.app.log

  // --- retiring a generation ------------------------------------------------------------------

  /** Destroys what is left of these generations' requests; logs and returns how many. */
  async function cutLeft (gens: Generation[], why: string): Promise<number> {
    const counts = await Promise.all(gens.map(async (g) => await g.cut()))
    const cut = counts.reduce((sum, n) => sum + n, 0)
    if (cut > 0) log().warn({ generations: gens.map((g) => g.number), cut, graceMs: grace }, `${why}: ${cut} request${cut === 1 ? '' : 's'} still in flight cut (connection closed)`)
    return cut
  }

  async function retire (gen: Generation): Promise<void> {
    const deadline = Date.now() + grace
    while (gen.busy() > 0 && Date.now() < deadline) await pause(RETIRE_POLL_MS)
    const ws = (gen.app as unknown as { websockets?: WebSocketCount }).websockets
    if (ws !== undefined && ws.open() > 0) await ws.closeAll(1001).catch(() => {})
    const left = gen.inFlight
    // Closing runs under nothing: a removed route's pool, the request-buffer folder go with it.
    if (left > 0) await cutLeft([gen], 'server.shutdownGrace ran out for an old generation')
    await gen.close().catch((err: unknown) => { log().error({ err, generation: gen.number }, 'closing an old generation failed') })
    generations.delete(gen)
    log().info({ generation: gen.number, unfinished: left }, 'old generation closed')
  }

  // --- reload -------------------------------------------------------------------------------

  let stopping = false
  let wanted: Readonly<GatewayConfig> | undefined
  let lastOutcome: ReloadOutcome = { ok: true, generation: 1 }

  async function reloadOnce (): Promise<void> {
    const given = wanted
    wanted = undefined
    const started = performance.now()
    const running = generation
    let next: Readonly<GatewayConfig>
    try {
      if (given !== undefined) next = given
      else if (options.configFile !== undefined) next = await readConfig(options.configFile)
      else throw new ReloadRefused(['no config file to reload from (start with configFile)'])
    } catch (err) {
      const problems = err instanceof ReloadRefused ? err.problems : [(err as Error).message]
      log().error({ file: options.configFile, problems, generation: running.number }, 'reload refused: the config is invalid; the running config keeps serving')
      lastOutcome = { ok: false, generation: running.number, problems }
      return
    }
    const changes = configChanges(running.config, next)
    const effective = keepRestartOnly(running.config, next)
    let app: FastifyInstance
    try {
      app = await build(effective)
    } catch (err) {
      const problems = [(err as Error).message]
      log().error({ file: options.configFile, problems, generation: running.number }, 'reload failed: the new config could not be built; the running config keeps serving')
      lastOutcome = { ok: false, generation: running.number, problems }
      return
    }
    if (stopping) {
      await app.close()
      lastOutcome = { ok: false, generation: running.number, problems: ['the gateway is shutting down'] }
      return
    }
    // The old generation's buffered lines first, so the log reads in order.
    ;(running.app.log as { flush?: () => void }).flush?.()
    const gen = new Generation(app, running.number + 1, effective)
    generations.add(gen)
    generation = gen
    followUpgrades()
    // Derived from the routes' timeouts (src/app.ts: connectionTimeout), so it follows them.
    front.timeout = gen.server.timeout
    app.log.info({
      generation: gen.number,
      added: changes.added,
      removed: changes.removed,
      changed: changes.changed,
      gatewayChanged: changes.gatewayChanged,
      needsRestart: changes.needsRestart,
      ms: Math.round((performance.now() - started) * 10) / 10
    }, changes.needsRestart.length === 0
      ? 'config reloaded'
      : `config reloaded; ${changes.needsRestart.join(', ')} changed and keep${changes.needsRestart.length === 1 ? 's' : ''} the running value until a restart`)
    lastOutcome = { ok: true, generation: gen.number }
    retire(running).catch(() => {})
  }

  const reloads = new Coalescer(reloadOnce)
  const reload = async (cfg?: Readonly<GatewayConfig>): Promise<ReloadOutcome> => {
    if (stopping) return { ok: false, generation: generation.number, problems: ['the gateway is shutting down'] }
    if (cfg !== undefined) wanted = cfg
    await reloads.request()
    return lastOutcome
  }

  // --- the file, the signal, the pid file ---------------------------------------------------

  const watcher = options.watch === true && options.configFile !== undefined
    ? watchConfigFile(options.configFile, () => {
      log().info({ file: options.configFile }, 'config file changed: reloading')
      reload().catch(() => {})
    }, (err) => { log().warn({ err: err.message, file: options.configFile }, 'cannot watch the config file any more') })
    : undefined

  const onHangup = (): void => {
    log().debug({ file: options.configFile, generation: generation.number }, 'SIGHUP: reloading')
    reload().catch(() => {})
  }

  // --- stopping -----------------------------------------------------------------------------

  let uninstall = (): void => {}
  /** Resolves with the number of requests cut at the deadline. */
  let closing: Promise<number> | undefined
  const shutdown = (): Promise<number> => {
    closing ??= (async () => {
      const deadline = Date.now() + grace
      stopping = true
      watcher?.close()
      await reloads.stop()
      const current = generation
      // /readyz 503, and what arrives on an open connection is refused with Connection: close.
      if (current.app.hasDecorator('readiness')) current.app.readiness.state = 'draining'
      // server.close() closes the connections that are idle when it is called; one that finishes
      // its in-flight request later would stay open until its keep-alive timeout and hold the exit
      // past the grace. So while draining, idle connections are closed as they become idle.
      const closed = new Promise<void>((resolve) => front.close(() => { resolve() }))
      const reaper = setInterval(() => { front.closeIdleConnections() }, 50).unref()
      while ([...generations].some((g) => g.inFlight > 0) && Date.now() < deadline) await pause(RETIRE_POLL_MS)
      const cut = await cutLeft([...generations], 'server.shutdownGrace ran out while stopping')
      await Promise.all([...generations].map(async (g) => { await g.close() }))
      generations.clear()
      await closed
      clearInterval(reaper)
      uninstall()
      removePidFile()
      return cut
    })()
    return closing
  }
  const close = async (): Promise<void> => { await shutdown() }

  if (options.handleSignals !== false) {
    // The logger of whichever generation serves when it speaks (a closed one's is closed).
    const logger = { error: (message: unknown) => { log().error(message) } }
    // SIGHUP reloads (below), it does not stop the gateway.
    // close() keeps the grace itself (it cuts what is left, then closes); the delay here is only
    // a backstop for a close that hangs. Requests cut: exit 1 (close-with-grace's code on a throw).
    const closeListeners = closeWithGrace({ delay: grace + EXIT_BACKSTOP_MS, logger, skip: ['SIGHUP'] }, async ({ signal, err }) => {
      if (err !== undefined) log().error({ err }, 'shutting down after an error')
      else log().info({ signal, graceMs: grace }, 'draining')
      const cut = await shutdown()
      if (cut > 0) throw new Error(`stopped with ${cut} request${cut === 1 ? '' : 's'} cut at server.shutdownGrace`)
    })
    process.on('SIGHUP', onHangup)
    uninstall = () => {
      closeListeners.uninstall()
      process.removeListener('SIGHUP', onHangup)
    }
  }

  return {
    get app () { return generation.app },
    get generation () { return generation.number },
    server: front,
    url,
    reload,
    close
  }
}

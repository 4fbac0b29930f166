/**
 * Listening and stopping: the process side of the gateway. SIGTERM/SIGINT stop accepting new
 * connections, let in-flight requests finish within `server.shutdownGrace`, then exit 0
 * (1 if the grace ran out or closing failed).
 */
import { setFlagsFromString } from 'node:v8'
import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../schemas/config.js'
import { parseDuration } from '../schemas/common.js'
import { buildGateway, type BuildOptions } from './app.js'

export interface StartOptions extends BuildOptions {
  host?: string
  port?: number
  /** Install SIGTERM/SIGINT handlers that drain and exit (the CLI does). Default true. */
  handleSignals?: boolean
  /** Called after the gateway is built and before it listens: register your own plugins or hooks here. */
  setup?: (app: FastifyInstance) => Promise<void> | void
}

export interface RunningGateway {
  app: FastifyInstance
  /** `http://127.0.0.1:8080` */
  url: string
  close: () => Promise<void>
}

export async function startServer (config: Readonly<GatewayConfig>, options: StartOptions = {}): Promise<RunningGateway> {
  // V8 decides per allocation site whether to allocate straight into the old generation. Under
  // load it decided so for request-scoped objects: each scavenge then kept alive everything they
  // point to, took 12-30 ms instead of 2, and promoted garbage until the next full GC. Off, a
  // small POST costs ≈ 20 % less CPU, a GET ≈ 9 % (bench/PROFILE.md). The flag is read when the
  // GC runs, so setting it here, before the first request, takes effect; it is process-wide.
  if (!config.server.allocationSitePretenuring) setFlagsFromString('--no-allocation-site-pretenuring')
  const app = await buildGateway(config, options)
  let uninstall = (): void => {}
  app.addHook('onClose', async () => { uninstall() })
  // server.close() closes the connections that are idle when it is called; one that finishes its
  // in-flight request later would stay open until its keep-alive timeout and hold the exit past
  // the grace. So while draining, idle connections are closed as they become idle.
  app.addHook('preClose', async () => {
    const reaper = setInterval(() => { app.server.closeIdleConnections() }, 50).unref()
    app.server.once('close', () => { clearInterval(reaper) })
  })
  if (options.setup !== undefined) await options.setup(app)
  const host = options.host ?? config.server.host
  const port = options.port ?? config.server.port
  const url = await app.listen({ host, port })
  if (options.handleSignals !== false) {
    const grace = parseDuration(config.server.shutdownGrace)
    const closeListeners = closeWithGrace({ delay: grace, logger: app.log }, async ({ signal, err }) => {
      if (err !== undefined) app.log.error({ err }, 'shutting down after an error')
      else app.log.info({ signal, graceMs: grace }, 'draining')
      await app.close()
    })
    uninstall = () => { closeListeners.uninstall() }
  }
  return { app, url, close: () => app.close() }
}

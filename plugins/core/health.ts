/**
 * /healthz: 200 while the process serves. /readyz: 200 once the gateway is ready and every
 * readiness check passes (Redis reachable, …); 503 while starting, draining or degraded.
 * While draining, every other request gets 503 problem+json with `Connection: close`.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../../schemas/errors.js'
import { PROBLEM_CONTENT_TYPE } from '../../schemas/problem.js'
import { problemBody } from './problem.js'

export type ReadinessCheck = () => Promise<string | null> | string | null

export interface Readiness {
  state: 'starting' | 'ready' | 'draining'
  /** A check returns null when fine, or a short reason (no internal detail) when not. */
  add: (name: string, check: ReadinessCheck) => void
  check: () => Promise<{ ready: boolean, reasons: Record<string, string> }>
}

declare module 'fastify' {
  interface FastifyInstance {
    readiness: Readiness
  }
}

/** The gateway's readiness: made by the health stage's setup, so the forwarder can see draining. */
export function createReadiness (): Readiness {
  const checks = new Map<string, ReadinessCheck>()
  const readiness: Readiness = {
    state: 'starting',
    add (name, check) { checks.set(name, check) },
    async check () {
      const reasons: Record<string, string> = {}
      if (readiness.state !== 'ready') reasons.gateway = readiness.state
      for (const [name, check] of checks) {
        try {
          const reason = await check()
          if (reason !== null) reasons[name] = reason
        } catch {
          reasons[name] = 'check failed'
        }
      }
      return { ready: Object.keys(reasons).length === 0, reasons }
    }
  }
  return readiness
}

export interface HealthOptions { readiness: Readiness }

async function healthPlugin (app: FastifyInstance, opts: HealthOptions): Promise<void> {
  const { readiness } = opts
  app.decorate('readiness', readiness)
  app.addHook('onReady', async () => { if (readiness.state === 'starting') readiness.state = 'ready' })
  app.addHook('preClose', async () => { readiness.state = 'draining' })
  // While draining, a request that arrives on a kept-alive connection is refused in the error
  // contract (Fastify's own return503OnClosing answers in another shape, and would hide /readyz),
  // and its connection closed; /healthz and /readyz still answer, so the drain can be observed.
  app.addHook('onRequest', function refuseWhileDraining (request, reply, done) {
    if (readiness.state !== 'draining' || request.url === '/healthz' || request.url === '/readyz') return done()
    reply.header('connection', 'close')
    done(new GatewayError('GW_ERR_UNAVAILABLE', 'The gateway is shutting down; retry on a new connection.'))
  })

  app.get('/healthz', { config: { routeName: 'healthz' } }, async (_request, reply) => {
    reply.header('cache-control', 'no-store')
    return { status: 'ok' }
  })
  app.get('/readyz', { config: { routeName: 'readyz' } }, async (request, reply) => {
    reply.header('cache-control', 'no-store')
    const { ready, reasons } = await readiness.check()
    if (ready) return { status: 'ready' }
    const body = { ...problemBody('GW_ERR_UNAVAILABLE', 'The gateway is not ready.', request), checks: reasons }
    return reply.code(503).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
  })
}

export default fp(healthPlugin, { name: 'portcullis-health', fastify: '5.x' })

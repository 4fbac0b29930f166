/**
 * Upstream resilience: which target of a route gets a request, and which targets are out — the
 * balancer, active health checks, passive health (outlier ejection), circuit breakers and the
 * retry budget, per route (./upstream-set.ts). This gateway stage builds one set per route,
 * starts the health checks when the gateway is ready and stops them when it closes; the
 * forwarder of each route is given its set (src/app.ts). `server.readiness` makes /readyz
 * follow routes: 503 while one of them has no target left.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { parseDuration } from '../../schemas/common.js'
import { upstreamTargets } from '../../schemas/upstream.js'
import type { RouteConfig } from '../../schemas/config.js'
import { gatewayStage } from '../core/stage.js'
import { CheckLimiter } from './health-check.js'
import { UpstreamSet, type UpstreamSetOptions } from './upstream-set.js'
import { readFileSync } from 'node:fs'
import type { Lease } from '../core/shared.js'

export { UpstreamSet } from './upstream-set.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Each route's targets and their state, by route name (plugins/upstream). */
    upstreams: ReadonlyMap<string, UpstreamSet>
  }
}

/**
 * Health checks in flight at once, across every route: one limiter per process registry
 * (plugins/core/shared.ts), so the generations of a live reload share the one bound.
 */
const CHECK_CONCURRENCY = 16
const LIMITER_KEY = 'upstream health-check limiter'

/** The log lines of a set (its targets' changes of state). */
interface SetLog {
  info: (obj: object, msg: string) => void
  warn: (obj: object, msg: string) => void
}

/**
 * A set's log: the logger of the newest gateway generation holding the set. A set kept across a
 * live reload outlives the generation that made it; its lines follow the one serving (its level,
 * its stream), and go back to an older one only if the newer closes first (a reload that failed).
 */
class FollowingLog implements SetLog {
  private readonly logs: SetLog[] = []
  add (log: SetLog): void { this.logs.push(log) }
  remove (log: SetLog): void {
    const at = this.logs.lastIndexOf(log)
    if (at !== -1) this.logs.splice(at, 1)
  }

  info (obj: object, msg: string): void { this.logs.at(-1)?.info(obj, msg) }
  warn (obj: object, msg: string): void { this.logs.at(-1)?.warn(obj, msg) }
}

interface KeptSet { set: UpstreamSet, log: FollowingLog }

export interface UpstreamsOptions {
  routes: readonly RouteConfig[]
  readiness: readonly string[]
  /** Where the sets are kept across live reloads (plugins/core/shared.ts). */
  shared: Lease
}

/** What shapes a route's set: a live reload keeps the set (health, ejections, breakers) while these stay the same. */
function setKey (route: RouteConfig): string {
  const { upstream, balance, healthCheck, outlierDetection, circuitBreaker, retryBudget, tls } = route
  return `upstream set ${JSON.stringify(route.name)} ${JSON.stringify({ upstream, balance, healthCheck, outlierDetection, circuitBreaker, retryBudget, tls })}`
}

/** The options of one route's set, from its config (durations in ms). */
export function upstreamSetOptions (route: RouteConfig): Omit<UpstreamSetOptions, 'limiter' | 'log'> {
  const check = route.healthCheck
  const outlier = route.outlierDetection
  const breaker = route.circuitBreaker
  return {
    route: route.name,
    targets: upstreamTargets(route.upstream),
    balance: route.balance,
    healthCheck: check === undefined
      ? null
      : {
          path: check.path,
          intervalMs: parseDuration(check.interval),
          timeoutMs: parseDuration(check.timeout),
          healthyThreshold: check.healthyThreshold,
          unhealthyThreshold: check.unhealthyThreshold,
          expectStatus: check.expectStatus
        },
    outlier: outlier === false
      ? null
      : {
          consecutiveFailures: outlier.consecutiveFailures,
          count: outlier.count,
          baseEjectionMs: parseDuration(outlier.baseEjectionTime),
          maxEjectionMs: parseDuration(outlier.maxEjectionTime),
          maxEjectionPercent: outlier.maxEjectionPercent
        },
    breaker: breaker === false
      ? null
      : {
          failureRatio: breaker.failureRatio,
          windowMs: parseDuration(breaker.window),
          minRequests: breaker.minRequests,
          openForMs: parseDuration(breaker.openFor),
          halfOpenRequests: breaker.halfOpenRequests
        },
    retryBudget: route.retryBudget === false ? null : route.retryBudget,
    tls: { rejectUnauthorized: route.tls.insecureSkipVerify !== true, ca: route.tls.ca === undefined ? undefined : readFileSync(route.tls.ca) }
  }
}

async function upstreamsPlugin (app: FastifyInstance, opts: UpstreamsOptions): Promise<void> {
  const limiter = opts.shared.acquire(LIMITER_KEY, () => new CheckLimiter(CHECK_CONCURRENCY))
  const sets = new Map<string, UpstreamSet>()
  const logs: FollowingLog[] = []
  for (const route of opts.routes) {
    // Stopped when the last gateway generation using it closes (a live reload keeps it).
    const kept = opts.shared.acquire<KeptSet>(setKey(route), () => {
      const log = new FollowingLog()
      return { set: new UpstreamSet({ ...upstreamSetOptions(route), limiter, log }), log }
    }, async ({ set }) => { await set.stop() })
    kept.log.add(app.log)
    logs.push(kept.log)
    sets.set(route.name, kept.set)
  }
  app.addHook('onClose', async () => { for (const log of logs) log.remove(app.log) })
  app.decorate('upstreams', sets)
  for (const name of opts.readiness) {
    const set = sets.get(name) as UpstreamSet
    app.readiness.add(`upstream:${name}`, () => set.hasAvailable() ? null : 'no upstream target available')
  }
  // start() is once per set: a set kept across a reload goes on with its rounds.
  app.addHook('onReady', async () => { for (const set of sets.values()) set.start() })
}

export const targets = gatewayStage({
  name: 'upstream targets',
  key: 'routes[].upstream, balance, healthCheck, outlierDetection, circuitBreaker, retryBudget',
  phase: 'handler',
  setup: ({ config, shared }) => ({ routes: config.routes, readiness: config.server.readiness, shared }),
  plugin: fp(upstreamsPlugin, { name: 'portcullis-upstreams', fastify: '5.x', decorators: { fastify: ['readiness'] } })
})

/**
 * Load shedding (`loadShedding`) on @fastify/under-pressure: while the event-loop delay, the heap
 * in use or the RSS is over its configured limit, new requests get 503 problem+json with
 * Retry-After, so that the requests already in flight can finish. The ops endpoints (/healthz,
 * /readyz, /metrics) are never shed: an overloaded gateway is alive, and says so.
 * The stage (./index.ts) registers it only when a limit is configured (no sampling timer otherwise).
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import underPressure from '@fastify/under-pressure'
import { parseDuration, parseSize } from '../../schemas/common.js'
import type { LoadSheddingConfig } from '../../schemas/edge.js'
import { GatewayError } from '../../schemas/errors.js'

export interface LoadSheddingOptions {
  config: LoadSheddingConfig
  /** Paths that are never shed. */
  exempt: readonly string[]
}

const KIND: Record<string, string> = {
  eventLoopDelay: 'event-loop delay',
  heapUsedBytes: 'heap',
  rssBytes: 'memory'
}

async function loadSheddingPlugin (app: FastifyInstance, opts: LoadSheddingOptions): Promise<void> {
  const { config } = opts
  const retryAfter = String(Math.max(1, Math.ceil(parseDuration(config.retryAfter) / 1000)))
  const exempt = new Set(opts.exempt)
  let lastWarning = 0
  await app.register(underPressure, {
    maxEventLoopDelay: config.maxEventLoopDelay === undefined ? 0 : parseDuration(config.maxEventLoopDelay),
    maxHeapUsedBytes: config.maxHeapUsed === undefined ? 0 : parseSize(config.maxHeapUsed),
    maxRssBytes: config.maxRss === undefined ? 0 : parseSize(config.maxRss),
    sampleInterval: parseDuration(config.sampleInterval),
    pressureHandler (request, _reply, type) {
      if (exempt.has(request.routeOptions.url ?? '')) return undefined
      const now = Date.now()
      if (now - lastWarning > 1000) { // one line a second, not one per refused request
        lastWarning = now
        request.log.warn({ pressure: type, value: app.memoryUsage() }, 'shedding load')
      }
      // A rejected promise goes to the error handler: problem+json like every other refusal.
      return Promise.reject(new GatewayError('GW_ERR_UNAVAILABLE', `The gateway is overloaded (${KIND[type] ?? type}); retry shortly.`, {
        headers: { 'retry-after': retryAfter }
      }))
    }
  })
}

export default fp(loadSheddingPlugin, { name: 'portcullis-load-shedding', fastify: '5.x' })

/**
 * Load shedding, the worked example of a built-in concern (docs/plugins.md, "Adding a built-in
 * concern"): this folder, one line in src/pipeline.ts, test/load-shedding.test.ts and its docs.
 *
 * While the event-loop delay, the heap in use or the RSS is over its configured limit, new
 * requests get 503 problem+json with Retry-After; the gateway's own endpoints are never shed.
 * Off (no plugin, no sampling timer) unless one of the limits is configured.
 */
import { gatewayStage } from '../core/stage.js'
import loadSheddingPlugin from './load-shedding.js'

export const loadShedding = gatewayStage({
  name: 'load shedding',
  key: 'loadShedding.maxEventLoopDelay, maxHeapUsed, maxRss',
  phase: 'onRequest',
  setup: ({ config, ownPaths }) => {
    const limits = config.loadShedding
    if (limits.maxEventLoopDelay === undefined && limits.maxHeapUsed === undefined && limits.maxRss === undefined) return null
    return { config: limits, exempt: ownPaths }
  },
  plugin: loadSheddingPlugin
})

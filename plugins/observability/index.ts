/**
 * Observability: the stages that see every request from its start without a hook on the routes
 * (their observers are called by the gateway's log controller when a request arrives).
 */
import { gatewayStage } from '../core/stage.js'
import tracingPlugin, { Tracer, TRACE_HEADERS } from './tracing.js'
import metricsPlugin, { GatewayMetrics } from './metrics.js'

/** W3C trace context: `request.trace`, `traceparent` to the upstream, spans to an OTLP collector. */
export const tracing = gatewayStage({
  name: 'tracing',
  key: 'tracing.enabled',
  phase: 'request',
  setup: ({ config }) => config.tracing.enabled ? { tracer: new Tracer(config.tracing) } : null,
  plugin: tracingPlugin,
  observer: ({ tracer }) => tracer,
  // The client's trace headers are replaced by the gateway's own (request.upstream).
  forwarding: () => ({ stripHeaders: TRACE_HEADERS })
})

/** Prometheus metrics: per-route counters and histograms, served on `server.metrics.path` or its own port. */
export const metrics = gatewayStage({
  name: 'metrics',
  key: 'server.metrics.enabled',
  phase: 'request',
  // One GatewayMetrics across live reloads (counters never reset): kept by its config, which a
  // reload does not change (server.metrics needs a restart, src/reload.ts).
  setup: ({ config, shared }) => config.server.metrics.enabled
    ? { metrics: shared.acquire(`metrics ${JSON.stringify(config.server.metrics)}`, () => new GatewayMetrics(config)), host: config.server.host, shared }
    : null,
  plugin: metricsPlugin,
  observer: ({ metrics }) => metrics
})

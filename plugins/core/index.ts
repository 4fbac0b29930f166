/**
 * What every request has, whatever the config: the error contract, a request id, and the
 * gateway's health endpoints (which also refuse new requests while the gateway drains).
 */
import { gatewayStage } from './stage.js'
import problemPlugin from './problem.js'
import requestIdPlugin from './request-id.js'
import healthPlugin, { createReadiness } from './health.js'

/** RFC 9457 problem+json for every answer the gateway makes itself; 404/405 off the routes. */
export const problem = gatewayStage({
  name: 'error contract',
  key: 'always',
  phase: 'response',
  setup: ({ config }) => ({ routes: config.routes.map((r) => ({ prefix: r.prefix, methods: r.methods, hosts: r.hosts })) }),
  plugin: problemPlugin
})

/** `X-Request-Id`: the client's when it is safe, else a new one; on the answer and to the upstream. */
export const requestId = gatewayStage({
  name: 'request id',
  key: 'always',
  phase: 'onRequest',
  setup: () => ({}),
  plugin: requestIdPlugin
})

/** /healthz, /readyz; while draining, 503 and `Connection: close` for everything else. */
export const health = gatewayStage({
  name: 'health and drain',
  key: 'always (server.shutdownGrace)',
  phase: 'onRequest',
  setup: () => ({ readiness: createReadiness() }),
  plugin: healthPlugin,
  forwarding: ({ readiness }) => ({ draining: () => readiness.state === 'draining' })
})

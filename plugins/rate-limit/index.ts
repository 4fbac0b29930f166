/**
 * Rate limiting: one counter store per gateway (memory or Redis), and two limiters per route —
 * by client IP before authentication (failed logins count), by consumer after it.
 */
import { gatewayStage, routeStage } from '../core/stage.js'
import rateLimitPlugin, { rateLimitConsumer, rateLimitEdge } from './rate-limit.js'

/** The counters every route's limiters share: in memory, or in Redis across instances. */
export const store = gatewayStage({
  name: 'rate-limit store',
  key: 'rateLimit',
  phase: 'onRequest',
  setup: ({ config, shared }) => ({ config: config.rateLimit, shared }),
  plugin: rateLimitPlugin
})

/** The per-IP limit (and the failed-login counter), before authentication. */
export const byIp = routeStage({
  name: 'rate limit (by IP)',
  key: 'routes[].rateLimit',
  phase: 'onRequest',
  setup: ({ route }) => route.rateLimit === undefined ? null : { route: route.name, limit: route.rateLimit },
  plugin: rateLimitEdge
})

/** The per-consumer limit, once the identity is known. */
export const byConsumer = routeStage({
  name: 'rate limit (by consumer)',
  key: 'routes[].rateLimit',
  phase: 'onRequest',
  setup: ({ route }) => route.rateLimit === undefined ? null : { route: route.name, limit: route.rateLimit },
  plugin: rateLimitConsumer
})

/**
 * One encapsulated Fastify scope per configured route, built from the pipeline: ROUTE_STAGES in
 * order (src/pipeline.ts), then the proxy routes, whose handler is the route's forwarder. Each
 * stage is a fastify-plugin, so its hooks land in this scope and run in the order registered;
 * a route copies its scope's hooks when it is created, so the stages come before the routes.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { RouteContext } from '../plugins/core/stage.js'
import { registerStage } from '../plugins/core/stage.js'
import { corsRouteMethods } from '../plugins/edge/cors.js'
import { hostsRouteConstraint } from '../plugins/edge/host-match.js'
import { websocketHandler, websocketRouteHook } from '../plugins/websocket/index.js'
import { websocketSettings } from '../schemas/websocket.js'
import type { Forwarder } from './forward.js'
import { ROUTE_STAGES } from './pipeline.js'

export interface RouteScopeOptions {
  ctx: RouteContext
  /** Each route stage's state (setup's result; null: off), in ROUTE_STAGES order. */
  states: readonly unknown[]
  forwarder: Forwarder
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The configured route's name: access log and metrics label (never the raw path). */
    routeName?: string
  }
}

async function routeScopePlugin (scope: FastifyInstance, opts: RouteScopeOptions): Promise<void> {
  const { ctx: { route }, states, forwarder } = opts
  const websocket = websocketSettings(route.websocket, route.cors?.origins)
  // First in a websocket route's scope (only there): its upgrade requests are labelled with the route.
  if (websocket !== null) scope.addHook('onRequest', websocketRouteHook)
  for (let i = 0; i < ROUTE_STAGES.length; i++) {
    if (states[i] !== null) await registerStage(scope, ROUTE_STAGES[i], states[i])
  }

  // Fastify walks the contexts at ready and close (lib/hooks.js hookRunnerApplication), going on
  // to the next sibling from inside the last one's callback when a context has no hooks: one
  // stack frame set per route, and 2,500 routes overflowed the stack. A hook per scope makes each
  // step go through avvio's queue, so the walk no longer nests (test/many-routes.test.ts).
  scope.addHook('onReady', function routeReady (done) { done() })
  scope.addHook('preClose', function routePreClose (done) { done() })

  // Bodies stay unread streams: the forwarder pipes them to the upstream as they arrive.
  scope.removeAllContentTypeParsers()
  scope.addContentTypeParser('*', function passThrough (_request, payload, done) { done(null, payload) })

  // The forwarder answers through the reply (hijacked for the upstream's response, or an error).
  const forward = (request: FastifyRequest, reply: FastifyReply): void => { forwarder.forward(request, reply) }
  // A websocket route: an upgrade request that passed the stages gets a tunnel (plugins/websocket).
  const handler = websocket === null ? forward : websocketHandler(route.name, websocket, forwarder.upgrade, forward)
  const constraints = hostsRouteConstraint(route.hosts)
  const base = route.prefix === '/' ? '' : route.prefix
  const urls = base === '' ? ['/', '/*'] : [base, `${base}/*`]
  for (const url of urls) {
    scope.route({ method: corsRouteMethods(route.methods, route.cors), url, handler, config: { routeName: route.name }, ...(constraints === undefined ? {} : { constraints }) })
  }
}

/**
 * Encapsulated (each route its own scope), and named: without a name Fastify searches the module
 * cache for the function at each registration (plugin-utils getPluginName), 0.3 s of a 1,000-route start.
 */
export const routeScope = fp(routeScopePlugin, { name: 'portcullis-route', encapsulate: true })

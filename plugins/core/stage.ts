/**
 * The one shape every concern gives the pipeline (src/pipeline.ts lists the stages in order).
 *
 * A stage is a Fastify plugin plus what the gateway needs to place it: which config key turns it
 * on (`setup` returns null when it is off), where it lives (once on the gateway, or in each
 * route's own scope), when in a request's life it acts, and what it adds to forwarding. The
 * forwarder gets the route's transport options plus one RoutePolicy, merged from every stage's
 * `forwarding` contribution; it knows nothing of auth, CORS or security headers.
 */
import type { FastifyInstance, FastifyPluginAsync, FastifyPluginCallback, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig, RouteConfig } from '../../schemas/config.js'
import type { EmbeddedPlugin } from '../extend/user-plugins.js'
import type { Lease } from './shared.js'

/** When in a request's life a stage acts (what the pipeline page shows). */
export type Phase =
  | 'connection' // on the socket, before a request exists (Node's parser, lingering close)
  | 'request' // from the request's start, before any hook (observers: metrics, tracing)
  | 'onRequest' // before the body is read: a refusal here never reads the body
  | 'preValidation' // the body is read and checked
  | 'handler' // the route's handler (forwarding, or the gateway's own endpoints)
  | 'response' // on the way out (response headers, access log)

/** What the stages see when the gateway is built. */
export interface GatewayContext {
  config: Readonly<GatewayConfig>
  /** Request paths the gateway answers itself (/healthz, /readyz, /metrics): never shed, never routed. */
  ownPaths: readonly string[]
  /** Plugins given in code to buildGateway (`options.plugins`), placed in every route. */
  plugins: readonly EmbeddedPlugin[]
  /** What this gateway keeps across a live reload (pools, counters, metrics): ./shared.ts. */
  shared: Lease
}

/** What a route's stages see: the gateway's context plus the route. */
export interface RouteContext extends GatewayContext {
  route: Readonly<RouteConfig>
  /** The route's index in `routes` (for error paths such as `routes[2].validate`). */
  index: number
}

/** Something that sees every request from its start, with no hook on the routes (metrics, tracing). */
export interface RequestObserver { start: (request: FastifyRequest, reply: FastifyReply) => void }

/**
 * What the forwarder does for the route's policy (as opposed to its transport: upstream, pool,
 * timeouts, TLS, retries, body buffering). Each list is the concatenation of every stage's
 * contribution; each flag is on when any stage turns it on.
 */
export interface RoutePolicy {
  /** Request headers (lower-case) never forwarded from the client: identity headers, trace headers, kept-back credentials. */
  stripHeaders: readonly string[]
  /** Forward `Authorization` only when it is a Bearer token (routes[].forwardAuthorization: bearer). */
  bearerOnlyAuthorization: boolean
  /** The gateway's identity headers for a request, asked at dispatch (plugins/auth/identity). */
  identityHeaders?: (request: FastifyRequest) => ReadonlyArray<readonly [string, string]> | undefined
  /** Upstream response headers (lower-case) never passed to the client (`server`, `x-powered-by`, CORS). */
  hideResponseHeaders: readonly string[]
  /** Headers set on every proxied response in place of the upstream's (the security headers). */
  responseHeaders: ReadonlyArray<readonly [string, string]>
  /** Header names with `_`: `drop` never forwards them; `allow` forwards those that fold onto nothing stripped. */
  underscoreHeaders: 'drop' | 'allow'
  /** Trust-bearing headers (X-Forwarded-*…) and whether the request's peer may send them. */
  trustBearing?: { names: readonly string[], trusted: (request: FastifyRequest) => boolean }
  /** True while the gateway drains: a proxied response closes its connection. */
  draining?: () => boolean
}

type AnyPlugin<O> = FastifyPluginAsync<O & Record<never, never>> | FastifyPluginCallback<O & Record<never, never>>

/** A pipeline stage. `S` is what `setup` builds once from the config: the plugin's options. */
export interface Stage<S, C extends GatewayContext = GatewayContext> {
  /** Shown in the pipeline list, docs/architecture.md and the stage's plugin name. */
  name: string
  /** The config key(s) that turn the stage on or shape it; `always` when it cannot be turned off. */
  key: string
  phase: Phase
  /** What the stage needs, built once (per gateway, or per route for route stages); null: the stage is off. */
  setup: (ctx: C) => S | null
  /** Registered with setup's result as its options (a fastify-plugin, so its hooks land in the scope). */
  plugin?: AnyPlugin<S>
  /** Sees every request from its start (gateway stages only). */
  observer?: (state: S) => RequestObserver
  /** What the stage adds to the forwarding policy of a route. */
  forwarding?: (state: S, ctx: RouteContext) => Partial<RoutePolicy>
}

/** Registered once on the gateway, before any route. */
export type GatewayStage<S = any> = Stage<S, GatewayContext>
/** Registered in each route's own scope, in pipeline order. */
export type RouteStage<S = any> = Stage<S, RouteContext>

/** Identity function that checks a stage's shape where it is written (and infers `S`). */
export function gatewayStage<S> (stage: Stage<S, GatewayContext>): GatewayStage<S> { return stage }
export function routeStage<S> (stage: Stage<S, RouteContext>): RouteStage<S> { return stage }

/** The policy of a route: every contribution merged (lists concatenated, flags or-ed, functions: the last one). */
export function mergePolicy (parts: ReadonlyArray<Partial<RoutePolicy>>): RoutePolicy {
  const policy: RoutePolicy = { stripHeaders: [], bearerOnlyAuthorization: false, hideResponseHeaders: [], responseHeaders: [], underscoreHeaders: 'drop' }
  for (const part of parts) {
    if (part.stripHeaders !== undefined) policy.stripHeaders = [...policy.stripHeaders, ...part.stripHeaders]
    if (part.hideResponseHeaders !== undefined) policy.hideResponseHeaders = [...policy.hideResponseHeaders, ...part.hideResponseHeaders]
    if (part.responseHeaders !== undefined) policy.responseHeaders = [...policy.responseHeaders, ...part.responseHeaders]
    if (part.bearerOnlyAuthorization === true) policy.bearerOnlyAuthorization = true
    if (part.underscoreHeaders !== undefined) policy.underscoreHeaders = part.underscoreHeaders
    if (part.identityHeaders !== undefined) policy.identityHeaders = part.identityHeaders
    if (part.trustBearing !== undefined) policy.trustBearing = part.trustBearing
    if (part.draining !== undefined) policy.draining = part.draining
  }
  return policy
}

/** Registers a stage's plugin with its state (if it has one). */
export async function registerStage<S> (scope: FastifyInstance, stage: Stage<S, never>, state: S): Promise<void> {
  if (stage.plugin !== undefined) await scope.register(stage.plugin as FastifyPluginAsync<S & Record<never, never>>, state as S & Record<never, never>)
}

/**
 * CORS for one route (`routes[].cors`). A preflight (OPTIONS with
 * Origin and Access-Control-Request-Method) is answered here, at onRequest, by the gateway: it
 * never reaches the upstream and needs no credentials (browsers send none on a preflight). On
 * other requests from an allowed origin the CORS response headers are set with `reply.header()`,
 * so they reach the client on proxied responses too (the forwarder sends them, replacing any the
 * upstream set: the gateway's policy wins).
 *
 * Why not @fastify/cors: it registers a catch-all `OPTIONS *` route where it is registered, which
 * collides between two route scopes and with a route that proxies OPTIONS; registered once at the
 * root instead, its hook would run before the route's IP filter. Its header semantics are kept.
 */
import type { FastifyInstance, FastifyReply, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { parseDuration } from '../../schemas/common.js'
import type { CorsConfig } from '../../schemas/edge.js'
import { GatewayError } from '../../schemas/errors.js'

export interface CorsOptions {
  cors: CorsConfig
  /** The route's proxied methods: the default of `cors.methods`, and whether OPTIONS is proxied. */
  methods: readonly string[]
}

/**
 * On a route with CORS the gateway's policy is the only one: these upstream response headers are
 * dropped (by the forwarder), whether or not the gateway sets its own on that response.
 */
export const CORS_RESPONSE_HEADERS = [
  'access-control-allow-origin', 'access-control-allow-credentials', 'access-control-allow-methods',
  'access-control-allow-headers', 'access-control-expose-headers', 'access-control-max-age'
] as const

/**
 * The methods a route's handlers must accept: its own, plus OPTIONS when CORS is on (so that a
 * preflight reaches the route's hooks; a plain OPTIONS is still 405 unless the route proxies it).
 */
export function corsRouteMethods (methods: readonly string[], cors: CorsConfig | undefined): string[] {
  return cors === undefined || methods.includes('OPTIONS') ? [...methods] : [...methods, 'OPTIONS']
}

function appendVary (reply: FastifyReply, value: string): void {
  const current = reply.getHeader('vary')
  reply.header('vary', current === undefined ? value : `${String(current)}, ${value}`)
}

export function corsHook (opts: CorsOptions): onRequestHookHandler {
  const { cors } = opts
  const any = cors.origins.includes('*')
  const origins = new Set(cors.origins)
  const methods = (cors.methods ?? opts.methods.filter((m) => m !== 'OPTIONS')).join(', ')
  const allowedHeaders = cors.allowedHeaders === undefined ? null : cors.allowedHeaders.join(', ')
  const exposed = cors.exposedHeaders.length > 0 ? cors.exposedHeaders.join(', ') : null
  const maxAge = String(Math.floor(parseDuration(cors.maxAge) / 1000))
  const proxiesOptions = opts.methods.includes('OPTIONS')
  const allow = opts.methods.join(', ')

  function allowOrigin (reply: FastifyReply, origin: string): void {
    // A fixed "*" needs no Vary; a reflected origin does (caches must key on it).
    if (any && !cors.credentials) {
      reply.header('access-control-allow-origin', '*')
    } else {
      reply.header('access-control-allow-origin', origin)
      appendVary(reply, 'Origin')
    }
    if (cors.credentials) reply.header('access-control-allow-credentials', 'true')
  }

  return function corsStage (request, reply, done) {
    const origin = request.headers.origin
    const preflight = request.method === 'OPTIONS' && origin !== undefined && request.headers['access-control-request-method'] !== undefined
    if (preflight) {
      if (!any && !origins.has(origin)) {
        done(new GatewayError('GW_ERR_FORBIDDEN', 'This origin is not allowed to call this API.'))
        return
      }
      allowOrigin(reply, origin)
      reply.header('access-control-allow-methods', methods)
      if (allowedHeaders !== null) {
        reply.header('access-control-allow-headers', allowedHeaders)
      } else {
        const asked = request.headers['access-control-request-headers']
        if (asked !== undefined) reply.header('access-control-allow-headers', asked)
        appendVary(reply, 'Access-Control-Request-Headers')
      }
      reply.header('access-control-max-age', maxAge)
      reply.code(204).header('content-length', '0').send()
      return
    }
    if (request.method === 'OPTIONS' && !proxiesOptions) {
      done(new GatewayError('GW_ERR_METHOD_NOT_ALLOWED', 'OPTIONS is not allowed here.', { headers: { allow } }))
      return
    }
    if (origin !== undefined && (any || origins.has(origin))) {
      allowOrigin(reply, origin)
      if (exposed !== null) reply.header('access-control-expose-headers', exposed)
    }
    done()
  }
}

async function corsPlugin (scope: FastifyInstance, opts: CorsOptions): Promise<void> {
  scope.addHook('onRequest', corsHook(opts))
}

export default fp(corsPlugin, { name: 'portcullis-cors', fastify: '5.x' })

/**
 * A route plugin a user would write: sign every request the gateway forwards with an
 * HMAC-SHA256 the upstream can verify, so that the upstream accepts only requests that came
 * through the gateway, unaltered, and recently.
 *
 *   routes:
 *     - name: people
 *       prefix: /api/people
 *       upstream: http://127.0.0.1:8000/api/people
 *       plugins:
 *         - path: ./dist/examples/plugins/request-signature.js     # built by `npm run build`
 *           options: { secret: "${SIGNING_SECRET}" }
 *
 * What is signed (and what is not). The upstream receives two headers:
 *
 *   x-gateway-timestamp: 1795771156
 *   x-gateway-signature: v1=<base64url HMAC-SHA256(secret, base)>
 *
 * where `base` is these lines joined by "\n":
 *
 *   v1
 *   <METHOD>                       GET
 *   <path and query, as the upstream receives them>   /api/people/7?x=1 (after the prefix rewrite)
 *   <timestamp>                    the x-gateway-timestamp value (Unix seconds)
 *   <request id>                   the X-Request-Id value the upstream receives
 *
 * The body is NOT covered: request bodies are streamed through the gateway, and hashing one
 * would mean holding it whole before the first byte goes upstream. Pair the signature with TLS
 * to the upstream if the body must be protected in transit. The upstream checks the signature
 * (constant-time) and that the timestamp is within a few seconds of its clock, and may remember
 * request ids for that window to refuse replays. `verifyRequestSignature` below does the check
 * for a Node upstream; any language with HMAC-SHA256 can do the same.
 *
 * Options are checked with a TypeBox schema when the gateway starts: a missing or short secret,
 * an unknown option or a bad header name stops the start with `request-signature: options.…`.
 * The client's own copies of the two headers are never forwarded on this route.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import { Value } from 'typebox/value'
import type { GatewayConfig } from '../../schemas/config.js'

const HEADER_NAME = '^[a-z0-9-]{1,64}$'

export const RequestSignatureOptionsSchema = Type.Object({
  secret: Type.String({ minLength: 32, description: 'the HMAC key shared with the upstream (32+ characters); give it through the environment' }),
  header: Type.String({ pattern: HEADER_NAME, default: 'x-gateway-signature', description: 'header that carries the signature' }),
  timestampHeader: Type.String({ pattern: HEADER_NAME, default: 'x-gateway-timestamp', description: 'header that carries the signing time (Unix seconds)' })
}, { additionalProperties: false })

export type RequestSignatureOptions = Static<typeof RequestSignatureOptionsSchema>

const check = Compile(RequestSignatureOptionsSchema)

/** Defaults applied, then checked; every problem named as `options.<key>: <what is wrong>`. */
export function parseOptions (raw: unknown): RequestSignatureOptions {
  const value = Value.Default(RequestSignatureOptionsSchema, structuredClone(raw ?? {}))
  if (check.Check(value)) return value
  const problems = [...check.Errors(value)].flatMap((e) => {
    const params = e.params as Record<string, unknown>
    const at = e.instancePath.split('/').filter((p) => p !== '').join('.')
    const path = at === '' ? 'options' : `options.${at}`
    if (e.keyword === 'required') return (params.requiredProperties as string[]).map((k) => `options.${k}: required`)
    if (e.keyword === 'additionalProperties') return (params.additionalProperties as string[]).map((k) => `options.${k}: unknown option`)
    if (e.keyword === 'boolean') return [] // reported by additionalProperties
    if (e.keyword === 'minLength') return [`${path}: must be at least ${String(params.limit)} characters`]
    if (e.keyword === 'pattern') return [`${path}: must be a lower-case header name`]
    return [`${path}: ${e.message}`]
  })
  throw new Error(`request-signature: ${[...new Set(problems)].join('; ')}`)
}

/** The string that is signed. */
export function signatureBase (method: string, target: string, timestamp: string, requestId: string): string {
  return ['v1', method.toUpperCase(), target, timestamp, requestId].join('\n')
}

export function sign (secret: string, base: string): string {
  return 'v1=' + createHmac('sha256', secret).update(base).digest('base64url')
}

/**
 * For a Node upstream: whether a request it received was signed by the gateway with `secret`
 * within `maxSkewSeconds`. `target` is the request's path and query as received (`req.url`).
 */
export function verifyRequestSignature (input: {
  secret: string
  method: string
  target: string
  headers: Record<string, string | string[] | undefined>
  header?: string
  timestampHeader?: string
  maxSkewSeconds?: number
  now?: number
}): boolean {
  const signature = input.headers[input.header ?? 'x-gateway-signature']
  const timestamp = input.headers[input.timestampHeader ?? 'x-gateway-timestamp']
  const requestId = input.headers['x-request-id']
  if (typeof signature !== 'string' || typeof timestamp !== 'string' || typeof requestId !== 'string' || !/^[0-9]{1,12}$/.test(timestamp)) return false
  const now = Math.floor((input.now ?? Date.now()) / 1000)
  if (Math.abs(now - Number(timestamp)) > (input.maxSkewSeconds ?? 30)) return false
  const expected = Buffer.from(sign(input.secret, signatureBase(input.method, input.target, timestamp, requestId)))
  const given = Buffer.from(signature)
  return given.length === expected.length && timingSafeEqual(given, expected)
}

interface RouteTarget { prefix: string, basePath: string }

/**
 * The path and query the upstream will receive: the route's prefix replaced by the path of its
 * upstream URL, as the gateway's forwarder does. Outside Portcullis (no gateway config), the
 * request's own URL.
 */
function upstreamTarget (request: FastifyRequest, routes: Map<string, RouteTarget | null>, config: Readonly<GatewayConfig> | undefined): string {
  const url = request.raw.url ?? '/'
  const name = request.routeOptions.config.routeName
  if (config === undefined || name === undefined) return url
  let route = routes.get(name)
  if (route === undefined) {
    const found = config.routes.find((r) => r.name === name)
    const upstream = found === undefined ? undefined : (Array.isArray(found.upstream) ? found.upstream[0] : found.upstream)
    route = found === undefined || upstream === undefined
      ? null
      : { prefix: found.prefix === '/' ? '' : found.prefix, basePath: new URL(upstream).pathname.replace(/\/+$/, '') }
    routes.set(name, route)
  }
  if (route === null) return url
  const rest = url.slice(route.prefix.length)
  if (route.basePath !== '') return route.basePath + rest
  return rest === '' || rest[0] === '?' ? '/' + rest : rest
}

async function requestSignature (scope: FastifyInstance, raw: unknown): Promise<void> {
  const options = parseOptions(raw)
  const config = (scope as FastifyInstance & { gatewayConfig?: Readonly<GatewayConfig> }).gatewayConfig
  const routes = new Map<string, RouteTarget | null>()
  const own = new Set([options.header, options.timestampHeader])

  // preHandler: after every check of the route has passed, just before the request is forwarded.
  scope.addHook('preHandler', async (request) => {
    const timestamp = String(Math.floor(Date.now() / 1000))
    const base = signatureBase(request.method, upstreamTarget(request, routes, config), timestamp, request.id)
    const extras = request.upstream
    request.upstream = {
      ...extras,
      strip: new Set([...(extras?.strip ?? []), ...own]),
      headers: [...(extras?.headers ?? []), [options.timestampHeader, timestamp], [options.header, sign(options.secret, base)]]
    }
  })
}

export default fp(requestSignature, { name: 'request-signature', fastify: '5.x' })

/**
 * The Portcullis configs the benchmark runs, built from what schemas/config.ts offers at the
 * time: a protection the schema does not have is left out and named in `missing`, so the
 * "everything on" scenario is always exactly what the code can do, and says what it lacks.
 * Each protection that is on comes with a check (a request it must refuse) that the runner
 * makes before measuring, so a protection that is configured but not enforced fails loudly.
 */
import { generateKeyPairSync } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import { GatewayConfigSchema, RouteSchema, ServerSchema } from '../schemas/config.js'
import { httpCall } from './lib.js'

export interface Variant {
  /** false: no protection, access log off (the proxy path alone). true: every protection, access log on. */
  protections: boolean
  store: 'memory' | 'redis'
  /** Metrics and tracing on (their defaults); otherwise both are turned off. */
  metrics?: boolean
  /** With `protections: false`: JWT verification alone on the route (no scopes, limits, validation, access log). */
  jwtOnly?: 'HS256' | 'RS256'
}

export interface PlanInput extends Variant {
  upstreamOrigin: string
  /** More upstream origins: the route is balanced over all of them (npm run ab -- --head-targets N). */
  extraUpstreamOrigins?: readonly string[]
  port: number
  redisUrl?: string
}

export interface Plan {
  label: string
  /** Why this variant cannot run with the current schema. */
  skip?: string
  config: Record<string, unknown>
  /** Headers every benchmark request carries (the bearer token). */
  headers: Record<string, string>
  protections: string[]
  /** Protections the schema does not offer yet. */
  missing: string[]
  accessLog: boolean
  /** Each proves a protection is really on (a refused request), against the gateway's base URL. */
  checks: Array<(url: string) => Promise<void>>
}

const keysOf = (schema: unknown): Set<string> => new Set(Object.keys((schema as { properties?: Record<string, unknown> }).properties ?? {}))
const topKeys = keysOf(GatewayConfigSchema)
const routeKeys = keysOf(RouteSchema)
const serverKeys = keysOf(ServerSchema)

/** HS256 needs a secret of at least 32 bytes. */
const JWT_SECRET = 'portcullis-benchmark-secret-0123456789abcdef'
const ISSUER = 'portcullis-bench'
const AUDIENCE = 'people-api'
/** Far above what any run can send: the limiter counts every request and never refuses one. */
export const HUGE_LIMIT = 1_000_000_000

/** The RS256 key pair of the JWT-only RS256 scenario (made once per run). */
const RSA = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } })

export function token (scope: string, algorithm: 'HS256' | 'RS256' = 'HS256'): string {
  const key = algorithm === 'HS256' ? JWT_SECRET : RSA.privateKey
  const sign = createSigner({ key, algorithm, iss: ISSUER, aud: AUDIENCE, sub: 'bench-client', expiresIn: 6 * 3_600_000 })
  return sign({ scope })
}

export function portcullisConfig (input: PlanInput): Plan {
  const route: Record<string, unknown> = {
    name: 'people',
    prefix: '/api/people',
    upstream: input.extraUpstreamOrigins === undefined || input.extraUpstreamOrigins.length === 0
      ? `${input.upstreamOrigin}/api/people`
      : [input.upstreamOrigin, ...input.extraUpstreamOrigins].map((origin) => `${origin}/api/people`),
    timeout: '30s'
  }
  const server: Record<string, unknown> = { host: '127.0.0.1', port: input.port }
  const config: Record<string, unknown> = {
    server,
    logging: { level: 'info', accessLog: input.protections },
    routes: [route]
  }
  const plan: Plan = {
    label: input.protections ? 'Portcullis, everything on' : 'Portcullis, no protection, access log off',
    config,
    headers: {},
    protections: [],
    missing: [],
    accessLog: input.protections,
    checks: []
  }
  // Metrics and tracing are on by default; they are measured on their own (portcullis-full-metrics).
  const observability = input.metrics === true
  if (serverKeys.has('metrics')) server.metrics = { enabled: observability }
  if (topKeys.has('tracing')) config.tracing = { enabled: observability }
  if (input.metrics === true) {
    if (!serverKeys.has('metrics')) return { ...plan, label: 'Portcullis, everything on + metrics', skip: 'needs server.metrics (issue 7), not in schemas/config.ts yet: skipped' }
    plan.label = 'Portcullis, everything on + metrics + tracing'
  }
  if (input.jwtOnly !== undefined) {
    const alg = input.jwtOnly
    if (!topKeys.has('jwt') || !routeKeys.has('auth')) return { ...plan, skip: 'needs jwt and routes[].auth (issue 3): skipped' }
    plan.label = `Portcullis, ${alg} JWT only, access log off`
    config.jwt = alg === 'HS256'
      ? { algorithms: ['HS256'], secret: JWT_SECRET, issuer: ISSUER, audience: AUDIENCE }
      : { algorithms: ['RS256'], publicKey: RSA.publicKey, issuer: ISSUER, audience: AUDIENCE }
    route.auth = ['jwt']
    plan.headers.authorization = `Bearer ${token('people:read people:write', alg)}`
    plan.protections.push(`${alg} JWT`)
    plan.checks.push(expectStatus('no token', 401, '/api/people/1', {}))
    return plan
  }
  if (!input.protections) return plan
  plan.protections.push('access log')

  if (topKeys.has('jwt') && routeKeys.has('auth') && routeKeys.has('scopes')) {
    config.jwt = { algorithms: ['HS256'], secret: JWT_SECRET, issuer: ISSUER, audience: AUDIENCE }
    route.auth = ['jwt']
    route.scopes = { GET: ['people:read'], '*': ['people:write'] }
    plan.headers.authorization = `Bearer ${token('people:read people:write')}`
    plan.protections.push('HS256 JWT', 'scopes')
    plan.checks.push(
      expectStatus('no token', 401, '/api/people/1', {}),
      expectStatus('a token without people:write', 403, '/api/people/', {
        method: 'POST',
        headers: { authorization: `Bearer ${token('people:read')}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'Ada', age: 36 })
      })
    )
  } else {
    plan.missing.push('HS256 JWT + scopes (issue 3)')
  }

  if (topKeys.has('rateLimit') && routeKeys.has('rateLimit')) {
    config.rateLimit = input.store === 'redis' ? { store: 'redis', redis: input.redisUrl ?? 'redis://127.0.0.1:6379' } : { store: 'memory' }
    route.rateLimit = { max: HUGE_LIMIT, window: '1m', by: 'consumer' }
    plan.protections.push(`rate limit by consumer (${input.store})`)
    plan.checks.push(async (url) => {
      const res = await httpCall(url + '/api/people/1', { headers: plan.headers })
      if (!Object.keys(res.headers).some((h) => h.startsWith('ratelimit') || h.startsWith('x-ratelimit'))) {
        throw new Error(`rate limit: no RateLimit header on a limited route (headers: ${Object.keys(res.headers).join(', ')})`)
      }
    })
  } else {
    plan.missing.push('per-consumer rate limit (issue 5)')
  }
  if (input.store === 'redis') {
    plan.label += ', Redis store'
    if (!plan.protections.some((p) => p.startsWith('rate limit'))) {
      plan.skip = 'needs rateLimit.store: redis (issue 5), not in schemas/config.ts yet: skipped'
    }
  }

  if (routeKeys.has('validate')) {
    route.validate = [{ method: 'POST', path: '/', body: 'Person' }]
    plan.protections.push('validated JSON body')
    plan.checks.push(expectStatus('an invalid body', 400, '/api/people/', {
      method: 'POST',
      headers: () => ({ ...plan.headers, 'content-type': 'application/json' }),
      body: JSON.stringify({ name: 7, age: 'old' })
    }))
  } else {
    plan.missing.push('body validation (issue 4)')
  }

  if (input.metrics === true) {
    plan.checks.push(async (url) => {
      const res = await httpCall(url + '/metrics')
      if (res.status !== 200 || !res.body.includes('# TYPE')) throw new Error(`metrics: GET /metrics answered ${res.status}: ${res.body.slice(0, 200)}`)
    })
  }
  if (plan.missing.length > 0) plan.label += ` (not yet: ${plan.missing.map((m) => m.replace(/ \(.*/, '')).join(', ')})`
  return plan
}

type Headers = Record<string, string> | (() => Record<string, string>)

/** A check: this request must be answered with `status`. */
export function expectStatus (what: string, status: number, path: string, options: { method?: string, headers?: Headers, body?: string }) {
  return async (url: string): Promise<void> => {
    const headers = typeof options.headers === 'function' ? options.headers() : options.headers
    const res = await httpCall(url + path, { method: options.method, headers, body: options.body })
    if (res.status !== status) throw new Error(`${what}: expected ${status}, got ${res.status}: ${res.body.slice(0, 300)}`)
  }
}

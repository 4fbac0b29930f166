/**
 * Security headers on every response (`securityHeaders`): X-Content-Type-Options: nosniff,
 * Referrer-Policy, X-Frame-Options, and Strict-Transport-Security when configured. The forwarder
 * adds them to proxied responses, in place of the upstream's values (`securityHeaderValues`,
 * fixed at start: nothing runs per request); an onSend hook on the root adds them to what the
 * gateway answers itself (errors, 429, /healthz…). Either way a header the pipeline set itself
 * with `reply.header()` is left as it is.
 * Removing the upstream's `Server` / `X-Powered-By` is the forwarder's `hideResponseHeaders`
 * (see `hiddenUpstreamHeaders`), since those never pass through the reply.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { parseDuration } from '../../schemas/common.js'
import type { SecurityHeadersConfig } from '../../schemas/edge.js'

export interface SecurityHeadersOptions {
  config: SecurityHeadersConfig
}

/** The header → value pairs the config asks for. */
export function securityHeaderValues (config: SecurityHeadersConfig): Record<string, string> {
  const headers: Record<string, string> = {}
  if (config.contentTypeOptions) headers['x-content-type-options'] = 'nosniff'
  if (config.referrerPolicy !== false) headers['referrer-policy'] = config.referrerPolicy
  if (config.frameOptions !== false) headers['x-frame-options'] = config.frameOptions
  if (config.hsts !== undefined) {
    let value = `max-age=${Math.floor(parseDuration(config.hsts.maxAge) / 1000)}`
    if (config.hsts.includeSubDomains) value += '; includeSubDomains'
    if (config.hsts.preload) value += '; preload'
    headers['strict-transport-security'] = value
  }
  return headers
}

/** For the forwarder: upstream response headers the client never sees (lower-case). */
export function hiddenUpstreamHeaders (config: SecurityHeadersConfig): string[] {
  return config.hideUpstreamHeaders.map((h) => h.toLowerCase())
}

async function securityHeadersPlugin (app: FastifyInstance, opts: SecurityHeadersOptions): Promise<void> {
  const entries = Object.entries(securityHeaderValues(opts.config))
  if (entries.length === 0) return
  app.addHook('onSend', function securityHeaders (_request, reply, payload, done) {
    for (const [name, value] of entries) if (!reply.hasHeader(name)) reply.header(name, value)
    done(null, payload)
  })
}

export default fp(securityHeadersPlugin, { name: 'portcullis-security-headers', fastify: '5.x' })

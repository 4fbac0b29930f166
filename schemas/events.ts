/**
 * What the pipeline reports as it works, on node:diagnostics_channel: the metrics plugin (and
 * any user plugin or APM) subscribes; the plugins that publish do not know who listens. A
 * publish with no subscriber costs a property read, so the hot path pays nothing when metrics
 * are off. Channel names are part of the public contract.
 *
 *   import { channels } from 'portcullis'
 *   channels.authFailure.subscribe((msg) => { … })
 */
import diagnostics from 'node:diagnostics_channel'
import type { FastifyRequest } from 'fastify'

/**
 * Every event names the request it is about: its id and log, and `request.server.server`, the
 * HTTP server of the gateway that handled it (two gateways in one process share the channels;
 * each gateway's metrics count only their own requests).
 */
interface AboutRequest { request: FastifyRequest }

export interface UpstreamErrorEvent extends AboutRequest { route: string, kind: 'refused' | 'timeout' | 'reset' | 'tls' | 'other' }
export interface AuthFailureEvent extends AboutRequest { route: string, scheme: string, reason: string }
export interface AuthzDeniedEvent extends AboutRequest { route: string, scope: string }
export interface ValidationFailureEvent extends AboutRequest { route: string, part: 'body' | 'querystring' | 'params' | 'headers' | 'content-type', reportOnly: boolean }
export interface RateLimitedEvent extends AboutRequest { route: string, by: string }

export const channels = {
  upstreamError: diagnostics.channel('portcullis:upstream-error'),
  authFailure: diagnostics.channel('portcullis:auth-failure'),
  authzDenied: diagnostics.channel('portcullis:authz-denied'),
  validationFailure: diagnostics.channel('portcullis:validation-failure'),
  rateLimited: diagnostics.channel('portcullis:rate-limited')
} as const

/** Publish only when someone listens (avoids building the message otherwise). */
export function publish<T extends AboutRequest> (channel: diagnostics.Channel, message: () => T): void {
  if (channel.hasSubscribers) channel.publish(message())
}

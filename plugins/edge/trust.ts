/**
 * `server.trustProxy`: which peers may tell the gateway who the client is (X-Forwarded-For…).
 */
import type { FastifyRequest, FastifyServerOptions } from 'fastify'
import { compile as compileTrust } from '@fastify/proxy-addr'

/**
 * `server.trustProxy` for Fastify. A hop count N trusts the N nearest proxies, whoever they are
 * (Express semantics): Fastify 5.12 turned counts into "trust nothing", since a count cannot check
 * who the peer is. Use a count only when the gateway is reachable through those proxies alone;
 * a list of CIDRs is the safer choice.
 */
export function trustProxyOption (value: boolean | number | readonly string[]): FastifyServerOptions['trustProxy'] {
  if (typeof value === 'number') return (_address: string, hop: number) => hop < value
  return value as FastifyServerOptions['trustProxy']
}

/**
 * Whether a request's peer (the socket's address, not any header) is one `server.trustProxy`
 * trusts: the trust-bearing headers it sends are passed on (src/forward.ts). Null: none is.
 */
export function trustedPeer (value: boolean | number | readonly string[]): ((request: FastifyRequest) => boolean) | null {
  if (value === false) return null
  if (value === true || typeof value === 'number') return () => true
  const trust = compileTrust([...value])
  return (request) => trust(request.raw.socket?.remoteAddress ?? '', 0)
}

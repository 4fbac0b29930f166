/**
 * IP allow/deny lists (CIDR, IPv4 and IPv6), the gateway-wide `ipFilter` and
 * the route's `routes[].ipFilter` together. A refused client gets 403 before anything else about
 * its request is looked at (rate limits, credentials, body). The address is `request.ip`, i.e.
 * the client as `server.trustProxy` defines it; an IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`,
 * on a dual-stack listener) is matched as the IPv4 address it is.
 */
import { BlockList, isIPv4 } from 'node:net'
import type { FastifyInstance, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { parseCidr, type IpFilterConfig } from '../../schemas/edge.js'
import { GatewayError } from '../../schemas/errors.js'

export interface IpFilterOptions {
  /** The gateway-wide lists, then the route's; a client must pass every one. */
  filters: ReadonlyArray<IpFilterConfig | undefined>
}

/** A BlockList holding the entries (validated by the config check). */
export function blockList (entries: readonly string[]): BlockList {
  const list = new BlockList()
  for (const entry of entries) {
    const cidr = parseCidr(entry)
    if (cidr === null) throw new TypeError(`not an IP address or CIDR: ${entry}`)
    if (cidr.prefix === (cidr.family === 'ipv4' ? 32 : 128)) list.addAddress(cidr.address, cidr.family)
    else list.addSubnet(cidr.address, cidr.prefix, cidr.family)
  }
  return list
}

/** `::ffff:10.0.0.1` → `10.0.0.1`; anything else unchanged. */
export function unmapIPv4 (ip: string): string {
  if (ip.length > 7 && ip.charCodeAt(0) === 58 /* : */ && ip.slice(0, 7).toLowerCase() === '::ffff:' && isIPv4(ip.slice(7))) return ip.slice(7)
  return ip
}

interface CompiledFilter { allow: BlockList | null, deny: BlockList | null }

/** Whether `ip` may pass every filter: not in any deny list, and in each allow list there is. */
export function ipAllowed (filters: readonly CompiledFilter[], rawIp: string): boolean {
  const ip = unmapIPv4(rawIp)
  const family = isIPv4(ip) ? 'ipv4' : 'ipv6'
  for (const f of filters) {
    if (f.deny !== null && f.deny.check(ip, family)) return false
    if (f.allow !== null && !f.allow.check(ip, family)) return false
  }
  return true
}

export function ipFilterHook (filters: ReadonlyArray<IpFilterConfig | undefined>): onRequestHookHandler | null {
  const compiled: CompiledFilter[] = []
  for (const f of filters) {
    if (f === undefined) continue
    const deny = f.deny.length > 0 ? blockList(f.deny) : null
    const allow = f.allow !== undefined ? blockList(f.allow) : null
    if (deny !== null || allow !== null) compiled.push({ allow, deny })
  }
  if (compiled.length === 0) return null
  return function ipFilter (request, _reply, done) {
    if (ipAllowed(compiled, request.ip)) { done(); return }
    request.log.info({ ip: request.ip }, 'refused by the IP filter')
    done(new GatewayError('GW_ERR_FORBIDDEN', 'Requests from this address are not allowed.'))
  }
}

async function ipFilterPlugin (scope: FastifyInstance, opts: IpFilterOptions): Promise<void> {
  const hook = ipFilterHook(opts.filters)
  if (hook !== null) scope.addHook('onRequest', hook)
}

export default fp(ipFilterPlugin, { name: 'portcullis-ip-filter', fastify: '5.x' })

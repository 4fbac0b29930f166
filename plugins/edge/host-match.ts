/**
 * Host-based routes (routes[].hosts): a find-my-way constraint strategy named `hosts`, given to
 * Fastify only when some route lists hosts, so a gateway without them routes exactly as before
 * (no strategy in use: find-my-way derives no constraint at all).
 *
 * Find-my-way's own `host` strategy compares the raw Host header as a string (port, case and a
 * trailing dot included: `API.example.com:8080` is not `api.example.com`) or runs RegExps in
 * turn; this one compares the name nginx's server_name would:
 *
 * - the request's host is the Host header, lower-cased, without its port and one trailing dot;
 *   a value that is not a host name (userinfo `a@b`, spaces, an IPv6 literal, over 253
 *   characters, a port that is not 0–5 digits) is no host: only routes without `hosts` take it;
 *   an empty port (`example.com:`) is a valid Host (RFC 9110: port = *DIGIT) and names example.com;
 * - an exact name wins, then the longest matching `*.suffix` (one or more labels before the
 *   suffix, any depth, as nginx's `*.example.com`; never `example.com` itself), then the routes
 *   without `hosts`.
 *
 * Per request: one normalisation, one Map lookup for exact names and, only when that misses and
 * the node has wildcards, one lookup per label of the host.
 *
 * The precedence among routes with the same prefix is this strategy's; between prefixes the
 * router tries the longest first. src/config.ts refuses the configs where the two would disagree
 * (hostsConflict below), so the answer is always the one the precedence above gives.
 */
import type { FastifyInstance, FastifyServerOptions, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { IncomingMessage } from 'node:http'
import { GatewayError } from '../../schemas/errors.js'

/** The constraint's name on Fastify's routes (`constraints: { hosts: route.hosts }`). */
export const HOSTS_CONSTRAINT = 'hosts'

/** A label of a request's host: letters, digits, `-` and `_` (internal names have them). */
const REQUEST_HOST = /^[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*$/
/** RFC 9110 §7.2: `port = *DIGIT`, so empty too; more than 5 digits is no port. */
const PORT = /^[0-9]{0,5}$/

/**
 * The host a Host header value names, as routes compare it: lower case, without the port and a
 * trailing dot; undefined when the value is not a host name.
 */
export function routingHost (value: string | undefined): string | undefined {
  if (value === undefined || value.length === 0 || value.length > 260) return undefined
  let end = value.length
  const colon = value.lastIndexOf(':')
  if (colon !== -1) {
    if (!PORT.test(value.slice(colon + 1))) return undefined
    end = colon
  }
  if (value.charCodeAt(end - 1) === 46 /* . */) end--
  if (end === 0 || end > 253) return undefined
  const host = (end === value.length ? value : value.slice(0, end)).toLowerCase()
  return REQUEST_HOST.test(host) ? host : undefined
}

/** How a route's hosts take a host: -1 not at all, 0 a route without hosts, then wildcards by suffix length, exact names highest. */
export function hostRank (hosts: readonly string[], host: string | undefined): number {
  if (hosts.length === 0) return 0
  if (host === undefined) return -1
  let rank = -1
  for (const entry of hosts) {
    if (entry === host) return EXACT
    if (entry.startsWith('*.') && host.length > entry.length - 1 && host.endsWith(entry.slice(1))) rank = Math.max(rank, entry.length)
  }
  return rank
}

const EXACT = 1000 // above any wildcard's rank (a name is at most 253 characters)

/**
 * The bitmaps of the handlers at one router node, by the route's hosts list (the key find-my-way
 * builds with) and by each name and wildcard suffix in it (what a request's host looks up).
 */
function hostsStorage (): { get: (value: unknown) => number | undefined, set: (value: unknown, bits: number) => void } {
  const byList = new Map<readonly string[], number>()
  const exact = new Map<string, number>()
  const wildcard = new Map<string, number>() // ".example.com" → handlers with "*.example.com"
  return {
    get (value) {
      if (typeof value !== 'string') return byList.get(value as readonly string[])
      const bits = exact.get(value)
      if (bits !== undefined || wildcard.size === 0) return bits
      // Longest suffix first: from the first dot on, then the next.
      for (let dot = value.indexOf('.'); dot !== -1; dot = value.indexOf('.', dot + 1)) {
        const w = wildcard.get(value.slice(dot))
        if (w !== undefined) return w
      }
      return undefined
    },
    set (value, bits) {
      byList.set(value as readonly string[], bits)
      exact.clear()
      wildcard.clear()
      for (const [hosts, b] of byList) {
        for (const entry of hosts) {
          const map = entry.startsWith('*.') ? wildcard : exact
          const key = entry.startsWith('*.') ? entry.slice(1) : entry
          map.set(key, (map.get(key) ?? 0) | b)
        }
      }
    }
  }
}

/** A find-my-way constraint strategy, as Fastify's types name it. */
type ConstraintStrategy = NonNullable<NonNullable<FastifyServerOptions['routerOptions']>['constraints']>[string]

/** The strategy given to Fastify as `routerOptions.constraints.hosts` (when a route has hosts). */
export const hostsStrategy: ConstraintStrategy = {
  name: HOSTS_CONSTRAINT,
  mustMatchWhenDerived: false,
  // find-my-way's types say a store holds handlers; its handler storage keeps bitmaps of them in it.
  storage: hostsStorage as unknown as ConstraintStrategy['storage'],
  validate (value: unknown): void {
    if (!Array.isArray(value) || value.length === 0 || !value.every((h) => typeof h === 'string')) {
      throw new TypeError('the hosts constraint is a non-empty list of host names')
    }
  },
  // undefined (no host name: only the routes without hosts take the request); the types say string.
  deriveConstraint (req: IncomingMessage): string {
    return routingHost(req.headers.host) as string
  }
}

/** What src/app.ts gives Fastify's router: the strategy, only when some route lists hosts. */
export function hostsRouterConstraints (routes: ReadonlyArray<{ hosts: readonly string[] }>): { constraints: { [HOSTS_CONSTRAINT]: typeof hostsStrategy } } | Record<string, never> {
  return routes.some((r) => r.hosts.length > 0) ? { constraints: { [HOSTS_CONSTRAINT]: hostsStrategy } } : {}
}

/** A route's constraint for Fastify's `route()`; undefined for a route without hosts (today's path). */
export function hostsRouteConstraint (hosts: readonly string[]): { [HOSTS_CONSTRAINT]: readonly string[] } | undefined {
  return hosts.length === 0 ? undefined : { [HOSTS_CONSTRAINT]: hosts }
}

const TWO_HOSTS = 'The request has more than one Host header.'
const FORWARDED_MISMATCH = 'X-Forwarded-Host names another host than the Host header.'

/**
 * The first hook of a route with hosts: the host it was chosen by must be the only one the
 * request names, so the upstream (which gets X-Forwarded-Host: request.host) and the logs agree
 * with the route. 400 (RFC 9112 §3.2) for a second Host header (Node keeps the first and drops
 * the rest) and an X-Forwarded-Host from a trusted proxy (server.trustProxy) that names another
 * host. (An absolute-form target, whose authority would win over Host, is refused on every route
 * by the path guard, which runs first.)
 */
export const hostGuard: onRequestHookHandler = function hostGuard (request, _reply, done) {
  const raw = request.raw
  let detail: string | null = null
  if (hostHeaderCount(raw.rawHeaders) > 1) detail = TWO_HOSTS
  // request.host is the Host header itself unless a trusted proxy sent X-Forwarded-Host: only
  // then is there a second name to compare, as routes compare names.
  else if (request.host !== raw.headers.host && routingHost(request.host) !== routingHost(raw.headers.host)) detail = FORWARDED_MISMATCH
  if (detail === null) done()
  else done(new GatewayError('GW_ERR_BAD_REQUEST', detail))
}

/** The host guard as a route stage's plugin (plugins/edge/index.ts): its hook in the route's scope. */
export const hostGuardPlugin = fp(async function hostGuardScope (scope: FastifyInstance) {
  scope.addHook('onRequest', hostGuard)
}, { name: 'portcullis-host-guard', fastify: '5.x' })

function hostHeaderCount (rawHeaders: readonly string[]): number {
  let n = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]
    if (name.length === 4 && name.toLowerCase() === 'host') n++
  }
  return n
}

/** Where two routes whose prefixes are equal or nested meet for some host (the config check). */
export interface HostOverlap {
  /** The host, as written in the config (`*.example.com`: any host under example.com); undefined: every host (two routes without hosts). */
  host: string | undefined
  /**
   * `tie`: both take the host at the same precedence (the same entry, or neither has hosts);
   * `inverted`: the route with the shorter prefix has the more specific entry for the host, but
   * the router tries the longer prefix first.
   */
  kind: 'tie' | 'inverted'
}

/**
 * Whether routes with hosts `outer` and `inner` meet for some host: `nested` when inner's prefix
 * lies under outer's, else the prefixes are equal. Every host ranks like one of these: a name in
 * either list, a name under one of their wildcards (`_.suffix`: no config entry is spelled with
 * `_`) or a name in neither (undefined).
 */
export function hostsOverlap (outer: readonly string[], inner: readonly string[], nested: boolean): HostOverlap | null {
  const cases: Array<[string | undefined, string | undefined]> = [[undefined, undefined]]
  for (const entry of [...outer, ...inner]) cases.push(entry.startsWith('*.') ? ['_' + entry.slice(1), entry] : [entry, entry])
  let inverted: HostOverlap | null = null
  for (const [host, shown] of cases) {
    const o = hostRank(outer, host)
    const i = hostRank(inner, host)
    if (o < 0 || i < 0) continue
    if (o === i) return { host: shown, kind: 'tie' }
    if (nested && o > i && inverted === null) inverted = { host: shown, kind: 'inverted' }
  }
  return inverted
}

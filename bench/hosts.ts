/**
 * What routes[].hosts adds to a request, per request: the `hosts` strategy's derivation (the Host
 * header normalised) and its store's lookup at the matched router node, in ns, for the spellings
 * a request brings: `node --import @swc-node/register/esm-register bench/hosts.ts`. Each figure
 * is the median of 5 runs of 1,000,000 requests over a node holding an exact name, two wildcards
 * and a route without hosts (as in test/hosts.test.ts's precedence table). A gateway
 * without hosts gives Fastify no strategy at all, so it pays none of this (test/hosts.test.ts,
 * "no route with hosts").
 */
import type { IncomingMessage } from 'node:http'
import { hostsStrategy } from '../plugins/edge/host-match.js'

const REQUESTS = 1_000_000
const RUNS = 5

const store = hostsStrategy.storage() as unknown as { get: (v: unknown) => number | undefined, set: (v: unknown, bits: number) => void }
store.set(['api.example.com', 'api.eu.example.com'], 1 << 1)
store.set(['*.example.com'], 1 << 2)
store.set(['*.eu.example.com', 'eu.example.org'], 1 << 3)

function measure (host: string): number {
  const req = { headers: { host } } as unknown as IncomingMessage
  let sink = 0
  const once = (): void => { sink += store.get(hostsStrategy.deriveConstraint(req)) ?? 0 }
  for (let i = 0; i < 200_000; i++) once() // warm-up
  const runs: number[] = []
  for (let r = 0; r < RUNS; r++) {
    const start = process.hrtime.bigint()
    for (let i = 0; i < REQUESTS; i++) once()
    runs.push(Number(process.hrtime.bigint() - start) / REQUESTS)
  }
  if (sink < 0) console.log(sink)
  return runs.sort((a, b) => a - b)[RUNS >> 1]
}

for (const [what, host] of [
  ['exact name', 'api.example.com'],
  ['exact name, upper case and port', 'API.Example.com:8080'],
  ['one wildcard label', 'shop.example.com'],
  ['longest wildcard, three labels deep', 'a.b.eu.example.com'],
  ['no route (the route without hosts)', 'other.example.org'],
  ['not a host name (userinfo)', 'a@api.example.com']
]) {
  console.log(`${what.padEnd(40)} ${host.padEnd(24)} ${measure(host).toFixed(1).padStart(6)} ns`)
}

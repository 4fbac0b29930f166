/**
 * The floor a Node.js gateway stands on: node:http's server and an undici Pool, and nothing
 * else — no framework, no hooks, no logging, no header policy beyond dropping hop-by-hop
 * headers. Any gateway built on Node's HTTP server and undici (Portcullis, @fastify/http-proxy,
 * fast-gateway) costs at least this per request, so its req/s is the ceiling for all of them
 * in the benchmark's topology (see bench/PROFILE.md).
 * Usage: node dist/bench/node-floor.js UPSTREAM_URL PORT — prints `listening PORT`, exits when
 * its stdin closes.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { announceAndFollowParent, floorForwarder } from './floor-lib.js'

const [upstream, portArg] = process.argv.slice(2)
if (upstream === undefined) {
  process.stderr.write('usage: node-floor UPSTREAM_URL [PORT]\n')
  process.exit(2)
}
const forward = floorForwarder(upstream)
const server = createServer((req, res) => { forward(req, res) })
server.keepAliveTimeout = 120_000
server.listen(Number(portArg ?? 0), '127.0.0.1', () => { announceAndFollowParent((server.address() as AddressInfo).port) })

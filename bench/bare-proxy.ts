/**
 * The floor Portcullis builds on: Fastify 5 + @fastify/http-proxy with default options
 * (logger off, reply-from's default undici pool), every path proxied to the upstream as is.
 * Usage: node dist/bench/bare-proxy.js UPSTREAM_URL PORT — prints `listening PORT`, and exits
 * when its stdin closes (so it never outlives the runner that started it).
 */
import Fastify from 'fastify'
import httpProxy from '@fastify/http-proxy'
import type { AddressInfo } from 'node:net'
import { announceAndFollowParent } from './floor-lib.js'

const [upstream, portArg] = process.argv.slice(2)
if (upstream === undefined) {
  process.stderr.write('usage: bare-proxy UPSTREAM_URL [PORT]\n')
  process.exit(2)
}

const app = Fastify()
await app.register(httpProxy, { upstream })
await app.listen({ host: '127.0.0.1', port: Number(portArg ?? 0) })
announceAndFollowParent((app.server.address() as AddressInfo).port)

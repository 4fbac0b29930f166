/**
 * bench/node-floor.ts inside Fastify: one catch-all route with a pass-through body parser whose
 * handler dispatches to an undici Pool and hijacks the reply — no plugins, no hooks, logger off.
 * Against `node-floor` it gives Fastify's own share of a proxied request; against `portcullis`
 * (no protection), Portcullis's.
 * Usage: node dist/bench/fastify-floor.js UPSTREAM_URL PORT — prints `listening PORT`, exits when
 * its stdin closes.
 */
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { announceAndFollowParent, floorForwarder } from './floor-lib.js'

const [upstream, portArg] = process.argv.slice(2)
if (upstream === undefined) {
  process.stderr.write('usage: fastify-floor UPSTREAM_URL [PORT]\n')
  process.exit(2)
}
const forward = floorForwarder(upstream)
const app = Fastify({ logger: false })
app.removeAllContentTypeParsers()
app.addContentTypeParser('*', function passThrough (_request, payload, done) { done(null, payload) })
app.route({
  method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
  url: '/*',
  handler (request, reply) {
    forward(request.raw, reply.raw, () => { reply.hijack() }, () => { reply.code(502).send() })
  }
})
await app.listen({ host: '127.0.0.1', port: Number(portArg ?? 0) })
announceAndFollowParent((app.server.address() as AddressInfo).port)

/**
 * X-Request-Id: accepted from the client only when it is a short safe token, otherwise
 * generated. It is on every log line of the request (Fastify's `reqId`), sent upstream by the
 * forwarder, and returned to the client on every response.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

export const SAFE_REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/

/** Fastify's `genReqId`. */
export function requestId (req: IncomingMessage): string {
  const given = req.headers['x-request-id']
  return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID()
}

async function requestIdPlugin (app: FastifyInstance): Promise<void> {
  // Proxied responses get the header from the forwarder; this covers what the gateway answers itself.
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })
}

export default fp(requestIdPlugin, { name: 'portcullis-request-id', fastify: '5.x' })

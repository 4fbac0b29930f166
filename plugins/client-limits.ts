/**
 * Header floods: `server.maxHeaders` caps the number of request header lines. Node's own
 * `maxHeadersCount` silently drops the headers past its limit, which is worse than refusing: a
 * request would reach the upstream with some of its headers missing. So the server keeps one
 * header more than the limit, and a request that has it is refused with 431 before anything else.
 * (A head larger than `server.maxHeaderSize` is refused by Node's parser: 431 too, see
 * plugins/problem.ts `clientErrorResponse`; slow heads by `server.timeouts.headers`: 408.)
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../schemas/errors.js'

export interface ClientLimitsOptions {
  maxHeaders: number
}

async function clientLimitsPlugin (app: FastifyInstance, opts: ClientLimitsOptions): Promise<void> {
  const max = opts.maxHeaders
  app.server.maxHeadersCount = max + 1
  const maxRaw = max * 2
  app.addHook('onRequest', function headerCount (request, _reply, done) {
    if (request.raw.rawHeaders.length > maxRaw) done(new GatewayError('GW_ERR_HEADERS_TOO_LARGE', `The request has more than ${max} header fields.`))
    else done()
  })
}

export default fp(clientLimitsPlugin, { name: 'portcullis-client-limits', fastify: '5.x' })

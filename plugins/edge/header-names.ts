/**
 * `server.headersWithUnderscores: reject`: a request with a header name containing `_` gets 400
 * before anything else reads it (nginx answers the same with `ignore_invalid_headers off` and
 * underscores refused). `drop` (the default) and `allow` act in the forwarder (RoutePolicy).
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../../schemas/errors.js'

export interface HeaderNamesOptions { mode: 'drop' | 'reject' | 'allow' }

function headerNamesPlugin (app: FastifyInstance, opts: HeaderNamesOptions, done: (err?: Error) => void): void {
  if (opts.mode !== 'reject') { done(); return }
  app.addHook('onRequest', function refuseUnderscoreHeaders (request, _reply, next) {
    for (const name in request.raw.headers) {
      if (name.includes('_')) { next(new GatewayError('GW_ERR_BAD_REQUEST', 'Header names must not contain "_".')); return }
    }
    next()
  })
  done()
}

export default fp(headerNamesPlugin, { name: 'portcullis-header-names', fastify: '5.x' })

/**
 * Checks on every request, first, at the root (before any route, the token endpoint or the ops
 * endpoints), in one onRequest hook:
 *
 * - Header floods: `server.maxHeaders` caps the number of request header lines. Node's own
 *   `maxHeadersCount` silently drops the headers past its limit, which is worse than refusing: a
 *   request would reach the upstream with some of its headers missing. So the server keeps one
 *   header more than the limit, and a request that has it is refused with 431 before anything else.
 *   (A head larger than `server.maxHeaderSize` is refused by Node's parser: 431 too, see
 *   plugins/core/problem.ts `clientErrorResponse`; slow heads by `server.timeouts.headers`: 408.)
 * - Transfer codings: only `Transfer-Encoding: chunked` (any case; Node trims the spaces around
 *   it). Node's parser frames `gzip, chunked` or `eee, chunked` as chunked and hands the request
 *   on, and the coding would be dropped on the way upstream (the forwarder re-frames the body):
 *   refused with 501, as nginx and Envoy do, and the connection is closed after the answer
 *   (nginx too). Node has parsed what followed the refused request in the same read already and
 *   hands it on as a next request: that one is refused too (its answer is never written, the
 *   connection closes first), so nothing a front proxy may have framed otherwise — a smuggled
 *   request — reaches a route. A Transfer-Encoding in an HTTP/1.0 request is 400 (RFC 9112 §6.1:
 *   faulty framing; nginx: 400), the same way.
 *   What Node's parser refuses itself (`chunked, chunked`, two Transfer-Encoding fields, `gzip`
 *   alone, Transfer-Encoding with Content-Length, obsolete line folding) never gets here: a 400
 *   problem from `clientErrorResponse`.
 *
 * - Host: an HTTP/1.1 request without one is 400 (RFC 9112 §3.2; Node's own check is turned off
 *   in src/app.ts because its 400 has no body).
 *
 * The common request costs one length comparison and three property lookups (its Transfer-Encoding,
 * and its socket's mark).
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../../schemas/errors.js'

export interface ClientLimitsOptions {
  maxHeaders: number
}

const CLOSE = { connection: 'close' }

/** Set on a socket whose request was refused for its framing: what follows on it is not read. */
const kFramingRefused = Symbol('portcullis.framingRefused')
type MarkedSocket = { [kFramingRefused]?: true }

/** Why a request's Transfer-Encoding is refused, or null when it is `chunked`. */
export function transferCodingProblem (value: string, httpVersion: string): GatewayError | null {
  if (httpVersion === '1.0') {
    return new GatewayError('GW_ERR_BAD_REQUEST', 'An HTTP/1.0 request must not have a Transfer-Encoding.', { headers: CLOSE })
  }
  if (value === 'chunked' || (value.length === 7 && value.toLowerCase() === 'chunked')) return null
  return new GatewayError('GW_ERR_NOT_IMPLEMENTED', 'The only transfer coding accepted is "chunked".', { headers: CLOSE })
}

async function clientLimitsPlugin (app: FastifyInstance, opts: ClientLimitsOptions): Promise<void> {
  const max = opts.maxHeaders
  app.server.maxHeadersCount = max + 1
  const maxRaw = max * 2
  app.addHook('onRequest', function clientLimits (request, _reply, done) {
    const raw = request.raw
    const socket = raw.socket as unknown as MarkedSocket | null
    if (socket?.[kFramingRefused] === true) {
      done(new GatewayError('GW_ERR_BAD_REQUEST', 'This connection is closing: a request on it was refused for its framing.', { headers: CLOSE }))
      return
    }
    if (raw.rawHeaders.length > maxRaw) {
      done(new GatewayError('GW_ERR_HEADERS_TOO_LARGE', `The request has more than ${max} header fields.`))
      return
    }
    // Node's own check (requireHostHeader) answers a bare 400 without a body; this one is a problem.
    if (raw.headers.host === undefined && raw.httpVersionMinor === 1 && raw.httpVersionMajor === 1) {
      done(new GatewayError('GW_ERR_BAD_REQUEST', 'An HTTP/1.1 request must have a Host header.'))
      return
    }
    const coding = raw.headers['transfer-encoding']
    if (coding !== undefined) {
      const refused = transferCodingProblem(coding, raw.httpVersion)
      if (refused !== null) {
        if (socket !== null) socket[kFramingRefused] = true
        done(refused)
        return
      }
    }
    done()
  })
}

export default fp(clientLimitsPlugin, { name: 'portcullis-client-limits', fastify: '5.x' })

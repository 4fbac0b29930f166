/**
 * Refusals that arrive. When the gateway answers before it has read the request body (401, 403,
 * 413, 429…), a client still uploading must still read that answer:
 *
 * - Lingering close (RFC 9112 §9.6, nginx's `lingering_close`): the rest of the body is read and
 *   discarded, for at most `server.lingeringClose.time` and `.size`, instead of closing at once —
 *   closing a socket with unread bytes makes the kernel send a reset, and the client loses the
 *   answer it has not read yet. Past either bound the connection is closed.
 * - `Expect: 100-continue`: Node answers `100 Continue` by itself as soon as the head arrives,
 *   before any check has run. The gateway takes the `checkContinue` event instead and sends the
 *   100 only when something starts reading the body (the forwarder, validation, the token
 *   endpoint); a request refused before that gets its final status and no 100, and since the client
 *   has not sent its body, the connection is closed after the answer.
 */
import type { FastifyInstance, FastifyReply } from 'fastify'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import fp from 'fastify-plugin'
import { hasBody } from '../validation/json-body.js'
import { halfCloseAfterResponse, keepsAlive } from '../core/fastify-internals.js'

export interface LingeringCloseOptions {
  /** Longest time the rest of a refused body is read, in ms. */
  timeMs: number
  /** Most bytes of a refused body read and discarded. */
  bytes: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** How long and how much of a refused request's body is read before closing (plugins/edge/lingering-close). */
    lingeringClose: LingeringCloseOptions
  }
}

const kExpecting = Symbol('portcullis.expectContinue')
type ExpectingResponse = ServerResponse & { [kExpecting]?: boolean }

async function lingeringClosePlugin (app: FastifyInstance, opts: LingeringCloseOptions): Promise<void> {
  app.decorate('lingeringClose', { timeMs: opts.timeMs, bytes: opts.bytes })
  const server = app.server
  server.on('checkContinue', (req: IncomingMessage, res: ExpectingResponse) => {
    res[kExpecting] = true
    // The first read of the body (a 'data' listener, resume or pipe) resumes the stream.
    req.once('resume', () => {
      if (res.headersSent || res.writableEnded) return
      res[kExpecting] = false
      res.writeContinue()
    })
    server.emit('request', req, res)
  })
}

export default fp(lingeringClosePlugin, { name: 'portcullis-lingering-close', fastify: '5.x' })

/**
 * Called for every answer the gateway makes itself (plugins/core/problem.ts sendProblem): when the
 * request's body has not been read whole, either close after the answer (a client waiting for
 * `100 Continue` has sent nothing) or read and discard the rest, bounded, so the answer arrives.
 */
export function refuseUnreadBody (reply: FastifyReply): void {
  const raw = reply.request.raw
  if (raw.complete || !hasBody(raw.headers)) return
  const res = reply.raw as ExpectingResponse
  if (res[kExpecting] === true) {
    reply.header('connection', 'close')
    return
  }
  const socket = raw.socket
  // A connection that is closed on purpose (the gateway is draining) stays so.
  if (socket === null || typeof socket.destroy !== 'function' || socket.destroyed || reply.hasHeader('connection')) return
  const limits = reply.server.lingeringClose
  let seen = 0
  const timer = setTimeout(() => { socket.destroy() }, limits.timeMs)
  const stop = (): void => { clearTimeout(timer) }
  if (keepsAlive(res)) {
    // The connection goes on after the answer: once the body has been read, the lingering is over.
    raw.once('end', stop)
    raw.once('close', stop)
  } else {
    // The answer closes the connection (the client sent Connection: close or spoke HTTP/1.0):
    // Node destroys such a connection as soon as the answer is written, and the body still
    // arriving then makes the kernel reset it, throwing away the answer the client has not read
    // yet. Half-close instead and go on reading: the socket closes when the client closes its
    // side, or at the bounds.
    halfCloseAfterResponse(socket as Socket)
    socket.once('close', stop)
  }
  raw.removeAllListeners('data')
  raw.on('data', (chunk: Buffer) => {
    seen += chunk.length
    if (seen > limits.bytes) {
      stop()
      socket.destroy()
    }
  })
  raw.resume()
}

/**
 * For the `clientErrorHandler` (a request Node's parser refused: a bad header, an obs-fold, a
 * bad chunk size): writes the answer, half-closes, and reads and discards what the client is
 * still sending — at most `limits.bytes`, for at most `limits.timeMs` — before the socket is
 * destroyed. Without it the socket stops being read after the parse error, the client's upload
 * fills both buffers and nothing closes the connection; when something finally does, the unread
 * bytes make the kernel send a reset and the client loses the answer.
 */
export function lingerAfterClientError (socket: Duplex, answer: string, limits: LingeringCloseOptions): void {
  // Node's own 'data' listener feeds the parser that has just failed: it would fail again on every
  // chunk. The answer is the last thing this connection says.
  socket.removeAllListeners('data')
  let seen = 0
  const done = (): void => {
    clearTimeout(timer)
    socket.destroy()
  }
  const timer = setTimeout(done, limits.timeMs)
  timer.unref()
  socket.on('data', (chunk: Buffer) => {
    seen += chunk.length
    if (seen > limits.bytes) done()
  })
  socket.once('end', done)
  socket.once('close', () => { clearTimeout(timer) })
  socket.end(answer)
  socket.resume()
}

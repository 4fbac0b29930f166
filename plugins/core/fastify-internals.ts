/**
 * The only place Portcullis reads Fastify's private fields, for two reads on every request whose
 * public forms allocate: `request.routeOptions` builds and freezes a new object on each access,
 * and `reply.getHeaders()` copies two objects. Each private key is found once, by its symbol's
 * description, on the first request; if a Fastify release renames it, the public form is used
 * (slower, same result). test/fastify-internals.test.ts fails if the fast path is lost.
 */
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyContextConfig, FastifyReply, FastifyRequest } from 'fastify'

export type OwnHeaders = Record<string, number | string | string[] | undefined>

const UNKNOWN = Symbol('not looked up yet')
let contextKey: symbol | null | typeof UNKNOWN = UNKNOWN
let headersKey: symbol | null | typeof UNKNOWN = UNKNOWN

function find (target: object, description: string): symbol | null {
  return Object.getOwnPropertySymbols(target).find((k) => k.description === description) ?? null
}

/** `request.routeOptions.config`, without building routeOptions. */
export function routeConfig (request: FastifyRequest): FastifyContextConfig {
  if (contextKey === UNKNOWN) contextKey = find(request, 'fastify.context')
  if (contextKey !== null) {
    const config = ((request as unknown as Record<symbol, { config?: FastifyContextConfig } | undefined>)[contextKey])?.config
    if (config !== undefined) return config
  }
  return request.routeOptions.config
}

/** The configured route's name (access log, metrics and trace label), or undefined off a route. */
export function routeNameOf (request: FastifyRequest): string | undefined {
  return routeConfig(request).routeName
}

/**
 * The headers set with `reply.header()` so far — Fastify's own object, to read, never to
 * change. Headers set on the raw response are not included.
 */
export function replyHeaders (reply: FastifyReply): OwnHeaders {
  if (headersKey === UNKNOWN) headersKey = find(reply, 'fastify.reply.headers')
  return headersKey === null ? reply.getHeaders() : (reply as unknown as Record<symbol, OwnHeaders>)[headersKey]
}

/** For the test: whether both fast paths are in use. */
export function fastPathsFound (): { context: boolean, headers: boolean } {
  return { context: typeof contextKey === 'symbol', headers: typeof headersKey === 'symbol' }
}

/**
 * The response being written on this client socket, if any: Node's own `socketOnError` reads the
 * same field (`socket._httpMessage`) before it writes a raw 400 after a parse error. Node has no
 * public form of it.
 */
export function responseInFlight (socket: object): ServerResponse | null {
  return (socket as { _httpMessage?: ServerResponse | null })._httpMessage ?? null
}

/**
 * Whether a plugin function is wrapped by fastify-plugin (registered in its parent's scope rather
 * than a child scope of its own): the `skip-override` mark fastify-plugin sets and Fastify reads.
 */
export function isScopeSharing (plugin: object): boolean {
  return (plugin as Record<symbol, unknown>)[Symbol.for('skip-override')] === true
}

/**
 * Makes Node close the connection once this response is sent (a `Connection: close` header
 * cannot be added to a response whose head may already be on its way). Node has no public form of
 * `shouldKeepAlive`, the field its own server sets from the request's Connection header.
 */
export function closeAfterResponse (res: ServerResponse): void {
  res.shouldKeepAlive = false
}

/** Whether Node keeps the connection open after this response (its server's own field, set from
 * the request's Connection header and HTTP version, or by closeAfterResponse). */
export function keepsAlive (res: ServerResponse): boolean {
  return res.shouldKeepAlive
}

/**
 * After a response that closes the connection, Node's server calls `socket.destroySoon()`: end,
 * then destroy once written. For this socket it will only end (a half-close: the FIN follows the
 * answer, the server socket allows half-open connections), and the socket goes on being read until
 * the client closes its side or the caller destroys it. Node has no public form of this step.
 */
export function halfCloseAfterResponse (socket: Socket): void {
  socket.destroySoon = () => { socket.end() }
}

/**
 * The error contract: every response the gateway makes itself is RFC 9457
 * `application/problem+json`. This plugin owns the error handler, the 404/405 handler and the
 * response to malformed requests, so no path answers in another shape.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { codeForStatus, ERRORS, GatewayError, problemType, type ErrorCode, type ProblemViolation } from '../../schemas/errors.js'
import { escapePointer, PROBLEM_CONTENT_TYPE, type Problem } from '../../schemas/problem.js'
import { refuseUnreadBody } from '../edge/lingering-close.js'
import { hostRank, routingHost } from '../edge/host-match.js'
import { NOT_A_PATH } from '../edge/path-guard.js'

export interface ProblemPluginOptions {
  /** Prefix (and hosts) → allowed methods, to answer 405 (with `Allow`) instead of 404 under a route. */
  routes: ReadonlyArray<{ prefix: string, methods: readonly string[], hosts: readonly string[] }>
}

const MAX_VIOLATIONS = 20

export function problemBody (code: ErrorCode, detail: string, request: FastifyRequest, errors?: ProblemViolation[]): Problem {
  const def = ERRORS[code]
  const url = request.raw.url ?? '/'
  const q = url.indexOf('?')
  const body: Problem = {
    type: problemType(code),
    title: def.title,
    status: def.status,
    detail,
    instance: q === -1 ? url : url.slice(0, q),
    requestId: request.id
  }
  if (errors !== undefined && errors.length > 0) body.errors = errors.slice(0, MAX_VIOLATIONS)
  return body
}

export function sendProblem (reply: FastifyReply, code: ErrorCode, detail: string, options: { headers?: Record<string, string | string[]>, errors?: ProblemViolation[] } = {}): FastifyReply {
  const body = problemBody(code, detail, reply.request, options.errors)
  if (options.headers !== undefined) reply.headers(options.headers)
  // Refused before its body was read (401, 403, 413, 429…): the rest is read and discarded,
  // bounded, so that a client still uploading reads this answer (plugins/edge/lingering-close).
  refuseUnreadBody(reply)
  return reply.code(body.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
}

/** What a schema validator reports per violation (ajv's ErrorObject, TypeBox's errors). */
export interface SchemaErrorLike { instancePath: string, keyword: string, params: unknown, message?: string }

/**
 * ajv / TypeBox errors → `{ pointer, message }`, without schema internals (a `pattern`'s regex is
 * not echoed). Pointers into parts other than the body are prefixed: `/querystring/page`.
 */
export function schemaViolations (errors: readonly SchemaErrorLike[], part: string): ProblemViolation[] {
  return errors.map((v) => {
    let pointer = v.instancePath
    const params = (v.params ?? {}) as Record<string, unknown>
    if (v.keyword === 'required' && typeof params.missingProperty === 'string') pointer += '/' + escapePointer(params.missingProperty)
    if (v.keyword === 'additionalProperties' && typeof params.additionalProperty === 'string') pointer += '/' + escapePointer(params.additionalProperty)
    const message = v.keyword === 'additionalProperties'
      ? 'is not allowed'
      : v.keyword === 'required' ? 'is required' : v.keyword === 'pattern' ? 'does not match the expected pattern' : (v.message ?? 'is invalid')
    return { pointer: part === 'body' ? pointer : `/${part}${pointer}`, message }
  })
}

function violations (err: FastifyError): ProblemViolation[] {
  return schemaViolations(err.validation ?? [], err.validationContext ?? 'body')
}

/** Safe words for the errors Fastify raises itself, which may otherwise name internals. */
const FASTIFY_DETAILS: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'The request body is larger than this route accepts.',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'This route does not accept that content type.',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'The Content-Length does not match the body.',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'The JSON body is empty.',
  FST_ERR_CTP_INVALID_JSON_BODY: 'The body is not valid JSON.',
  FST_ERR_BAD_URL: 'The request URL is malformed.',
  FST_ERR_ASYNC_CONSTRAINT: 'The request could not be routed.'
}

async function problemPlugin (app: FastifyInstance, opts: ProblemPluginOptions): Promise<void> {
  app.setErrorHandler(function gatewayErrorHandler (err: FastifyError | GatewayError, request, reply) {
    if (err instanceof GatewayError) {
      if (err.statusCode >= 500) request.log.warn({ code: err.code, cause: (err.cause as Error | undefined)?.message }, err.detail)
      return sendProblem(reply, err.code, err.detail, { headers: err.headers, errors: err.errors })
    }
    const fe = err as FastifyError
    if (fe.validation !== undefined) {
      return sendProblem(reply, 'GW_ERR_VALIDATION', 'The request does not match the schema of this route.', { errors: violations(fe) })
    }
    const status = typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 600 ? fe.statusCode : 500
    if (status >= 500) {
      request.log.error({ err }, 'internal error')
      return sendProblem(reply, 'GW_ERR_INTERNAL', 'The gateway could not handle this request.')
    }
    const code = codeForStatus(status)
    const detail = (fe.code !== undefined ? FASTIFY_DETAILS[fe.code] : undefined) ?? ERRORS[code].title
    // A status we have no code for (a user plugin's 418) keeps its status under a generic code.
    if (ERRORS[code].status !== status) {
      const body = { ...problemBody(code, fe.message, request), status, title: fe.name }
      return reply.code(status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
    }
    return sendProblem(reply, code, detail)
  })

  const routes = [...opts.routes].sort((a, b) => b.prefix.length - a.prefix.length)
  const withHosts = routes.some((r) => r.hosts.length > 0)
  app.setNotFoundHandler(function gatewayNotFound (request, reply) {
    const url = request.raw.url ?? '/'
    if (url.charCodeAt(0) !== 47 /* / */) return sendProblem(reply, 'GW_ERR_BAD_REQUEST', NOT_A_PATH)
    const q = url.indexOf('?')
    const path = q === -1 ? url : url.slice(0, q)
    // Among the routes under this path, the one the request's host reaches, as the router would choose.
    const host = withHosts ? routingHost(request.raw.headers.host) : undefined
    let route: (typeof routes)[number] | undefined
    let rank = -1
    for (const r of routes) {
      if (route !== undefined && r.prefix.length < route.prefix.length) break
      if (!(r.prefix === '/' || path === r.prefix || path.startsWith(r.prefix + '/'))) continue
      const rRank = hostRank(r.hosts, host)
      if (rRank > rank) { route = r; rank = rRank }
    }
    if (route !== undefined && !route.methods.includes(request.method)) {
      return sendProblem(reply, 'GW_ERR_METHOD_NOT_ALLOWED', `${request.method} is not allowed here.`, {
        headers: { allow: route.methods.join(', ') }
      })
    }
    return sendProblem(reply, 'GW_ERR_NOT_FOUND', 'No route matches this path.')
  })
}

export default fp(problemPlugin, { name: 'portcullis-problem', fastify: '5.x' })

/** For `clientErrorHandler`: a malformed request gets problem+json too, then the socket closes. */
export function clientErrorResponse (
  err: NodeJS.ErrnoException & { bytesParsed?: number },
  requestId: string,
  headers: ReadonlyArray<readonly [string, string]> = []
): string {
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
  const code = codeForStatus(status)
  const body = JSON.stringify({
    type: problemType(code),
    title: ERRORS[code].title,
    status,
    detail: status === 431 ? 'The request headers are too large.' : status === 408 ? 'The request took too long to arrive.' : 'The request is malformed.',
    instance: '',
    requestId
  } satisfies Problem)
  return `HTTP/1.1 ${status} ${ERRORS[code].title}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${requestId}\r\n${headers.map(([name, value]) => `${name}: ${value}\r\n`).join('')}Connection: close\r\n\r\n${body}`
}

export { GatewayError }

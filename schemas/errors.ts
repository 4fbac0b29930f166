/**
 * Every error the gateway answers with, in one table: code → status, title, problem type and
 * when it is answered. docs/errors.md is generated from it (`npm run docs`, src/docs-gen.ts);
 * test/docs.test.ts fails when the committed page differs.
 * Plugins import from here (never from src/), so a user's plugin can throw the same errors.
 */

export const PROBLEM_TYPE_BASE = 'urn:portcullis:problem:'

export const ERRORS = {
  GW_ERR_BAD_REQUEST: { status: 400, title: 'Bad Request', when: 'malformed request; a path spelling the route refuses (dot segments, %2F, backslash, ;, NUL or control byte, #: see security.md, "Paths and transfer codings"); a Transfer-Encoding in an HTTP/1.0 request; a body shorter than its length; on a route with hosts, a second Host header, or an absolute-form target or trusted X-Forwarded-Host naming another host than Host; an upgrade request with a body, or a WebSocket handshake with a bad Sec-WebSocket-Key or a Sec-WebSocket-Version other than 13 (then with Sec-WebSocket-Version: 13)' },
  GW_ERR_VALIDATION: { status: 400, title: 'Request validation failed', when: "the request does not match the route's schema (with errors[{pointer, message}])" },
  GW_ERR_UNAUTHORIZED: { status: 401, title: 'Unauthorized', when: 'missing or invalid credentials (with a WWW-Authenticate challenge per scheme the route accepts); a wrong password at the token endpoint' },
  GW_ERR_FORBIDDEN: { status: 403, title: 'Forbidden', when: 'a valid identity without the required scope (named in detail) or claim (require); an address refused by the IP filter; a CORS preflight from an origin not listed' },
  GW_ERR_NOT_FOUND: { status: 404, title: 'Not Found', when: 'no route matches the path (or, with routes[].hosts, the Host); with validate.unmatched: reject, no OpenAPI operation matches' },
  GW_ERR_METHOD_NOT_ALLOWED: { status: 405, title: 'Method Not Allowed', when: "the method is not in the route's methods (with Allow)" },
  GW_ERR_REQUEST_TIMEOUT: { status: 408, title: 'Request Timeout', when: 'the client was too slow to send its request head (server.timeouts.headers) or its whole request (server.timeouts.request)' },
  GW_ERR_PAYLOAD_TOO_LARGE: { status: 413, title: 'Payload Too Large', when: "the body is over server.bodyLimit or the route's bodyLimit" },
  GW_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported Media Type', when: 'a body type the route does not accept (a validated body must be JSON)' },
  GW_ERR_RATE_LIMITED: { status: 429, title: 'Too Many Requests', when: 'over the rate limit (with Retry-After and the RateLimit headers)' },
  GW_ERR_HEADERS_TOO_LARGE: { status: 431, title: 'Request Header Fields Too Large', when: 'the request head is over server.maxHeaderSize, or has more fields than server.maxHeaders' },
  GW_ERR_INTERNAL: { status: 500, title: 'Internal Server Error', when: 'a bug in the gateway or a plugin (logged, never detailed)' },
  GW_ERR_NOT_IMPLEMENTED: { status: 501, title: 'Not Implemented', when: 'a Transfer-Encoding other than chunked (gzip, chunked); never forwarded, the connection is closed' },
  GW_ERR_BAD_GATEWAY: { status: 502, title: 'Bad Gateway', when: 'the upstream refused or dropped the connection, or answered with an invalid status or an oversized head; it answered a WebSocket upgrade with anything but 101' },
  GW_ERR_UNAVAILABLE: { status: 503, title: 'Service Unavailable', when: 'draining, not ready, shedding load, too many requests waiting for an upstream connection, buffered bodies over server.requestBufferTotal (all with Retry-After), a WebSocket route at its websocket.maxConnections (with Retry-After), a JWKS that could never be fetched, or the rate-limit store unreachable with onStoreError: deny' },
  GW_ERR_GATEWAY_TIMEOUT: { status: 504, title: 'Gateway Timeout', when: "the upstream did not answer within the route's timeout" }
} as const

export type ErrorCode = keyof typeof ERRORS

export interface ProblemViolation { pointer: string, message: string }

export interface GatewayErrorOptions {
  /** Extra response headers, e.g. `WWW-Authenticate`, `Allow`, `Retry-After`. */
  headers?: Record<string, string | string[]>
  /** Field-level violations for 400s. */
  errors?: ProblemViolation[]
  /** The underlying error, logged but never sent to the client. */
  cause?: unknown
}

/**
 * The one error type the gateway's error handler turns into problem+json.
 * `detail` is sent to the client: never put an address, errno or stack in it.
 */
export class GatewayError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  readonly title: string
  readonly detail: string
  readonly headers: Record<string, string | string[]> | undefined
  readonly errors: ProblemViolation[] | undefined

  constructor (code: ErrorCode, detail?: string, options: GatewayErrorOptions = {}) {
    const def = ERRORS[code]
    super(detail ?? def.title, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'GatewayError'
    this.code = code
    this.statusCode = def.status
    this.title = def.title
    this.detail = detail ?? def.title
    this.headers = options.headers
    this.errors = options.errors
  }
}

/** The problem type URI of a code: `urn:portcullis:problem:not-found`. */
export function problemType (code: ErrorCode): string {
  return PROBLEM_TYPE_BASE + code.slice('GW_ERR_'.length).toLowerCase().replaceAll('_', '-')
}

const BY_STATUS = new Map<number, ErrorCode>()
for (const [code, def] of Object.entries(ERRORS) as Array<[ErrorCode, { status: number }]>) {
  if (!BY_STATUS.has(def.status)) BY_STATUS.set(def.status, code)
}

/** The first code registered for a status (used for errors raised by Fastify itself). */
export function codeForStatus (status: number): ErrorCode {
  return BY_STATUS.get(status) ?? (status >= 500 ? 'GW_ERR_INTERNAL' : 'GW_ERR_BAD_REQUEST')
}

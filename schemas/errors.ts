/**
 * Every error the gateway answers with, in one table: code → status, title and problem type.
 * The README's "Error codes" section lists each of them; test/errors.test.ts keeps the two in step.
 * Plugins import from here (never from src/), so a user's plugin can throw the same errors.
 */

export const PROBLEM_TYPE_BASE = 'urn:portcullis:problem:'

export const ERRORS = {
  GW_ERR_BAD_REQUEST: { status: 400, title: 'Bad Request' },
  GW_ERR_VALIDATION: { status: 400, title: 'Request validation failed' },
  GW_ERR_UNAUTHORIZED: { status: 401, title: 'Unauthorized' },
  GW_ERR_FORBIDDEN: { status: 403, title: 'Forbidden' },
  GW_ERR_NOT_FOUND: { status: 404, title: 'Not Found' },
  GW_ERR_METHOD_NOT_ALLOWED: { status: 405, title: 'Method Not Allowed' },
  GW_ERR_REQUEST_TIMEOUT: { status: 408, title: 'Request Timeout' },
  GW_ERR_PAYLOAD_TOO_LARGE: { status: 413, title: 'Payload Too Large' },
  GW_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported Media Type' },
  GW_ERR_RATE_LIMITED: { status: 429, title: 'Too Many Requests' },
  GW_ERR_HEADERS_TOO_LARGE: { status: 431, title: 'Request Header Fields Too Large' },
  GW_ERR_INTERNAL: { status: 500, title: 'Internal Server Error' },
  GW_ERR_NOT_IMPLEMENTED: { status: 501, title: 'Not Implemented' },
  GW_ERR_BAD_GATEWAY: { status: 502, title: 'Bad Gateway' },
  GW_ERR_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  GW_ERR_GATEWAY_TIMEOUT: { status: 504, title: 'Gateway Timeout' }
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

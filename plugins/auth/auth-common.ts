/**
 * What every authentication scheme shares: the result types and the Authorization-header
 * helpers. (Its own module so that the schemes and plugins/auth/authenticate.ts do not import each other.)
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Identity } from '../../schemas/auth.js'

/** Why a request's credentials were refused: `reason` is a short token for events and logs. */
export class AuthFailure {
  constructor (
    readonly reason: string,
    /** Sent to the client: says what is wrong without helping a guesser. */
    readonly detail: string,
    /** The credentials could not be checked right now (JWKS unreachable): 503, not 401. */
    readonly unavailable = false
  ) {}
}

export type AuthResult = Identity | AuthFailure | null

/** One scheme. `authenticate` returns null when the request carries no credentials for it. */
export interface Authenticator {
  readonly scheme: string
  /** The `WWW-Authenticate` challenge; `failure` is set for the scheme whose credentials were refused. */
  challenge: (failure?: AuthFailure) => string
  authenticate: (request: FastifyRequest, reply: FastifyReply) => AuthResult | Promise<AuthResult>
}

/** `Authorization: <scheme> <credentials>` split; the scheme lower-cased (RFC 9110 §11.1: case-insensitive). */
export function parseAuthorization (value: string | undefined): { scheme: string, credentials: string } | null {
  if (value === undefined) return null
  const space = value.indexOf(' ')
  const scheme = (space === -1 ? value : value.slice(0, space)).toLowerCase()
  return { scheme, credentials: space === -1 ? '' : value.slice(space + 1) }
}

export function quote (value: string): string {
  return '"' + value.replace(/["\\]/g, '\\$&') + '"'
}

/**
 * Whether an Authorization value uses the Bearer scheme (case-insensitive, RFC 9110 §11.1).
 * `Bearer ` is how clients spell it, so that is checked first, without slicing or lower-casing.
 */
export function hasBearerScheme (value: string): boolean {
  return value.startsWith('Bearer ') || (value.length >= 7 && value.slice(0, 7).toLowerCase() === 'bearer ')
}

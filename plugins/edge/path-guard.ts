/**
 * The path guard, the first stage of every route: a route only forwards URLs that start with its
 * prefix exactly as configured, and refuses (400) every path spelling an upstream could resolve
 * to another resource than the one the gateway checked.
 */
import type { FastifyInstance, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../../schemas/errors.js'

/** Spellings a route may let through its path guard (routes[].allowInPath); NUL/control bytes never. */
export type PathAllowance = 'encodedSlash' | 'backslash' | 'semicolon'

const ALLOW_ENCODED_SLASH = 1
const ALLOW_BACKSLASH = 2
const ALLOW_SEMICOLON = 4

const DOT_SEGMENT = 'The path must not contain "." or ".." segments.'
const ENCODED_SLASH = 'The path must not contain an encoded slash (%2F).'
const BACKSLASH = 'The path must not contain a backslash (\\ or %5C).'
const SEMICOLON = 'The path must not contain ";" parameters.'
const CONTROL = 'The path must not contain a NUL byte or another control character (%00-%1F, %7F).'
const FRAGMENT = 'The request target must not contain a fragment (#).'
/**
 * Absolute-form (`GET http://host/path`) is what a client sends to a forward proxy, and
 * asterisk-form (`OPTIONS *`) asks about the server, not a resource. The router, the path guard
 * and the validation rules read paths; an upstream that reads the absolute-form (gunicorn does)
 * would route a target none of them matched — on a route with prefix `/`, `POST http://x/api/people`
 * once reached the upstream with a body its rule never checked. RFC 9112 §3.2.2 asks origin
 * servers to accept absolute-form; a gateway in front of them refuses it, as it refuses other
 * spellings an upstream could read differently (docs/security.md).
 */
export const NOT_A_PATH = 'The request target must be a path: absolute-form (http://host/path) and asterisk-form (*) are not served.'

/**
 * The router matches paths after decoding them, and upstream servers normalise paths each their
 * own way. So a route only forwards URLs that start with its prefix exactly as configured, and
 * refuses (400) every path spelling that an upstream could resolve to another resource than the
 * one the gateway checked — under this route's authorization and validation:
 *
 * - `.`/`..` segments, plain or percent-encoded (resolved by every upstream);
 * - an encoded slash `%2F` (decoded to a separator by Tomcat with ALLOW_ENCODED_SLASH, some
 *   WSGI/CGI servers, anything that decodes before routing);
 * - a backslash, raw or `%5C` (a separator on Windows servers, IIS, some Java containers);
 * - `;` path parameters (`/admin;x/`, `/..;/`: stripped by Tomcat and Spring before matching);
 * - a NUL or other control byte, raw or encoded (C-string truncation; CR/LF injection where an
 *   upstream puts the decoded path in a header);
 * - a fragment `#` (not part of a request target, RFC 9112 §3.2; gunicorn and others drop it,
 *   so `/api/people/#x` is `/api/people/` upstream).
 *
 * `allow` lets a route accept encoded slashes, backslashes or `;` (routes[].allowInPath); dot
 * segments stay refused whatever the separator, and `..;x` counts as `..` when `;` is allowed.
 * Other percent-encodings (`%20`, `%25`, `%41`…) are ordinary: plugins/validation/validate.ts matches its
 * rules on decoded, trimmed segments, so they cannot slip past a rule either.
 */
export function pathGuard (prefix: string, allow: readonly PathAllowance[] = []): onRequestHookHandler {
  const base = prefix === '/' ? '' : prefix
  const allowed = (allow.includes('encodedSlash') ? ALLOW_ENCODED_SLASH : 0) |
    (allow.includes('backslash') ? ALLOW_BACKSLASH : 0) |
    (allow.includes('semicolon') ? ALLOW_SEMICOLON : 0)
  return function guardPath (request, _reply, done) {
    const url = request.raw.url ?? '/'
    if (url.charCodeAt(0) !== 47 /* / */) {
      done(new GatewayError('GW_ERR_BAD_REQUEST', NOT_A_PATH))
      return
    }
    if (base !== '') {
      const next = url.charCodeAt(base.length)
      if (!url.startsWith(base) || !(Number.isNaN(next) || next === 47 /* / */ || next === 63 /* ? */)) {
        done(new GatewayError('GW_ERR_NOT_FOUND', 'No route matches this path.'))
        return
      }
    }
    // The prefix itself is spelled as configured (checked above): the scan starts after it.
    const problem = pathProblem(url, allowed, base.length)
    if (problem !== null) {
      done(new GatewayError('GW_ERR_BAD_REQUEST', problem))
      return
    }
    done()
  }
}

/** Whether the URL's path (not its query string) has a `.` or `..` segment, in any spelling. */
export function hasDotSegment (url: string): boolean {
  return pathProblem(url, ALLOW_ENCODED_SLASH | ALLOW_BACKSLASH | ALLOW_SEMICOLON, 0) === DOT_SEGMENT
}

/** `url.indexOf(ch)` falls inside the path, before `end` (the query string's `?`). */
function inPath (url: string, ch: string, end: number): boolean {
  const i = url.indexOf(ch)
  return i !== -1 && i < end
}

function hexValue (code: number): number {
  if (code >= 48 && code <= 57) return code - 48 // 0-9
  const lower = code | 0x20
  if (lower >= 97 && lower <= 102) return lower - 87 // a-f
  return -1
}

/**
 * What is wrong with the spelling of the URL's path from `from` on (the detail of the 400), or
 * null. A path with none of `%`, `\\`, `;`, `#`, `.` costs five indexOf and nothing else;
 * otherwise one pass over the path, without allocating. `allow`: the ALLOW_* bits. Raw control
 * bytes are refused by Node's parser before this runs (HPE_INVALID_URL); the check for them here
 * costs nothing and does not rely on it.
 */
export function pathProblem (url: string, allow: number, from: number): string | null {
  let end = url.indexOf('?')
  if (end === -1) end = url.length
  if (!inPath(url, '%', end) && !inPath(url, '\\', end) && !inPath(url, ';', end) && !inPath(url, '#', end) && !inPath(url, '.', end)) {
    return null
  }
  // The segment being read: how many dots (raw or %2e) and whether anything else; `;` ends the
  // part of a segment that servers compare (`..;x` is `..` to Tomcat).
  let dots = 0
  let other = false
  let inParams = false
  for (let i = from; i <= end; i++) {
    let c = i === end ? 47 : url.charCodeAt(i)
    let separator = c === 47 // '/'
    if (c === 37 /* % */ && i + 2 < end) {
      const hi = hexValue(url.charCodeAt(i + 1))
      const lo = hexValue(url.charCodeAt(i + 2))
      if (hi !== -1 && lo !== -1) {
        c = hi * 16 + lo
        i += 2
        if (c === 0x2f) {
          if ((allow & ALLOW_ENCODED_SLASH) === 0) return ENCODED_SLASH
          separator = true
        } else if (c === 0x5c) {
          if ((allow & ALLOW_BACKSLASH) === 0) return BACKSLASH
          separator = true
        } else if (c < 0x20 || c === 0x7f) {
          return CONTROL
        }
        // Any other decoded byte (an encoded ';' or '#' included) is an ordinary character;
        // a decoded dot counts as a dot below.
      }
      // A malformed escape (%zz) is left to the router (400 "The request URL is malformed").
    } else if (c === 92 /* backslash */) {
      if ((allow & ALLOW_BACKSLASH) === 0) return BACKSLASH
      separator = true
    } else if (c === 59 /* ; */) {
      if ((allow & ALLOW_SEMICOLON) === 0) return SEMICOLON
      inParams = true
      continue
    } else if (c === 35 /* # */) {
      return FRAGMENT
    } else if (c < 0x20 || c === 0x7f) {
      return CONTROL
    }
    if (separator) {
      if (!other && (dots === 1 || dots === 2)) return DOT_SEGMENT
      dots = 0
      other = false
      inParams = false
    } else if (!inParams) {
      if (c === 46 /* . */) dots++
      else other = true
    }
  }
  return null
}

export interface PathGuardOptions { prefix: string, allow: readonly PathAllowance[] }

function pathGuardPlugin (scope: FastifyInstance, opts: PathGuardOptions, done: (err?: Error) => void): void {
  scope.addHook('onRequest', pathGuard(opts.prefix, opts.allow))
  done()
}

export default fp(pathGuardPlugin, { name: 'portcullis-path-guard', fastify: '5.x' })

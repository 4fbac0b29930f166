/**
 * Reading and checking a JSON request body before anything trusts it: the media type (RFC 9110
 * §8.3, RFC 8259), the size limit while reading, the nesting depth before JSON.parse can recurse,
 * and keys or numbers that would not survive being parsed and re-serialized unchanged.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import { escapePointer } from '../../schemas/problem.js'

// RFC 9110 §5.6.2: token = 1*tchar
const TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
// media-type = type "/" subtype parameters; parameters = *( OWS ";" OWS [ parameter ] )
// parameter-value = ( token / quoted-string ). Type, subtype and parameter names are case-insensitive.
const MEDIA_TYPE = new RegExp(`^(${TOKEN})/(${TOKEN})((?:[ \\t]*;[ \\t]*(?:${TOKEN}=(?:${TOKEN}|"(?:[^"\\\\]|\\\\.)*"))?)*)[ \\t]*$`)
const PARAMETER = new RegExp(`;[ \\t]*(${TOKEN})=(${TOKEN}|"(?:[^"\\\\]|\\\\.)*")`, 'g')

/**
 * The lower-cased `type/subtype` when the header names a JSON media type (`application/json` or
 * `application/<anything>+json`) with at most a UTF-8 charset; otherwise null. Node has already
 * trimmed the value's surrounding whitespace; anything else malformed is null.
 */
export function jsonMediaType (header: string | undefined): string | null {
  if (header === undefined) return null
  // Clients send the same few values: remembered (a bounded few, so junk values cannot grow it;
  // when full it starts over, so a client sending junk cannot keep the usual values out).
  const known = mediaTypes.get(header)
  if (known !== undefined) return known
  const result = parseJsonMediaType(header)
  if (mediaTypes.size >= 64) mediaTypes.clear()
  mediaTypes.set(header, result)
  return result
}

/**
 * Process-wide: a memo of a pure function (the same header always gives the same answer), so
 * it cannot make one gateway's answers depend on another's requests.
 */
const mediaTypes = new Map<string, string | null>()

function parseJsonMediaType (header: string): string | null {
  const m = MEDIA_TYPE.exec(header)
  if (m === null) return null
  const type = m[1].toLowerCase()
  const subtype = m[2].toLowerCase()
  if (type !== 'application' || !(subtype === 'json' || (subtype.endsWith('+json') && subtype.length > 5))) return null
  for (const p of m[3].matchAll(PARAMETER)) {
    // JSON is UTF-8 (RFC 8259 §8.1); a body in another charset would be misread.
    if (p[1].toLowerCase() === 'charset' && p[2].replaceAll('"', '').toLowerCase() !== 'utf-8') return null
  }
  return `${type}/${subtype}`
}

export class BodyError extends Error {
  constructor (readonly kind: 'too-large' | 'aborted' | 'busy' | 'io', message: string) { super(message) }
}

/** Whether the request has a body: a chunked one, or a Content-Length other than 0. */
export function hasBody (headers: IncomingHttpHeaders): boolean {
  const length = headers['content-length']
  return headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

/**
 * Reads the whole body and calls `done` once: with the bytes, or with a BodyError as soon as the
 * body exceeds `limit` bytes (the stream is paused, the rest never read) or breaks off. Used by
 * validation (plugins/validation/validate) and by the forwarder for a small body it sends in one write
 * (src/forward.ts). A callback, not a promise: it runs on every validated request. The listeners
 * stay on the finished request (removing four costs more than leaving them); once `done` has been
 * called `chunks` is null, so a late event does nothing. `done` must not throw: it runs inside
 * the stream's event.
 */
export function readBody (raw: IncomingMessage, limit: number, done: (err: BodyError | null, body: Buffer) => void): void {
  let chunks: Buffer[] | null = []
  let size = 0
  const fail = (err: BodyError): void => {
    if (chunks === null) return
    chunks = null
    done(err, EMPTY)
  }
  raw.on('data', (chunk: Buffer) => {
    if (chunks === null) return
    size += chunk.length
    if (size > limit) {
      raw.pause()
      fail(new BodyTooLarge(limit))
      return
    }
    chunks.push(chunk)
  })
  raw.on('end', () => {
    if (chunks === null) return
    const all = chunks
    chunks = null
    done(null, all.length === 1 ? all[0] : Buffer.concat(all, size))
  })
  raw.on('error', () => { fail(new BodyError('aborted', 'The request body ended before it was complete.')) })
  raw.on('close', () => { if (!raw.complete) fail(new BodyError('aborted', 'The request body ended before it was complete.')) })
}

const EMPTY = Buffer.alloc(0)

export class BodyTooLarge extends BodyError {
  constructor (readonly limit: number) { super('too-large', `The request body is larger than ${limit} bytes.`) }
}

export interface ScanResult {
  /** Nesting went deeper than allowed (the text was not parsed). */
  tooDeep: boolean
  /** The text may hold a `__proto__` or `constructor` key (possibly spelled with escapes). */
  suspectKeys: boolean
  /** An integer literal too long to be held exactly by a double. */
  longInteger: boolean
}

/**
 * One pass over the raw text, iterative (no recursion), before JSON.parse: nesting depth, and
 * hints that a closer look at the parsed value is needed. It does not validate JSON syntax.
 */
export function scanJson (text: string, maxDepth: number): ScanResult {
  let depth = 0
  let suspectKeys = false
  let longInteger = false
  const n = text.length
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i)
    if (c === 34 /* " */) {
      // Skip the string; note escapes and the letters that start the dangerous keys.
      for (i++; i < n; i++) {
        const s = text.charCodeAt(i)
        if (s === 34) break
        if (s === 92 /* \ */) {
          suspectKeys ||= text.charCodeAt(i + 1) === 117 /* u */
          i++
        } else if ((s === 95 /* _ */ || s === 99 /* c */) && !suspectKeys) {
          suspectKeys = text.startsWith('__proto__', i) || text.startsWith('constructor', i)
        }
      }
    } else if (c === 123 /* { */ || c === 91 /* [ */) {
      if (++depth > maxDepth) return { tooDeep: true, suspectKeys, longInteger }
    } else if (c === 125 /* } */ || c === 93 /* ] */) {
      depth--
    } else if ((c >= 48 && c <= 57) || c === 45 /* - */) {
      // A number: integers of 16+ digits may not round-trip through a double.
      const start = i
      let digits = 0
      let integer = true
      for (; i < n; i++) {
        const d = text.charCodeAt(i)
        if (d >= 48 && d <= 57) digits++
        else if (d === 46 || d === 101 || d === 69) integer = false // . e E
        else if (d !== 45 && d !== 43) break
      }
      if (integer && digits >= 16 && !Number.isSafeInteger(Number(text.slice(start, i)))) longInteger = true
      i--
    }
  }
  return { tooDeep: false, suspectKeys, longInteger }
}

export interface Finding { pointer: string, message: string }

/**
 * Walks a parsed value (iteratively) for what the scan hinted at: `__proto__` keys, `constructor`
 * objects carrying `prototype` (prototype pollution once a consumer merges the body), and
 * integers beyond ±(2^53 − 1), which were already rounded by JSON.parse.
 */
export function findUnsafe (value: unknown, keys: boolean, numbers: boolean): Finding | null {
  const stack: Array<[unknown, string]> = [[value, '']]
  while (stack.length > 0) {
    const [node, pointer] = stack.pop() as [unknown, string]
    if (typeof node === 'number') {
      if (numbers && Number.isInteger(node) && !Number.isSafeInteger(node)) {
        return { pointer, message: 'must be an integer between -(2^53 - 1) and 2^53 - 1 (larger ones cannot be passed on exactly)' }
      }
    } else if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) stack.push([node[i], `${pointer}/${i}`])
    } else if (node !== null && typeof node === 'object') {
      for (const key of Object.keys(node)) {
        const child = (node as Record<string, unknown>)[key]
        const here = `${pointer}/${escapePointer(key)}`
        if (keys && (key === '__proto__' || (key === 'constructor' && child !== null && typeof child === 'object' && Object.hasOwn(child, 'prototype')))) {
          return { pointer: here, message: 'is a forbidden key' }
        }
        stack.push([child, here])
      }
    }
  }
  return null
}

/** How many values a parsed value holds, counting no further than `cap`. */
export function countNodes (value: unknown, cap: number): number {
  let count = 0
  const stack: unknown[] = [value]
  while (stack.length > 0 && count <= cap) {
    const node = stack.pop()
    count++
    const children = Array.isArray(node) ? node : node !== null && typeof node === 'object' ? Object.values(node) : null
    if (children !== null) for (let i = 0; i < children.length && stack.length <= cap; i++) stack.push(children[i])
  }
  return count
}

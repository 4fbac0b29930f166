/**
 * Password and API-key hashing. Passwords: scrypt (node:crypto), stored as
 * `scrypt$N$r$p$salt$hash` (salt and hash base64url), verified in constant time, off the event
 * loop. API keys are long random strings, so a single SHA-256 is enough: `sha256$<hex>`.
 */
import { createHash, randomBytes, scrypt, scryptSync, timingSafeEqual } from 'node:crypto'

export interface ScryptParams { N: number, r: number, p: number }

/** OWASP's scrypt floor is N=2^17; a gateway checks Basic credentials per request, so 2^15 plus a cache. */
export const DEFAULT_SCRYPT: ScryptParams = { N: 2 ** 15, r: 8, p: 1 }
/** For `${ENV}` passwords when the file has no hashes of its own (src/auth-config.ts says why). */
export const ENV_SCRYPT: ScryptParams = { N: 2 ** 14, r: 8, p: 1 }
const KEY_LENGTH = 32
const SALT_LENGTH = 16
/** Bounds on the parameters read from a hash, so that a config value cannot exhaust memory or CPU. */
const LIMITS = { N: [2 ** 10, 2 ** 20], r: [1, 32], p: [1, 16] } as const

export interface ParsedHash { params: ScryptParams, salt: Buffer, hash: Buffer }

function maxmem ({ N, r, p }: ScryptParams): number {
  return 128 * N * r * p + 2 * 1024 * 1024
}

/** Parse `scrypt$N$r$p$salt$hash`; null when malformed or out of bounds. */
export function parsePasswordHash (text: string): ParsedHash | null {
  const parts = text.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return null
  const [N, r, p] = parts.slice(1, 4).map(Number)
  if (!Number.isInteger(N) || (N & (N - 1)) !== 0 || N < LIMITS.N[0] || N > LIMITS.N[1]) return null
  if (!Number.isInteger(r) || r < LIMITS.r[0] || r > LIMITS.r[1]) return null
  if (!Number.isInteger(p) || p < LIMITS.p[0] || p > LIMITS.p[1]) return null
  const salt = Buffer.from(parts[4], 'base64url')
  const hash = Buffer.from(parts[5], 'base64url')
  if (salt.length < 8 || hash.length < 16) return null
  return { params: { N, r, p }, salt, hash }
}

function format (params: ScryptParams, salt: Buffer, hash: Buffer): string {
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`
}

/** Hash a password (synchronously: for the CLI and for `${ENV}` passwords at start). */
export function hashPasswordSync (password: string, params: ScryptParams = DEFAULT_SCRYPT): string {
  const salt = randomBytes(SALT_LENGTH)
  const hash = scryptSync(password.normalize('NFC'), salt, KEY_LENGTH, { ...params, maxmem: maxmem(params) })
  return format(params, salt, hash)
}

function derive (password: string, parsed: ParsedHash): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), parsed.salt, parsed.hash.length, { ...parsed.params, maxmem: maxmem(parsed.params) }, (err, key) => {
      if (err !== null) reject(err)
      else resolve(key)
    })
  })
}

/** Whether `password` matches; the comparison is constant-time and the work does not depend on the answer. */
export async function verifyPassword (password: string, parsed: ParsedHash): Promise<boolean> {
  const key = await derive(password, parsed)
  return timingSafeEqual(key, parsed.hash)
}

/**
 * A hash of a random password with the given parameters: checked for unknown usernames so that
 * they cost the same as known ones and the timing does not tell which usernames exist.
 */
export function dummyHash (params: ScryptParams): ParsedHash {
  return { params, salt: randomBytes(SALT_LENGTH), hash: randomBytes(KEY_LENGTH) }
}

/** `sha256$<hex>` of an API key. */
export function hashApiKey (key: string): string {
  return 'sha256$' + createHash('sha256').update(key, 'utf8').digest('hex')
}

/** A new API key: 32 random bytes, base64url (43 characters), with a recognisable prefix. */
export function generateApiKey (): string {
  return 'pk_' + randomBytes(32).toString('base64url')
}

/**
 * HTTP Basic (RFC 7617), wrapping @fastify/basic-auth: the gateway's `users`, passwords stored
 * as scrypt hashes. @fastify/basic-auth parses the header (scheme case-insensitive, one token68,
 * split at the first colon so passwords may contain colons, UTF-8, control characters refused);
 * before it, this module insists on canonical base64 and valid UTF-8, which it does not check.
 *
 * Timing: an unknown username is checked against a dummy hash with the same cost, so a guesser
 * cannot tell which usernames exist. Verified credentials are remembered for a few minutes
 * (keyed by an HMAC under a per-process key, never the password itself), so that a client
 * sending Basic on every request does not pay a full scrypt each time. That cache is a Map with
 * oldest-first eviction, not lru-cache 11: a hit costs 61-77 ns against lru-cache's 32-38 ns with
 * 10,000 entries, noise next to the 1.6 µs HMAC every lookup computes (idle machine;
 * `node --import=@swc-node/register/esm-register cache-bench.mts`, script in the issue 14
 * report), and recency buys little when an entry lives five minutes.
 */
import { createHmac, randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyBasicAuth from '@fastify/basic-auth'
import type { Identity, UserConfig } from '../../schemas/auth.js'
import { AuthFailure, quote, type AuthResult, type Authenticator } from './auth-common.js'
import { dummyHash, parsePasswordHash, verifyPassword, DEFAULT_SCRYPT, type ParsedHash } from './password-hash.js'

const CACHE_TTL_MS = 5 * 60_000
const CACHE_MAX = 10_000
/**
 * Password hashes run on libuv's thread pool (4 threads by default), which DNS lookups and file
 * reads share: at most this many at once, and this many more waiting; past that a check is
 * refused at once (503) instead of queueing without bound under a flood of wrong passwords.
 */
export const HASH_CONCURRENCY = { running: 2, waiting: 64 }

/** The check could not run now: too many password checks in flight. */
export const BUSY = Symbol('busy')

interface User { hash: ParsedHash, identity: Identity }

/** The user table and the password check, shared by every route and the token endpoint. */
export class BasicVerifier {
  private readonly users = new Map<string, User>()
  private readonly dummy: ParsedHash
  private readonly cacheKey = randomBytes(32)
  private readonly cache = new Map<string, { identity: Identity, expires: number }>()

  private running = 0
  private readonly queue: Array<() => void> = []

  constructor (users: readonly UserConfig[], private readonly limits = HASH_CONCURRENCY) {
    for (const user of users) {
      const hash = parsePasswordHash(user.passwordHash ?? '')
      if (hash === null) throw new Error(`user ${user.username}: no valid passwordHash`) // checked at config load
      const scopes = Object.freeze([...user.scopes])
      this.users.set(user.username.normalize('NFC'), {
        hash,
        identity: Object.freeze({ subject: user.username, scopes, scheme: 'basic', claims: Object.freeze({ sub: user.username, scope: scopes.join(' ') }) })
      })
    }
    // Unknown users cost what the first known user costs.
    this.dummy = dummyHash(this.users.values().next().value?.hash.params ?? DEFAULT_SCRYPT)
  }

  /**
   * The user's identity if the password is right, else null; the same work either way, whether
   * or not the username exists. `cached: false` skips the cache (the token endpoint).
   */
  async verify (username: string, password: string, options: { cached?: boolean } = {}): Promise<Identity | null | typeof BUSY> {
    const name = username.normalize('NFC')
    const user = this.users.get(name)
    const useCache = options.cached !== false
    const key = useCache ? createHmac('sha256', this.cacheKey).update(name).update('\0').update(password).digest('base64') : ''
    if (useCache && user !== undefined) {
      const hit = this.cache.get(key)
      if (hit !== undefined && hit.expires > Date.now()) return hit.identity
    }
    if (!await this.acquire()) return BUSY
    let ok: boolean
    try {
      ok = await verifyPassword(password, user?.hash ?? this.dummy)
    } finally {
      this.release()
    }
    if (!ok || user === undefined) return null
    if (useCache) {
      if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value as string)
      this.cache.set(key, { identity: user.identity, expires: Date.now() + CACHE_TTL_MS })
    }
    return user.identity
  }

  private async acquire (): Promise<boolean> {
    if (this.running < this.limits.running) { this.running++; return true }
    if (this.queue.length >= this.limits.waiting) return false
    await new Promise<void>((resolve) => { this.queue.push(resolve) })
    return true // the slot was handed over by release()
  }

  private release (): void {
    const next = this.queue.shift()
    if (next !== undefined) next()
    else this.running--
  }
}

const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
const utf8 = new TextDecoder('utf-8', { fatal: true })

class BadCredentials extends Error {}
class Busy extends Error {}

/**
 * Registers @fastify/basic-auth in the route's scope with the shared verifier and returns the
 * scheme for plugins/auth/authenticate.ts.
 */
export async function registerBasicAuth (scope: FastifyInstance, verifier: BasicVerifier, realm: string): Promise<Authenticator> {
  const verified = new WeakMap<FastifyRequest, Identity>()
  await scope.register(fastifyBasicAuth, {
    // The challenge is set by plugins/auth/authenticate.ts, one per accepted scheme.
    authenticate: false,
    utf8: true,
    strictCredentials: true,
    async validate (username: string, password: string, request: FastifyRequest) {
      if (username === '') throw new BadCredentials()
      const identity = await verifier.verify(username, password)
      if (identity === BUSY) throw new Busy()
      if (identity === null) throw new BadCredentials()
      verified.set(request, identity)
    }
  })
  const malformed = new AuthFailure('malformed', 'The Basic credentials are malformed.')
  const invalid = new AuthFailure('invalid', 'Invalid username or password.')
  const busy = new AuthFailure('busy', 'Too many password checks in progress; retry shortly.', true)
  const challenge = `Basic realm=${quote(realm)}, charset="UTF-8"`

  return {
    scheme: 'basic',
    challenge: () => challenge,
    authenticate (request, reply): AuthResult | Promise<AuthResult> {
      const header = request.headers.authorization
      if (header === undefined || !/^basic(?: |$)/i.test(header)) return null
      const credentials = header.slice(6)
      // RFC 7617 §2: base64 of user-id ":" password. Buffer would quietly skip bad characters.
      if (credentials === '' || !STRICT_BASE64.test(credentials)) return malformed
      try {
        utf8.decode(Buffer.from(credentials, 'base64'))
      } catch {
        return malformed
      }
      return new Promise<AuthResult>((resolve) => {
        const basicAuth = scope.basicAuth as unknown as (req: FastifyRequest, rep: FastifyReply, done: (err?: Error) => void) => void
        basicAuth.call(scope, request, reply, (err?: Error) => {
          if (err === undefined) resolve(verified.get(request) ?? invalid)
          else resolve(err instanceof BadCredentials ? invalid : err instanceof Busy ? busy : malformed)
        })
      })
    }
  }
}

/**
 * A JWKS (RFC 7517) key set fetched from the configured URL — never from a URL a token names.
 * Keys are cached for `cacheTtl`. A token whose `kid` is unknown triggers a refetch (key
 * rotation), but fetches are single-flight (concurrent requests share one) and at least
 * `refetchInterval` apart, so a flood of made-up kids costs the JWKS server one request. When a
 * fetch fails the keys already known stay in use.
 * Not get-jwks 11 or jwks-rsa 4: against a local JWKS, 100 tokens with made-up kids cost each of
 * them 100 fetches (jwks-rsa with rateLimit: 9, then "Too many requests" for the rest) and this
 * client at most one, and both accept an 8 MiB key set that this client refuses past 512 KiB
 * (`node --import=@swc-node/register/esm-register jwks-flood.mts`, script in the issue 14 report).
 * Each key's PEM is parsed once per user of the set (an issuer's verifier, see `verifierFor`), not
 * once per token: a never-seen token costs about what it costs with the same key as `publicKey`.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { request } from 'undici'
import { algorithmsForKey } from './jwt-keys.js'

export interface JwksOptions {
  cacheTtlMs: number
  refetchIntervalMs: number
  timeoutMs: number
}

export interface JwksKey {
  kid: string | undefined
  /** The key's `alg` when the JWK names one: then only that algorithm. */
  alg: string | undefined
  key: KeyObject
  pem: string
}

/** Why no key was found; `unavailable` means the set could never be fetched. */
export class JwksError extends Error {
  constructor (readonly reason: 'unknown-kid' | 'unavailable' | 'algorithm', message: string) {
    super(message)
  }
}

const MAX_BYTES = 512 * 1024

export class JwksClient {
  private keys: JwksKey[] = []
  private loaded = false
  private fetchedAt = 0
  private lastAttempt = -Infinity
  private inflight: Promise<void> | null = null
  /** What `verifierFor` made from the keys served now: by key PEM, then by its user. */
  private readonly prepared = new Map<string, Map<object, unknown>>()
  /** How many fetches were started (for tests and metrics). */
  fetches = 0
  /** How many verifiers `verifierFor` made, each parsing its key once (for tests and metrics). */
  preparations = 0

  constructor (readonly url: string, private readonly options: JwksOptions, private readonly onError: (err: Error) => void = () => {}) {}

  /** The verifiers held for the keys served now (those of keys no longer served are dropped). */
  get preparedKeys (): number {
    let n = 0
    for (const byUser of this.prepared.values()) n += byUser.size
    return n
  }

  /**
   * What `make` built from the key for this token header, made once per key and `user` (an
   * issuer's options: several issuers may share one set) and kept while the set serves that key.
   * Synchronous when the set is fresh and knows the kid; otherwise it fetches as `keyFor` does.
   * Throws (or rejects with) a JwksError when no key fits.
   */
  verifierFor<V> (kid: unknown, alg: string, user: object, make: (key: JwksKey) => V): V | Promise<V> {
    const found = this.loaded && Date.now() - this.fetchedAt <= this.options.cacheTtlMs ? this.fitting(kid, alg) : undefined
    if (found !== undefined) return this.prepare(found, user, make)
    return this.keyFor(kid, alg).then((key) => this.prepare(key, user, make))
  }

  private prepare<V> (key: JwksKey, user: object, make: (key: JwksKey) => V): V {
    const byUser = this.prepared.get(key.pem)
    if (byUser?.has(user) === true) return byUser.get(user) as V
    const made = make(key)
    this.preparations++
    // Kept only while the set serves the key (a refetch may have replaced the set meanwhile).
    if (this.keys.includes(key)) {
      if (byUser === undefined) this.prepared.set(key.pem, new Map([[user, made]]))
      else byUser.set(user, made)
    }
    return made
  }

  /** The key for this token header, refetching once (rate-limited) if its kid is unknown. */
  async keyFor (kid: unknown, alg: string): Promise<JwksKey> {
    if (kid !== undefined && typeof kid !== 'string') throw new JwksError('unknown-kid', 'kid must be a string')
    const now = Date.now()
    if (!this.loaded || now - this.fetchedAt > this.options.cacheTtlMs) await this.refresh()
    let found = this.find(kid, alg)
    if (found === undefined && this.loaded) {
      await this.refresh()
      found = this.find(kid, alg)
    }
    if (!this.loaded) throw new JwksError('unavailable', 'the key set could not be fetched')
    if (found === undefined) throw new JwksError('unknown-kid', 'no key for this kid')
    checkAlgorithm(found, alg)
    return found
  }

  /** The known key for this header without fetching, or undefined; throws when its algorithm does not fit. */
  private fitting (kid: unknown, alg: string): JwksKey | undefined {
    if (kid !== undefined && typeof kid !== 'string') throw new JwksError('unknown-kid', 'kid must be a string')
    const found = this.find(kid, alg)
    if (found !== undefined) checkAlgorithm(found, alg)
    return found
  }

  private find (kid: string | undefined, alg: string): JwksKey | undefined {
    if (kid !== undefined) return this.keys.find((k) => k.kid === kid)
    // No kid: only unambiguous when exactly one key fits the algorithm.
    const fits = this.keys.filter((k) => (k.alg === undefined || k.alg === alg) && algorithmsForKey(k.key).includes(alg as never))
    return fits.length === 1 ? fits[0] : undefined
  }

  /** Fetch the set again unless a fetch is running (then wait for it) or one ran too recently. */
  refresh (): Promise<void> {
    if (this.inflight !== null) return this.inflight
    if (Date.now() - this.lastAttempt < this.options.refetchIntervalMs) return Promise.resolve()
    this.lastAttempt = Date.now()
    this.inflight = this.fetch().then((keys) => {
      this.keys = keys
      const served = new Set(keys.map((k) => k.pem))
      for (const pem of this.prepared.keys()) if (!served.has(pem)) this.prepared.delete(pem)
      this.loaded = true
      this.fetchedAt = Date.now()
    }, (err: Error) => {
      this.onError(err)
    }).finally(() => { this.inflight = null })
    return this.inflight
  }

  private async fetch (): Promise<JwksKey[]> {
    this.fetches++
    const res = await request(this.url, {
      method: 'GET',
      headers: { accept: 'application/jwk-set+json, application/json' },
      headersTimeout: this.options.timeoutMs,
      bodyTimeout: this.options.timeoutMs,
      signal: AbortSignal.timeout(this.options.timeoutMs)
    })
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new Error(`JWKS ${this.url} answered ${res.statusCode}`)
    }
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length
      if (size > MAX_BYTES) {
        res.body.destroy()
        throw new Error(`JWKS ${this.url} is larger than ${MAX_BYTES} bytes`)
      }
      chunks.push(chunk as Buffer)
    }
    const doc = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { keys?: unknown }
    if (!Array.isArray(doc.keys)) throw new Error(`JWKS ${this.url} has no "keys" array`)
    return doc.keys.flatMap((jwk) => toKey(jwk))
  }
}

function checkAlgorithm (key: JwksKey, alg: string): void {
  if ((key.alg !== undefined && key.alg !== alg) || !algorithmsForKey(key.key).includes(alg as never)) {
    throw new JwksError('algorithm', 'the key does not fit the algorithm')
  }
}

/** A usable public signing key, or nothing: symmetric and private keys are never taken from a JWKS. */
function toKey (jwk: unknown): JwksKey[] {
  if (jwk === null || typeof jwk !== 'object') return []
  const j = jwk as Record<string, unknown>
  if (j.kty !== 'RSA' && j.kty !== 'EC' && j.kty !== 'OKP') return []
  if (j.use !== undefined && j.use !== 'sig') return []
  if ('d' in j) return []
  if (j.kid !== undefined && typeof j.kid !== 'string') return []
  if (j.alg !== undefined && typeof j.alg !== 'string') return []
  try {
    const key = createPublicKey({ key: j as never, format: 'jwk' })
    return [{ kid: j.kid as string | undefined, alg: j.alg as string | undefined, key, pem: key.export({ type: 'spki', format: 'pem' }) as string }]
  } catch {
    return []
  }
}

/**
 * API keys: `X-Api-Key` (name configurable with `apiKeyHeader`), stored as SHA-256 hashes, each
 * with a name (the identity's subject) and scopes. The presented key is hashed once and looked up
 * by its digest in a Map: the cost of a request does not grow with the number of keys.
 *
 * It used to compare the digest with every configured hash in constant time, so that timing said
 * nothing about which key came close; that made every request, an anonymous one with a made-up
 * key included, cost about 55 ns per configured key (10,000 keys: 636 µs against 99 µs for 10,
 * 6.3× a request; 1,000,000 keys: 129 ms — `npm run bench -- --scale`), an easy way for one
 * client to burn the gateway's CPU. A lookup's timing can only tell how close the *digest* of a
 * guess came to a configured digest, and a digest is no use without a key that hashes to it (a
 * SHA-256 preimage): the same reasoning as a database index on token hashes.
 */
import type { ApiKeyConfig, Identity } from '../../schemas/auth.js'
import { AuthFailure, quote, type Authenticator } from './auth-common.js'
import { hashApiKey } from './password-hash.js'

const MAX_KEY_LENGTH = 512

export function createApiKeyAuthenticator (keys: readonly ApiKeyConfig[], headerName: string, realm: string): Authenticator {
  const header = headerName.toLowerCase()
  // keyHash (sha256$<lower-case hex>, as hashApiKey writes it) → identity; a key listed twice: the last entry, as before.
  const byDigest = new Map<string, Identity>()
  for (const k of keys) {
    const scopes = Object.freeze([...k.scopes])
    const identity: Identity = Object.freeze({ subject: k.name, scopes, scheme: 'apiKey', claims: Object.freeze({ sub: k.name, scope: scopes.join(' ') }) })
    byDigest.set(k.keyHash ?? '', identity)
  }
  const malformed = new AuthFailure('malformed', `The ${headerName} header is malformed.`)
  const invalid = new AuthFailure('invalid', 'Invalid API key.')
  const challenge = `ApiKey realm=${quote(realm)}, header=${quote(headerName)}`

  return {
    scheme: 'apiKey',
    challenge: () => challenge,
    authenticate (request) {
      const value = request.headers[header]
      if (value === undefined) return null
      if (typeof value !== 'string' || value === '' || value.length > MAX_KEY_LENGTH) return malformed
      return byDigest.get(hashApiKey(value)) ?? invalid
    }
  }
}

/**
 * API keys: `X-Api-Key` (name configurable with `apiKeyHeader`), stored as SHA-256 hashes, each
 * with a name (the identity's subject) and scopes. The presented key is hashed once and compared
 * with every configured hash in constant time, without stopping at the first match, so the
 * timing says nothing about how close a guess came or which key it matched.
 */
import { timingSafeEqual } from 'node:crypto'
import type { ApiKeyConfig, Identity } from '../../schemas/auth.js'
import { AuthFailure, quote, type Authenticator } from './auth-common.js'
import { apiKeyDigest } from './password-hash.js'

const MAX_KEY_LENGTH = 512

export function createApiKeyAuthenticator (keys: readonly ApiKeyConfig[], headerName: string, realm: string): Authenticator {
  const header = headerName.toLowerCase()
  const table = keys.map((k) => {
    const scopes = Object.freeze([...k.scopes])
    const identity: Identity = Object.freeze({ subject: k.name, scopes, scheme: 'apiKey', claims: Object.freeze({ sub: k.name, scope: scopes.join(' ') }) })
    return { digest: Buffer.from((k.keyHash ?? '').slice('sha256$'.length), 'hex'), identity }
  })
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
      const digest = apiKeyDigest(value)
      let found: Identity | null = null
      for (const entry of table) {
        if (timingSafeEqual(digest, entry.digest)) found = entry.identity
      }
      return found ?? invalid
    }
  }
}

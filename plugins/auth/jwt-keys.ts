/**
 * Which JWS algorithms a key may verify (RFC 7518), so that a token can never pick an algorithm
 * its key was not made for: an HMAC secret only HS*, an RSA key only RS and PS, an EC key only
 * the ES algorithm of its curve, an Ed25519/Ed448 key only EdDSA. This is the whole defence
 * against "key confusion" (an HS256 token signed with the RSA public key as the secret).
 */
import type { KeyObject } from 'node:crypto'
import { HMAC_ALGORITHMS, type JwtAlgorithm } from '../../schemas/auth.js'

export function isHmac (alg: string): boolean {
  return (HMAC_ALGORITHMS as readonly string[]).includes(alg)
}

/** RFC 7518 §3.2: an HMAC key at least as long as the hash output. */
export const HMAC_MIN_BYTES: Record<string, number> = { HS256: 32, HS384: 48, HS512: 64 }

export function algorithmsForKey (key: KeyObject): JwtAlgorithm[] {
  switch (key.asymmetricKeyType) {
    case 'rsa': return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']
    case 'rsa-pss': return ['PS256', 'PS384', 'PS512']
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve
      if (curve === 'prime256v1' || curve === 'P-256') return ['ES256']
      if (curve === 'secp384r1' || curve === 'P-384') return ['ES384']
      if (curve === 'secp521r1' || curve === 'P-521') return ['ES512']
      return []
    }
    case 'ed25519':
    case 'ed448':
      return ['EdDSA']
    default:
      return []
  }
}

/** A PEM given inline (starts with -----BEGIN) rather than as a file path. */
export function isInlinePem (value: string): boolean {
  return value.trimStart().startsWith('-----BEGIN')
}

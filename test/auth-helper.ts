/**
 * Helpers for the authentication tests: cheap password hashes, signed tokens, key pairs, a real
 * JWKS server on 127.0.0.1 with key rotation, and a listener that records any connection
 * (for jku/x5u URLs that must never be fetched).
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import { parseConfig } from '../src/config.js'
import { buildGateway } from '../src/app.js'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'
import type { RawConfig, T } from './helper.js'

/** A scrypt hash with the lowest accepted cost, so that tests run fast. */
export function cheapHash (password: string): string {
  return hashPasswordSync(password, { N: 1024, r: 8, p: 1 })
}

export function basic (user: string, password: string): string {
  return 'Basic ' + Buffer.from(`${user}:${password}`, 'utf8').toString('base64')
}

export const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long!'

const now = (): number => Math.floor(Date.now() / 1000)

/** HS256 (default) token with exp in 5 minutes unless the claims say otherwise. */
export function hsToken (claims: Record<string, unknown>, options: { secret?: string, algorithm?: string, header?: Record<string, unknown> } = {}): string {
  const sign = createSigner({ key: options.secret ?? SECRET, algorithm: (options.algorithm ?? 'HS256') as never, header: options.header as never })
  return sign({ exp: now() + 300, ...claims })
}

export interface KeyPair { publicKey: KeyObject, privateKey: KeyObject, publicPem: string, privatePem: string }

export function rsaPair (): KeyPair {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  return {
    publicKey,
    privateKey,
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  }
}

export function signWith (pair: KeyPair, claims: Record<string, unknown>, options: { algorithm?: string, kid?: string, header?: Record<string, unknown> } = {}): string {
  const sign = createSigner({ key: pair.privatePem, algorithm: (options.algorithm ?? 'RS256') as never, kid: options.kid, header: options.header as never })
  return sign({ exp: now() + 300, ...claims })
}

/** `base64url(header).base64url(payload).signature` put together by hand (for tokens no library would sign). */
export function rawToken (header: Record<string, unknown>, payload: Record<string, unknown>, signature = ''): string {
  const enc = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')
  return `${enc(header)}.${enc(payload)}.${signature}`
}

export { now }

/** Parse a config with the given environment, build the gateway, close it at teardown. */
export async function gatewayFrom (t: T, raw: RawConfig, env: NodeJS.ProcessEnv = {}): Promise<FastifyInstance> {
  const config = parseConfig({ logging: { level: 'silent' }, ...raw }, { env })
  const app = await buildGateway(config)
  t.teardown(() => app.close())
  await app.ready()
  return app
}

export interface JwksServer {
  url: string
  /** Requests the server received. */
  hits: () => number
  /** Replace the served keys. */
  serve: (keys: Array<{ pair: KeyPair, kid: string, alg?: string }>) => void
  server: Server
}

/** A real JWKS endpoint on 127.0.0.1:0 serving the given public keys. */
export async function startJwks (t: T, keys: Array<{ pair: KeyPair, kid: string, alg?: string }>, port = 0): Promise<JwksServer> {
  let served = keys
  let hits = 0
  const server = createServer((_req, res) => {
    hits++
    const body = JSON.stringify({
      keys: served.map(({ pair, kid, alg }) => ({ ...pair.publicKey.export({ format: 'jwk' }), kid, use: 'sig', ...(alg === undefined ? {} : { alg }) }))
    })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const bound = (server.address() as AddressInfo).port
  return { url: `http://127.0.0.1:${bound}/.well-known/jwks.json`, hits: () => hits, serve: (k) => { served = k }, server }
}

/** A TCP listener that counts connections: a URL on it must never be contacted. */
export async function startTrap (t: T): Promise<{ url: string, connections: () => number }> {
  let connections = 0
  const server = createNetServer((socket) => { connections++; socket.destroy() })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/keys`, connections: () => connections }
}

/**
 * The checks on the auth sections of the config that its schema cannot express (called from
 * src/config.ts with the other semantic checks), and the one-time preparation of secrets at
 * start: plain `${ENV}` passwords and API keys hashed, PEM files read.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'
import type { GatewayConfig } from '../schemas/config.js'
import { RESERVED_PATHS } from '../schemas/config.js'
import type { JwtIssuerConfig } from '../schemas/auth.js'
import { algorithmsForKey, HMAC_MIN_BYTES, isHmac, isInlinePem } from '../plugins/auth/jwt-keys.js'
import { ENV_SCRYPT, hashApiKey, hashPasswordSync, parsePasswordHash } from '../plugins/auth/password-hash.js'

export interface AuthCheckContext {
  /** Paths (`users[1].password`) whose value was one whole `${VAR}` reference. */
  fromEnv: ReadonlySet<string>
  /** Folder relative key files resolve against. */
  baseDir: string
}

const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]'])

function readPem (value: string, baseDir: string): string {
  return isInlinePem(value) ? value : readFileSync(isAbsolute(value) ? value : resolve(baseDir, value), 'utf8')
}

function loadKey (value: string, baseDir: string, kind: 'public' | 'private', path: string, problems: string[]): KeyObject | null {
  let pem: string
  try {
    pem = readPem(value, baseDir)
  } catch (err) {
    problems.push(`${path}: cannot read ${value}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
    return null
  }
  try {
    return kind === 'public' ? createPublicKey(pem) : createPrivateKey(pem)
  } catch {
    problems.push(`${path}: not a PEM ${kind} key`)
    return null
  }
}

interface KeyEntry extends Partial<JwtIssuerConfig> { algorithms: JwtIssuerConfig['algorithms'] & {} }

/** One issuer's keys: exactly one source, and algorithms that fit it. */
function checkKeySource (entry: KeyEntry, at: string, ctx: AuthCheckContext, problems: string[], required: boolean): void {
  const sources = (['secret', 'publicKey', 'jwksUrl'] as const).filter((k) => entry[k] !== undefined)
  if (sources.length > 1) {
    problems.push(`${at}: give one of secret, publicKey, jwksUrl (not ${sources.join(' and ')})`)
    return
  }
  if (sources.length === 0) {
    if (required) problems.push(`${at}: one of secret, publicKey or jwksUrl is required`)
    return
  }
  const algs = entry.algorithms
  const hmac = algs.filter(isHmac)
  const asym = algs.filter((a) => !isHmac(a))
  if (entry.secret !== undefined) {
    if (asym.length > 0) problems.push(`${at}.algorithms: ${asym.join(', ')} cannot be verified with a shared secret (use publicKey or jwksUrl)`)
    const bytes = Buffer.byteLength(entry.secret)
    for (const alg of hmac) {
      if (bytes < HMAC_MIN_BYTES[alg]) problems.push(`${at}.secret: ${alg} needs a secret of at least ${HMAC_MIN_BYTES[alg]} bytes (this one has ${bytes})`)
    }
    return
  }
  if (hmac.length > 0) {
    problems.push(`${at}.algorithms: ${hmac.join(', ')} needs a shared secret; with ${sources[0]} list only asymmetric algorithms (key confusion)`)
  }
  if (entry.publicKey !== undefined) {
    const key = loadKey(entry.publicKey, ctx.baseDir, 'public', `${at}.publicKey`, problems)
    if (key === null) return
    const fits = algorithmsForKey(key)
    const unfit = asym.filter((a) => !fits.includes(a))
    if (unfit.length > 0) problems.push(`${at}.algorithms: ${unfit.join(', ')} cannot be verified with this ${key.asymmetricKeyType ?? ''} key`)
  }
  if (entry.jwksUrl !== undefined) {
    let url: URL | null = null
    try { url = new URL(entry.jwksUrl) } catch {}
    if (url === null || (url.protocol !== 'https:' && url.protocol !== 'http:')) problems.push(`${at}.jwksUrl: must be an https URL`)
    else if (url.protocol === 'http:' && !LOOPBACK.has(url.hostname)) problems.push(`${at}.jwksUrl: must be https (http only on loopback)`)
    else if (url.username !== '' || url.password !== '') problems.push(`${at}.jwksUrl: must not carry credentials`)
  }
}

export function checkAuthSemantics (config: GatewayConfig, problems: string[], ctx: AuthCheckContext): void {
  const usernames = new Map<string, number>()
  config.users.forEach((user, i) => {
    const at = `users[${i}]`
    const first = usernames.get(user.username)
    if (first !== undefined) problems.push(`${at}.username: "${user.username}" is already users[${first}]`)
    else usernames.set(user.username, i)
    if ((user.password === undefined) === (user.passwordHash === undefined)) {
      problems.push(`${at}: give one of passwordHash (from \`portcullis hash-password\`) or password (from the environment)`)
    } else if (user.password !== undefined && !ctx.fromEnv.has(`${at}.password`)) {
      problems.push(`${at}.password: a plain password is accepted only as \${ENV_VAR}; write passwordHash instead (portcullis hash-password)`)
    } else if (user.passwordHash !== undefined && parsePasswordHash(user.passwordHash) === null) {
      problems.push(`${at}.passwordHash: not a valid scrypt hash (N a power of 2 from 1024 to 1048576, r 1-32, p 1-16)`)
    }
  })

  const keyNames = new Map<string, number>()
  const keyHashes = new Map<string, number>()
  config.apiKeys.forEach((key, i) => {
    const at = `apiKeys[${i}]`
    const first = keyNames.get(key.name)
    if (first !== undefined) problems.push(`${at}.name: "${key.name}" is already apiKeys[${first}]`)
    else keyNames.set(key.name, i)
    if ((key.key === undefined) === (key.keyHash === undefined)) {
      problems.push(`${at}: give one of keyHash (from \`portcullis api-key\`) or key (from the environment)`)
      return
    }
    if (key.key !== undefined && !ctx.fromEnv.has(`${at}.key`)) {
      problems.push(`${at}.key: a plain key is accepted only as \${ENV_VAR}; write keyHash instead (portcullis api-key)`)
      return
    }
    const hash = key.keyHash ?? hashApiKey(key.key ?? '')
    const same = keyHashes.get(hash)
    if (same !== undefined) problems.push(`${at}: the same key as apiKeys[${same}]`)
    else keyHashes.set(hash, i)
  })

  const jwt = config.jwt
  if (jwt !== undefined) {
    checkKeySource(jwt, 'jwt', ctx, problems, jwt.issuers.length === 0)
    const issuers = new Map<string, number>()
    jwt.issuers.forEach((entry, i) => {
      const at = `jwt.issuers[${i}]`
      const first = issuers.get(entry.issuer)
      if (first !== undefined) problems.push(`${at}.issuer: "${entry.issuer}" is already jwt.issuers[${first}]`)
      else issuers.set(entry.issuer, i)
      if (entry.issuer === jwt.issuer) problems.push(`${at}.issuer: "${entry.issuer}" is already jwt.issuer`)
      checkKeySource({ ...entry, algorithms: entry.algorithms ?? jwt.algorithms }, at, ctx, problems, true)
    })
  }

  const te = config.tokenEndpoint
  if (te !== undefined) {
    if (jwt === undefined) {
      problems.push('tokenEndpoint: needs a jwt section (the key and algorithms its tokens are signed and verified with)')
    } else {
      const alg = te.algorithm ?? jwt.algorithms[0]
      if (!jwt.algorithms.includes(alg)) problems.push(`tokenEndpoint.algorithm: ${alg} is not in jwt.algorithms, so its tokens would not verify`)
      if (isHmac(alg)) {
        if (jwt.secret === undefined) problems.push(`tokenEndpoint: ${alg} signs with jwt.secret, which is not set`)
        if (te.privateKey !== undefined) problems.push(`tokenEndpoint.privateKey: not used with ${alg} (it signs with jwt.secret)`)
      } else if (te.privateKey === undefined) {
        problems.push(`tokenEndpoint.privateKey: required to sign ${alg} tokens`)
      } else {
        const key = loadKey(te.privateKey, ctx.baseDir, 'private', 'tokenEndpoint.privateKey', problems)
        if (key !== null && !algorithmsForKey(key).includes(alg)) problems.push(`tokenEndpoint.privateKey: cannot sign ${alg}`)
        if (key !== null && jwt.publicKey !== undefined) {
          try {
            const pub = createPublicKey(key).export({ type: 'spki', format: 'pem' })
            const configured = createPublicKey(readPem(jwt.publicKey, ctx.baseDir)).export({ type: 'spki', format: 'pem' })
            if (pub !== configured) problems.push('tokenEndpoint.privateKey: does not match jwt.publicKey, so its tokens would not verify')
          } catch {} // jwt.publicKey problems are reported above
        }
      }
    }
    if (config.users.length === 0) problems.push('tokenEndpoint: there are no users to issue tokens to')
    const path = te.path.replace(/\/+$/, '') || '/'
    for (const reserved of RESERVED_PATHS) if (path === reserved) problems.push(`tokenEndpoint.path: "${path}" is the gateway's own ${reserved}`)
    config.routes.forEach((route, i) => {
      const prefix = route.prefix.replace(/\/+$/, '') || '/'
      if (prefix === '/' || path === prefix || path.startsWith(prefix + '/')) {
        problems.push(`tokenEndpoint.path: "${path}" is under routes[${i}].prefix "${prefix}"`)
      }
    })
  }

  const idHeaders = Object.entries(config.identityHeaders).map(([k, v]) => [k, v.toLowerCase()] as const)
  const taken = new Set(['authorization', 'host', 'cookie', 'x-request-id', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', config.apiKeyHeader.toLowerCase()])
  const seen = new Set<string>()
  for (const [k, v] of idHeaders) {
    if (taken.has(v)) problems.push(`identityHeaders.${k}: "${v}" is a header the gateway uses for something else`)
    else if (seen.has(v)) problems.push(`identityHeaders.${k}: "${v}" is named twice`)
    seen.add(v)
  }

  const configured = { jwt: jwt !== undefined, basic: config.users.length > 0, apiKey: config.apiKeys.length > 0 }
  const needs = { jwt: 'a jwt section', basic: 'users', apiKey: 'apiKeys' }
  config.routes.forEach((route, i) => {
    const at = `routes[${i}]`
    for (const scheme of route.auth) {
      if (!configured[scheme]) problems.push(`${at}.auth: "${scheme}" needs ${needs[scheme]}, and none is configured`)
    }
    const scoped = Object.keys(route.scopes).length > 0
    if (route.auth.length === 0 && scoped) problems.push(`${at}.scopes: a public route (no auth) cannot require scopes; add auth`)
    if (route.auth.length === 0 && Object.keys(route.require).length > 0) problems.push(`${at}.require: a public route (no auth) cannot require claims; add auth`)
    for (const method of Object.keys(route.scopes)) {
      if (method !== '*' && !(route.methods as string[]).includes(method)) problems.push(`${at}.scopes.${method}: ${method} is not in ${at}.methods`)
    }
  })
}

/**
 * Runs once the config is valid: plain `${ENV}` passwords and keys are replaced by their hashes
 * (so the plain text is not kept in the config), and PEM key files are read into the config.
 */
export function prepareAuthSecrets (config: GatewayConfig, baseDir: string): void {
  // A password from the environment is in the process's memory in plain text anyway, so its hash
  // guards nothing at rest: it gets the parameters of the file's own hashes (so that every user,
  // and the dummy checked for unknown names, costs the same), or else the cheaper ENV_SCRYPT.
  const fileParams = config.users.map((u) => u.passwordHash === undefined ? null : parsePasswordHash(u.passwordHash)).find((h) => h !== null)?.params
  for (const user of config.users) {
    if (user.password !== undefined) {
      user.passwordHash = hashPasswordSync(user.password, fileParams ?? ENV_SCRYPT)
      delete user.password
    }
  }
  for (const key of config.apiKeys) {
    if (key.key !== undefined) {
      key.keyHash = hashApiKey(key.key)
      delete key.key
    }
  }
  const jwt = config.jwt
  if (jwt !== undefined) {
    if (jwt.publicKey !== undefined) jwt.publicKey = readPem(jwt.publicKey, baseDir)
    for (const entry of jwt.issuers) if (entry.publicKey !== undefined) entry.publicKey = readPem(entry.publicKey, baseDir)
  }
  if (config.tokenEndpoint?.privateKey !== undefined) config.tokenEndpoint.privateKey = readPem(config.tokenEndpoint.privateKey, baseDir)
}

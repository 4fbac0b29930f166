/**
 * No known secret served on a non-loopback address. The demo config (gateway.yaml), the compose
 * files (.env.example) and the Kubernetes example ship secrets and passwords that anyone can read;
 * they are collected here, in KNOWN_DEMO_SECRETS, and a config that uses one of them is refused
 * unless `server.host` is a loopback address (127.0.0.0/8, ::1, localhost), where the demo keeps
 * working and one warning names the keys. (HS* secrets shorter than RFC 7518 §3.2's minimum are
 * refused on every address by the jwt key checks in src/auth-config.ts.)
 *
 * `checkKnownSecrets` runs with the other semantic checks (src/config.ts), so `portcullis start`,
 * `portcullis validate` and `loadConfig` all report it; what it found is remembered per config
 * (`knownSecretsOf`) so that `portcullis start --host` can refuse a loopback config moved onto
 * a public address.
 */
import { isIPv4, isIPv6 } from 'node:net'

/** Every secret, password or key value the project publishes in an example; never served publicly. */
export const KNOWN_DEMO_SECRETS: readonly string[] = Object.freeze([
  // gateway.yaml (`npm start`)
  'demo-only-secret-set-JWT_SECRET-in-production',
  'demo-password',
  'reader-password',
  // .env.example (docker compose) and its former Kubernetes copy (deploy/k8s/secret.yaml)
  'replace-me-with-48-random-bytes-base64-xxxxxxxxxxxxxxxx',
  'replace-me-with-another-random-secret',
  'replace-me-alice',
  'replace-me-bob',
  'replace-me-carol',
  'replace-me'
])

const KNOWN = new Set(KNOWN_DEMO_SECRETS)

/** One key of a config that holds a known secret. */
export interface KnownSecret {
  /** `jwt.secret`, `users[0].password`, `apiKeys[1].key` */
  path: string
  /** The environment variable it came from (`JWT_SECRET`), when it was one whole `${VAR}` reference. */
  envVar?: string
  /** The problem: `jwt.secret: is the published demo secret; set JWT_SECRET to …`. */
  message: string
}

/** Whether listening on `host` keeps the gateway on this machine: 127.0.0.0/8, ::1, localhost. 0.0.0.0 and :: are not. */
export function isLoopbackHost (host: string): boolean {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
  if (h.toLowerCase() === 'localhost') return true
  if (isIPv4(h)) return h.startsWith('127.')
  if (isIPv6(h)) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(h)
    if (mapped?.[1] !== undefined) return isIPv4(mapped[1]) && mapped[1].startsWith('127.')
    // ::1 in any spelling (0:0:0:0:0:0:0:1, ::0:1 …)
    const groups = expandIPv6(h)
    return groups !== null && groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1
  }
  return false
}

function expandIPv6 (h: string): number[] | null {
  const [head = '', tail] = h.split('::')
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)))
  const a = parse(head)
  const b = tail === undefined ? [] : parse(tail)
  if (tail === undefined) return a.length === 8 ? a : null
  return [...a, ...new Array<number>(8 - a.length - b.length).fill(0), ...b]
}

/** The raw (unsubstituted) value at `segments` of the config as written, to name its ${VAR}. */
function envVarAt (raw: unknown, segments: Array<string | number>): string | undefined {
  let node = raw
  for (const s of segments) {
    if (node === null || typeof node !== 'object') return undefined
    node = (node as Record<string | number, unknown>)[s]
  }
  if (typeof node !== 'string') return undefined
  return /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}$/.exec(node)?.[1]
}

const found = new WeakMap<object, readonly KnownSecret[]>()

/** What `checkKnownSecrets` found in this config (empty when nothing, or when it was not checked). */
export function knownSecretsOf (config: object): readonly KnownSecret[] {
  return found.get(config) ?? []
}

interface SecretsView {
  server: { host: string }
  users: ReadonlyArray<{ password?: string }>
  apiKeys: ReadonlyArray<{ key?: string }>
  jwt?: { secret?: string, issuers: ReadonlyArray<{ secret?: string }> }
}

/**
 * Finds the known secrets in `config` (`raw` is the config as written, before `${VAR}`
 * substitution, to name the variable to set). On a non-loopback `server.host` each one is a
 * problem; on loopback they are returned as warnings (one line naming every key) and the config
 * stays valid.
 */
export function checkKnownSecrets (config: SecretsView, problems: string[], raw?: unknown): string[] {
  const hits: KnownSecret[] = []
  const secretFix = (envVar: string | undefined): string =>
    `${envVar === undefined ? 'give it' : `set ${envVar} to`} your own secret of at least 32 bytes (openssl rand -base64 48)`
  const jwt = config.jwt
  const jwtSecret = (secret: string | undefined, path: string, segments: Array<string | number>): void => {
    if (secret === undefined || !KNOWN.has(secret)) return
    const envVar = envVarAt(raw, segments)
    hits.push({ path, envVar, message: `${path}: is the published demo secret; ${secretFix(envVar)}` })
  }
  if (jwt !== undefined) {
    jwtSecret(jwt.secret, 'jwt.secret', ['jwt', 'secret'])
    jwt.issuers.forEach((entry, i) => { jwtSecret(entry.secret, `jwt.issuers[${i}].secret`, ['jwt', 'issuers', i, 'secret']) })
  }
  config.users.forEach((user, i) => {
    if (user.password === undefined || !KNOWN.has(user.password)) return
    const path = `users[${i}].password`
    const envVar = envVarAt(raw, ['users', i, 'password'])
    const fix = envVar === undefined ? 'use a password of your own' : `set ${envVar} to a password of your own`
    hits.push({ path, envVar, message: `${path}: is a published demo password; ${fix} (or write passwordHash from \`portcullis hash-password\`)` })
  })
  config.apiKeys.forEach((key, i) => {
    if (key.key === undefined || !KNOWN.has(key.key)) return
    const path = `apiKeys[${i}].key`
    const envVar = envVarAt(raw, ['apiKeys', i, 'key'])
    const fix = envVar === undefined ? 'use a key of your own' : `set ${envVar} to a key of your own`
    hits.push({ path, envVar, message: `${path}: is a published demo key; ${fix} (or write keyHash from \`portcullis api-key\`)` })
  })
  found.set(config, hits)
  if (hits.length === 0) return []
  if (!isLoopbackHost(config.server.host)) {
    for (const hit of hits) problems.push(hit.message)
    return []
  }
  return [knownSecretsWarning(hits, config.server.host)]
}

/** The one warning for known secrets on a loopback address. */
export function knownSecretsWarning (hits: readonly KnownSecret[], host: string): string {
  const vars = hits.map((h) => h.envVar).filter((v): v is string => v !== undefined)
  const fix = vars.length > 0 ? `set ${[...new Set(vars)].join(', ')} before exposing it` : 'replace them before exposing it'
  return `${hits.map((h) => h.path).join(', ')}: published demo ${hits.length === 1 ? 'value' : 'values'}, accepted only because the gateway listens on loopback (${host}); it refuses to start with them on any other address: ${fix}`
}

/** The problems for a config whose known secrets were fine on its own loopback host but not on `host` (the --host override). */
export function knownSecretProblems (config: object, host: string): string[] {
  if (isLoopbackHost(host)) return []
  return knownSecretsOf(config).map((h) => h.message)
}

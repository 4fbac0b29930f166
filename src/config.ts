/**
 * Loading the config file: read (YAML or JSON) → substitute ${ENV} → apply defaults →
 * validate against schemas/config.ts → semantic checks → resolve paths → deep-freeze.
 * Every problem is reported as `path: message`, all at once, in a ConfigError.
 */
import { readFileSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { Compile } from 'typebox/compile'
import { Value } from 'typebox/value'
import { Settings } from 'typebox/system'
import { GatewayConfigSchema, RESERVED_PATHS, type GatewayConfig } from '../schemas/config.js'
import { PATTERN_PHRASES, parseDuration } from '../schemas/common.js'
import { checkAuthSemantics, prepareAuthSecrets } from './auth-config.js'
import { checkValidateSemantics, resolveValidatePaths } from '../schemas/validate.js'
import { checkEdgeSemantics } from '../schemas/edge.js'
import { checkObservabilitySemantics } from '../schemas/observability.js'
import { checkKnownSecrets } from '../schemas/secure-defaults.js'

export class ConfigError extends Error {
  readonly problems: string[]
  constructor (problems: string[], source?: string) {
    super(`invalid config${source === undefined ? '' : ` in ${source}`}:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

const validator = Compile(GatewayConfigSchema)

/** Read, check and freeze a config file. Relative paths inside it resolve against its folder. */
export function loadConfig (file: string, env: NodeJS.ProcessEnv = process.env): Readonly<GatewayConfig> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError([`cannot read the config file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`], file)
  }
  let raw: unknown
  try {
    raw = parseYaml(text, { prettyErrors: true, uniqueKeys: true })
  } catch (err) {
    throw new ConfigError([`not valid YAML or JSON: ${(err as Error).message.split('\n')[0]}`], file)
  }
  return parseConfig(raw, { baseDir: dirname(resolve(file)), env, source: file })
}

export interface ParseOptions {
  /** Folder that relative paths (plugins, tls.ca) are resolved against. Default: cwd. */
  baseDir?: string
  env?: NodeJS.ProcessEnv
  /** Named in error messages. */
  source?: string
}

/** Check and freeze a config given as an object (what a YAML file parses to). */
export function parseConfig (raw: unknown, options: ParseOptions = {}): Readonly<GatewayConfig> {
  const env = options.env ?? process.env
  const problems: string[] = []
  const fromEnv = new Set<string>()
  const substituted = substituteEnv(structuredClone(raw ?? {}), env, '', problems, fromEnv)
  if (problems.length > 0) throw new ConfigError(problems, options.source)

  const withDefaults = Value.Default(GatewayConfigSchema, substituted)
  // Values that came from the environment are strings: let "8080" stand for a port, "true" for a flag.
  const converted = Value.Convert(GatewayConfigSchema, withDefaults)
  if (!validator.Check(converted)) {
    throw new ConfigError(formatSchemaErrors(allSchemaErrors(converted)), options.source)
  }
  const config = converted as GatewayConfig
  const baseDir = options.baseDir ?? process.cwd()
  checkSemantics(config, problems)
  checkAuthSemantics(config, problems, { fromEnv, baseDir })
  // Published demo secrets: refused off loopback, one warning on loopback.
  const warnings = checkKnownSecrets(config, problems, raw)
  if (problems.length > 0) throw new ConfigError(problems, options.source)
  for (const warning of warnings) process.emitWarning(warning, { type: 'PortcullisWarning', code: 'PORTCULLIS_KNOWN_SECRET' })
  resolvePaths(config, baseDir)
  prepareAuthSecrets(config, baseDir)
  return deepFreeze(config)
}

// --- ${ENV} substitution -----------------------------------------------------------------

const ENV_REF = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g

/** A value that is one whole `${VAR}` / `${VAR:-default}` reference (recorded in `fromEnv`). */
const WHOLE_ENV_REF = /^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$/

/**
 * Replaces `${VAR}` references; the paths of values that were one whole reference go into
 * `fromEnv`, so that checks can insist a secret (a plain password) came from the environment.
 */
function substituteEnv (node: unknown, env: NodeJS.ProcessEnv, path: string, problems: string[], fromEnv?: Set<string>): unknown {
  if (typeof node === 'string') {
    if (!node.includes('${')) return node
    if (fromEnv !== undefined && WHOLE_ENV_REF.test(node)) fromEnv.add(path)
    return node.replace(ENV_REF, (whole, name: string | undefined, fallback: string | undefined) => {
      if (name === undefined) return '${' // `$${` escapes a literal `${`
      const value = env[name]
      if (value !== undefined && value !== '') return value
      if (fallback !== undefined) return fallback
      problems.push(`${path || '(root)'}: environment variable ${name} is not set (write \${${name}:-default} to give a default)`)
      return whole
    })
  }
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) node[i] = substituteEnv(node[i], env, `${path}[${i}]`, problems, fromEnv)
    return node
  }
  if (node !== null && typeof node === 'object') {
    const obj = node as Record<string, unknown>
    for (const key of Object.keys(obj)) obj[key] = substituteEnv(obj[key], env, path === '' ? key : `${path}.${key}`, problems, fromEnv)
    return obj
  }
  return node
}

// --- schema errors as `path: message` ------------------------------------------------------

interface SchemaError { keyword: string, schemaPath: string, instancePath: string, params: Record<string, unknown>, message: string }

/** `/routes/1/upstream` → `routes[1].upstream`. */
export function pointerToPath (pointer: string): string {
  let out = ''
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replaceAll('~1', '/').replaceAll('~0', '~')
    out += /^[0-9]+$/.test(part) ? `[${part}]` : (out === '' ? part : `.${part}`)
  }
  return out === '' ? '(root)' : out
}

function joinPath (path: string, key: string): string {
  return path === '(root)' ? key : `${path}.${key}`
}

/** Every schema error: TypeBox stops at 8 by default, and one bad union member alone reports one per branch. */
function allSchemaErrors (value: unknown): SchemaError[] {
  const max = Settings.Get().maxErrors
  Settings.Set({ maxErrors: 10_000 })
  try {
    return [...validator.Errors(value)]
  } finally {
    Settings.Set({ maxErrors: max })
  }
}

function formatSchemaErrors (errors: SchemaError[]): string[] {
  const unions = errors.filter((e) => e.keyword === 'anyOf')
  const handled = new Set<SchemaError>()
  const out: string[] = []
  for (const union of unions) {
    handled.add(union)
    const branchPrefix = `${union.schemaPath}/anyOf/`
    const branchErrors = errors.filter((e) => e.schemaPath.startsWith(branchPrefix))
    branchErrors.forEach((e) => handled.add(e))
    // A branch whose type matched but whose content did not: report its own errors.
    const byBranch = new Map<string, SchemaError[]>()
    for (const e of branchErrors) {
      const branch = e.schemaPath.slice(branchPrefix.length).split('/')[0]
      byBranch.set(branch, [...(byBranch.get(branch) ?? []), e])
    }
    const deep = [...byBranch.values()].find((list) => list.some((e) => e.keyword !== 'type' && e.keyword !== 'const' && e.keyword !== 'anyOf'))
    if (deep !== undefined) {
      out.push(...formatSchemaErrors(deep))
      continue
    }
    const path = pointerToPath(union.instancePath)
    const consts = branchErrors.filter((e) => e.keyword === 'const' && e.instancePath === union.instancePath).map((e) => JSON.stringify(e.params.allowedValue))
    if (consts.length > 0) {
      out.push(`${path}: must be one of ${consts.join(', ')}`)
    } else {
      const types = [...new Set(branchErrors.filter((e) => e.keyword === 'type').map((e) => String(e.params.type)))]
      out.push(`${path}: must be ${types.join(' or ')}`)
    }
  }
  for (const e of errors) {
    if (handled.has(e)) continue
    const path = pointerToPath(e.instancePath)
    switch (e.keyword) {
      case 'additionalProperties':
        for (const key of e.params.additionalProperties as string[]) out.push(`${joinPath(path, key)}: unknown key`)
        break
      case 'required':
        for (const key of e.params.requiredProperties as string[]) out.push(`${joinPath(path, key)}: required`)
        break
      case 'boolean':
        break // the additionalProperties entry already names the key
      case 'pattern':
        out.push(`${path}: ${PATTERN_PHRASES[String(e.params.pattern)] ?? `must match ${String(e.params.pattern)}`}`)
        break
      default:
        out.push(`${path}: ${e.message}`)
    }
  }
  return [...new Set(out)]
}

// --- checks a schema cannot express -------------------------------------------------------

function checkUrl (value: string, path: string, problems: string[]): void {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    problems.push(`${path}: must be an http or https URL`)
    return
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') problems.push(`${path}: must be an http or https URL`)
  else if (url.username !== '' || url.password !== '') problems.push(`${path}: must not carry credentials`)
  else if (url.search !== '' || url.hash !== '') problems.push(`${path}: must not have a query string or fragment`)
}

/** `/api/people/` → `/api/people`; `/` stays `/`. */
export function normalizePrefix (prefix: string): string {
  const trimmed = prefix.replace(/\/+$/, '')
  return trimmed === '' ? '/' : trimmed
}

function shadows (outer: string, inner: string): boolean {
  return outer === '/' || inner.startsWith(outer + '/')
}

function checkSemantics (config: GatewayConfig, problems: string[]): void {
  checkEdgeSemantics(config, problems)
  checkObservabilitySemantics(config, problems)
  const names = new Map<string, number>()
  const prefixes: Array<{ prefix: string, index: number }> = []
  const { timeouts } = config.server
  if (parseDuration(timeouts.headers) > parseDuration(timeouts.request)) {
    problems.push('server.timeouts.headers: must not be longer than server.timeouts.request')
  }
  config.routes.forEach((route, i) => {
    const at = `routes[${i}]`
    const firstName = names.get(route.name)
    if (firstName !== undefined) problems.push(`${at}.name: "${route.name}" is already the name of routes[${firstName}]`)
    else names.set(route.name, i)

    const upstreams = Array.isArray(route.upstream) ? route.upstream : [route.upstream]
    upstreams.forEach((u, j) => checkUrl(u, Array.isArray(route.upstream) ? `${at}.upstream[${j}]` : `${at}.upstream`, problems))
    if (upstreams.length > 1 && upstreams.every((u) => URL.canParse(u))) {
      const paths = new Set(upstreams.map((u) => new URL(u).pathname.replace(/\/+$/, '')))
      if (paths.size > 1) problems.push(`${at}.upstream: every URL of a balanced upstream must have the same path`)
    }

    if (/\/\/|\/\.\.?(\/|$)|%2f/i.test(route.prefix)) {
      problems.push(`${at}.prefix: must not contain "//", "." or ".." segments or an encoded "/"`)
      return
    }
    const prefix = normalizePrefix(route.prefix)
    for (const reserved of RESERVED_PATHS) {
      if (prefix === reserved || shadows(prefix, reserved) || shadows(reserved, prefix)) {
        if (prefix !== '/') problems.push(`${at}.prefix: "${prefix}" collides with the gateway's own ${reserved}`)
      }
    }
    for (const other of prefixes) {
      if (other.prefix === prefix) {
        problems.push(`${at}.prefix: "${prefix}" is already the prefix of routes[${other.index}]`)
      } else if (shadows(other.prefix, prefix)) {
        problems.push(`${at}.prefix: "${prefix}" is shadowed by routes[${other.index}].prefix "${other.prefix}"`)
      } else if (shadows(prefix, other.prefix)) {
        problems.push(`${at}.prefix: "${prefix}" shadows routes[${other.index}].prefix "${other.prefix}"`)
      }
    }
    if (route.validate !== undefined) checkValidateSemantics(route.validate, `${at}.validate`, problems, route.methods)
    prefixes.push({ prefix, index: i })
  })
}

function resolvePaths (config: GatewayConfig, baseDir: string): void {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p))
  const isPath = (p: string): boolean => p.startsWith('.') || p.startsWith('/') // bare names are packages
  for (const route of config.routes) {
    route.prefix = normalizePrefix(route.prefix)
    route.plugins = route.plugins.map((p) => {
      if (typeof p === 'string') return isPath(p) ? abs(p) : p
      return { ...p, path: isPath(p.path) ? abs(p.path) : p.path }
    })
    if (route.tls.ca !== undefined) route.tls.ca = abs(route.tls.ca)
    if (route.validate !== undefined) route.validate = resolveValidatePaths(route.validate, abs)
  }
}

export function deepFreeze<T> (value: T): Readonly<T> {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value as Record<string, unknown>)) deepFreeze(v)
  }
  return value
}

/**
 * Loading the config file: read (YAML; strict JSON for a `.json` file) → substitute ${ENV} →
 * apply defaults → validate against schemas/config.ts → semantic checks → resolve paths →
 * deep-freeze. The problems of every stage are reported together, as `path: message` lines
 * sorted by path, in one ConfigError; a file that cannot be read or parsed stops at that, with
 * `file:line:column`, the line and a caret.
 */
import { readFileSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { parseDocument } from 'yaml'
import type { TSchema } from 'typebox'
import { Compile } from 'typebox/compile'
import { Value } from 'typebox/value'
import { Settings } from 'typebox/system'
import { GatewayConfigSchema, RESERVED_PATHS, type GatewayConfig } from '../schemas/config.js'
import { PATTERN_PHRASES, parseDuration } from '../schemas/common.js'
import { checkAuthSemantics, prepareAuthSecrets } from './auth-config.js'
import { checkValidateSemantics, resolveValidatePaths } from '../schemas/validate.js'
import { checkEdgeSemantics } from '../schemas/edge.js'
import { checkObservabilitySemantics } from '../schemas/observability.js'
import { checkUpstreamSemantics, upstreamTargets } from '../schemas/upstream.js'
import { checkKnownSecrets } from '../schemas/secure-defaults.js'
import { checkWebSocketSemantics } from '../schemas/websocket.js'
import { hostsOverlap } from '../plugins/edge/host-match.js'

export interface ConfigErrorOptions {
  /** Lines printed under a problem (a source line and its caret), keyed by the problem. */
  excerpts?: ReadonlyMap<string, readonly string[]>
  /** The problems are the whole message, with no `invalid config in …:` heading (a file that cannot be read). */
  bare?: boolean
}

/** A control character in a message (from a key or a line of the file) could drive the terminal: each becomes one "?". */
function printable (text: string): string {
  return text.replace(/[\x00-\x08\x0A-\x1F\x7F-\x9F]/g, '?') // eslint-disable-line no-control-regex
}

export class ConfigError extends Error {
  readonly problems: string[]
  constructor (problems: string[], source?: string, options: ConfigErrorOptions = {}) {
    const lines = problems.map((p) => [p, ...(options.excerpts?.get(p) ?? []).map((l) => `  ${l}`)].map(printable).join('\n  '))
    super(options.bare === true
      ? lines.join('\n')
      : `invalid config${source === undefined ? '' : ` in ${source}`}:\n  ${lines.join('\n  ')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

const validator = Compile(GatewayConfigSchema)

/** Read, check and freeze a config file. Relative paths inside it resolve against its folder. */
export function loadConfig (file: string, env: NodeJS.ProcessEnv = process.env): Readonly<GatewayConfig> {
  // A byte-order mark is not part of the text: JSON.parse refuses it, and columns would count it.
  const text = readConfigFile(file).replace(/^\uFEFF/, '')
  const raw = /\.json$/i.test(file) ? parseJsonFile(text, file) : parseYamlFile(text, file)
  return parseConfig(raw, { baseDir: dirname(resolve(file)), env, source: file })
}

// --- reading and parsing the file ---------------------------------------------------------

const READ_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'it is a folder, not a file',
  ENOTDIR: 'a part of the path is not a folder',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'the name is too long'
}

/** The file's text; or a ConfigError naming the path as given and as resolved, and why in words. */
function readConfigFile (file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException
    const why = code === undefined ? message : `${READ_ERRORS[code] ?? message.replace(/^[A-Z]+: /, '').split(',')[0]} (${code})`
    const full = resolve(file)
    throw new ConfigError([`cannot read the config file ${file}${full === file ? '' : ` (${full})`}: ${why}`], file, { bare: true })
  }
}

/** The document a YAML file holds; or a ConfigError with `file:line:column` and the line of each error. */
function parseYamlFile (text: string, file: string): unknown {
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true })
  if (doc.errors.length > 0) {
    // The first error of each line: one mistake often trips several errors, on its own line
    // (a tab used as indentation is three), and they would only repeat it.
    const lines = new Set<number>()
    const located = doc.errors.map((e) => locate(text, e.pos[0], file, `not valid YAML: ${e.message}`))
      .filter((l) => !lines.has(l.line) && lines.add(l.line) !== undefined)
    throw syntaxError(located, file)
  }
  try {
    return doc.toJS({ maxAliasCount: 100 })
  } catch (err) { // an alias bomb (more alias expansions than maxAliasCount)
    throw new ConfigError([`${file}: not valid YAML: ${(err as Error).message}`], file)
  }
}

/**
 * A `.json` file is read as strict JSON (RFC 8259): a comment, a trailing comma or a key twice
 * is an error, as an editor or `jq` would say, instead of being read as YAML (a superset of JSON
 * that forgives them).
 */
function parseJsonFile (text: string, file: string): unknown {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    const message = (err as Error).message
    const position = / at position ([0-9]+)/.exec(message)
    // Node 20's "Unexpected token" messages carry no position (newer ones do): the scanner finds it.
    const offset = position !== null
      ? Number(position[1])
      : message.startsWith('Unexpected end') ? text.length : (scanJson(text)?.offset ?? 0)
    const what = message.replace(/, (?:\.\.\.)?".*"(?:\.\.\.)? is not valid JSON$/s, '').replace(/ in JSON at position .*$/s, '')
    throw syntaxError([locate(text, offset, file, `not valid JSON: ${what.charAt(0).toLowerCase()}${what.slice(1)}`)], file)
  }
  // JSON.parse keeps the last of two equal keys without a word; the YAML reader refuses them too.
  const duplicate = scanJson(text)
  if (duplicate !== null) throw syntaxError([locate(text, duplicate.offset, file, `not valid JSON: ${duplicate.message}`)], file)
  return value
}

interface Located { line: number, problem: string, excerpt: string[] }

/** `file:line:column: message`, and the line with a caret under the column (both 1-based). */
function locate (text: string, offset: number, file: string, message: string): Located {
  // An error at the end of the text (a missing `]`) is shown just after its last character.
  const at = Math.min(offset, text.trimEnd().length)
  const start = at === 0 ? 0 : text.lastIndexOf('\n', at - 1) + 1
  const end = text.indexOf('\n', at) === -1 ? text.length : text.indexOf('\n', at)
  const line = text.slice(0, start).split('\n').length
  const column = at - start + 1
  return { line, problem: `${file}:${line}:${column}: ${message}`, excerpt: excerpt(text.slice(start, end).replace(/\r$/, ''), column - 1) }
}

/** The source line (120 characters of a longer one, around the column) and a caret under the column. */
function excerpt (line: string, index: number): string[] {
  const from = line.length <= 120 ? 0 : Math.max(0, Math.min(index - 60, line.length - 120))
  const to = Math.min(line.length, from + 120)
  // Control characters become one "?" each (printable), so the caret stays in place.
  let shown = printable(line.slice(from, to))
  let caret = index - from
  if (from > 0) { shown = `…${shown}`; caret++ }
  if (to < line.length) shown += '…'
  return [shown, `${shown.slice(0, caret).replace(/[^\t]/g, ' ')}^`]
}

function syntaxError (located: Located[], file: string): ConfigError {
  return new ConfigError(located.map((l) => l.problem), file, { excerpts: new Map(located.map((l) => [l.problem, l.excerpt])) })
}

const JSON_SPACE = /[ \t\n\r]*/y
const JSON_SCALAR = /"(?:[^"\\\x00-\x1F]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null/y // eslint-disable-line no-control-regex
const JSON_KEY = /"(?:[^"\\\x00-\x1F]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y // eslint-disable-line no-control-regex

class JsonStop {
  constructor (readonly offset: number, readonly message: string) {}
}

/** The first place `text` is not strict JSON, or has a key twice in one object; null when it is fine. */
function scanJson (text: string): { offset: number, message: string } | null {
  let i = 0
  const stop = (message: string, at = i): never => { throw new JsonStop(at, message) }
  const match = (re: RegExp): string | null => {
    re.lastIndex = i
    const m = re.exec(text)
    if (m !== null) i = re.lastIndex
    return m?.[0] ?? null
  }
  const next = (): string => { match(JSON_SPACE); return text[i] ?? '' }
  const value = (): void => {
    const c = next()
    if (c === '{' || c === '[') {
      i++
      const close = c === '{' ? '}' : ']'
      const keys = new Set<string>()
      if (next() === close) { i++; return }
      for (;;) {
        if (c === '{') {
          next()
          const start = i
          const key = match(JSON_KEY) ?? stop('expected a property name in double quotes')
          if (keys.has(JSON.parse(key) as string)) stop(`the key ${key} is given twice`, start)
          keys.add(JSON.parse(key) as string)
          if (next() !== ':') stop('expected ":" after the property name')
          i++
        }
        value()
        const after = next()
        if (after === close) { i++; return }
        if (after !== ',') stop(`expected "," or "${close}"`)
        i++
      }
    }
    if (match(JSON_SCALAR) === null) stop(i >= text.length ? 'unexpected end' : `unexpected ${JSON.stringify(text[i])}`)
  }
  try {
    value()
    if (next() !== '') stop('unexpected text after the JSON value')
    return null
  } catch (err) {
    if (err instanceof JsonStop) return { offset: err.offset, message: err.message }
    if (err instanceof RangeError) return { offset: i, message: 'nested too deeply' } // call stack
    throw err
  }
}

// --- checking ----------------------------------------------------------------------------

export interface ParseOptions {
  /** Folder that relative paths (plugins, tls.ca) are resolved against. Default: cwd. */
  baseDir?: string
  env?: NodeJS.ProcessEnv
  /** Named in error messages. */
  source?: string
}

/** A place in the config: the keys and array indexes from the root, as in a JSON pointer. */
type Segments = string[]

/**
 * Check and freeze a config given as an object (what a YAML file parses to).
 *
 * Every stage runs, and their problems are reported together. A later stage does not judge what
 * an earlier one found wrong:
 * - a value whose ${VAR} is unset, or a scalar written where a list belongs, is unknown: its own
 *   problem says so, and the schema says nothing about it;
 * - the semantic checks need values of the right shape (they parse durations, URLs, keys), so
 *   they run on a copy in which each value the schema refused is replaced by its default, or
 *   left out when it is optional, or — an element of a list of objects (a route, a user) — made
 *   a hole that `forEach` skips, so that the other elements keep their index. An unknown value
 *   the schema accepts is replaced only by a default (`server.host: ${HOST}` is not taken for a
 *   public address) and otherwise kept, so that the rest of its route is still checked.
 *   A semantic problem about or naming a replaced or unknown value is dropped: it would be about
 *   the stand-in. Where nothing can stand in (the root is not an object, `routes` is missing),
 *   the semantic checks wait until the schema problems are fixed.
 * So a problem is never reported twice or about a value the user did not write; one the
 * stand-ins hide shows on the next run.
 */
export function parseConfig (raw: unknown, options: ParseOptions = {}): Readonly<GatewayConfig> {
  const env = options.env ?? process.env
  const baseDir = options.baseDir ?? process.cwd()

  // 1. ${VAR} substitution.
  const envProblems: string[] = []
  const fromEnv = new Set<string>()
  const unknown: Segments[] = []
  const substituted = substituteEnv(structuredClone(raw ?? {}), { env, problems: envProblems, fromEnv, unset: unknown, ancestors: new Set() }, [])

  // 2. Defaults and the schema. Values that came from the environment are strings: Convert lets
  // "8080" stand for a port and "true" for a flag. It would also make a list of a scalar
  // (`methods: GET` → [GET]): that guess is refused instead, with the list to write.
  const withDefaults = Value.Default(GatewayConfigSchema, substituted)
  const before = structuredClone(withDefaults)
  const converted = Value.Convert(GatewayConfigSchema, withDefaults)
  const wrapped: Segments[] = []
  findWrappedScalars(before, converted, [], wrapped)
  const listProblems = wrapped.map((at) => `${pathOf(at)}: must be a list${listExample(valueAt(before, at))}`)
  unknown.push(...wrapped)
  const unknownPaths = unknown.map(pathOf)
  const schemaErrors = validator.Check(converted) ? [] : allSchemaErrors(converted)
  const schemaProblems = formatSchemaErrors(schemaErrors.filter((e) => !unknownPaths.some((u) => within(pointerToPath(e.instancePath), u))))

  // 3. Semantic checks, on the whole config or on the part of it that can be checked.
  const clean = unknown.length === 0 && schemaErrors.length === 0
  const checkable = clean ? { config: converted as GatewayConfig, replaced: [] } : standIns(converted, schemaErrors, unknown)
  const semanticProblems: string[] = []
  let warnings: string[] = []
  if (checkable !== null) {
    const ctx = { fromEnv, baseDir }
    try {
      checkSemantics(checkable.config, semanticProblems)
      checkAuthSemantics(checkable.config, semanticProblems, ctx)
      // Published demo secrets: refused off loopback, one warning on loopback.
      warnings = checkKnownSecrets(checkable.config, semanticProblems, raw)
    } catch (err) {
      if (clean) throw err
      semanticProblems.length = 0 // a check that a stand-in tripped up: these wait for the next run
    }
  }
  const replaced = checkable?.replaced ?? []
  const problems = sortProblems([
    ...envProblems,
    ...listProblems,
    ...schemaProblems,
    ...semanticProblems.filter((p) => !namesAny(p, replaced))
  ])
  if (problems.length > 0) throw new ConfigError(problems, options.source)

  const config = converted as GatewayConfig
  for (const warning of warnings) process.emitWarning(warning, { type: 'PortcullisWarning', code: 'PORTCULLIS_KNOWN_SECRET' })
  resolvePaths(config, baseDir)
  prepareAuthSecrets(config, baseDir)
  return deepFreeze(config)
}

// --- ${ENV} substitution -----------------------------------------------------------------

const ENV_REF = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g

/** A value that is one whole `${VAR}` / `${VAR:-default}` reference (recorded in `fromEnv`). */
const WHOLE_ENV_REF = /^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$/

interface Substitution {
  env: NodeJS.ProcessEnv
  problems: string[]
  /** Paths of values that were one whole reference, so that checks can insist a secret (a plain password) came from the environment. */
  fromEnv: Set<string>
  /** Places whose value names a variable that is not set. */
  unset: Segments[]
  /** The objects being walked: a YAML alias inside its own anchor makes a cycle. */
  ancestors: Set<object>
}

/** Replaces `${VAR}` references. */
function substituteEnv (node: unknown, s: Substitution, at: Segments): unknown {
  const path = pathOf(at)
  if (typeof node === 'string') {
    if (!node.includes('${')) return node
    if (WHOLE_ENV_REF.test(node)) s.fromEnv.add(path)
    let unset = false
    const value = node.replace(ENV_REF, (whole, name: string | undefined, fallback: string | undefined) => {
      if (name === undefined) return '${' // `$${` escapes a literal `${`
      const value = s.env[name]
      if (value !== undefined && value !== '') return value
      if (fallback !== undefined) return fallback
      s.problems.push(`${path}: environment variable ${name} is not set (write \${${name}:-default} to give a default)`)
      unset = true
      return whole
    })
    if (unset) s.unset.push(at)
    return value
  }
  if (node === null || typeof node !== 'object') return node
  if (s.ancestors.has(node)) {
    s.problems.push(`${path}: contains itself (a YAML alias inside its own anchor)`)
    s.unset.push(at)
    return null
  }
  s.ancestors.add(node)
  const obj = node as Record<string, unknown>
  for (const key of Object.keys(obj)) obj[key] = substituteEnv(obj[key], s, [...at, key])
  s.ancestors.delete(node)
  return obj
}

// --- places in the config -------------------------------------------------------------------

/** `routes`, `0`, `upstream` → `routes[0].upstream`; none → `(root)`. */
function pathOf (at: Segments): string {
  let out = ''
  for (const part of at) out += /^[0-9]+$/.test(part) ? `[${part}]` : (out === '' ? part : `.${part}`)
  return out === '' ? '(root)' : out
}

/** `/routes/1/upstream` → `routes[1].upstream`. */
export function pointerToPath (pointer: string): string {
  return pathOf(pointerSegments(pointer))
}

function pointerSegments (pointer: string): Segments {
  return pointer.split('/').slice(1).map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'))
}

/** Whether the place `path` is `outer` or inside it. */
function within (path: string, outer: string): boolean {
  return outer === '(root)' || path === outer || path.startsWith(`${outer}.`) || path.startsWith(`${outer}[`)
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object'
}

function valueAt (root: unknown, at: Segments): unknown {
  let node = root
  for (const key of at) node = isRecord(node) && Object.hasOwn(node, key) ? node[key] : undefined
  return node
}

// --- a scalar where a list belongs ------------------------------------------------------------

/** The places where Value.Convert made a list of a value that was not one. */
function findWrappedScalars (before: unknown, after: unknown, at: Segments, found: Segments[]): void {
  if (Array.isArray(after) && !Array.isArray(before)) {
    if (before !== undefined) found.push(at)
  } else if (isRecord(after) && isRecord(before)) {
    for (const key of Object.keys(after)) findWrappedScalars(before[key], after[key], [...at, key], found)
  }
}

/** `, e.g. [GET]` for `GET`: the value written as a one-item YAML list. */
function listExample (value: unknown): string {
  if (typeof value === 'number' || typeof value === 'boolean') return `, e.g. [${String(value)}]`
  if (typeof value !== 'string' || value === '') return ''
  // As written when YAML would read it back as plain text (`GET, POST` becomes two items: what was meant).
  const plain = /^[^\s[\]{}#&*!|>'"%@`\x00-\x1F\x7F-\x9F][^[\]{}#\x00-\x1F\x7F-\x9F]*$/.test(value) // eslint-disable-line no-control-regex
  return `, e.g. [${plain ? value : JSON.stringify(value)}]`
}

// --- schema errors as `path: message` ------------------------------------------------------

interface SchemaError { keyword: string, schemaPath: string, instancePath: string, params: Record<string, unknown>, message: string }

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
      const types = [...new Set(branchErrors.filter((e) => e.keyword === 'type').map((e) => typeInWords(e.params.type)))]
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
      case 'propertyNames':
        break // the key's own `pattern` error names it, in words
      case 'pattern':
        // Never reached for the config's own patterns (test/config-errors.test.ts checks each has a phrase).
        out.push(`${path}: ${PATTERN_PHRASES[String(e.params.pattern)] ?? `must match the pattern ${String(e.params.pattern)}`}`)
        break
      case 'type':
        out.push(`${path}: must be ${typeInWords(e.params.type)}`)
        break
      default:
        out.push(`${path}: ${e.message}`)
    }
  }
  return [...new Set(out)]
}

const TYPE_WORDS: Record<string, string> = {
  array: 'a list',
  object: 'a mapping (key: value)',
  string: 'a string',
  integer: 'an integer',
  number: 'a number',
  boolean: 'true or false',
  null: 'null'
}

function typeInWords (type: unknown): string {
  return TYPE_WORDS[String(type)] ?? String(type)
}

// --- what the semantic checks can run on ------------------------------------------------------

type JsonSchema = Record<string, unknown>

/** The schema of the value at `key` inside a value of `schema`; undefined inside a union (which branch is unknown). */
function childSchema (schema: JsonSchema, key: string): JsonSchema | undefined {
  if (schema.type === 'array') return isRecord(schema.items) ? schema.items : undefined
  if (schema.type !== 'object') return undefined
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>
  if (Object.hasOwn(properties, key)) return properties[key]
  for (const [pattern, value] of Object.entries((schema.patternProperties ?? {}) as Record<string, JsonSchema>)) {
    if (new RegExp(pattern, 'u').test(key)) return value
  }
  return isRecord(schema.additionalProperties) ? schema.additionalProperties : undefined
}

/** The schemas from the root down to `at`, as far as they can be followed (not into a union: which branch is unknown). */
function schemaChain (at: Segments): JsonSchema[] {
  const chain: JsonSchema[] = [GatewayConfigSchema as unknown as JsonSchema]
  for (const key of at) {
    const schema = childSchema(chain[chain.length - 1], key)
    if (schema === undefined) break
    chain.push(schema)
  }
  return chain
}

function setDefault (parent: Record<string, unknown>, key: string, schema: JsonSchema): void {
  parent[key] = Value.Default(schema as unknown as TSchema, structuredClone(schema.default))
}

/**
 * Makes the value at `at` (or the nearest place above it that allows it) checkable: its default,
 * or left out when optional, or a hole in a list of objects. Returns the place replaced, or null
 * when only the root could be.
 */
function standIn (root: unknown, at: Segments): Segments | null {
  const chain = schemaChain(at)
  for (let depth = chain.length - 1; depth >= 1; depth--) {
    const place = at.slice(0, depth)
    const parent = valueAt(root, place.slice(0, -1))
    const key = place[place.length - 1]
    const schema = chain[depth]
    if (!isRecord(parent)) continue
    if (schema.default !== undefined) {
      setDefault(parent, key, schema)
      return place
    }
    if (Array.isArray(parent)) {
      if (schema.type === 'object') {
        delete parent[Number(key)] // a hole: forEach skips it, and the elements after it keep their index
        return place
      }
    } else if (!(chain[depth - 1].required as string[] | undefined ?? []).includes(key)) {
      delete parent[key]
      return place
    }
  }
  return null
}

/**
 * A copy of `config` with a stand-in for each value the schema refused and, where it has a
 * default, each unknown one; and the paths of both. Null when the root would need a stand-in.
 */
function standIns (config: unknown, errors: SchemaError[], unknown: Segments[]): { config: GatewayConfig, replaced: string[] } | null {
  const copy = structuredClone(config)
  const refused: Segments[] = []
  for (const e of errors) {
    const at = pointerSegments(e.instancePath)
    if (e.keyword === 'additionalProperties') {
      // An unknown key is left out: the checks never read it.
      const parent = valueAt(copy, at)
      for (const key of e.params.additionalProperties as string[]) if (isRecord(parent)) delete parent[key]
    } else if (e.keyword === 'required') {
      for (const key of e.params.requiredProperties as string[]) refused.push([...at, key])
    } else if (e.keyword !== 'boolean') {
      refused.push(at)
    }
  }
  const replaced: string[] = []
  for (const at of refused) {
    const place = standIn(copy, at)
    if (place === null) return null
    replaced.push(pathOf(place))
  }
  for (const at of unknown) {
    const schema = schemaChain(at)[at.length]
    const parent = valueAt(copy, at.slice(0, -1))
    if (schema?.default !== undefined && isRecord(parent)) setDefault(parent, at[at.length - 1], schema)
    replaced.push(pathOf(at))
  }
  return { config: copy as GatewayConfig, replaced }
}

const PATH_IN_TEXT = /[A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\]|\.[A-Za-z_][A-Za-z0-9_]*)*/g

/** Whether a semantic problem is about (or names) a place that holds a stand-in. */
function namesAny (problem: string, replaced: readonly string[]): boolean {
  const subject = subjectOf(problem)
  const named = problem.slice(subject.length).match(PATH_IN_TEXT) ?? []
  return replaced.some((r) => within(subject, r) || within(r, subject) || named.some((n) => within(n, r)))
}

// --- order -------------------------------------------------------------------------------------

function subjectOf (problem: string): string {
  const colon = problem.indexOf(': ')
  return colon === -1 ? problem : problem.slice(0, colon)
}

/** `routes[10].name` → routes, 10, name: indexes compare as numbers, names by their characters. */
function pathKey (path: string): Array<string | number> {
  return path.split(/[.[\]]/).filter((p) => p !== '').map((p) => (/^[0-9]+$/.test(p) ? Number(p) : p))
}

function comparePaths (a: string, b: string): number {
  const ka = pathKey(a)
  const kb = pathKey(b)
  for (let i = 0; i < Math.min(ka.length, kb.length); i++) {
    const x = ka[i]
    const y = kb[i]
    if (x === y) continue
    if (typeof x === 'number' && typeof y === 'number') return x - y
    if (typeof x === 'number') return -1
    if (typeof y === 'number') return 1
    return x < y ? -1 : 1
  }
  return ka.length - kb.length
}

/** Without repeats, sorted by path; problems at one path keep their order (stage, then check). */
function sortProblems (problems: string[]): string[] {
  return [...new Set(problems)].sort((a, b) => comparePaths(subjectOf(a), subjectOf(b)))
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

interface PlacedRoute { prefix: string, index: number, name: string, hosts: readonly string[] }

const MAX_ROUTES_PER_PREFIX = 31

/**
 * Two routes whose prefixes are equal or nested must not meet for a host at the same precedence
 * (the same hosts entry, or neither has hosts: one would shadow the other), nor with the shorter
 * prefix holding the more specific entry (the router tries the longer prefix first, so the
 * precedence in docs/proxying.md would not hold). Without hosts this is the plain prefix rule.
 */
function checkOverlap (earlier: PlacedRoute, later: PlacedRoute, problems: string[]): void {
  const at = `routes[${later.index}]`
  const same = earlier.prefix === later.prefix
  const earlierOuter = !same && shadows(earlier.prefix, later.prefix)
  if (!same && !earlierOuter && !shadows(later.prefix, earlier.prefix)) return
  const [outer, inner] = earlierOuter || same ? [earlier, later] : [later, earlier]
  const overlap = hostsOverlap(outer.hosts, inner.hosts, !same)
  if (overlap === null) return
  const { host, kind } = overlap
  const routes = `(routes "${earlier.name}" and "${later.name}")`
  if (kind === 'inverted') {
    problems.push(`${at}.hosts: for host "${host ?? ''}", routes[${outer.index}] ("${outer.name}", prefix "${outer.prefix}") has a more specific hosts entry than routes[${inner.index}] ("${inner.name}", prefix "${inner.prefix}"), but the router tries the longer prefix first, so "${inner.name}" would take that host's requests under "${inner.prefix}"; the route with the longer prefix needs the more specific entry, or a prefix outside "${outer.prefix}"`)
  } else if (same) {
    problems.push(host === undefined
      ? `${at}.prefix: "${later.prefix}" is already the prefix of routes[${earlier.index}]`
      : `${at}.hosts: "${host}" with prefix "${later.prefix}" is already routed by routes[${earlier.index}] ${routes}`)
  } else {
    const forHost = host === undefined ? '' : ` for host "${host}" ${routes}`
    problems.push(earlierOuter
      ? `${at}.prefix: "${later.prefix}" is shadowed by routes[${earlier.index}].prefix "${earlier.prefix}"${forHost}`
      : `${at}.prefix: "${later.prefix}" shadows routes[${earlier.index}].prefix "${earlier.prefix}"${forHost}`)
  }
}

function checkSemantics (config: GatewayConfig, problems: string[]): void {
  checkEdgeSemantics(config, problems)
  checkObservabilitySemantics(config, problems)
  checkUpstreamSemantics(config, problems)
  const names = new Map<string, number>()
  const prefixes = new PlacedPrefixes()
  const { timeouts } = config.server
  if (parseDuration(timeouts.headers) > parseDuration(timeouts.request)) {
    problems.push('server.timeouts.headers: must not be longer than server.timeouts.request')
  }
  config.routes.forEach((route, i) => {
    const at = `routes[${i}]`
    const firstName = names.get(route.name)
    if (firstName !== undefined) problems.push(`${at}.name: "${route.name}" is already the name of routes[${firstName}]`)
    else names.set(route.name, i)

    const targets = upstreamTargets(route.upstream)
    const upstreams = targets.map((t) => t.url)
    const urlAt = (j: number): string => typeof route.upstream === 'string' ? `${at}.upstream` : `${at}.upstream[${j}]${typeof route.upstream[j] === 'string' ? '' : '.url'}`
    upstreams.forEach((u, j) => { checkUrl(u, urlAt(j), problems) })
    if (upstreams.length > 1 && upstreams.every((u) => URL.canParse(u))) {
      const paths = new Set(upstreams.map((u) => new URL(u).pathname.replace(/\/+$/, '')))
      if (paths.size > 1) problems.push(`${at}.upstream: every URL of a balanced upstream must have the same path`)
      const origins = new Set(upstreams.map((u) => new URL(u).origin))
      if (origins.size < upstreams.length) problems.push(`${at}.upstream: a target is listed twice (give it a weight instead)`)
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
    const placed = { prefix, index: i, name: route.name, hosts: route.hosts }
    for (const other of prefixes.overlapping(prefix)) checkOverlap(other, placed, problems)
    if ((prefixes.at.get(prefix)?.length ?? 0) === MAX_ROUTES_PER_PREFIX) {
      problems.push(`${at}.prefix: at most ${MAX_ROUTES_PER_PREFIX} routes may share the prefix "${prefix}" (find-my-way's limit of handlers on one path)`)
    }
    if (route.validate !== undefined) checkValidateSemantics(route.validate, `${at}.validate`, problems, route.methods)
    checkWebSocketSemantics(route, at, problems)
    prefixes.add(placed)
  })
}

/**
 * The routes placed so far, by prefix and by every prefix above them, so a new route meets only
 * the routes it can overlap (the same prefix, one above it, one below it) — 10,000 routes checked
 * pairwise took seconds.
 */
class PlacedPrefixes {
  /** Routes by their own prefix. */
  readonly at = new Map<string, PlacedRoute[]>()
  /** Routes by each prefix strictly above theirs (`/a/b` is under `/a` and `/`). */
  private readonly under = new Map<string, PlacedRoute[]>()

  add (placed: PlacedRoute): void {
    push(this.at, placed.prefix, placed)
    for (const above of prefixesAbove(placed.prefix)) push(this.under, above, placed)
  }

  /** The placed routes a route at `prefix` can overlap, in the order they were placed. */
  overlapping (prefix: string): PlacedRoute[] {
    const found = [...(this.at.get(prefix) ?? []), ...(this.under.get(prefix) ?? [])]
    for (const above of prefixesAbove(prefix)) found.push(...(this.at.get(above) ?? []))
    return found.sort((a, b) => a.index - b.index)
  }
}

/** `/a/b/c` → `/`, `/a`, `/a/b`; `/` → none. */
function prefixesAbove (prefix: string): string[] {
  if (prefix === '/') return []
  const above = ['/']
  for (let i = prefix.indexOf('/', 1); i !== -1; i = prefix.indexOf('/', i + 1)) above.push(prefix.slice(0, i))
  return above
}

function push<K, V> (map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key)
  if (list === undefined) map.set(key, [value])
  else list.push(value)
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
  const redis = config.rateLimit.redis
  if (typeof redis === 'object' && redis.tls?.ca !== undefined) redis.tls.ca = abs(redis.tls.ca)
}

export function deepFreeze<T> (value: T): Readonly<T> {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value as Record<string, unknown>)) deepFreeze(v)
  }
  return value
}

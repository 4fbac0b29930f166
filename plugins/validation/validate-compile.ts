/**
 * Everything request validation does once, at start: find each named schema (a TypeBox export
 * in schemas/, a user's module, a JSON Schema file, or inline), refuse unsafe ones, compile them
 * with ajv, and compile the path templates the rules apply to. Nothing here runs per request
 * except the compiled functions and `matchPath`.
 *
 * Why ajv and not TypeBox's compiler (bench/validators.ts, numbers in the README): TypeBox is
 * faster on a valid body (≈12 ns vs ≈47 ns, both noise next to the ≈120 µs proxy hop), but its
 * error path is an interpreter that walks the whole value — ≈10 µs for a small invalid body and
 * ≈200 ms for 100 000 invalid array items — where ajv stops at the first error (≈30 ns, ≈0.2 µs).
 * A gateway sees hostile input; ajv also checks every schema against the meta-schema at start.
 */
import { readFileSync, readdirSync } from 'node:fs'
import { extname } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js'
import formats from 'ajv-formats'
import { parse as parseYaml } from 'yaml'
import type { ProblemViolation } from '../../schemas/errors.js'
import type { SchemaRef } from '../../schemas/validate.js'
import { schemaViolations } from '../core/problem.js'
import { countNodes } from './json-body.js'

export type Part = 'body' | 'querystring' | 'params' | 'headers'
export type JsonSchema = Record<string, unknown>

/** Values up to this many nodes get every violation listed; bigger ones only the first. */
export const ALL_ERRORS_MAX_NODES = 1000

/** An error in the config that only shows when schemas are loaded; `problems` are `path: message`. */
export class ValidateConfigError extends Error {
  constructor (readonly problems: string[]) {
    super(`invalid config:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
  }
}

// --- ajv --------------------------------------------------------------------------------

const addFormats = ((formats as unknown as { default?: typeof formats }).default ?? formats) as unknown as (ajv: Ajv2020) => void

/** OpenAPI's own formats (int32…) and annotation keywords, for schemas taken from a document. */
function addOpenApiVocabulary (ajv: Ajv2020): void {
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 })
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isInteger(n) })
  for (const name of ['float', 'double']) ajv.addFormat(name, { type: 'number', validate: () => true })
  ajv.addFormat('byte', /^[A-Za-z0-9+/]*={0,2}$/)
  for (const name of ['binary', 'password']) ajv.addFormat(name, () => true)
  for (const keyword of ['example', 'xml', 'externalDocs', 'discriminator']) ajv.addKeyword({ keyword, schemaType: ['boolean', 'object', 'string', 'number', 'array', 'null'] })
}

/**
 * One ajv instance per combination the route needs. Bodies: no coercion (`"5"` stays a string
 * and fails `integer`), no defaults, nothing removed, so the value validated is the value sent.
 * Query, params and headers: coercion (they are strings on the wire; the upstream still gets the
 * original query string). Never `$data` (lets the request pick the constraint); `allErrors` only
 * for values small enough (ALL_ERRORS_MAX_NODES) that listing everything stays cheap.
 */
export class Compiler {
  private readonly instances = new Map<string, Ajv2020>()
  private readonly documents: Array<{ id: string, doc: JsonSchema }> = []

  /** A document (OpenAPI) that lax schemas may `$ref` into by `id`. */
  addDocument (id: string, doc: JsonSchema): void {
    this.documents.push({ id, doc })
    for (const [key, ajv] of this.instances) if (key.endsWith(':lax')) ajv.addSchema(doc, id)
  }

  private ajv (coerce: boolean, all: boolean, lax: boolean): Ajv2020 {
    const key = `${coerce ? 'coerce' : 'exact'}:${all ? 'all' : 'first'}:${lax ? 'lax' : 'strict'}`
    let ajv = this.instances.get(key)
    if (ajv === undefined) {
      ajv = new Ajv2020({
        allErrors: all,
        coerceTypes: coerce ? 'array' : false,
        useDefaults: false,
        removeAdditional: false,
        $data: false,
        // User schemas: unknown keywords are mistakes (`typ: string`). OpenAPI documents carry
        // their own keywords and extensions (x-…), which are ignored.
        strictSchema: !lax,
        strictNumbers: true,
        strictTypes: false,
        strictTuples: false,
        strictRequired: false,
        validateFormats: true,
        unicodeRegExp: true,
        logger: false
      })
      addFormats(ajv)
      if (lax) {
        addOpenApiVocabulary(ajv)
        for (const { id, doc } of this.documents) ajv.addSchema(doc, id)
      }
      this.instances.set(key, ajv)
    }
    return ajv
  }

  /** Compiles `schema` for `part`; throws an Error whose message says what is wrong. */
  compile (schema: JsonSchema, part: Part, lax = false): CompiledSchema {
    refuseUnsafe(schema, '')
    const coerce = part !== 'body'
    try {
      const first = this.ajv(coerce, false, lax).compile(schema)
      const all = this.ajv(coerce, true, lax).compile(schema)
      return new CompiledSchema(first, all, part)
    } catch (err) {
      throw new Error(`invalid schema: ${(err as Error).message.split('\n')[0]}`)
    }
  }
}

/** `$data` and `$async` change what validation means at run time; neither is accepted. */
function refuseUnsafe (node: unknown, pointer: string): void {
  if (Array.isArray(node)) { node.forEach((v, i) => refuseUnsafe(v, `${pointer}/${i}`)); return }
  if (node === null || typeof node !== 'object') return
  for (const [key, value] of Object.entries(node)) {
    if (key === '$data') throw new Error(`$data references are not allowed (at ${pointer || '/'}): they let the request choose the constraint`)
    if (key === '$async') throw new Error(`$async schemas are not allowed (at ${pointer || '/'})`)
    refuseUnsafe(value, `${pointer}/${key}`)
  }
}

export class CompiledSchema {
  constructor (private readonly first: ValidateFunction, private readonly all: ValidateFunction, readonly part: Part) {}

  /**
   * null when `value` is valid, else its violations (at most `max`). Query/params/headers are
   * coerced in place: pass a copy.
   */
  check (value: unknown, max: number, copy?: () => unknown): ProblemViolation[] | null {
    if (this.first(value)) return null
    let errors = this.first.errors ?? []
    if (countNodes(value, ALL_ERRORS_MAX_NODES) <= ALL_ERRORS_MAX_NODES) {
      // Small value: list every violation (the copy, because coercion may have changed `value`).
      const again = copy === undefined ? value : copy()
      if (!this.all(again)) errors = (this.all.errors ?? errors).slice(0, max)
    }
    return schemaViolations(errors.slice(0, max).filter(useful) as ErrorObject[], this.part)
  }
}

/** ajv's `if`/`anyOf` summary lines repeat what the branch errors already say. */
function useful (e: ErrorObject, _i: number, list: ErrorObject[]): boolean {
  return list.length === 1 || (e.keyword !== 'if' && e.keyword !== 'falseSchema')
}

// --- finding a schema by the name the config gives ---------------------------------------

const SCHEMAS_DIR = new URL('../../schemas/', import.meta.url)
/**
 * Process-wide on purpose: an index of the modules in schemas/, which Node itself loads once per
 * process (a gateway built later gets the same module objects: a table of its own would differ
 * only by a file added to schemas/ while the process runs). It is built once and never changed,
 * and every lookup hands out a deep copy (`plain`), so no gateway can change what another one
 * compiles. Rebuilding it for each lookup costs ≈ 11 ms per named schema at start-up instead of
 * ≈ 0.01 ms (100 lookups of `Person` under tsx).
 */
let namedSchemas: Promise<ReadonlyMap<string, readonly JsonSchema[]>> | undefined

/** Every object exported by a module in schemas/, by export name (a name may be ambiguous). */
function schemasByName (): Promise<ReadonlyMap<string, readonly JsonSchema[]>> {
  namedSchemas ??= (async () => {
    const byName = new Map<string, JsonSchema[]>()
    const files = readdirSync(fileURLToPath(SCHEMAS_DIR))
      .filter((f) => /\.(ts|js|mjs)$/.test(f) && !f.endsWith('.d.ts') && !f.endsWith('.test.ts'))
      .sort()
    const seen = new Set<string>()
    for (const file of files) {
      const stem = file.replace(/\.(ts|js|mjs)$/, '')
      if (seen.has(stem)) continue // person.ts and person.js after a build: one module
      seen.add(stem)
      const mod = await import(new URL(file, SCHEMAS_DIR).href) as Record<string, unknown>
      for (const [name, value] of Object.entries(mod)) {
        if (isSchemaObject(value)) byName.set(name, [...(byName.get(name) ?? []), value])
      }
    }
    return byName
  })()
  return namedSchemas
}

function isSchemaObject (value: unknown): value is JsonSchema {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const v = value as JsonSchema
  return typeof v.type === 'string' || Array.isArray(v.type) || '$ref' in v || 'anyOf' in v || 'oneOf' in v || 'allOf' in v || 'properties' in v
}

const MODULE_EXT = new Set(['.js', '.mjs', '.cjs', '.ts', '.mts'])
const FILE_EXT = new Set(['.json', '.yaml', '.yml'])

/** The JSON Schema a config reference names; throws an Error whose message says what is wrong. */
export async function resolveSchemaRef (ref: SchemaRef): Promise<JsonSchema> {
  if (typeof ref !== 'string') return plain(ref)
  const hash = ref.indexOf('#')
  const file = hash === -1 ? ref : ref.slice(0, hash)
  const ext = extname(file).toLowerCase()
  if ((file.startsWith('/') || file.startsWith('.')) && FILE_EXT.has(ext) && hash === -1) {
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch (err) {
      throw new Error(`cannot read schema file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
    }
    let parsed: unknown
    try {
      parsed = parseYaml(text)
    } catch (err) {
      throw new Error(`schema file ${file} is not valid JSON or YAML: ${(err as Error).message.split('\n')[0]}`)
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error(`schema file ${file} does not hold a JSON Schema object`)
    return plain(parsed as JsonSchema)
  }
  if ((file.startsWith('/') || file.startsWith('.')) && MODULE_EXT.has(ext)) {
    const name = hash === -1 ? 'default' : ref.slice(hash + 1)
    let mod: Record<string, unknown>
    try {
      mod = await import(pathToFileURL(file).href) as Record<string, unknown>
    } catch (err) {
      throw new Error(`cannot load schema module ${file}: ${(err as Error).message.split('\n')[0]}`)
    }
    const value = mod[name]
    if (!isSchemaObject(value)) throw new Error(`${file} has no schema export named "${name}"`)
    return plain(value)
  }
  if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(ref)) {
    const found = (await schemasByName()).get(ref)
    if (found === undefined) throw new Error(`unknown schema "${ref}"`)
    if (found.length > 1 && found.some((s) => s !== found[0])) throw new Error(`schema name "${ref}" is exported by more than one module in schemas/`)
    return plain(found[0])
  }
  throw new Error(`unknown schema "${ref}" (a name exported from schemas/, ./module.js#Export, or a .json/.yaml file)`)
}

/** A deep copy holding only JSON (TypeBox's symbols and functions dropped), `$schema` removed. */
function plain (schema: JsonSchema): JsonSchema {
  const copy = JSON.parse(JSON.stringify(schema)) as JsonSchema
  delete copy.$schema // all schemas are compiled as JSON Schema 2020-12
  return copy
}

// --- path templates -----------------------------------------------------------------------

export interface PathTemplate {
  /** As written: `/people/{id}/`. */
  source: string
  segments: Array<{ literal: string } | { regex: RegExp, names: string[] }>
}

/**
 * `/people/:id/` or `/people/{id}/` (OpenAPI); `{a}.{b}` within a segment too. Repeated and
 * trailing slashes do not count, so `/people` and `/people//` are the same path as `/people/`:
 * a rule never misses a spelling that an upstream may treat as its path.
 */
export function compilePath (source: string): PathTemplate {
  const segments = source.split('/').filter((s) => s !== '').map((segment) => {
    if (!segment.includes('{') && !segment.startsWith(':')) return { literal: decodeSafe(segment) ?? segment }
    const names: string[] = []
    let pattern = '^'
    if (segment.startsWith(':')) {
      names.push(segment.slice(1))
      pattern += '(.+)'
    } else {
      for (const piece of segment.split(/(\{[^}]*\})/)) {
        if (piece.startsWith('{') && piece.endsWith('}')) { names.push(piece.slice(1, -1)); pattern += '(.+?)' } else pattern += piece.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
      }
    }
    return { regex: new RegExp(pattern + '$', 's'), names }
  })
  return { source, segments }
}

/** Splits a raw URL path into decoded segments; null when a segment's encoding is invalid. */
export function pathSegments (path: string): string[] | null {
  const out: string[] = []
  for (const raw of path.split('/')) {
    if (raw === '') continue
    const decoded = decodeSafe(raw)
    if (decoded === null) return null
    out.push(decoded)
  }
  return out
}

function decodeSafe (s: string): string | null {
  if (!s.includes('%')) return s
  try { return decodeURIComponent(s) } catch { return null }
}

/** The template's parameters when `segments` matches it, else null. */
export function matchPath (template: PathTemplate, segments: readonly string[]): Record<string, string> | null {
  if (template.segments.length !== segments.length) return null
  let params: Record<string, string> | null = null
  for (let i = 0; i < segments.length; i++) {
    const t = template.segments[i]
    if ('literal' in t) {
      if (t.literal !== segments[i]) return null
      continue
    }
    const m = t.regex.exec(segments[i])
    if (m === null) return null
    params ??= {}
    t.names.forEach((name, j) => { (params as Record<string, string>)[name] = m[j + 1] })
  }
  return params ?? {}
}

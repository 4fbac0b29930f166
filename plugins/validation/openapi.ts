/**
 * OpenAPI import: the operations of an OpenAPI 3.0 or 3.1 document (such as DRF's
 * `manage.py generateschema` or drf-spectacular output) become validation rules — path, query
 * and header parameters, and the JSON request body — with local `$ref`s resolved.
 *
 * The document describes the upstream, so its paths are matched against the path the upstream
 * receives (the route's upstream path + what follows the prefix), under the path of its first
 * `servers` URL when that has one.
 */
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { HTTP_METHODS } from '../../schemas/common.js'
import { escapePointer } from '../../schemas/problem.js'
import { compilePath, type JsonSchema, type PathTemplate } from './validate-compile.js'

/** The `$id` the document is registered under, so operation schemas can `$ref` into it. */
export const OPENAPI_ID = 'urn:portcullis:openapi'

export interface ImportedOperation {
  method: string
  /** `POST /api/people/`, for logs and errors. */
  name: string
  template: PathTemplate
  body?: { schema: JsonSchema, required: boolean }
  querystring?: JsonSchema
  params?: JsonSchema
  headers?: JsonSchema
}

export interface ImportedDocument {
  /** The document, 3.0 schemas rewritten as JSON Schema; register it under OPENAPI_ID. */
  document: JsonSchema
  operations: ImportedOperation[]
}

type Obj = Record<string, unknown>
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v)

/** Reads a file, or fetches an http(s) URL (10 s at most). Throws an Error saying what is wrong. */
export async function readOpenApi (location: string): Promise<Obj> {
  let text: string
  if (/^https?:\/\//i.test(location)) {
    let res: Response
    try {
      res = await fetch(location, { signal: AbortSignal.timeout(10_000), redirect: 'follow' })
    } catch (err) {
      throw new Error(`cannot fetch ${location}: ${(err as Error).message}`)
    }
    if (!res.ok) throw new Error(`cannot fetch ${location}: HTTP ${res.status}`)
    text = await res.text()
  } else {
    try {
      text = readFileSync(location, 'utf8')
    } catch (err) {
      throw new Error(`cannot read ${location}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
    }
  }
  let doc: unknown
  try {
    doc = parseYaml(text, { maxAliasCount: 100 })
  } catch (err) {
    throw new Error(`${location} is not valid YAML or JSON: ${(err as Error).message.split('\n')[0]}`)
  }
  if (!isObj(doc)) throw new Error(`${location} is not an OpenAPI document`)
  return doc
}

/** The operations of a parsed document. Throws an Error saying what is wrong. */
export function importOpenApi (raw: Obj): ImportedDocument {
  const version = typeof raw.openapi === 'string' ? raw.openapi : ''
  if (!/^3\.[01]\.\d+/.test(version)) {
    throw new Error(`only OpenAPI 3.0 and 3.1 documents are supported (this one says openapi: ${JSON.stringify(raw.openapi ?? raw.swagger ?? null)})`)
  }
  const document = structuredClone(raw)
  if (version.startsWith('3.0')) convert30(document)
  delete document.$schema
  delete document.$id
  const base = serverPath(document)
  const operations: ImportedOperation[] = []
  const paths = isObj(document.paths) ? document.paths : {}
  for (const [path, rawItem] of Object.entries(paths)) {
    const itemPointer = `/paths/${escapePointer(path)}`
    const [item, itemAt] = deref(document, rawItem, itemPointer)
    if (!isObj(item)) continue
    const template = compilePath(base + path)
    for (const method of HTTP_METHODS) {
      const op = item[method.toLowerCase()]
      if (!isObj(op)) continue
      const opAt = `${itemAt}/${method.toLowerCase()}`
      const name = `${method} ${path}`
      const imported: ImportedOperation = { method, name, template }
      collectParameters(document, [[item.parameters, `${itemAt}/parameters`], [op.parameters, `${opAt}/parameters`]], imported)
      if (op.requestBody !== undefined) {
        const [body, bodyAt] = deref(document, op.requestBody, `${opAt}/requestBody`)
        if (isObj(body) && isObj(body.content)) {
          const mediaType = Object.keys(body.content).find((t) => /^application\/(json|[^/;]+\+json)\s*(;|$)/i.test(t))
          if (mediaType !== undefined) {
            const media = body.content[mediaType]
            if (isObj(media) && media.schema !== undefined) {
              imported.body = { schema: refTo(`${bodyAt}/content/${escapePointer(mediaType)}/schema`), required: body.required === true }
            } else {
              imported.body = { schema: {}, required: body.required === true }
            }
          }
        }
      }
      operations.push(imported)
    }
  }
  // Templates with fewer parameters first: `/people/me/` wins over `/people/{id}/` (OpenAPI §4.8.2).
  operations.sort((a, b) => paramCount(a.template) - paramCount(b.template))
  return { document, operations }
}

function paramCount (t: PathTemplate): number {
  return t.segments.filter((s) => !('literal' in s)).length
}

function refTo (pointer: string): JsonSchema {
  return { $ref: `${OPENAPI_ID}#${pointer.split('/').map((p) => encodeURIComponent(p).replaceAll('%7E', '~')).join('/')}` }
}

/** Follows local `$ref`s (`#/components/…`) of non-schema objects; returns the object and its pointer. */
function deref (doc: Obj, value: unknown, pointer: string): [unknown, string] {
  let current = value
  let at = pointer
  for (let hops = 0; isObj(current) && typeof current.$ref === 'string'; hops++) {
    const ref = current.$ref
    if (!ref.startsWith('#/')) throw new Error(`${at}: only local $refs are supported, not ${ref}`)
    if (hops > 20) throw new Error(`${at}: $ref loop`)
    try {
      at = decodeURIComponent(ref.slice(1))
    } catch {
      throw new Error(`${pointer}: malformed $ref ${ref}`)
    }
    current = resolvePointer(doc, at)
    if (current === undefined) throw new Error(`${pointer}: $ref ${ref} points at nothing`)
  }
  return [current, at]
}

function resolvePointer (doc: Obj, pointer: string): unknown {
  let node: unknown = doc
  for (const token of pointer.split('/').slice(1)) {
    const key = token.replaceAll('~1', '/').replaceAll('~0', '~')
    if (!isObj(node) && !Array.isArray(node)) return undefined
    node = (node as Obj)[key]
  }
  return node
}

/** Path-item parameters, overridden by the operation's own (same name and `in`). */
function collectParameters (doc: Obj, lists: Array<[unknown, string]>, into: ImportedOperation): void {
  const byKey = new Map<string, { name: string, in: string, required: boolean, schema: JsonSchema }>()
  for (const [list, listAt] of lists) {
    if (!Array.isArray(list)) continue
    list.forEach((entry, i) => {
      const [param, at] = deref(doc, entry, `${listAt}/${i}`)
      if (!isObj(param) || typeof param.name !== 'string' || typeof param.in !== 'string') return
      const schema = param.schema !== undefined ? refTo(`${at}/schema`) : {}
      byKey.set(`${param.in}:${param.name}`, { name: param.name, in: param.in, required: param.required === true || param.in === 'path', schema })
    })
  }
  const groups: Record<string, { properties: Record<string, JsonSchema>, required: string[] }> = {}
  for (const p of byKey.values()) {
    const part = p.in === 'path' ? 'params' : p.in === 'query' ? 'querystring' : p.in === 'header' ? 'headers' : null
    if (part === null) continue // cookies are not validated
    const name = part === 'headers' ? p.name.toLowerCase() : p.name
    groups[part] ??= { properties: {}, required: [] }
    groups[part].properties[name] = p.schema
    if (p.required) groups[part].required.push(name)
  }
  for (const [part, g] of Object.entries(groups)) {
    // Parameters the document does not list are allowed (clients send more headers and query keys).
    into[part as 'params' | 'querystring' | 'headers'] = { type: 'object', properties: g.properties, required: g.required }
  }
}

/** The path of the first server URL (`/v1` of `https://api.example.com/v1`), or ''. */
function serverPath (doc: Obj): string {
  const servers = doc.servers
  if (!Array.isArray(servers) || !isObj(servers[0]) || typeof servers[0].url !== 'string') return ''
  const url = servers[0].url
  if (url.includes('{')) return ''
  try {
    return new URL(url, 'http://relative').pathname.replace(/\/+$/, '')
  } catch {
    return ''
  }
}

/**
 * OpenAPI 3.0's schema dialect → JSON Schema: `nullable: true` becomes a `null` type, boolean
 * `exclusiveMinimum`/`exclusiveMaximum` (draft 4) become numbers. (3.1 already is JSON Schema.)
 */
function convert30 (node: unknown): void {
  const stack: unknown[] = [node]
  while (stack.length > 0) {
    const n = stack.pop()
    if (Array.isArray(n)) { stack.push(...n); continue }
    if (!isObj(n)) continue
    if (n.nullable === true) {
      if (typeof n.type === 'string') n.type = [n.type, 'null']
      else if (n.type === undefined && (n.$ref !== undefined || n.allOf !== undefined || n.oneOf !== undefined || n.anyOf !== undefined)) {
        const rest = { ...n }
        delete rest.nullable
        for (const k of Object.keys(n)) delete n[k]
        n.anyOf = [rest, { type: 'null' }]
      }
      if (Array.isArray(n.enum) && !n.enum.includes(null)) n.enum = [...(n.enum as unknown[]), null]
    }
    if (typeof n.nullable === 'boolean') delete n.nullable
    for (const [bool, limit] of [['exclusiveMinimum', 'minimum'], ['exclusiveMaximum', 'maximum']] as const) {
      if (n[bool] === true && typeof n[limit] === 'number') { n[bool] = n[limit]; delete n[limit] } else if (typeof n[bool] === 'boolean') delete n[bool]
    }
    for (const v of Object.values(n)) if (v !== null && typeof v === 'object') stack.push(v)
  }
}

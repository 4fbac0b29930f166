/**
 * Request validation (after authentication; src/pipeline.ts): per method and sub-path, the
 * route's schemas for the body, query string, path parameters and headers, given in the config
 * or imported from an OpenAPI document. Everything is compiled when the route is registered.
 *
 * The route scope streams bodies through untouched; on a request that a rule with a body schema
 * matches, this plugin reads the body itself (media type first, then the size limit while
 * reading, then nesting depth, then JSON.parse, then dangerous keys, then the schema) and hands
 * the forwarder the re-serialized value it validated: the upstream never gets bytes the
 * validator did not see. Query strings and headers are validated on copies (with coercion);
 * the upstream gets them as the client sent them.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError, type ErrorCode, type ProblemViolation } from '../../schemas/errors.js'
import { channels, publish, type ValidationFailureEvent } from '../../schemas/events.js'
import { normalizeValidate, type ValidateConfig, type ValidateOptions } from '../../schemas/validate.js'
import { refuseUnreadBody } from '../edge/lingering-close.js'
import { BodyTooLarge, findUnsafe, hasBody, jsonMediaType, readBody, scanJson, type BodyError } from './json-body.js'
import { importOpenApi, OPENAPI_ID, readOpenApi } from './openapi.js'
import {
  Compiler, compilePath, matchPath, pathSegments, resolveSchemaRef, ValidateConfigError,
  type CompiledSchema, type Part, type PathTemplate
} from './validate-compile.js'

export interface ValidatePluginOptions {
  /** The route's `validate` key, as loaded (paths already absolute). */
  validate: ValidateConfig
  /** Where it is in the config, for errors: `routes[0].validate`. */
  at: string
  routeName: string
  /** The route prefix (`/api/people`, or `/`). */
  prefix: string
  /** The upstream URL's path (`/api/people`), which OpenAPI paths are matched against. */
  upstreamPath: string
  /** Largest body in bytes (the route's bodyLimit, else server.bodyLimit). */
  bodyLimit: number
}

interface Rule {
  /** `POST /` (config rule) or `POST /api/people/` (OpenAPI operation), for logs. */
  name: string
  methods: ReadonlySet<string>
  template: PathTemplate
  body?: { schema: CompiledSchema, required: boolean }
  querystring?: CompiledSchema
  params?: CompiledSchema
  headers?: CompiledSchema
}

type FailPart = ValidationFailureEvent['part']

const DRF_NON_FIELD = 'non_field_errors'
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

async function validatePlugin (scope: FastifyInstance, opts: ValidatePluginOptions): Promise<void> {
  const { options, rulesPath } = normalizeValidate(opts.validate)
  const compiler = new Compiler()
  const problems: string[] = []
  const rules = await compileRules(options, `${opts.at}${rulesPath}`, compiler, problems)
  const operations = options.openapi === undefined ? [] : await compileOpenApi(options.openapi, `${opts.at}.openapi`, compiler, problems)
  if (problems.length > 0) throw new ValidateConfigError(problems)

  const report = options.mode === 'report'
  const maxErrors = options.maxErrors
  const prefixLength = opts.prefix === '/' ? 0 : opts.prefix.length
  const upstreamSegments = pathSegments(opts.upstreamPath) ?? []
  const route = opts.routeName
  // The methods a rule or operation is for (HEAD too when GET is: lookup falls back to GET's). A
  // request of any other method matches nothing, so it needs no segments: a GET on a route that
  // validates only POST bodies costs a lookup, not a split path (≈ 0.7 KB of garbage per request).
  const ruled = new Set<string>()
  for (const rule of [...rules, ...operations]) for (const method of rule.methods) ruled.add(method)
  if (ruled.has('GET')) ruled.add('HEAD')
  const everyMethodChecked = options.unmatched === 'reject'

  /** Refuses (enforce) or records (report) one failure; true when the request must stop here. */
  function fail (request: FastifyRequest, reply: FastifyReply, part: FailPart, code: ErrorCode, detail: string, errors?: ProblemViolation[]): boolean {
    publish(channels.validationFailure, () => ({ request, route, part, reportOnly: report }))
    if (report && code !== 'GW_ERR_PAYLOAD_TOO_LARGE') {
      request.log.info({ validation: { route, part, detail, errors } }, 'request failed validation (report only, let through)')
      return false
    }
    request.log.debug({ validation: { route, part, detail, errors } }, 'request failed validation')
    // A body we did not read is read and discarded, bounded, so the client sees this answer
    // (plugins/edge/lingering-close; sendProblem does the same for the thrown error below).
    if (options.errorFormat === 'drf' && code === 'GW_ERR_VALIDATION') {
      refuseUnreadBody(reply)
      reply.code(400).type('application/json; charset=utf-8').send(JSON.stringify(drfBody(errors ?? [], detail)))
      return true
    }
    throw new GatewayError(code, detail, { errors })
  }

  // A callback hook: only a request whose rule has a body schema waits for anything (the body),
  // so every other request is checked without a promise.
  scope.addHook('preValidation', function validateRequest (request, reply, done) {
    let body: NonNullable<Rule['body']> | null | undefined
    try {
      body = checkHead(request, reply)
    } catch (err) {
      done(err as Error)
      return
    }
    if (body === null) return // answered already (errorFormat: drf)
    if (body === undefined) { done(); return }
    let mediaType: string | null
    try {
      mediaType = checkBodyHead(request, reply, body)
    } catch (err) {
      done(err as Error)
      return
    }
    if (mediaType === null) { if (!reply.sent) done(); return }
    const rule = body
    const media = mediaType
    readBody(request.raw, opts.bodyLimit, (err, bytes) => {
      // Inside the stream's event: whatever the checks throw goes to Fastify, never up the stack.
      try {
        if (err === null) checkBody(request, reply, rule, bytes, media)
        else bodyFailed(request, reply, err)
      } catch (thrown) {
        done(thrown as Error)
        return
      }
      if (!reply.sent) done()
    })
  })

  /** The rule (config rules first, then OpenAPI operations) for a method and decoded segments. */
  function lookup (method: string, segments: readonly string[]): ReturnType<typeof findRule> {
    let found = findRule(rules, method, segments)
    if (found === null && operations.length > 0) found = findRule(operations, method, [...upstreamSegments, ...segments])
    // HEAD is GET without the response body (RFC 9110 §9.3.2): GET's parameter schemas apply.
    if (found === null && method === 'HEAD') {
      found = findRule(rules, 'GET', segments) ?? (operations.length > 0 ? findRule(operations, 'GET', [...upstreamSegments, ...segments]) : null)
    }
    return found
  }

  /**
   * The parts that arrive with the head (path parameters, headers, query string): throws or
   * answers (null) on a violation; otherwise the matched rule's body schema, if any. A request
   * refused here never has its body read.
   */
  function checkHead (request: FastifyRequest, reply: FastifyReply): NonNullable<Rule['body']> | null | undefined {
    const url = request.raw.url ?? '/'
    const method = request.method
    // No rule for the method: what is left to check is the path's encoding (only a `%` can break it).
    if (!everyMethodChecked && !ruled.has(method) && !url.includes('%')) return undefined
    const q = url.indexOf('?')
    const path = (q === -1 ? url : url.slice(0, q)).slice(prefixLength)
    const segments = pathSegments(path)
    if (segments === null) throw new GatewayError('GW_ERR_BAD_REQUEST', 'The path is not validly percent-encoded.')
    let found = lookup(method, segments)
    if (found === null) {
      // No rule for this exact spelling: the spelling a lenient upstream would resolve it to.
      const folded = foldSegments(path)
      if (folded !== null) found = lookup(method, folded)
    }
    if (found === null) {
      if (options.unmatched === 'reject') {
        publish(channels.validationFailure, () => ({ request, route, part: 'params' as const, reportOnly: report }))
        if (!report) throw new GatewayError('GW_ERR_NOT_FOUND', 'No operation of this API matches the request.')
        request.log.info({ validation: { route, detail: 'no matching operation' } }, 'request failed validation (report only, let through)')
      }
      return undefined
    }
    const { rule, params } = found

    const violations: ProblemViolation[] = []
    let firstPart: FailPart | null = null
    const check = (part: Part, schema: CompiledSchema | undefined, source: () => unknown): void => {
      if (schema === undefined) return
      const errors = schema.check(source(), maxErrors, source)
      if (errors !== null) { violations.push(...errors); firstPart ??= part }
    }
    check('params', rule.params, () => ({ ...params }))
    check('headers', rule.headers, () => ({ ...request.headers }))
    check('querystring', rule.querystring, () => ({ ...(request.query as Record<string, unknown>) }))
    if (firstPart !== null && fail(request, reply, firstPart, 'GW_ERR_VALIDATION', 'The request does not match the schema of this route.', violations.slice(0, maxErrors))) return null
    return rule.body
  }

  /**
   * What the head says about a body the rule has a schema for: throws or answers (drf), or
   * returns null, when the request needs nothing more (no body where none is required, or a
   * failure in report mode); otherwise the JSON media type, and the body is to be read.
   */
  function checkBodyHead (request: FastifyRequest, reply: FastifyReply, body: NonNullable<Rule['body']>): string | null {
    const headers = request.raw.headers
    const present = hasBody(headers)
    if (!present && !body.required) return null
    const mediaType = jsonMediaType(headers['content-type'])
    if (mediaType === null) {
      fail(request, reply, 'content-type', 'GW_ERR_UNSUPPORTED_MEDIA_TYPE', 'This route accepts only JSON bodies (application/json or application/*+json, UTF-8).')
      return null
    }
    const encoding = headers['content-encoding']
    if (encoding !== undefined && encoding.toLowerCase() !== 'identity') {
      fail(request, reply, 'content-type', 'GW_ERR_UNSUPPORTED_MEDIA_TYPE', 'This route does not accept encoded (compressed) bodies.')
      return null
    }
    if (!present) {
      fail(request, reply, 'body', 'GW_ERR_VALIDATION', 'The JSON body is empty.')
      return null
    }
    const length = headers['content-length']
    if (length !== undefined && Number(length) > opts.bodyLimit) {
      fail(request, reply, 'body', 'GW_ERR_PAYLOAD_TOO_LARGE', `The request body is larger than ${opts.bodyLimit} bytes.`)
      return null
    }
    return mediaType
  }

  /** The body could not be read whole: too large (413, the rest read and discarded, bounded), or broken off (400). */
  function bodyFailed (request: FastifyRequest, reply: FastifyReply, err: BodyError): void {
    if (err instanceof BodyTooLarge) {
      fail(request, reply, 'body', 'GW_ERR_PAYLOAD_TOO_LARGE', err.message)
      return
    }
    throw new GatewayError('GW_ERR_BAD_REQUEST', err.message)
  }

  /** The body, read whole: throws or answers on a violation; otherwise sets what the upstream gets. */
  function checkBody (request: FastifyRequest, reply: FastifyReply, body: NonNullable<Rule['body']>, bytes: Buffer, mediaType: string): void {
    let text: string
    try {
      text = UTF8.decode(bytes)
    } catch {
      // Not UTF-8 (RFC 8259 §8.1): decoding would replace bytes, and the upstream get other text.
      if (!fail(request, reply, 'body', 'GW_ERR_VALIDATION', 'The body is not valid UTF-8.')) passOriginal(request, bytes)
      return
    }
    if (text.trim() === '') { if (!fail(request, reply, 'body', 'GW_ERR_VALIDATION', 'The JSON body is empty.')) passOriginal(request, bytes); return }
    const scan = scanJson(text, options.maxDepth)
    if (scan.tooDeep) {
      if (!fail(request, reply, 'body', 'GW_ERR_VALIDATION', `The JSON body is nested deeper than ${options.maxDepth} levels.`, [{ pointer: '', message: `must not be nested deeper than ${options.maxDepth} levels` }])) passOriginal(request, bytes)
      return
    }
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch {
      if (!fail(request, reply, 'body', 'GW_ERR_VALIDATION', 'The body is not valid JSON.')) passOriginal(request, bytes)
      return
    }
    if (scan.suspectKeys || scan.longInteger) {
      const unsafe = findUnsafe(value, scan.suspectKeys, scan.longInteger)
      if (unsafe !== null) {
        if (!fail(request, reply, 'body', 'GW_ERR_VALIDATION', 'The request does not match the schema of this route.', [unsafe])) passOriginal(request, bytes)
        return
      }
    }
    const errors = body.schema.check(value, maxErrors)
    if (errors !== null) {
      if (!fail(request, reply, 'body', 'GW_ERR_VALIDATION', 'The request does not match the schema of this route.', errors)) passOriginal(request, bytes)
      return
    }
    if (report) passOriginal(request, bytes)
    else request.upstream = { ...request.upstream, body: JSON.stringify(value), contentType: mediaType }
  }
}

/** Report mode forwards what the client sent, valid or not; enforce mode what it validated. */
function passOriginal (request: FastifyRequest, bytes: Buffer): void {
  request.upstream = { ...request.upstream, body: bytes, contentType: request.raw.headers['content-type'] }
}

/**
 * A path's segments as the most lenient upstream would read them, or null when the path has
 * nothing to fold (no `%`, backslash or `;`: the common case, three indexOf). Used only when no
 * rule matches the path's own decoded segments, so a rule still sees exact parameter values
 * whenever it matches; this only widens which requests get validated, so that no spelling of a
 * rule's path reaches the upstream unvalidated (test/paths.test.ts):
 *
 * - `;params` are cut from each segment (Tomcat, Spring: `/api/people/;x=1` is `/api/people/`);
 * - a segment is decoded up to three times (`%252F` → `%2F` → `/`, an upstream that decodes twice),
 *   and a decoded `;` starts parameters, a decoded `#` ends the path;
 * - a decoded `/`, a backslash or `%5C` separates segments (Tomcat's ALLOW_ENCODED_SLASH, IIS);
 * - whitespace around a segment is dropped, and a segment left empty does not count
 *   (`/api/people/%20` is `/api/people/` to Spring's trimming path matcher).
 *
 * Dot segments, NUL and fragments never get here: the path guard (plugins/edge/path-guard.ts) refuses them first.
 */
export function foldSegments (path: string): string[] | null {
  if (path.indexOf('%') === -1 && path.indexOf('\\') === -1 && path.indexOf(';') === -1) return null
  const out: string[] = []
  for (const raw of path.split(SEPARATORS)) {
    let segment = cutParams(raw)
    for (let n = 0; n < 3 && segment.includes('%'); n++) {
      let decoded: string
      try { decoded = decodeURIComponent(segment) } catch { break }
      if (decoded === segment) break
      segment = decoded
    }
    const fragment = segment.indexOf('#')
    for (const part of (fragment === -1 ? segment : segment.slice(0, fragment)).split(SEPARATORS)) {
      const name = cutParams(part).trim()
      if (name !== '') out.push(name)
    }
    if (fragment !== -1) break
  }
  return out
}

const SEPARATORS = /[/\\]/

function cutParams (segment: string): string {
  const semi = segment.indexOf(';')
  return semi === -1 ? segment : segment.slice(0, semi)
}

function findRule (rules: readonly Rule[], method: string, segments: readonly string[]): { rule: Rule, params: Record<string, string> } | null {
  for (const rule of rules) {
    if (!rule.methods.has(method)) continue
    const params = matchPath(rule.template, segments)
    if (params !== null) return { rule, params }
  }
  return null
}

async function compileRules (options: ValidateOptions, at: string, compiler: Compiler, problems: string[]): Promise<Rule[]> {
  const rules: Rule[] = []
  for (const [i, r] of options.rules.entries()) {
    const methods = Array.isArray(r.method) ? r.method : [r.method]
    const rule: Rule = { name: `${methods.join(',')} ${r.path}`, methods: new Set(methods), template: compilePath(r.path) }
    for (const part of ['body', 'querystring', 'params', 'headers'] as const) {
      const ref = r[part]
      if (ref === undefined) continue
      try {
        const compiled = compiler.compile(await resolveSchemaRef(ref), part)
        if (part === 'body') rule.body = { schema: compiled, required: true }
        else rule[part] = compiled
      } catch (err) {
        problems.push(`${at}[${i}].${part}: ${(err as Error).message}`)
      }
    }
    rules.push(rule)
  }
  // Literal paths before templated ones, as a router would.
  return rules.sort((a, b) => paramCount(a.template) - paramCount(b.template))
}

function paramCount (t: PathTemplate): number {
  return t.segments.filter((s) => !('literal' in s)).length
}

async function compileOpenApi (location: string, at: string, compiler: Compiler, problems: string[]): Promise<Rule[]> {
  try {
    const { document, operations } = importOpenApi(await readOpenApi(location))
    compiler.addDocument(OPENAPI_ID, document)
    const rules: Rule[] = []
    for (const op of operations) {
      const rule: Rule = { name: op.name, methods: new Set([op.method]), template: op.template }
      for (const part of ['querystring', 'params', 'headers'] as const) {
        const schema = op[part]
        if (schema !== undefined) rule[part] = compileOperationPart(compiler, schema, part, op.name)
      }
      if (op.body !== undefined) rule.body = { schema: compileOperationPart(compiler, op.body.schema, 'body', op.name), required: op.body.required }
      rules.push(rule)
    }
    return rules
  } catch (err) {
    problems.push(`${at}: ${(err as Error).message}`)
    return []
  }
}

function compileOperationPart (compiler: Compiler, schema: Record<string, unknown>, part: Part, name: string): CompiledSchema {
  try {
    return compiler.compile(schema, part, true)
  } catch (err) {
    throw new Error(`${name} ${part}: ${(err as Error).message}`)
  }
}

/** DRF's error shape: `{ "age": ["must be integer"], "address": { "city": ["is required"] } }`. */
export function drfBody (errors: readonly ProblemViolation[], detail: string): Record<string, unknown> {
  if (errors.length === 0) return { detail }
  const out: Record<string, unknown> = {}
  for (const { pointer, message } of errors) {
    const keys = pointer.split('/').slice(1).map((k) => k.replaceAll('~1', '/').replaceAll('~0', '~'))
    if (keys.length === 0) keys.push(DRF_NON_FIELD)
    let node = out
    for (const key of keys.slice(0, -1)) {
      const next = Object.hasOwn(node, key) ? node[key] : undefined
      if (next === undefined || Array.isArray(next)) {
        const created: Record<string, unknown> = {}
        Object.defineProperty(node, key, { value: created, enumerable: true, writable: true, configurable: true })
        node = created
      } else node = next as Record<string, unknown>
    }
    const leaf = keys[keys.length - 1]
    const existing = Object.hasOwn(node, leaf) ? node[leaf] : undefined
    if (Array.isArray(existing)) existing.push(message)
    else if (existing === undefined) Object.defineProperty(node, leaf, { value: [message], enumerable: true, writable: true, configurable: true })
  }
  return out
}

/**
 * Loads and compiles every route's validation without building the gateway, for
 * `portcullis validate`: throws a ValidateConfigError listing every problem (`path: message`).
 */
export async function checkValidation (config: { routes: ReadonlyArray<{ validate?: ValidateConfig }> }): Promise<void> {
  const problems: string[] = []
  for (const [i, route] of config.routes.entries()) {
    if (route.validate === undefined) continue
    const at = `routes[${i}].validate`
    const { options, rulesPath } = normalizeValidate(route.validate)
    const compiler = new Compiler()
    await compileRules(options, `${at}${rulesPath}`, compiler, problems)
    if (options.openapi !== undefined) await compileOpenApi(options.openapi, `${at}.openapi`, compiler, problems)
  }
  if (problems.length > 0) throw new ValidateConfigError(problems)
}

export { ValidateConfigError }

export default fp(validatePlugin, { name: 'portcullis-validate', fastify: '5.x' })

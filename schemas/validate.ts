/**
 * Request validation: the per-route `validate` key. Either a list of rules (the short form of
 * DESIGN.md's example) or an object with the rules and the options:
 *
 *   validate:                              validate:
 *     - method: POST                         mode: report
 *       path: /                              openapi: ./openapi.yaml
 *       body: Person                         unmatched: reject
 *                                            rules: [{ method: POST, path: /, body: Person }]
 *
 * A schema is named three ways: the name of a TypeBox schema exported by a module in schemas/
 * (`Person`) or `./module.js#Export` (a user's module, default export without `#`), a JSON
 * Schema file (`./person.schema.json`, `.yaml`), or an inline JSON Schema object.
 */
import Type, { type Static } from 'typebox'
import { HTTP_METHODS } from './common.js'

type HttpMethod = typeof HTTP_METHODS[number]
// A tuple (not HTTP_METHODS.map), so that the static type is the union of the method names.
const Method = Type.Union(HTTP_METHODS.map((m) => Type.Literal(m)) as unknown as [Type.TLiteral<HttpMethod>])

export const SchemaRefSchema = Type.Union([
  Type.String({ minLength: 1, description: 'a schema exported from schemas/ by name (Person), ./module.js#Export, or a JSON Schema file (.json, .yaml)' }),
  Type.Record(Type.String(), Type.Unknown(), { description: 'an inline JSON Schema' })
])
/** SchemaRefSchema with the description of the part it checks. */
const schemaRef = (description: string) => Type.Union(SchemaRefSchema.anyOf, { description })

export const ValidateRuleSchema = Type.Object({
  method: Type.Union([Method, Type.Array(Method, { minItems: 1, uniqueItems: true })], {
    description: 'the method(s) this rule applies to'
  }),
  path: Type.String({
    pattern: '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/{}-]*$',
    description: 'sub-path under the route prefix: `/`, `/:id/` or `/{id}/` (a trailing slash is optional when matching)'
  }),
  body: Type.Optional(schemaRef('schema of the JSON body; a rule with a body schema accepts JSON bodies only')),
  querystring: Type.Optional(schemaRef('schema of the parsed query string (an object; repeated keys are arrays)')),
  params: Type.Optional(schemaRef('schema of the path parameters named in path (strings on the wire)')),
  headers: Type.Optional(schemaRef('schema of the request headers (names lower-case)'))
}, { additionalProperties: false })

export const VALIDATE_DEFAULTS = {
  mode: 'enforce',
  errorFormat: 'problem',
  maxDepth: 64,
  maxErrors: 20,
  unmatched: 'pass'
} as const

export const ValidateOptionsSchema = Type.Object({
  rules: Type.Optional(Type.Array(ValidateRuleSchema, { default: [], description: 'schemas per method and sub-path' })),
  mode: Type.Optional(Type.Union([Type.Literal('enforce'), Type.Literal('report')], {
    default: VALIDATE_DEFAULTS.mode,
    description: 'enforce: refuse invalid requests; report: log and count them, but let them through'
  })),
  errorFormat: Type.Optional(Type.Union([Type.Literal('problem'), Type.Literal('drf')], {
    default: VALIDATE_DEFAULTS.errorFormat,
    description: 'problem: RFC 9457 with errors[{pointer, message}]; drf: {"field": ["message"]} like Django REST Framework'
  })),
  maxDepth: Type.Optional(Type.Integer({ minimum: 1, maximum: 512, default: VALIDATE_DEFAULTS.maxDepth, description: 'deepest nesting of arrays/objects in a JSON body' })),
  maxErrors: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: VALIDATE_DEFAULTS.maxErrors, description: 'most violations listed in one response' })),
  openapi: Type.Optional(Type.String({ minLength: 1, description: 'an OpenAPI 3.0/3.1 document (file, or http(s) URL fetched at start) whose operations validate requests' })),
  unmatched: Type.Optional(Type.Union([Type.Literal('pass'), Type.Literal('reject')], {
    default: VALIDATE_DEFAULTS.unmatched,
    description: 'with openapi: what happens to a request that matches no operation (reject = 404)'
  }))
}, { additionalProperties: false })

export const ValidateSchema = Type.Union([
  Type.Array(ValidateRuleSchema, { description: 'the rules, with every option at its default' }),
  ValidateOptionsSchema
], { description: 'request validation for this route' })

export const routeValidateProperties = {
  validate: Type.Optional(ValidateSchema)
}

export type SchemaRef = Static<typeof SchemaRefSchema>
export type ValidateRule = Static<typeof ValidateRuleSchema>
export type ValidateOptions = Omit<Required<Static<typeof ValidateOptionsSchema>>, 'openapi' | 'rules'> & { openapi?: string, rules: ValidateRule[] }
export type ValidateConfig = Static<typeof ValidateSchema>

/**
 * The object form of either spelling, with its defaults (and where its rules are in the config).
 * The options are optional in the schema (a union's branches get no defaults applied), so their
 * defaults — the `default` annotations above, from VALIDATE_DEFAULTS — are filled in here.
 */
export function normalizeValidate (value: ValidateConfig): { options: ValidateOptions, rulesPath: string } {
  if (Array.isArray(value)) return { options: { ...VALIDATE_DEFAULTS, rules: value }, rulesPath: '' }
  return {
    options: {
      rules: value.rules ?? [],
      mode: value.mode ?? VALIDATE_DEFAULTS.mode,
      errorFormat: value.errorFormat ?? VALIDATE_DEFAULTS.errorFormat,
      maxDepth: value.maxDepth ?? VALIDATE_DEFAULTS.maxDepth,
      maxErrors: value.maxErrors ?? VALIDATE_DEFAULTS.maxErrors,
      unmatched: value.unmatched ?? VALIDATE_DEFAULTS.unmatched,
      ...(value.openapi === undefined ? {} : { openapi: value.openapi })
    },
    rulesPath: '.rules'
  }
}

const isPath = (p: string): boolean => p.startsWith('.') || p.startsWith('/')

/** Config-relative file paths (schema files, modules, the OpenAPI document) made absolute. */
export function resolveValidatePaths (value: ValidateConfig, abs: (p: string) => string): ValidateConfig {
  const ref = (r: SchemaRef | undefined): SchemaRef | undefined => {
    if (typeof r !== 'string' || !isPath(r)) return r
    const hash = r.indexOf('#')
    return hash === -1 ? abs(r) : abs(r.slice(0, hash)) + r.slice(hash)
  }
  const rule = (r: ValidateRule): ValidateRule => {
    const out: ValidateRule = { ...r }
    for (const part of ['body', 'querystring', 'params', 'headers'] as const) {
      if (r[part] !== undefined) out[part] = ref(r[part])
    }
    return out
  }
  if (Array.isArray(value)) return value.map(rule)
  const out = { ...value, rules: (value.rules ?? []).map(rule) }
  if (value.openapi !== undefined && !/^https?:\/\//i.test(value.openapi)) out.openapi = abs(value.openapi)
  return out
}

/**
 * What the config schema cannot say about `routes[i].validate` (`at` is `routes[i].validate`;
 * `methods` the route's own, which a rule's methods must be among).
 */
export function checkValidateSemantics (value: ValidateConfig, at: string, problems: string[], methods?: readonly string[]): void {
  const { options, rulesPath } = normalizeValidate(value)
  const seen = new Map<string, number>()
  options.rules.forEach((rule, i) => {
    const here = `${at}${rulesPath}[${i}]`
    if (rule.body === undefined && rule.querystring === undefined && rule.params === undefined && rule.headers === undefined) {
      problems.push(`${here}: names no schema (body, querystring, params or headers)`)
    }
    if (/\/\/|\/\.\.?(\/|$)/.test(rule.path)) problems.push(`${here}.path: must not contain "//", "." or ".." segments`)
    const ruleMethods = Array.isArray(rule.method) ? rule.method : [rule.method]
    const key = rule.path.replace(/\/+$/, '').replace(/\{[^}/]*\}|:[^/]+/g, ':')
    for (const method of ruleMethods) {
      if (methods !== undefined && !methods.includes(method)) problems.push(`${here}.method: ${method} is not one of the route's methods (${methods.join(', ')})`)
      const first = seen.get(`${method} ${key}`)
      if (first !== undefined) problems.push(`${here}: ${method} ${rule.path} is already validated by ${at}${rulesPath}[${first}]`)
      else seen.set(`${method} ${key}`, i)
    }
  })
  if (options.openapi !== undefined && /^[a-z][a-z0-9+.-]*:\/\//i.test(options.openapi) && !/^https?:\/\//i.test(options.openapi)) {
    problems.push(`${at}.openapi: must be a file path or an http(s) URL`)
  }
  if (options.openapi === undefined && options.unmatched === 'reject') {
    problems.push(`${at}.unmatched: "reject" needs openapi (rules alone never refuse a request they do not match)`)
  }
}

/**
 * Config errors that help (issue 15, item 6), through parseConfig and loadConfig on real files:
 * the problems of every stage at once, sorted by path, and none about a value the user did not
 * write; syntax errors as `file:line:column` with the line and a caret; strict JSON for a .json
 * file; patterns in words; a scalar where a list belongs refused with an example; an unreadable
 * file named as given and as resolved. (test/cli.test.ts runs the same through the CLI.)
 */
import t, { type Test } from 'tap'
import { readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { pathToFileURL } from 'node:url'
import { ConfigError, loadConfig, parseConfig } from '../src/config.js'
import { GatewayConfigSchema, MAX_ROUTES } from '../schemas/config.js'
import { PATTERN_PHRASES } from '../schemas/common.js'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'
import { configProblems, tempFolder } from './config-helper.js'

const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:8000/api/people' }
const HASH = hashPasswordSync('pw', { N: 1024, r: 8, p: 1 })
const PREFIX_PHRASE = "must start with / and hold only letters, digits and the URL path characters - . _ ~ ! $ & ' ( ) * + , ; = : @ % /"

/** The ConfigError `fn` throws; anything else thrown, or nothing, fails the test. */
function configError (t: Test, fn: () => unknown): ConfigError {
  try {
    fn()
  } catch (err) {
    if (err instanceof ConfigError) return err
    t.fail(`not a ConfigError: ${String(err)}`)
    throw err
  }
  t.fail('nothing thrown')
  return new ConfigError([])
}

const problems = configProblems
const { dir, file } = tempFolder(t, 'portcullis-config-errors-')

t.test('every stage at once: ${VAR}, schema and semantic problems together, sorted by path', async (t) => {
  t.same(problems({
    bogus: 1,
    server: { port: '${PORT}', timeouts: { headers: '1h' } },
    routes: [
      { ...route, timeout: '10 seconds' },
      { ...route, name: 'admin', prefix: '/api/people/admin' },
      { name: 'c', prefix: '/c', upstream: '${C_URL}' }
    ]
  }), [
    'bogus: unknown key',
    'routes[0].timeout: must be a duration such as 500ms, 10s, 15m or 1h',
    'routes[1].prefix: "/api/people/admin" is shadowed by routes[0].prefix "/api/people"',
    'routes[2].upstream: environment variable C_URL is not set (write ${C_URL:-default} to give a default)',
    'server.port: environment variable PORT is not set (write ${PORT:-default} to give a default)',
    'server.timeouts.headers: must not be longer than server.timeouts.request'
  ])

  // Indexes sort as numbers: routes[2] before routes[10].
  const routes = Array.from({ length: 11 }, (_, i) => ({ name: `r${i}`, prefix: `/r${i}`, upstream: i === 2 || i === 10 ? 'ftp://x/y' : 'http://127.0.0.1:1/y' }))
  t.same(problems({ server: { port: 'http' }, routes }), [
    'routes[2].upstream: must be an http or https URL',
    'routes[10].upstream: must be an http or https URL',
    'server.port: must be an integer'
  ])
})

t.test('a later stage does not judge what an earlier one refused', async (t) => {
  t.same(problems({ server: { port: '${PORT}' }, routes: [route] }), [
    'server.port: environment variable PORT is not set (write ${PORT:-default} to give a default)'
  ], 'an unset variable is not also "must be an integer"')
  t.same(problems({ server: { port: 'http', metrics: { port: 8080 } }, routes: [route] }), ['server.port: must be an integer'],
    'the stand-in port (the default, 8080) does not make "metrics.port must differ from server.port"')
  t.same(problems({ jwt: { algorithms: ['XX256'], secret: 'k'.repeat(32) }, routes: [{ ...route, auth: ['jwt'] }] }), [
    'jwt.algorithms[0]: must be one of "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"'
  ], 'a jwt section left out of the semantic checks does not make "needs a jwt section"')
  t.same(problems({ routes: [{ ...route, prefix: 'api/people' }, { ...route, name: 'b', prefix: '/b', upstream: 'ftp://x/y' }] }), [
    `routes[0].prefix: ${PREFIX_PHRASE}`,
    'routes[1].upstream: must be an http or https URL'
  ], 'a route the schema refused is left out; the ones after it keep their index')
  t.same(problems({ server: { host: '${HOST}' }, jwt: { algorithms: ['HS256'], secret: 'demo-only-secret-set-JWT_SECRET-in-production' }, routes: [{ ...route, auth: ['jwt'] }] }), [
    'server.host: environment variable HOST is not set (write ${HOST:-default} to give a default)'
  ], 'the literal "${HOST}" is not taken for a public address')
  t.same(problems({ routes: [route, { ...route, upstream: '${UP}' }] }), [
    'routes[1].name: "people" is already the name of routes[0]',
    'routes[1].prefix: "/api/people" is already the prefix of routes[0]',
    'routes[1].upstream: environment variable UP is not set (write ${UP:-default} to give a default)'
  ], 'a route whose upstream is an unset variable is still checked, but not its upstream')
  t.same(problems('a string'), ['(root): must be a mapping (key: value)'], 'nothing to check semantically: the schema problem alone')
  const cyclic: Record<string, unknown> = { routes: [route] }
  cyclic.server = { again: cyclic }
  t.same(problems(cyclic), ['server.again: contains itself (a YAML alias inside its own anchor)', 'server.again: unknown key'])
})

t.test('a scalar where a list belongs is refused with an example; upstream takes either', async (t) => {
  t.same(problems({ routes: [{ ...route, methods: 'GET' }] }), ['routes[0].methods: must be a list, e.g. [GET]'])
  t.same(problems({ routes: [{ ...route, methods: 'GET, POST' }] }), ['routes[0].methods: must be a list, e.g. [GET, POST]'])
  t.same(problems({ routes: [{ ...route, methods: 'FETCH' }] }), ['routes[0].methods: must be a list, e.g. [FETCH]'], 'the list problem, not also the bad method inside the made-up list')
  t.same(problems({ routes: [{ ...route, methods: '${METHODS}' }] }, { METHODS: 'GET' }), ['routes[0].methods: must be a list, e.g. [GET]'], 'from the environment too')
  t.same(problems({ routes: [{ ...route, methods: null }] }), ['routes[0].methods: must be a list'])
  t.same(problems({ routes: [{ ...route, methods: '[x' }] }), ['routes[0].methods: must be a list, e.g. ["[x"]'], 'quoted where YAML would misread it')
  t.same(problems({ users: [{ username: 'ada', passwordHash: HASH, scopes: 'people:read' }], routes: [route] }), [
    'users[0].scopes: must be a list, e.g. [people:read]'
  ])
  t.same(problems({ server: { trustProxy: '10.0.0.0/8' }, routes: [route] }), ['server.trustProxy: must be a list, e.g. [10.0.0.0/8]'])
  t.same(problems({ routes: [{ ...route, scopes: 'people:read' }] }), ['routes[0].scopes: must be a mapping (key: value)'], 'per-method scopes are a mapping')
  t.same(problems({ routes: [{ ...route, upstream: {} }] }), ['routes[0].upstream: must be a string or a list'])
  t.equal(parseConfig({ routes: [route] }, { env: {} }).routes[0].upstream, route.upstream, 'upstream: one URL')
  t.same(parseConfig({ routes: [{ ...route, upstream: [route.upstream, 'http://127.0.0.1:8001/api/people'] }] }, { env: {} }).routes[0].upstream.length, 2, 'or a list')
  t.equal(parseConfig({ server: { trustProxy: '${TRUST}' }, routes: [route] }, { env: { TRUST: 'true' } }).server.trustProxy, true, '"true" from the environment is still a flag')
  t.equal(parseConfig({ server: { port: '${PORT}' }, routes: [route] }, { env: { PORT: '9090' } }).server.port, 9090, 'and "9090" a port')
})

/** Every `pattern` in a schema tree, with where it was found. */
function patternsIn (node: unknown, where: string, found: Map<string, string>): void {
  if (node === null || typeof node !== 'object') return
  const pattern = (node as { pattern?: unknown }).pattern
  if (typeof pattern === 'string' && !found.has(pattern)) found.set(pattern, where)
  for (const [key, value] of Object.entries(node)) patternsIn(value, `${where}/${key}`, found)
}

t.test('every pattern in the schemas has a phrase in PATTERN_PHRASES, and every phrase a pattern', async (t) => {
  const found = new Map<string, string>()
  patternsIn(GatewayConfigSchema, 'GatewayConfigSchema', found)
  // And whatever else schemas/*.ts export (a schema not yet part of the config).
  const folder = join(import.meta.dirname, '..', 'schemas')
  for (const name of readdirSync(folder).filter((n) => n.endsWith('.ts'))) {
    const mod = await import(pathToFileURL(join(folder, name)).href) as Record<string, unknown>
    for (const [key, value] of Object.entries(mod)) patternsIn(value, `schemas/${name} ${key}`, found)
  }
  t.ok(found.size >= 17, `the walk finds the patterns (${found.size})`)
  for (const [pattern, where] of found) {
    t.ok(Object.hasOwn(PATTERN_PHRASES, pattern), `${where}: ${pattern} has a phrase`)
  }
  for (const [pattern, phrase] of Object.entries(PATTERN_PHRASES)) {
    t.ok(found.has(pattern), `the phrase for ${pattern} belongs to a pattern in the schemas`)
    t.match(phrase, /^must /, `"${phrase}" reads as a sentence`)
    t.notOk(phrase.includes(pattern), 'and does not quote the regex')
  }
})

t.test('a pattern mismatch is explained in words', async (t) => {
  const cases: Array<[unknown, string]> = [
    [{ routes: [{ ...route, prefix: 'api/people' }] }, `routes[0].prefix: ${PREFIX_PHRASE}`],
    [{ routes: [{ ...route, name: 'my route' }] }, 'routes[0].name: must be 1 to 64 letters, digits and - . _ (no spaces)'],
    [{ users: [{ username: 'a:b', passwordHash: HASH }], routes: [route] }, 'users[0].username: must not contain ":" or control characters'],
    [{ users: [{ username: 'ada', passwordHash: 'md5$x' }], routes: [route] }, 'users[0].passwordHash: must be an scrypt hash from `portcullis hash-password` (scrypt$N$r$p$salt$hash)'],
    [{ users: [{ username: 'ada', passwordHash: HASH, scopes: ['people read'] }], routes: [route] }, 'users[0].scopes[0]: must be a scope such as people:read: printable ASCII without spaces, " or \\'],
    [{ apiKeyHeader: 'X Api Key', routes: [route] }, "apiKeyHeader: must be a header name (an HTTP token): letters, digits and ! # $ % & ' * + . ^ _ ` | ~ - only, no spaces or \":\""],
    [{ server: { metrics: { path: '/metrics/' } }, routes: [route] }, 'server.metrics.path: must be a path such as /metrics: it starts with /, does not end with /, and its segments hold only letters, digits and - . _ ~'],
    [{ routes: [{ ...route, cors: { origins: ['https://app.example.com/'] } }] }, 'routes[0].cors.origins[0]: must be * or an origin such as https://app.example.com (scheme, host and port; no path, not even a trailing /)'],
    [{ routes: [{ ...route, rateLimit: { max: 5, by: 'cookie' } }] }, 'routes[0].rateLimit.by: must be ip, consumer or header:<header name>, e.g. header:X-Tenant'],
    [{ securityHeaders: { referrerPolicy: 'No-Referrer' }, routes: [route] }, 'securityHeaders.referrerPolicy: must be a Referrer-Policy such as no-referrer or strict-origin-when-cross-origin (or a comma-separated list of them)'],
    [{ routes: [{ ...route, bodyLimit: '1 MB' }] }, 'routes[0].bodyLimit: must be a size such as 512kb or 1mb']
  ]
  for (const [raw, message] of cases) t.same(problems(raw), [message])
})

t.test('a file that cannot be read is named as given and as resolved', async (t) => {
  const missing = join(dir, 'gateway.yml')
  const given = relative(process.cwd(), missing)
  let err = configError(t, () => loadConfig(given, {}))
  t.equal(err.message, `cannot read the config file ${given} (${missing}): no such file (ENOENT)`)
  t.same(err.problems, [err.message])
  err = configError(t, () => loadConfig(missing, {}))
  t.equal(err.message, `cannot read the config file ${missing}: no such file (ENOENT)`, 'an absolute path once')
  err = configError(t, () => loadConfig(dir, {}))
  t.equal(err.message, `cannot read the config file ${dir}: it is a folder, not a file (EISDIR)`)
})

t.test('a YAML syntax error: file:line:column, the line, and a caret under the column', async (t) => {
  let path = file('indent.yaml', 'server:\n  port: 8080\nroutes:\n  - name: a\n     prefix: /a\n')
  const err = configError(t, () => loadConfig(path, {}))
  t.same(err.problems, [`${path}:4:11: not valid YAML: Nested mappings are not allowed in compact mappings`])
  t.equal(err.message, [
    `invalid config in ${path}:`,
    `  ${path}:4:11: not valid YAML: Nested mappings are not allowed in compact mappings`,
    '      - name: a',
    '              ^'
  ].join('\n'))

  path = file('twice.yaml', 'routes: []\nroutes: []\n')
  t.equal(configError(t, () => loadConfig(path, {})).message, `invalid config in ${path}:\n  ${path}:2:1: not valid YAML: Map keys must be unique\n    routes: []\n    ^`)

  path = file('unclosed.yaml', 'routes: [\n\n\n')
  t.equal(configError(t, () => loadConfig(path, {})).message,
    `invalid config in ${path}:\n  ${path}:1:10: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]\n    routes: [\n             ^`,
    'an error at the end of the file is shown after its last character')

  path = file('bomb.yaml', 'a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n')
  t.same(configError(t, () => loadConfig(path, {})).problems, [`${path}: not valid YAML: Excessive alias count indicates a resource exhaustion attack`])

  path = file('ok.yaml', 'routes:\n  - name: a\n    prefix: /a\n    upstream: http://127.0.0.1:1/a\n')
  t.equal(loadConfig(path, {}).routes[0].name, 'a', 'and a good file loads')
})

t.test('a .json file is strict JSON, with line:column computed from the position', async (t) => {
  const cases: Array<[string, string, string[]]> = [
    // V8 gives the position.
    ['comma.json', '{\n  "routes": [\n    { "name": "a", "prefix": "/a", },\n  ]\n}\n',
      [':3:36: not valid JSON: expected double-quoted property name', '    { "name": "a", "prefix": "/a", },', '                                   ^']],
    // V8 gives none ("Unexpected token"): the scanner finds it.
    ['token.json', '{\n  "routes": x\n}\n', [':2:13: not valid JSON: unexpected token \'x\'', '  "routes": x', '            ^']],
    ['comment.json', '{\n  // the routes\n  "routes": []\n}\n', [':2:3: not valid JSON: expected property name or \'}\'', '  // the routes', '  ^']],
    ['yaml.json', 'routes: []\n', [':1:1: not valid JSON: unexpected token \'r\'', 'routes: []', '^']],
    ['end.json', '{"routes": [\n\n', [':1:13: not valid JSON: unexpected end of JSON input', '{"routes": [', '            ^']],
    // JSON.parse would keep the last "name" without a word.
    ['twice.json', '{"routes": [{"name": "a",\n  "name": "b"}]}', [':2:3: not valid JSON: the key "name" is given twice', '  "name": "b"}]}', '  ^']],
    // A tab before the column is kept in the caret line, so the caret lines up in any terminal.
    ['tab.json', '{\n\t"routes":\t[1,,2]\n}', [':2:15: not valid JSON: unexpected token \',\'', '\t"routes":\t[1,,2]', '\t         \t   ^']],
    // A control character from the file is not sent to the terminal.
    ['escape.json', '{"routes": \x1b[31m}', [':1:12: not valid JSON: unexpected token \'?\'', '{"routes": ?[31m}', '           ^']]
  ]
  for (const [name, text, [where, line, caret]] of cases) {
    const path = file(name, text)
    const err = configError(t, () => loadConfig(path, {}))
    t.same(err.problems.map((p) => p.replace(/[\x1b]/g, '?')), [`${path}${where}`], name) // eslint-disable-line no-control-regex
    t.equal(err.message, `invalid config in ${path}:\n  ${path}${where}\n    ${line}\n    ${caret}`, `${name}: the line and the caret`)
  }

  // A long line shows 120 characters around the column.
  const long = `{"routes": [${'"x", '.repeat(100)}!${', "x"'.repeat(100)}]}`
  const path = file('long.json', long)
  const [, line, caret] = configError(t, () => loadConfig(path, {})).message.split('\n').slice(1)
  t.equal(line.trim().length, 122, 'an ellipsis either side of 120 characters')
  t.equal(line.slice(caret.indexOf('^'), caret.indexOf('^') + 1), '!', 'and the caret under the culprit')

  t.match(configError(t, () => loadConfig(file('deep.json', '['.repeat(100_000) + ']'.repeat(100_000)), {})).message, /not valid JSON: nested too deeply/,
    'nesting deeper than the scanner goes is refused, not a crash')

  const good = { routes: [{ name: 'a', prefix: '/a', upstream: 'http://127.0.0.1:1/a' }] }
  t.equal(loadConfig(file('bom.json', `\uFEFF${JSON.stringify(good)}`), {}).routes[0].name, 'a', 'a byte-order mark is not an error')
  t.equal(loadConfig(file('UPPER.JSON', JSON.stringify(good)), {}).routes[0].name, 'a', '.JSON is JSON too')
  t.match(configError(t, () => loadConfig(file('upper-bad.JSON', '{"routes": [],}'), {})).message, 'not valid JSON')
})

t.test('routes[].scopes: a key that is not a method, or a list for the mapping, is refused in words (TypeBox threw a TypeError on both)', async (t) => {
  const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:1/api/people', auth: ['basic'] }
  const users = [{ username: 'alice', passwordHash: hashPasswordSync('a-long-password'), scopes: ['people:read'] }]
  t.same(configProblems({ users, routes: [{ ...route, scopes: { FOO: ['a'] } }] }),
    ['routes[0].scopes.FOO: must be a method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS) or * for every other method'])
  t.same(configProblems({ users, routes: [{ ...route, scopes: ['people:read'] }] }), ['routes[0].scopes: must be a mapping (key: value)'])
  t.same(configProblems({ users, routes: [{ ...route, scopes: { '*': ['people:read'], GET: ['people:read'] } }] }), [], 'method keys and * are accepted')
})

t.test(`more than ${MAX_ROUTES} routes is a config error`, async (t) => {
  const routes = (n: number): unknown[] => Array.from({ length: n }, (_, i) => ({ name: `r${i}`, prefix: `/r${i}`, upstream: 'http://127.0.0.1:9' }))
  t.throws(() => parseConfig({ routes: routes(MAX_ROUTES + 1) }), { message: new RegExp(`routes: must not have more than ${MAX_ROUTES} items`) })
  t.equal(parseConfig({ routes: routes(MAX_ROUTES) }).routes.length, MAX_ROUTES, `${MAX_ROUTES} are accepted`)
})

import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig, parseConfig } from '../src/config.js'
import { configProblems } from './config-helper.js'

const route = { name: 'people', prefix: '/api/people', upstream: 'http://127.0.0.1:8000/api/people' }

/** The message of what `fn` throws (to compare with t.equal: t.throws matches messages as substrings). */
function thrownMessage (fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    return (err as Error).message
  }
  return '(nothing thrown)'
}

const problems = configProblems

t.test('a minimal config gets every default and is frozen', async (t) => {
  const config = parseConfig({ routes: [route] }, { env: {} })
  t.equal(config.server.host, '127.0.0.1')
  t.equal(config.server.port, 8080)
  t.equal(config.server.bodyLimit, '1mb')
  t.same(config.server.timeouts, { headers: '10s', request: '30s', keepAlive: '72s' })
  t.same(config.routes[0].methods, ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])
  t.equal(config.routes[0].timeout, '30s')
  t.ok(Object.isFrozen(config.routes[0]))
  t.throws(() => { (config.server as { port: number }).port = 1 })
})

t.test('each kind of bad config is refused with a message naming the path', async (t) => {
  t.same(problems({ routes: [route], bogus: 1 }), ['bogus: unknown key'])
  t.same(problems({ routes: [{ ...route, upstream: 'ftp://x/y' }] }), ['routes[0].upstream: must be an http or https URL'])
  t.same(problems({ routes: [route, { ...route, name: 'b', prefix: '/b', upstream: 'not a url' }] }), ['routes[1].upstream: must be an http or https URL'])
  t.same(problems({ routes: [{ ...route, upstream: ['http://a:1/x', 'nope'] }] }), ['routes[0].upstream[1]: must be an http or https URL'])
  t.same(problems({ routes: [route, { ...route, prefix: '/other' }] }), ['routes[1].name: "people" is already the name of routes[0]'])
  t.same(problems({ routes: [route, { ...route, name: 'b' }] }), ['routes[1].prefix: "/api/people" is already the prefix of routes[0]'])
  t.same(problems({ routes: [{ ...route, name: 'api', prefix: '/api' }, route] }), ['routes[1].prefix: "/api/people" is shadowed by routes[0].prefix "/api"'])
  t.same(problems({ routes: [route, { ...route, name: 'api', prefix: '/api' }] }), ['routes[1].prefix: "/api" shadows routes[0].prefix "/api/people"'])
  t.same(problems({ routes: [{ ...route, timeout: '10 seconds' }] }), ['routes[0].timeout: must be a duration such as 500ms, 10s, 15m or 1h'])
  t.same(problems({ server: { port: 'http' }, routes: [route] }), ['server.port: must be an integer'])
  t.same(problems({ routes: [{ ...route, methods: ['GET', 'FETCH'] }] }), ['routes[0].methods[1]: must be one of "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"'])
  t.same(problems({ routes: [{ name: 'x', prefix: '/x' }] }), ['routes[0].upstream: required'])
  t.same(problems({ routes: [] }), ['routes: must not have fewer than 1 items'])
  t.same(problems({ routes: [{ ...route, prefix: '/healthz' }] }), ['routes[0].prefix: "/healthz" collides with the gateway\'s own /healthz'])
  // All at once, however many (TypeBox alone stops at 8 errors, and one bad method is 8 of them).
  t.same(problems({ bogus: 1, server: { port: 'http' }, routes: [{ ...route, timeout: '10 seconds', methods: ['GET', 'FETCH'] }] }), [
    'bogus: unknown key',
    'routes[0].methods[1]: must be one of "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"',
    'routes[0].timeout: must be a duration such as 500ms, 10s, 15m or 1h',
    'server.port: must be an integer'
  ], 'every problem is reported, sorted by path')
})

t.test('${VAR} and ${VAR:-default} come from the environment', async (t) => {
  const config = parseConfig({
    server: { port: '${PORT}' },
    routes: [{ ...route, upstream: '${UP:-http://127.0.0.1:9/x}' }]
  }, { env: { PORT: '9090' } })
  t.equal(config.server.port, 9090)
  t.equal(config.routes[0].upstream, 'http://127.0.0.1:9/x')
  t.same(problems({ routes: [{ ...route, upstream: '${MISSING_UPSTREAM}' }] }), [
    'routes[0].upstream: environment variable MISSING_UPSTREAM is not set (write ${MISSING_UPSTREAM:-default} to give a default)'
  ])
})

t.test('loadConfig reads YAML and JSON files and names the file in errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-config-'))
  const yaml = join(dir, 'gw.yaml')
  writeFileSync(yaml, 'routes:\n  - name: a\n    prefix: /a\n    upstream: http://127.0.0.1:1/a\n    plugins: [./p.js]\n')
  const config = loadConfig(yaml, {})
  t.equal(config.routes[0].plugins[0], join(dir, 'p.js'), 'relative plugin paths resolve against the file')
  const json = join(dir, 'gw.json')
  writeFileSync(json, JSON.stringify({ routes: [{ ...route, prefix: 'relative' }] }))
  t.equal(thrownMessage(() => loadConfig(json, {})),
    `invalid config in ${json}:\n  routes[0].prefix: must start with / and hold only letters, digits and the URL path characters - . _ ~ ! $ & ' ( ) * + , ; = : @ % /`)
  const missing = join(dir, 'missing.yaml')
  t.equal(thrownMessage(() => loadConfig(missing, {})), `cannot read the config file ${missing}: no such file (ENOENT)`)
  writeFileSync(yaml, 'routes: [\n')
  t.equal(thrownMessage(() => loadConfig(yaml, {})),
    `invalid config in ${yaml}:\n  ${yaml}:1:10: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]\n    routes: [\n             ^`)
})

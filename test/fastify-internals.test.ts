/**
 * plugins/core/fastify-internals.ts reads two private Fastify fields to avoid per-request copies.
 * This checks, on a real gateway, that the fast reads give what the public API gives, and that
 * they are in use: a Fastify release that renames the fields fails here, not silently slower.
 */
import t from 'tap'
import Fastify from 'fastify'
import { fastPathsFound, replyHeaders, routeConfig, routeNameOf } from '../plugins/core/fastify-internals.js'

t.test('routeConfig and replyHeaders match routeOptions.config and getHeaders()', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  const seen: Array<{ fast: unknown, slow: unknown, name: unknown, headers: unknown, publicHeaders: unknown }> = []
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-one', '1')
    reply.header('set-cookie', ['a=1', 'b=2'])
  })
  app.get('/named', { config: { routeName: 'people' } }, async (request, reply) => {
    seen.push({ fast: routeConfig(request), slow: request.routeOptions.config, name: routeNameOf(request), headers: { ...replyHeaders(reply) }, publicHeaders: reply.getHeaders() })
    return 'ok'
  })
  app.setNotFoundHandler(async (request, reply) => {
    seen.push({ fast: routeConfig(request), slow: request.routeOptions.config, name: routeNameOf(request), headers: { ...replyHeaders(reply) }, publicHeaders: reply.getHeaders() })
    return reply.code(404).send('no')
  })
  t.equal((await app.inject('/named')).statusCode, 200)
  t.equal((await app.inject('/elsewhere')).statusCode, 404)
  t.same(fastPathsFound(), { context: true, headers: true }, 'both private fields found: the fast paths are in use')
  t.equal(seen.length, 2)
  for (const s of seen) {
    t.equal(s.fast, s.slow, 'the route config object itself')
    t.same(s.headers, s.publicHeaders, 'the same headers as getHeaders()')
  }
  t.equal(seen[0].name, 'people')
  t.equal(seen[1].name, undefined, 'no route name off the configured routes')
  t.same(seen[0].headers, { 'x-one': '1', 'set-cookie': ['a=1', 'b=2'] })
})

t.test('Node and Fastify private fields are read in plugins/core/fastify-internals.ts only; no deep import into another package', async (t) => {
  const { readdirSync, readFileSync } = await import('node:fs')
  const { join, relative } = await import('node:path')
  const root = join(import.meta.dirname, '..')
  const files: string[] = []
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (/\.(ts|js|mjs)$/.test(entry.name) && !entry.name.endsWith('.d.ts')) files.push(path)
    }
  }
  for (const dir of ['src', 'plugins', 'schemas', 'examples']) walk(join(root, dir))
  const PRIVATE = /shouldKeepAlive|destroySoon|skip-override|_httpMessage|Symbol\.for\('fastify\.|\[kRouteContext\]|\bkReplyHeaders\b/
  const BARE = /(?:from\s+|import\(\s*)'(@[^/']+\/[^/']+|[^@./'][^/']*)\/([^']+)'/g
  // Subpaths a package without an exports map documents as its interface (ajv's README:
  // `import Ajv2020 from "ajv/dist/2020"`).
  const DOCUMENTED = new Set(['ajv/dist/2020.js'])
  t.ok(files.length > 40, 'the sources were read')
  for (const file of files) {
    const name = relative(root, file)
    const text = readFileSync(file, 'utf8')
    if (name !== join('plugins', 'core', 'fastify-internals.ts')) t.notMatch(text, PRIVATE, `${name}: no private field`)
    for (const [, pkg, sub] of text.matchAll(BARE)) {
      if (pkg.startsWith('node:') || DOCUMENTED.has(`${pkg}/${sub}`)) continue
      const manifest = JSON.parse(readFileSync(pkg === 'portcullis' ? join(root, 'package.json') : join(root, 'node_modules', pkg, 'package.json'), 'utf8')) as { exports?: Record<string, unknown> | string }
      const exported = typeof manifest.exports === 'object' && manifest.exports !== null && (`./${sub}` in manifest.exports)
      t.ok(exported, `${name}: ${pkg}/${sub} is in ${pkg}'s exports map (public)`)
    }
  }
})

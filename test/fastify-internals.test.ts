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

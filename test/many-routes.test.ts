/**
 * Many routes: the start-up walk does not nest once per route, and the config's overlap check
 * meets only the routes a prefix can overlap (the same rule as pairwise, without n² pairs).
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { configProblems } from './config-helper.js'

const fixture = fileURLToPath(new URL('./fixtures/many-routes.ts', import.meta.url))

function run (args: string[]): Promise<{ code: number | null, out: string, err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('close', (code) => { resolve({ code, out, err }) })
  })
}

t.test('600 routes start and close on a 200 KB stack (the walk nested per route: 2,500 overflowed the default stack)', async (t) => {
  // Before each route scope had its own onReady/preClose hook, this died with
  // "RangeError: Maximum call stack size exceeded" in fastify/lib/hooks.js.
  const { code, out, err } = await run(['--stack-size=200', '--import=@swc-node/register/esm-register', fixture, '600'])
  t.equal(code, 0, `exit 0 (stderr: ${err.slice(0, 300)})`)
  t.same(JSON.parse(out.trim()), { routes: 600, ready: true })
})

t.test('the overlap check among 3,000 routes finds what the pairwise rule finds, and only that', async (t) => {
  const routes: Array<Record<string, unknown>> = Array.from({ length: 3000 }, (_, i) => ({ name: `r${i}`, prefix: `/s${i}/api`, upstream: 'http://127.0.0.1:9' }))
  routes.push({ name: 'below', prefix: '/s5/api/people', upstream: 'http://127.0.0.1:9' })
  routes.push({ name: 'above', prefix: '/s7', upstream: 'http://127.0.0.1:9' })
  routes.push({ name: 'same', prefix: '/s9/api/', upstream: 'http://127.0.0.1:9' })
  routes.push({ name: 'sibling', prefix: '/s1/apis', upstream: 'http://127.0.0.1:9' })
  routes.push({ name: 'host-a', prefix: '/s11/api', hosts: ['a.example.com'], upstream: 'http://127.0.0.1:9' })
  t.same(configProblems({ routes }), [
    'routes[3000].prefix: "/s5/api/people" is shadowed by routes[5].prefix "/s5/api"',
    'routes[3001].prefix: "/s7" shadows routes[7].prefix "/s7/api"',
    'routes[3002].prefix: "/s9/api" is already the prefix of routes[9]'
  ])
  const root = [{ name: 'all', prefix: '/', upstream: 'http://127.0.0.1:9' }, ...routes.slice(0, 3)]
  t.same(configProblems({ routes: root }), [
    'routes[1].prefix: "/s0/api" is shadowed by routes[0].prefix "/"',
    'routes[2].prefix: "/s1/api" is shadowed by routes[0].prefix "/"',
    'routes[3].prefix: "/s2/api" is shadowed by routes[0].prefix "/"'
  ], 'a route at / overlaps every other')
})

/**
 * Against the real DRF app under gunicorn: no header a client sends through the gateway changes
 * what DRF sees as the identity, the scopes, the client address, SCRIPT_NAME or the host its links
 * point at — in any spelling a WSGI server folds (`X_Authenticated_User` and
 * `X-Authenticated-User` are both HTTP_X_AUTHENTICATED_USER to gunicorn).
 */
import t from 'tap'
import { call, startDrf, startTestGateway } from './helper.js'
import { basic, cheapHash } from './auth-helper.js'

const SPOOFS = [
  'X_Authenticated_User', 'root',
  'X_Authenticated_Scopes', 'people:read people:write admin',
  'X_Authenticated_Via', 'jwt',
  'X-Authenticated-User', 'root',
  'X-Authenticated-Scopes', 'people:write',
  'SCRIPT_NAME', '/api/public',
  'X_Forwarded_For', '6.6.6.6',
  'X-Forwarded-For', '6.6.6.6',
  'X_Forwarded_Host', 'evil.example',
  'X-Forwarded-Host', 'evil.example',
  'X_Forwarded_Proto', 'https',
  'X-Forwarded-Ssl', 'on',
  'X-Real-IP', '6.6.6.6'
]

const drf = await startDrf(t, { env: { DRF_PAGE_SIZE: '1' } })
if (drf !== null) {
  const { url: gw } = await startTestGateway(t, {
    users: [
      { username: 'reader', passwordHash: cheapHash('reader-pw'), scopes: ['people:read'] },
      { username: 'writer', passwordHash: cheapHash('writer-pw'), scopes: ['people:read', 'people:write'] }
    ],
    routes: [
      { name: 'whoami', prefix: '/api/whoami', upstream: `${drf.origin}/api/whoami`, methods: ['GET'], auth: ['basic'] },
      { name: 'public', prefix: '/public/whoami', upstream: `${drf.origin}/api/whoami`, methods: ['GET'] },
      { name: 'people', prefix: '/api/people', upstream: `${drf.origin}/api/people`, auth: ['basic'], scopes: { GET: ['people:read'], '*': ['people:write'] } }
    ]
  })
  const gwHost = new URL(gw).host

  t.test('a public route: spoofed identity headers do not make DRF believe anyone', async (t) => {
    const res = await call(`${gw}/public/whoami/`, { headers: SPOOFS })
    t.not(res.status, 200, `DRF refuses the anonymous request (${res.status})`)
    t.notMatch(res.body.toString(), /root/, 'no trace of the spoofed user')
  })

  t.test('a read-only user: DRF sees its own name and scopes, the gateway\'s client address, no SCRIPT_NAME, the gateway\'s host', async (t) => {
    const res = await call(`${gw}/api/whoami/`, { headers: ['authorization', basic('reader', 'reader-pw'), ...SPOOFS] })
    t.equal(res.status, 200)
    const who = res.json as { username: string, scopes: string[], via: string, client: { remote_addr: string, x_forwarded_for: string, script_name: string, url: string } }
    t.equal(who.username, 'reader')
    t.same(who.scopes, ['people:read'], 'no write scope was added')
    t.equal(who.via, 'basic')
    t.equal(who.client.x_forwarded_for, '127.0.0.1', 'the client address is the gateway\'s word')
    t.equal(who.client.script_name, '', 'SCRIPT_NAME did not re-root Django')
    t.equal(who.client.url, `http://${gwHost}/api/whoami/`, 'links are built with the gateway\'s host and scheme')
    const write = await call(`${gw}/api/people/`, { method: 'POST', headers: ['authorization', basic('reader', 'reader-pw'), 'content-type', 'application/json', ...SPOOFS], body: JSON.stringify({ name: 'Eve', age: 30 }) })
    t.equal(write.status, 403, 'the gateway refuses the write; the spoofed scopes never reached DRF')
  })

  t.test('pagination links point at the gateway, whatever host a client claims', async (t) => {
    for (const name of ['Ada', 'Grace']) {
      const made = await call(`${gw}/api/people/`, { method: 'POST', headers: ['authorization', basic('writer', 'writer-pw'), 'content-type', 'application/json'], body: JSON.stringify({ name, age: 36 }) })
      t.equal(made.status, 201, `${name} created`)
    }
    const page = await call(`${gw}/api/people/`, { headers: ['authorization', basic('reader', 'reader-pw'), ...SPOOFS] })
    t.equal(page.status, 200)
    const next = (page.json as { next: string | null }).next
    t.match(next, new RegExp(`^http://${gwHost.replace('.', '\\.')}/api/people/\\?page=2$`), `the next link is the gateway's: ${String(next)}`)
  })
}

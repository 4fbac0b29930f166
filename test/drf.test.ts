/**
 * The real DRF example (examples/drf, under gunicorn) behind the gateway, always called through
 * the gateway: simplejwt tokens, pagination links and APPEND_SLASH redirects that work through
 * the gateway, and DRF down (502) / stalled (504) / back (200, no gateway restart).
 */
import { readFileSync } from 'node:fs'
import t from 'tap'
import { call, startDrf, startTestGateway, type CallOptions, type CallResult, type DrfServer } from './helper.js'

interface Page { count: number, next: string | null, previous: string | null, results: Array<{ id: number, name: string, age: number }> }

/** A request through node:http (`call`), its JSON body typed loosely for the assertions. */
async function req (url: string, options: CallOptions = {}): Promise<CallResult & { json: any, text: string }> {
  const res = await call(url, options)
  return { ...res, text: res.body.toString('utf8') }
}

const users = [
  { username: 'alice', password: 'alice-pw-1', scopes: ['people:read', 'people:write'] },
  { username: 'bob', password: 'bob-pw-1', scopes: ['people:read'] }
]

const drf = await startDrf(t, { users })
if (drf !== null) await run(drf)
if (drf !== null) {
  await t.test('DRF refuses to start with .env.example\'s placeholders (they are reachable through the gateway\'s token route)', async (t) => {
    const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8')
    const value = (name: string): string => new RegExp(`^${name}=(.*)$`, 'm').exec(example)?.[1] ?? ''
    const placeholderUsers = value('DRF_USERS')
    t.match(placeholderUsers, /"password":"replace-me/, '.env.example\'s DRF_USERS has a placeholder password')
    await t.rejects(startDrf(t, { env: { DRF_USERS: placeholderUsers } }), /users\[0\]\.password: is the published placeholder from \.env\.example/, 'a DRF_USERS password')
    await t.rejects(startDrf(t, { env: { DRF_JWT_SIGNING_KEY: value('JWT_SECRET') } }), /DRF_JWT_SIGNING_KEY is the published placeholder/, 'the signing key')
    await t.rejects(startDrf(t, { env: { DJANGO_SECRET_KEY: value('DJANGO_SECRET_KEY') } }), /DJANGO_SECRET_KEY is the published placeholder/, 'Django\'s secret key')
  })
}

async function run (drf: DrfServer): Promise<void> {
  const { url: gw } = await startTestGateway(t, {
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${drf.origin}/api/people`, timeout: '1s' },
      { name: 'drf-token', prefix: '/api/token', upstream: `${drf.origin}/api/token` }
    ]
  })
  const json = { 'content-type': 'application/json' }

  async function tokenFor (username: string, password: string): Promise<{ access: string, refresh: string }> {
    const res = await req(`${gw}/api/token/`, { method: 'POST', headers: json, body: JSON.stringify({ username, password }) })
    if (res.status !== 200) throw new Error(`token for ${username}: ${res.status} ${res.text}`)
    return res.json as { access: string, refresh: string }
  }

  await t.test('a simplejwt token from DRF, through the gateway, is used on /api/people/', async (t) => {
    const { access, refresh } = await tokenFor('alice', 'alice-pw-1')
    const claims = JSON.parse(Buffer.from(access.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
    t.match(claims, { token_type: 'access', sub: 'alice', scope: 'people:read people:write', user_id: Number, exp: Number, jti: String })
    t.equal(JSON.parse(Buffer.from(refresh.split('.')[0] ?? '', 'base64url').toString('utf8')).alg, 'HS256')

    const auth = { authorization: `Bearer ${access}` }
    const created = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, ...auth }, body: JSON.stringify({ name: 'Ada Lovelace', age: 36 }) })
    t.equal(created.status, 201, created.text)
    t.match(created.json, { id: Number, name: 'Ada Lovelace', age: 36 })
    const one = await req(`${gw}/api/people/${(created.json as { id: number }).id}/`, { headers: auth })
    t.equal(one.status, 200)
    t.same(one.json, created.json)

    const wrong = await req(`${gw}/api/token/`, { method: 'POST', headers: json, body: JSON.stringify({ username: 'alice', password: 'nope' }) })
    t.equal(wrong.status, 401, 'a wrong password is DRF\'s 401, passed through')

    const refreshed = await req(`${gw}/api/token/refresh/`, { method: 'POST', headers: json, body: JSON.stringify({ refresh }) })
    t.equal(refreshed.status, 200, 'refresh works through the gateway')
    t.type((refreshed.json as { access: string }).access, 'string')
  })

  await t.test('pagination links point at the gateway and work through it', async (t) => {
    const { access } = await tokenFor('alice', 'alice-pw-1')
    const headers = { authorization: `Bearer ${access}` }
    for (let i = 0; i < 12; i++) {
      const res = await req(`${gw}/api/people/`, { method: 'POST', headers: { ...json, ...headers }, body: JSON.stringify({ name: `Person ${i}`, age: 20 + i }) })
      t.equal(res.status, 201)
    }
    const first = await req(`${gw}/api/people/?page_size=5`, { headers })
    t.equal(first.status, 200)
    const page1 = first.json as Page
    t.ok(page1.count >= 12)
    t.equal(page1.results.length, 5)
    t.equal(page1.next, `${gw}/api/people/?page=2&page_size=5`, '`next` is the gateway\'s URL (X-Forwarded-Host)')
    t.equal(page1.previous, null)

    const seen = new Set(page1.results.map((p) => p.id))
    let next = page1.next
    let pages = 1
    while (next !== null) {
      t.ok(next.startsWith(`${gw}/api/people/`), `link ${next} is under the gateway`)
      const res = await req(next, { headers })
      t.equal(res.status, 200, `following ${next} through the gateway works`)
      const page = res.json as Page
      t.ok(page.previous?.startsWith(`${gw}/api/people/`), '`previous` is the gateway\'s URL too')
      for (const p of page.results) seen.add(p.id)
      next = page.next
      pages++
    }
    t.equal(seen.size, page1.count, 'every row reached once by following the links')
    t.equal(pages, Math.ceil(page1.count / 5))
  })

  await t.test('APPEND_SLASH redirects lead to URLs that work through the gateway', async (t) => {
    const { access } = await tokenFor('alice', 'alice-pw-1')
    const headers = { authorization: `Bearer ${access}` }
    const list = await req(`${gw}/api/people?page_size=2`, { headers })
    t.equal(list.status, 301, 'DRF\'s redirect passes through')
    const location = list.headers.location ?? ''
    const target = new URL(location, `${gw}/api/people`).href
    t.equal(target, `${gw}/api/people/?page_size=2`, `Location ${location} resolves under the gateway, query kept`)
    const followed = await req(target, { headers })
    t.equal(followed.status, 200)
    t.equal((followed.json as Page).results.length, 2)

    const id = (followed.json as Page).results[0]?.id
    const detail = await req(`${gw}/api/people/${String(id)}`, { headers })
    t.equal(detail.status, 301)
    const detailTarget = new URL(detail.headers.location ?? '', `${gw}/api/people/${String(id)}`).href
    t.equal(detailTarget, `${gw}/api/people/${String(id)}/`)
    t.equal((await req(detailTarget, { headers })).status, 200)

    // The gateway's own fetch-style redirect following lands on the right place too.
    const auto = await fetch(`${gw}/api/people`, { headers })
    t.equal(auto.status, 200)
    t.equal(auto.url, `${gw}/api/people/`)
    await auto.arrayBuffer()
  })

  await t.test('the committed openapi.yaml is what the app generates', async (t) => {
    const generated = drf.manage(['generateschema', '--title', 'People API (Portcullis DRF example)', '--api_version', '1.0.0'])
    const committed = readFileSync(new URL('../examples/drf/openapi.yaml', import.meta.url), 'utf8')
    t.equal(generated.trim(), committed.trim(), 'regenerate with the command in examples/drf/README.md')
  })

  await t.test('DRF down → 502, DRF stalled → 504, DRF back → 200 without restarting the gateway', async (t) => {
    const { access } = await tokenFor('alice', 'alice-pw-1')
    const headers = { authorization: `Bearer ${access}` }
    t.equal((await req(`${gw}/api/people/`, { headers })).status, 200, 'up')

    await drf.stop()
    const down = await req(`${gw}/api/people/`, { headers })
    t.equal(down.status, 502, 'connection refused → 502')
    t.match(down.headers['content-type'], /^application\/problem\+json/)
    t.match(down.json, { status: 502, type: 'urn:portcullis:problem:bad-gateway' })
    t.notMatch(down.text, /127\.0\.0\.1|ECONNREFUSED|:\d{4,5}\b|stack/i, 'no address, errno or stack in the body')

    await drf.start()
    const back = await req(`${gw}/api/people/`, { headers })
    t.equal(back.status, 200, 'back up: served by the same gateway')

    drf.pause()
    const started = Date.now()
    const slow = await req(`${gw}/api/people/`, { headers })
    const took = Date.now() - started
    drf.resume()
    t.equal(slow.status, 504, 'no answer within the route timeout → 504')
    t.match(slow.json, { status: 504, type: 'urn:portcullis:problem:gateway-timeout' })
    t.notMatch(slow.text, /127\.0\.0\.1|ETIMEDOUT|stack/i)
    t.ok(took < 5_000, `answered in bounded time (${took} ms), not hung`)

    const again = await req(`${gw}/api/people/`, { headers })
    t.equal(again.status, 200, 'resumed: requests succeed again')
  })
}

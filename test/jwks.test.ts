import t, { type Test } from 'tap'
import { freePort, startUpstream, type Upstream } from './helper.js'
import { gatewayFrom, rsaPair, signWith, startJwks, startTrap } from './auth-helper.js'

async function setup (t: Test, jwt: Record<string, unknown>): Promise<{ upstream: Upstream, app: Awaited<ReturnType<typeof gatewayFrom>> }> {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    jwt,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'] }]
  })
  return { upstream, app }
}

const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` })

t.test('keys come from the JWKS; a rotated-in kid is picked up', async (t) => {
  const k1 = rsaPair()
  const k2 = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1', alg: 'RS256' }])
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url, jwks: { refetchInterval: '200ms' } })
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'b' }, { kid: 'k1' })) })).statusCode, 200)
  t.equal(jwks.hits(), 1, 'fetched once, then cached')

  jwks.serve([{ pair: k2, kid: 'k2', alg: 'RS256' }])
  await new Promise((resolve) => setTimeout(resolve, 300)) // past refetchInterval
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k2, { sub: 'c' }, { kid: 'k2' })) })).statusCode, 200, 'new kid after rotation')
  t.equal(jwks.hits(), 2)
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], 'c')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'd2' }, { kid: 'k2' })) })).statusCode, 401, 'the wrong key under a known kid')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k2, { sub: 'e' }, { kid: 'k2', algorithm: 'PS256' })) })).statusCode, 401, 'an algorithm the JWK does not name')
})

t.test('a flood of unknown kids costs the JWKS server at most one refetch', async (t) => {
  const k1 = rsaPair()
  const attacker = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1' }])
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url })
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })).statusCode, 200)
  const before = jwks.hits()
  const flood = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    app.inject({ url: '/api/people/', headers: bearer(signWith(attacker, { sub: 'x' }, { kid: `made-up-${i}` })) })))
  t.ok(flood.every((r) => r.statusCode === 401), '50 concurrent unknown kids: all 401')
  for (let i = 0; i < 20; i++) {
    await app.inject({ url: '/api/people/', headers: bearer(signWith(attacker, { sub: 'x' }, { kid: `later-${i}` })) })
  }
  t.ok(jwks.hits() - before <= 1, `refetches caused by 70 unknown kids: ${jwks.hits() - before}`)
  t.equal(upstream.requests.length, 1)
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'b' }, { kid: 'k1' })) })).statusCode, 200, 'known keys keep working')
})

t.test('a JWKS that cannot be fetched: 503 (not 401, not 500), and recovery', async (t) => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}/.well-known/jwks.json`
  const k1 = rsaPair()
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], jwksUrl: url, jwks: { refetchInterval: '100ms', timeout: '1s' } })
  const down = await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })
  t.equal(down.statusCode, 503)
  t.equal(down.headers['retry-after'], '5')
  t.notOk(down.body.includes('127.0.0.1'), 'no address in the answer')
  t.equal(upstream.requests.length, 0)
  await startJwks(t, [{ pair: k1, kid: 'k1' }], port)
  await new Promise((resolve) => setTimeout(resolve, 150)) // past refetchInterval
  const up = await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })
  t.equal(up.statusCode, 200, 'served once the JWKS answers')
})

t.test('jku and x5u in the token are never fetched, even with a JWKS configured', async (t) => {
  const trap = await startTrap(t)
  const k1 = rsaPair()
  const attacker = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1' }])
  const { app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url })
  for (const header of [{ jku: trap.url }, { x5u: trap.url }, { jku: jwks.url }]) {
    const res = await app.inject({ url: '/api/people/', headers: bearer(signWith(attacker, { sub: 'x' }, { kid: 'k1', header })) })
    t.equal(res.statusCode, 401, Object.keys(header)[0])
  }
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(trap.connections(), 0, 'no connection to the URL the token named')
  t.equal(jwks.hits(), 0, 'refused before any key lookup')
})

t.test('several issuers, each with its own JWKS', async (t) => {
  const a = rsaPair()
  const b = rsaPair()
  const jwksA = await startJwks(t, [{ pair: a, kid: 'a1' }])
  const jwksB = await startJwks(t, [{ pair: b, kid: 'b1' }])
  const { upstream, app } = await setup(t, {
    algorithms: ['RS256'],
    issuers: [{ issuer: 'https://a.example', jwksUrl: jwksA.url }, { issuer: 'https://b.example', jwksUrl: jwksB.url }]
  })
  const as = (pair: ReturnType<typeof rsaPair>, iss: string, kid: string): Promise<number> =>
    app.inject({ url: '/api/people/', headers: bearer(signWith(pair, { sub: kid, iss }, { kid })) }).then((r) => r.statusCode)
  t.equal(await as(a, 'https://a.example', 'a1'), 200)
  t.equal(await as(b, 'https://b.example', 'b1'), 200)
  t.equal(await as(b, 'https://a.example', 'b1'), 401, 'B\'s key is not one of A\'s')
  t.equal(await as(a, 'https://c.example', 'a1'), 401, 'an issuer not configured')
  t.equal(await as(a, 'https://b.example', 'a1'), 401, 'A\'s kid under B')
  t.equal(upstream.requests.length, 2)
  t.equal(jwksA.hits(), 1)
})

import t, { type Test } from 'tap'
import { freePort, startUpstream, type Upstream } from './helper.js'
import { gatewayFrom, rawToken, rsaPair, signWith, startJwks, startTrap, type JwksServer, type KeyPair } from './auth-helper.js'
import type { JwtAuthenticator } from '../plugins/auth/jwt.js'
import type { JwksClient } from '../plugins/auth/jwks.js'

async function setup (t: Test, jwt: Record<string, unknown>): Promise<{ upstream: Upstream, app: Awaited<ReturnType<typeof gatewayFrom>> }> {
  const upstream = await startUpstream(t)
  const app = await gatewayFrom(t, {
    jwt,
    routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people`, auth: ['jwt'] }]
  })
  return { upstream, app }
}

const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` })
const authenticatorOf = (app: Awaited<ReturnType<typeof gatewayFrom>>): JwtAuthenticator => app.authSchemes.jwt as JwtAuthenticator

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

t.test('never-seen tokens with a known kid: each key is parsed once, its verifier reused', async (t) => {
  const k1 = rsaPair()
  const k2 = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1', alg: 'RS256' }, { pair: k2, kid: 'k2' }])
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url })
  const auth = authenticatorOf(app)
  const client = auth.jwks[0]
  for (let i = 0; i < 30; i++) {
    const res = await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: `u${i}`, jti: `t${i}` }, { kid: 'k1' })) })
    t.equal(res.statusCode, 200, `token ${i}`)
  }
  t.equal(upstream.requests.at(-1)?.headers['x-authenticated-user'], 'u29')
  t.equal(client.preparations, 1, '30 distinct tokens, one verifier made for k1')
  t.equal(client.preparedKeys, 1, 'k2 is not parsed until a token names it')
  const fresh = signWith(k1, { sub: 'sync' }, { kid: 'k1' })
  const result = auth.verifyToken(fresh)
  t.notOk(result instanceof Promise, 'a known key verifies synchronously')
  t.equal((result as { subject?: string }).subject, 'sync')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k2, { sub: 'b' }, { kid: 'k2' })) })).statusCode, 200)
  t.equal(client.preparations, 2)
  t.equal(client.preparedKeys, 2)
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(fresh) })).statusCode, 200, 'a reused token (from the cache)')
  t.equal(client.preparations, 2)
  t.equal(jwks.hits(), 1)
})

t.test('forged tokens under a valid kid: 401, no refetch, no new verifier', async (t) => {
  const k1 = rsaPair()
  const attacker = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1' }])
  const { upstream, app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url, jwks: { refetchInterval: '1ms' } })
  const client = authenticatorOf(app).jwks[0]
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })).statusCode, 200)
  const forged = await Promise.all(Array.from({ length: 40 }, (_, i) =>
    app.inject({ url: '/api/people/', headers: bearer(signWith(attacker, { sub: 'x', jti: `f${i}` }, { kid: 'k1' })) })))
  t.ok(forged.every((r) => r.statusCode === 401 && r.json().detail === 'The bearer token\'s signature is invalid.'), '40 forged tokens: 401, bad signature')
  t.ok(forged.every((r) => String(r.headers['content-type']).startsWith('application/problem+json')), 'problem+json')
  const tampered = signWith(k1, { sub: 'a' }, { kid: 'k1' }).replace(/\.[^.]+\./, `.${Buffer.from(JSON.stringify({ sub: 'admin', exp: 9_999_999_999 })).toString('base64url')}.`)
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(tampered) })).statusCode, 401, 'a payload swapped under a real signature')
  const oddKid = rawToken({ alg: 'RS256', kid: 7 }, { sub: 'x', exp: 9_999_999_999 }, 'c2ln')
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(oddKid) })).statusCode, 401, 'a kid that is not a string')
  t.equal(jwks.hits(), 1, 'a known kid with a bad signature never refetches')
  t.equal(client.preparations, 1)
  t.equal(upstream.requests.length, 1)
})

t.test('unknown kids inside refetchInterval fetch nothing and make no verifier', async (t) => {
  const k1 = rsaPair()
  const attacker = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1' }])
  const { app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url, jwks: { refetchInterval: '1h' } })
  const client = authenticatorOf(app).jwks[0]
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })).statusCode, 200)
  t.equal(jwks.hits(), 1)
  // The first fetch counts against refetchInterval: an unknown kid right after it fetches nothing.
  for (let i = 0; i < 10; i++) {
    const res = await app.inject({ url: '/api/people/', headers: bearer(signWith(attacker, { sub: 'x' }, { kid: `made-up-${i}` })) })
    t.equal(res.json().detail, 'The bearer token\'s key is not known.')
  }
  t.equal(jwks.hits(), 1, 'no refetch inside refetchInterval')
  t.equal(client.preparations, 1)
})

/** A gateway on a JWKS serving k1 (refetchInterval 1 ms) that has verified a k1 token; then the set serves `next`. */
async function rotating (t: Test, next: (k1: KeyPair, k2: KeyPair) => Array<{ pair: KeyPair, kid: string }>): Promise<{ app: Awaited<ReturnType<typeof gatewayFrom>>, jwks: JwksServer, client: JwksClient, k1: KeyPair, k2: KeyPair }> {
  const k1 = rsaPair()
  const k2 = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1' }])
  const { app } = await setup(t, { algorithms: ['RS256'], jwksUrl: jwks.url, jwks: { refetchInterval: '1ms' } })
  const client = authenticatorOf(app).jwks[0]
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'a' }, { kid: 'k1' })) })).statusCode, 200)
  t.equal(client.preparedKeys, 1)
  jwks.serve(next(k1, k2))
  await waitPast(5)
  return { app, jwks, client, k1, k2 }
}

t.test('an unknown kid refetches; an unchanged key keeps its verifier', async (t) => {
  const { app, jwks, client, k1, k2 } = await rotating(t, (k1, k2) => [{ pair: k1, kid: 'k1' }, { pair: k2, kid: 'k2' }])
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k2, { sub: 'b' }, { kid: 'k2' })) })).statusCode, 200, 'k2 found by one refetch')
  t.equal(jwks.hits(), 2)
  t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'c' }, { kid: 'k1' })) })).statusCode, 200)
  t.equal(client.preparations, 2, 'k1 was not parsed again after the refetch')
  t.equal(client.preparedKeys, 2)
})

t.test('key rotation: the new key\'s tokens verify, the old key\'s verifiers are dropped', async (t) => {
  const { app, jwks, client, k1, k2 } = await rotating(t, (_k1, k2) => [{ pair: k2, kid: 'k2' }])
  for (let i = 0; i < 5; i++) {
    t.equal((await app.inject({ url: '/api/people/', headers: bearer(signWith(k2, { sub: `n${i}` }, { kid: 'k2' })) })).statusCode, 200, `new key, token ${i}`)
  }
  t.equal(client.preparedKeys, 1, 'only k2\'s verifier is held')
  t.equal(client.preparations, 2)
  await waitPast(5)
  const old = await app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'late' }, { kid: 'k1' })) })
  t.equal(old.statusCode, 401, 'a never-seen token of the retired key')
  t.equal(old.json().detail, 'The bearer token\'s key is not known.')
  t.equal(jwks.hits(), 3, 'it refetched once for the retired kid')
  t.equal(client.preparedKeys, 1)
})

t.test('issuers sharing a JWKS each verify with their own options', async (t) => {
  const k1 = rsaPair()
  const jwks = await startJwks(t, [{ pair: k1, kid: 'k1' }])
  const { app } = await setup(t, {
    algorithms: ['RS256'],
    issuers: [{ issuer: 'https://a.example', jwksUrl: jwks.url, audience: 'api-a' }, { issuer: 'https://b.example', jwksUrl: jwks.url, audience: 'api-b' }]
  })
  const client = authenticatorOf(app).jwks[0]
  const as = (iss: string, aud: string): Promise<number> =>
    app.inject({ url: '/api/people/', headers: bearer(signWith(k1, { sub: 'x', iss, aud }, { kid: 'k1' })) }).then((r) => r.statusCode)
  t.equal(await as('https://a.example', 'api-a'), 200)
  t.equal(await as('https://b.example', 'api-b'), 200)
  t.equal(await as('https://b.example', 'api-a'), 401, 'A\'s audience under B: B\'s verifier, not A\'s')
  t.equal(await as('https://a.example', 'api-b'), 401, 'B\'s audience under A')
  t.equal(authenticatorOf(app).jwks.length, 1, 'one client for the URL')
  t.equal(client.preparations, 2, 'one verifier per issuer for the key')
  t.equal(jwks.hits(), 1)
})

/** Lets at least `ms` pass on the wall clock (refetchInterval in these tests is 1 ms). */
async function waitPast (ms: number): Promise<void> {
  const until = Date.now() + ms
  while (Date.now() <= until) await new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * A config file is input too: whatever a hand (or a template gone wrong) writes into it, loading
 * it ends in the config or in a ConfigError that names where — never a TypeError or a RangeError
 * out of a check that assumed a shape the schema had not yet confirmed. fast-check takes a config
 * that uses most sections, puts a random JSON value at a random place in it (or deletes the key,
 * or adds one), and parses the result.
 *
 * Replay a failure: CONFIG_FUZZ_SEED=<seed> npx tap test/config-fuzz.test.ts
 */
import t from 'tap'
import fc from 'fast-check'
import { ConfigError, parseConfig } from '../src/config.js'
import { hashPasswordSync } from '../plugins/auth/password-hash.js'

const HASH = hashPasswordSync('pw', { N: 1024, r: 8, p: 1 })

/** A config that turns on most of what the schema offers, valid as it stands. */
function richConfig (): Record<string, unknown> {
  return {
    server: { host: '127.0.0.1', port: 8080, bodyLimit: '1mb', timeouts: { headers: '10s', request: '30s' }, readiness: ['people'], metrics: { enabled: true } },
    logging: { level: 'info', accessLog: true },
    users: [{ username: 'alice', passwordHash: HASH, scopes: ['people:read'] }],
    apiKeys: [{ name: 'ci', keyHash: 'sha256$' + 'a'.repeat(64), scopes: ['people:read'] }],
    jwt: { secret: 'x'.repeat(40), algorithms: ['HS256'], issuer: 'https://issuer.example', audience: 'people' },
    tokenEndpoint: { path: '/auth/token', expiresIn: '15m' },
    rateLimit: { store: 'memory', timeout: '250ms' },
    ipFilter: { allow: ['127.0.0.0/8', '10.0.0.0/8'] },
    tracing: { enabled: false },
    routes: [
      {
        name: 'people',
        prefix: '/api/people',
        upstream: ['http://127.0.0.1:8000/api/people', { url: 'http://127.0.0.1:8001/api/people', weight: 3 }],
        balance: 'hash:header:X-User',
        healthCheck: { path: '/healthz', interval: '5s', timeout: '1s' },
        circuitBreaker: { failureRatio: 0.5, window: '10s' },
        retryOn: ['connect-failure', '503'],
        auth: ['jwt', 'basic', 'apiKey'],
        scopes: { GET: ['people:read'], '*': ['people:write'] },
        rateLimit: { max: 100, window: '1m', by: 'consumer' },
        cors: { origins: ['https://app.example.com'], credentials: true },
        validate: [{ method: 'POST', path: '/', body: { type: 'object', properties: { name: { type: 'string' } } } }]
      },
      { name: 'public', prefix: '/public', upstream: 'http://127.0.0.1:8002', methods: ['GET'] }
    ]
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/** Every place in the tree: the path of keys and indexes to it. */
function places (value: unknown, at: Array<string | number> = [], out: Array<Array<string | number>> = []): Array<Array<string | number>> {
  out.push(at)
  if (Array.isArray(value)) value.forEach((v, i) => places(v, [...at, i], out))
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) places(v, [...at, k], out)
  return out
}

type Edit = { kind: 'set', value: Json } | { kind: 'delete' } | { kind: 'add', key: string, value: Json }

function apply (config: unknown, at: Array<string | number>, edit: Edit): unknown {
  if (at.length === 0) return edit.kind === 'set' ? edit.value : config
  let parent: any = config
  for (const key of at.slice(0, -1)) {
    // An earlier edit removed or replaced this branch: nothing to edit here.
    if (parent === null || typeof parent !== 'object') return config
    parent = parent[key]
  }
  if (parent === null || typeof parent !== 'object') return config
  const last = at[at.length - 1]
  if (edit.kind === 'set') parent[last] = edit.value
  else if (edit.kind === 'delete') {
    if (Array.isArray(parent)) parent.splice(Number(last), 1)
    else delete parent[last]
  } else {
    const target = parent[last]
    if (target !== null && typeof target === 'object' && !Array.isArray(target)) target[edit.key] = edit.value
    else if (Array.isArray(target)) target.push(edit.value)
  }
  return config
}

/** Values a config writer might put anywhere: scalars of each type, odd strings, small structures. */
const oddString = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.constantFrom('', ' ', '0', '-1', '1e400', 'NaN', 'true', 'null', '__proto__', 'constructor', '${UNSET_VAR}', '10x', '1s', '-5s', '99999999999999999999h',
    'http://', 'https://[::1', '//x', '/api/../x', 'GET', '*', 'hash:', 'hash:header:', 'a\u0000b', '\u00e9', 'x'.repeat(300))
)
const jsonValue: fc.Arbitrary<Json> = fc.oneof(
  { weight: 3, arbitrary: oddString },
  { weight: 2, arbitrary: fc.oneof(fc.integer(), fc.double(), fc.constantFrom(0, -1, 1, 2 ** 31, 2 ** 53 + 1, 1e308, -0)) },
  { weight: 1, arbitrary: fc.constantFrom(null, true, false) },
  { weight: 1, arbitrary: fc.constantFrom<Json[]>([], {}, [null], [''], [{}], { url: 'http://x' }, { weight: 0 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json> }
)
const edit: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 4, arbitrary: jsonValue.map((value) => ({ kind: 'set' as const, value })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'delete' as const }) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('x', '__proto__', 'constructor', 'weight', 'url'), jsonValue).map(([key, value]) => ({ kind: 'add' as const, key, value })) }
)

t.test('a config with a random value anywhere loads or fails with a ConfigError, never another error', async (t) => {
  const base = richConfig()
  t.doesNotThrow(() => parseConfig(structuredClone(base)), 'the base config is valid')
  const all = places(base)
  const seed = process.env.CONFIG_FUZZ_SEED === undefined ? Date.now() ^ (Math.random() * 0x7fffffff) : Number(process.env.CONFIG_FUZZ_SEED)
  t.comment(`fast-check seed ${seed} (replay: CONFIG_FUZZ_SEED=${seed} npx tap test/config-fuzz.test.ts)`)
  let refused = 0
  let accepted = 0
  const result = fc.check(fc.property(fc.nat({ max: all.length - 1 }), edit, fc.boolean(), (index, change, twice) => {
    const config = apply(structuredClone(base), all[index], change)
    // Two edits sometimes: a broken value next to another broken one.
    const target = twice ? apply(config, all[(index * 7 + 3) % all.length], { kind: 'set', value: '' }) : config
    try {
      parseConfig(target, { env: {} })
      accepted++
    } catch (err) {
      if (!(err instanceof ConfigError)) throw new Error(`not a ConfigError at ${JSON.stringify(all[index])} ← ${JSON.stringify(change).slice(0, 200)}: ${(err as Error).stack ?? String(err)}`)
      if (/TypeError|Cannot read|undefined is not|is not a function|Maximum call stack/.test(err.message)) throw new Error(`a ConfigError that hides a crash: ${err.message}`)
      refused++
    }
  }), { seed, numRuns: 1500 })
  t.notOk(result.failed, result.failed ? fc.defaultReportMessage(result) ?? 'failed' : 'every edited config loaded or was refused in words')
  t.ok(refused > 100, `most edits were refused (${refused})`)
  t.ok(accepted > 10, `and some were fine (${accepted}): the edits reach valid configs too`)
})

/**
 * Property-based fuzzing of the edge with fast-check: malformed, slow and aborted requests on
 * fresh sockets against a listening gateway (public route, HTTP Basic route, Person-validating
 * route) in front of the recording upstream. The generators and properties are in
 * bench/fuzz-lib.ts, shared with `npm run fuzz -- --minutes N`.
 *
 * Bounded: FUZZ_RUNS cases (default 1200) or FUZZ_SECONDS (default 60), whichever comes first,
 * run as FUZZ_STREAMS (default 4) seeded fast-check runs side by side: a case spends most of its
 * time waiting (a slow client's pauses, a truncated body's open framing, the count's settling), so
 * four at once cover as many cases as one did in a quarter of the time. Stream i has seed
 * `seed + i`; the seed is printed; FUZZ_SEED=<seed> replays a run (with FUZZ_STREAMS=1 and the
 * failing stream's seed, one stream alone; fast-check's report gives the path of the shrunk
 * counterexample). Every kind of every generator (route, prefix spelling, credentials, framing,
 * behaviour) must have come up, so that a smaller run still reaches each.
 *
 * The gateway runs in this process (the fault matrix covers the process dying, as a child): an
 * uncaught exception or unhandled rejection during the run fails it.
 */
import t from 'tap'
import fc from 'fast-check'
import { startUpstream } from './helper.js'
import { checkCase, fuzzCase, KNOWN_CASES, startFuzzGateway, type FuzzTarget } from '../bench/fuzz-lib.js'

t.test('fuzzed requests at the edge: the gateway stays up, refusals never reach the upstream, acceptances reach it once, no leaks', async (t) => {
  const uncaught: unknown[] = []
  const record = (err: unknown): void => { uncaught.push(err) }
  process.on('uncaughtException', record)
  process.on('unhandledRejection', record)
  t.teardown(() => { process.off('uncaughtException', record); process.off('unhandledRejection', record) })

  const upstream = await startUpstream(t)
  const { app, port } = await startFuzzGateway(upstream.origin)
  t.teardown(() => app.close())
  const target: FuzzTarget = { port, upstream, uncaught: () => uncaught }

  const seed = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : (Date.now() ^ (Math.random() * 0x100000000)) | 0
  const numRuns = Number(process.env.FUZZ_RUNS ?? 1_200)
  const seconds = Number(process.env.FUZZ_SECONDS ?? 60)
  const streams = Math.max(1, Number(process.env.FUZZ_STREAMS ?? 4))
  t.comment(`fast-check seed ${seed} (replay: FUZZ_SEED=${seed} npx tap test/fuzz.test.ts), up to ${numRuns} cases or ${seconds} s, ${streams} streams (seeds ${seed}…${seed + streams - 1})`)
  // What the generators produced, by kind: each must come up.
  const seen = new Map<string, Set<string>>(['route', 'prefixSpelling', 'credentials', 'framing', 'behaviour'].map((k) => [k, new Set()]))
  const property = fc.asyncProperty(fuzzCase, async (c) => {
    for (const [key, value] of [['route', c.route], ['prefixSpelling', c.prefixSpelling], ['credentials', c.credentials], ['framing', c.framing.kind], ['behaviour', c.behaviour.kind]]) seen.get(key)?.add(value)
    await checkCase(target, c)
  })
  const started = Date.now()
  const runs = await Promise.all(Array.from({ length: streams }, async (_, i) => await fc.check(property, {
    seed: seed + i,
    numRuns: Math.ceil(numRuns / streams),
    interruptAfterTimeLimit: seconds * 1000,
    markInterruptAsFailure: false,
    // The known cases once, in the first stream.
    examples: i === 0 ? KNOWN_CASES : []
  })))
  const elapsed = ((Date.now() - started) / 1000).toFixed(1)
  const cases = runs.reduce((sum, d) => sum + d.numRuns, 0)
  t.comment(`${cases} cases in ${elapsed} s${runs.some((d) => d.interrupted) ? ' (stopped by the time limit)' : ''}; ${upstream.requests.length} reached the upstream`)
  for (const [i, details] of runs.entries()) {
    if (details.failed) {
      t.fail(`seed ${seed + i} (replay: FUZZ_SEED=${seed + i} FUZZ_STREAMS=1 FUZZ_RUNS=${Math.ceil(numRuns / streams)}): ${String((details.errorInstance as Error | null)?.message ?? '')}\n${fc.defaultReportMessage(details) ?? 'failed'}`)
    } else {
      t.pass(`stream ${i}: ${details.numRuns} generated cases, every property held (seed ${seed + i})`)
    }
  }
  t.ok(cases >= 100, `enough cases ran to mean something (${cases} ≥ 100)`)
  t.ok(upstream.requests.length > 0 && upstream.requests.length < cases + 1, 'some cases were accepted and forwarded, not all (the generators reach both sides)')
  const kinds = { route: ['pub', 'auth', 'val'], prefixSpelling: ['exact', 'upper', 'double-slash', 'encoded'], credentials: ['none', 'good', 'wrong', 'malformed'], framing: ['none', 'content-length', 'chunked', 'truncated', 'conflicting-length', 'duplicate-length', 'bad-length', 'odd-coding', 'coding-and-length', 'oversized-declared', 'oversized-chunked'], behaviour: ['all', 'slow', 'abort'] }
  for (const [key, all] of Object.entries(kinds)) t.same(all.filter((k) => !(seen.get(key)?.has(k) ?? false)), [], `every ${key} came up`)
  t.same(uncaught, [], 'no uncaught exception or unhandled rejection in the process')
})

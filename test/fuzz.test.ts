/**
 * Property-based fuzzing of the edge with fast-check: malformed, slow and aborted requests on
 * fresh sockets against a listening gateway (public route, HTTP Basic route, Person-validating
 * route) in front of the recording upstream. The generators and properties are in
 * bench/fuzz-lib.ts, shared with `npm run fuzz -- --minutes N`.
 *
 * Bounded: FUZZ_RUNS cases (default 2000) or FUZZ_SECONDS (default 60), whichever comes first.
 * The seed is printed; FUZZ_SEED=<seed> replays a run (and fast-check's report gives the path of
 * the shrunk counterexample).
 *
 * The gateway runs in this process (the fault matrix covers the process dying, as a child): an
 * uncaught exception or unhandled rejection during the run fails it.
 */
import t from 'tap'
import fc from 'fast-check'
import { startUpstream } from './helper.js'
import { edgeProperty, KNOWN_CASES, startFuzzGateway, type FuzzTarget } from '../bench/fuzz-lib.js'

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
  const numRuns = Number(process.env.FUZZ_RUNS ?? 2_000)
  const seconds = Number(process.env.FUZZ_SECONDS ?? 60)
  t.comment(`fast-check seed ${seed} (replay: FUZZ_SEED=${seed} npx tap test/fuzz.test.ts), up to ${numRuns} cases or ${seconds} s`)
  const started = Date.now()
  const details = await fc.check(edgeProperty(target), { seed, numRuns, interruptAfterTimeLimit: seconds * 1000, markInterruptAsFailure: false, examples: KNOWN_CASES })
  const elapsed = ((Date.now() - started) / 1000).toFixed(1)
  t.comment(`${details.numRuns} cases in ${elapsed} s${details.interrupted ? ' (stopped by the time limit)' : ''}; ${upstream.requests.length} reached the upstream`)
  if (details.failed) {
    t.fail(`seed ${seed}: ${String((details.errorInstance as Error | null)?.message ?? '')}\n${fc.defaultReportMessage(details) ?? 'failed'}`)
  } else {
    t.pass(`${details.numRuns} generated cases, every property held (seed ${seed})`)
  }
  t.ok(details.numRuns >= 100, `enough cases ran to mean something (${details.numRuns} ≥ 100)`)
  t.ok(upstream.requests.length > 0 && upstream.requests.length < details.numRuns + 1, 'some cases were accepted and forwarded, not all (the generators reach both sides)')
  t.same(uncaught, [], 'no uncaught exception or unhandled rejection in the process')
})

/**
 * `npm run fuzz -- --minutes N [--seed S]`: the edge fuzzer of test/fuzz.test.ts (the same
 * generators and properties, bench/fuzz-lib.ts) run for N minutes (default 5) against a gateway
 * in this process and a recording upstream, both on 127.0.0.1. Prints the seed first and the
 * shrunk counterexample on failure (exit 1); exit 0 when every case held.
 */
import { parseArgs } from 'node:util'
import fc from 'fast-check'
import { edgeProperty, KNOWN_CASES, startFuzzGateway, startRecordingUpstream } from './fuzz-lib.js'

async function main (): Promise<number> {
  const { values } = parseArgs({ options: { minutes: { type: 'string', default: '5' }, seed: { type: 'string' } } })
  const minutes = Number(values.minutes)
  if (!(minutes > 0)) { process.stderr.write(`--minutes must be a positive number, not "${values.minutes}"\n`); return 2 }
  const seed = values.seed !== undefined ? Number(values.seed) : (Date.now() ^ (Math.random() * 0x100000000)) | 0
  const uncaught: unknown[] = []
  process.on('uncaughtException', (err) => { uncaught.push(err) })
  process.on('unhandledRejection', (err) => { uncaught.push(err) })

  const upstream = await startRecordingUpstream()
  const { app, port } = await startFuzzGateway(upstream.origin)
  process.stdout.write(`fuzzing for ${minutes} min, seed ${seed} (replay: npm run fuzz -- --minutes ${minutes} --seed ${seed})\n`)
  const started = Date.now()
  const property = edgeProperty({ port, upstream, uncaught: () => uncaught })
  let cases = 0
  const progress = setInterval(() => {
    process.stdout.write(`  ${cases} cases, ${Math.round((Date.now() - started) / 1000)} s, ${upstream.requests.length} forwarded\n`)
  }, 30_000)
  const details = await fc.check(property.beforeEach((previous) => { cases++; previous() }), {
    seed,
    numRuns: Number.MAX_SAFE_INTEGER,
    interruptAfterTimeLimit: minutes * 60_000,
    markInterruptAsFailure: false,
    examples: KNOWN_CASES
  })
  clearInterval(progress)
  await app.close()
  upstream.server.closeAllConnections()
  upstream.server.close()
  const elapsed = ((Date.now() - started) / 1000).toFixed(0)
  if (details.failed) {
    process.stdout.write(`FAILED after ${details.numRuns} cases (${elapsed} s), seed ${seed}:\n${String((details.errorInstance as Error | null)?.message ?? '')}\n${fc.defaultReportMessage(details) ?? ''}\n`)
    return 1
  }
  if (uncaught.length > 0) {
    process.stdout.write(`FAILED: ${uncaught.length} uncaught exception(s): ${String(uncaught[0])}\n`)
    return 1
  }
  process.stdout.write(`ok: ${details.numRuns} cases in ${elapsed} s, every property held; ${upstream.requests.length} forwarded (seed ${seed})\n`)
  return 0
}

main().then((code) => { process.exit(code) }, (err: unknown) => {
  process.stderr.write(`fuzz: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})

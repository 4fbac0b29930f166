/**
 * Which validator for request bodies: ajv 8 (what Fastify compiles route schemas with; here its
 * JSON Schema 2020-12 class, as plugins/validation/validate-compile.ts uses it) or
 * TypeBox 1.x's own compiler? Both compile the same JSON Schema (the Person schema of
 * schemas/person.ts), and each is timed on what the gateway does per request:
 *   - valid:   check a small valid body (the hot path);
 *   - invalid: check an invalid body and collect its violations (the 400 path);
 *   - huge:    a 100 000-item array of invalid items, violations collected (the abuse path).
 * Loops are bounded (a fixed count each), so the script always ends.
 *
 *   npm run build && node dist/bench/validators.js
 */
import { Ajv2020 as Ajv } from 'ajv/dist/2020.js'
import { Compile } from 'typebox/compile'
import { Person } from '../schemas/person.js'

const schema = JSON.parse(JSON.stringify(Person)) as Record<string, unknown>
const huge = { type: 'array', items: { type: 'integer' } }
const valid = { name: 'Ada Lovelace', age: 36 }
const invalid = { name: 7, age: '36', extra: true }
const hugeBody = Array.from({ length: 100_000 }, () => 'x')

function time (label: string, runs: number, fn: () => unknown): number {
  for (let i = 0; i < Math.min(runs, 1000); i++) fn() // warm up
  const start = process.hrtime.bigint()
  for (let i = 0; i < runs; i++) fn()
  const ns = Number(process.hrtime.bigint() - start) / runs
  console.log(`${label.padEnd(46)} ${ns < 10_000 ? `${ns.toFixed(0)} ns` : `${(ns / 1e6).toFixed(2)} ms`}`)
  return ns
}

const ajvFirst = new Ajv({ coerceTypes: false, allErrors: false, strict: true })
const ajvAll = new Ajv({ coerceTypes: false, allErrors: true, strict: true })
const a1 = ajvFirst.compile(schema)
const a2 = ajvAll.compile(schema)
const a1h = ajvFirst.compile(huge)
const a2h = ajvAll.compile(huge)
const tb = Compile(schema as never)
const tbh = Compile(huge as never)

console.log(`node ${process.version}; ajv (Fastify's compiler) vs TypeBox ${'Compile'}; ns or ms per call\n`)
const results = {
  ajv: time('ajv valid body', 2_000_000, () => a1(valid)),
  typebox: time('typebox valid body', 2_000_000, () => tb.Check(valid))
}
time('ajv invalid body, first error', 500_000, () => a1(invalid) || a1.errors)
time('ajv invalid body, allErrors', 500_000, () => a2(invalid) || a2.errors)
time('typebox invalid body, Check + Errors (≤8)', 500_000, () => tb.Check(invalid) || tb.Errors(invalid))
time('ajv 100k invalid items, first error', 200, () => a1h(hugeBody) || a1h.errors)
time('ajv 100k invalid items, allErrors (uncapped)', 5, () => a2h(hugeBody) || a2h.errors?.length)
time('typebox 100k invalid items, Check + Errors', 5, () => tbh.Check(hugeBody) || tbh.Errors(hugeBody).length)
console.log(`\nfaster on the hot path: ${results.ajv < results.typebox ? 'ajv' : 'typebox'} (${(Math.max(results.ajv, results.typebox) / Math.min(results.ajv, results.typebox)).toFixed(2)}x)`)

// tap's coverage-map (package.json "tap"."coverage-map"): which files a test file's coverage counts
// for. [] is tap's default: everything loaded that "coverage-exclude" does not exclude. null turns
// coverage off for that test file and every process it starts: test/bench.test.ts drives load
// through the built dist/ scripts, which are excluded anyway, and V8's precise coverage (call
// counts) would only slow down the numbers it checks.
const UNCOVERED = new Set(['test/bench.test.ts'])

export default (testFile) => UNCOVERED.has(testFile) ? null : []

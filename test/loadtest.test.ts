/**
 * `npm run loadtest` (bench/loadtest.ts): its argument checks, and a short real run through a
 * gateway that reports what happened (no timing is asserted).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { formatReport, parseLoadtestArgs, runLoadtest, MAX_DURATION_S } from '../bench/loadtest.js'
import { startTestGateway, startUpstream } from './helper.js'

t.test('arguments: --url required, bounded duration, token and headers', async (t) => {
  t.throws(() => parseLoadtestArgs([]), /--url is required/)
  t.throws(() => parseLoadtestArgs(['--url', 'ftp://x/']), /http\(s\) URL/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--duration', String(MAX_DURATION_S + 1)]), /--duration must be a whole number from 1 to 600/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--connections', '0']), /--connections/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--requests', 'many']), /--requests/)
  t.throws(() => parseLoadtestArgs(['--url', 'http://x/', '--header', 'nocolon']), /--header/)
  const o = parseLoadtestArgs(['--url', 'http://127.0.0.1:8080/api/people/', '--token', 'abc', '--header', 'X-Extra: 1', '--method', 'post', '--body', '{"name":"A","age":1}'])
  t.match(o, { method: 'POST', duration: 10, connections: 50, out: 'loadtest-report.json' })
  t.same(o.headers, { 'x-extra': '1', 'content-type': 'application/json', authorization: 'Bearer abc' })
})

t.test('a short run through a gateway: summary table and report', async (t) => {
  const upstream = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${upstream.origin}/api/people` }] })
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-loadtest-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  // A count, not a duration: on a busy machine one second may not see a single response.
  const options = parseLoadtestArgs(['--url', `${url}/api/people/`, '--token', 'tok-123', '--requests', '40', '--connections', '4', '--out', join(dir, 'r.json')])
  const report = await runLoadtest(options)
  t.equal(report.requests.total, 40, 'the 40 requests were made')
  t.equal(upstream.requests.length, 40, 'and all reached the upstream')
  t.equal(report.ok, report.requests.total, 'all 2xx')
  t.equal(report.statusCodes['200'], report.requests.total)
  t.equal(report.errors, 0)
  t.equal(report.connections, 4)
  t.ok(report.latencyMs.p99 >= report.latencyMs.p50)
  t.equal(upstream.requests.at(-1)?.headers.authorization, 'Bearer tok-123', 'the token was sent')
  const table = formatReport(report)
  t.match(table, /requests\/s \(avg, p50\)/)
  t.match(table, /latency ms \(avg \/ p50 \/ p90 \/ p99 \/ max\)/)
  t.match(table, new RegExp(`200: ${report.requests.total}`))
  t.notOk(existsSync(join(dir, 'r.json')), 'runLoadtest itself writes nothing; the CLI writes --out')
  t.type(JSON.parse(JSON.stringify(report)), 'object')
  t.equal(readFileSync(new URL('../package.json', import.meta.url), 'utf8').includes('"loadtest"'), true, 'npm run loadtest exists')
})

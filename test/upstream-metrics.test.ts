/**
 * The upstream series on /metrics (plugins/observability/metrics.ts, read from app.upstreams at
 * scrape time): a route with a live target and a closed port, real sockets on 127.0.0.1. The
 * dead target is ejected and retried around, and the series say so; counters are typed as
 * counters; a target's label is its origin, never the userinfo of its URL; two gateways in one
 * process each show only their own routes.
 */
import t from 'tap'
import { request } from 'undici'
import { parseConfig } from '../src/config.js'
import { GatewayMetrics, METRIC_NAMES, targetLabel } from '../plugins/observability/metrics.js'
import { UpstreamSet } from '../plugins/upstream/index.js'
import { freePort, startTestGateway, startUpstream } from './helper.js'
import { samples, type Sample } from './metrics-helper.js'

/** The samples of one metric whose labels include `labels`. */
function find (all: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
}

/** The one sample of a metric with these labels (NaN when there is not exactly one). */
function value (all: Sample[], name: string, labels: Record<string, string>): number {
  const found = find(all, name, labels)
  return found.length === 1 ? found[0].value : NaN
}

async function scrape (url: string): Promise<string> {
  const res = await request(`${url}/metrics`)
  return await res.body.text()
}

const COUNTERS = [METRIC_NAMES.upstreamEjections, METRIC_NAMES.upstreamBreakerTransitions, METRIC_NAMES.upstreamRetries, METRIC_NAMES.upstreamRetryBudgetExhausted]
const GAUGES = [METRIC_NAMES.upstreamTargetUp, METRIC_NAMES.upstreamTargetHealthy, METRIC_NAMES.upstreamTargetEjected, METRIC_NAMES.upstreamBreakerState, METRIC_NAMES.upstreamInFlight]

t.test('a dead target: up 0, ejected, ejections and retries counted, breaker series for both targets', async (t) => {
  const live = await startUpstream(t)
  const deadPort = await freePort() // bound, then closed: nothing listens there
  const dead = `http://127.0.0.1:${deadPort}`
  const { url } = await startTestGateway(t, {
    routes: [{
      name: 'pair',
      prefix: '/pair',
      upstream: [`${live.origin}/x`, `${dead}/x`],
      outlierDetection: { consecutiveFailures: 2 }
    }]
  })
  const statuses: number[] = []
  for (let i = 0; i < 10; i++) {
    const res = await request(`${url}/pair/${i}`)
    await res.body.dump()
    statuses.push(res.statusCode)
  }
  t.same(statuses, new Array(10).fill(200), 'every GET answered by the live target (the dead one retried around, then ejected)')

  const text = await scrape(url)
  const all = samples(text)
  const liveLabels = { route: 'pair', target: live.origin }
  const deadLabels = { route: 'pair', target: dead }
  t.equal(value(all, METRIC_NAMES.upstreamTargetUp, deadLabels), 0, 'the dead target is down')
  t.equal(value(all, METRIC_NAMES.upstreamTargetUp, liveLabels), 1, 'the live one is up')
  t.equal(value(all, METRIC_NAMES.upstreamTargetEjected, deadLabels), 1, 'the dead target is ejected')
  t.equal(value(all, METRIC_NAMES.upstreamTargetEjected, liveLabels), 0)
  t.equal(value(all, METRIC_NAMES.upstreamTargetHealthy, deadLabels), 1, 'no health checks: healthy is 1, up is 0 for the ejection')
  t.ok(value(all, METRIC_NAMES.upstreamEjections, deadLabels) >= 1, 'the dead target\'s ejection counted')
  t.equal(value(all, METRIC_NAMES.upstreamEjections, liveLabels), 0, 'the live target never ejected')
  t.ok(value(all, METRIC_NAMES.upstreamRetries, { route: 'pair' }) >= 1, 'retries counted')
  t.equal(value(all, METRIC_NAMES.upstreamRetryBudgetExhausted, { route: 'pair' }), 0, 'the budget was not exhausted')
  for (const labels of [liveLabels, deadLabels]) {
    const states = find(all, METRIC_NAMES.upstreamBreakerState, labels)
    t.same(states.map((s) => s.labels.state).sort(), ['closed', 'half-open', 'open'], `${labels.target}: one series per breaker state`)
    t.equal(states.filter((s) => s.value === 1).length, 1, `${labels.target}: exactly one state is 1`)
    t.same(find(all, METRIC_NAMES.upstreamBreakerTransitions, labels).map((s) => s.labels.to).sort(), ['closed', 'half-open', 'open'],
      `${labels.target}: transitions by destination state`)
    t.ok(value(all, METRIC_NAMES.upstreamInFlight, labels) >= 0, `${labels.target}: in-flight series`)
  }
  t.equal(value(all, METRIC_NAMES.upstreamBreakerState, { ...liveLabels, state: 'closed' }), 1, 'the live target\'s breaker is closed')
  for (const name of COUNTERS) t.match(text, new RegExp(`^# TYPE ${name} counter$`, 'm'), `${name} is a counter`)
  for (const name of GAUGES) t.match(text, new RegExp(`^# TYPE ${name} gauge$`, 'm'), `${name} is a gauge`)
})

t.test('a route with circuitBreaker: false has no breaker series; every route has its retry counters', async (t) => {
  const live = await startUpstream(t)
  const { url } = await startTestGateway(t, {
    routes: [
      { name: 'plain', prefix: '/plain', upstream: `${live.origin}/p`, circuitBreaker: false },
      { name: 'guarded', prefix: '/guarded', upstream: `${live.origin}/g` }
    ]
  })
  const all = samples(await scrape(url))
  t.same(find(all, METRIC_NAMES.upstreamBreakerState, { route: 'plain' }), [], 'no breaker state for the route without breakers')
  t.same(find(all, METRIC_NAMES.upstreamBreakerTransitions, { route: 'plain' }), [], 'nor transitions')
  t.equal(find(all, METRIC_NAMES.upstreamBreakerState, { route: 'guarded' }).length, 3, 'the other route has its one-hot breaker state')
  t.equal(value(all, METRIC_NAMES.upstreamTargetUp, { route: 'plain', target: live.origin }), 1)
  for (const route of ['plain', 'guarded']) t.equal(value(all, METRIC_NAMES.upstreamRetries, { route }), 0, `${route}: retries_total from zero`)
})

t.test('two gateways in one process: each /metrics shows only its own routes\' targets', async (t) => {
  const live = await startUpstream(t)
  const a = await startTestGateway(t, { routes: [{ name: 'alpha', prefix: '/a', upstream: `${live.origin}/a` }] })
  const b = await startTestGateway(t, { routes: [{ name: 'beta', prefix: '/b', upstream: `${live.origin}/b` }] })
  for (const [gateway, own, other] of [[a, 'alpha', 'beta'], [b, 'beta', 'alpha']] as const) {
    const all = samples(await scrape(gateway.url))
    const routes = new Set(all.filter((s) => s.name.startsWith('portcullis_upstream_') && s.labels.route !== undefined && s.labels.target !== undefined).map((s) => s.labels.route))
    t.same([...routes], [own], `${own}'s gateway: its route only`)
    t.same(find(all, METRIC_NAMES.upstreamRetries, { route: other }), [], `${own}'s gateway: no ${other} series`)
  }
})

t.test('the target label is the origin: the userinfo of a target URL never reaches /metrics', async (t) => {
  const port = await freePort()
  // The config refuses credentials in an upstream URL (the first guard) …
  t.throws(() => parseConfig({ routes: [{ name: 'r', prefix: '/r', upstream: [`http://u:p@127.0.0.1:${port}/x`, `http://127.0.0.1:${port + 1}/x`] }] }),
    /must not carry credentials/)
  // … and the series strip it whatever a set holds: a set built directly with such URLs.
  const hostile = [
    `http://u:p@127.0.0.1:${port}/x`,
    `http://user%40corp:s3cr%3At@localhost:${port}/x?q=1`,
    `https://only-user@[::1]:${port}/x`,
    'http://u:p@127.0.0.1/x'
  ]
  const set = new UpstreamSet({ route: 'r', targets: hostile.map((url) => ({ url, weight: 1 })), balance: 'round-robin', breaker: null, outlier: null })
  const metrics = new GatewayMetrics(parseConfig({ routes: [{ name: 'r', prefix: '/r', upstream: `http://127.0.0.1:${port}/x` }] }))
  metrics.readUpstreams(() => new Map([['r', set]]))
  const text = await metrics.render()
  for (const secret of ['u:p', 'user%40corp', 's3cr', 'only-user']) t.notOk(text.includes(secret), `no "${secret}" in the exposition`)
  const lines = text.split('\n').filter((l) => l.startsWith('portcullis_upstream_'))
  t.ok(lines.length > 0)
  t.notOk(lines.some((l) => l.includes('@')), 'no userinfo separator in any upstream series')
  const targets = find(samples(text), METRIC_NAMES.upstreamTargetUp, { route: 'r' }).map((s) => s.labels.target)
  t.same(targets, [`http://127.0.0.1:${port}`, `http://localhost:${port}`, `https://[::1]:${port}`, 'http://127.0.0.1'], 'scheme://host:port only')
  t.equal(targetLabel('http://u:p@127.0.0.1:8080'), 'http://127.0.0.1:8080', 'the label strips userinfo even from an origin that carries it')
  t.equal(targetLabel('not a url'), 'other', 'a value that is not a URL is no label')
})

t.test('one scrape reads the targets\' states once: its up, healthy, ejected and breaker series agree', async (t) => {
  class CountingSet extends UpstreamSet {
    reads = 0
    override states (): ReturnType<UpstreamSet['states']> {
      this.reads++
      return super.states()
    }
  }
  const port = await freePort()
  const set = new CountingSet({ route: 'r', targets: [{ url: `http://127.0.0.1:${port}/x`, weight: 1 }], balance: 'round-robin' })
  const metrics = new GatewayMetrics(parseConfig({ routes: [{ name: 'r', prefix: '/r', upstream: `http://127.0.0.1:${port}/x` }] }))
  metrics.readUpstreams(() => new Map([['r', set]]))
  await metrics.render()
  t.equal(set.reads, 1, 'the first scrape: one read')
  await metrics.render()
  t.equal(set.reads, 2, 'the next scrape reads again (nothing is kept from one scrape to the next)')
})

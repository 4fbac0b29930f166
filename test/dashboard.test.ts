/**
 * deploy/grafana/portcullis-dashboard.json parses, covers what operators ask first, and queries
 * only metrics (and labels) that a real gateway exports; deploy/prometheus/prometheus.yml
 * scrapes the path the gateway serves.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { request } from 'undici'
import { channels } from '../schemas/events.js'
import { startTestGateway, startUpstream } from './helper.js'

interface Panel { id: number, type: string, title: string, gridPos?: unknown, panels?: Panel[], targets?: Array<{ expr: string }> }
interface Dashboard { uid: string, title: string, panels: Panel[], templating: { list: Array<{ name: string, query?: unknown }> } }

const dashboard = JSON.parse(readFileSync(new URL('../deploy/grafana/portcullis-dashboard.json', import.meta.url), 'utf8')) as Dashboard

function allPanels (panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])])
}

const exprs = allPanels(dashboard.panels).flatMap((p) => (p.targets ?? []).map((x) => x.expr))
/** Grafana's `label_values(selector, label)`: the selector is PromQL, the label is not a metric. */
const variableQueries = dashboard.templating.list.map((v) => v.query)
  .filter((q): q is { query: string } => typeof q === 'object' && q !== null)
  .map((q) => q.query.replace(/^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$/, '$1'))

const NOT_METRICS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset'])

/** The metric names a PromQL expression reads (functions, labels, strings and ranges left out). */
function metricNames (expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, '')
  return [...bare.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?/g)]
    .filter((m) => m[2] === undefined && !NOT_METRICS.has(m[1]))
    .map((m) => m[1])
}

/** The label names an expression groups or filters by. */
function labelNames (expr: string): string[] {
  const names: string[] = []
  for (const [, list] of expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) names.push(...list.split(',').map((s) => s.trim()).filter(Boolean))
  for (const [, selector] of expr.matchAll(/\{([^}]*)\}/g)) {
    for (const [, name] of selector.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) names.push(name)
  }
  return names
}

t.test('the dashboard parses and covers rate, errors, p50/p99 by route, upstream errors, auth failures and 429s', async (t) => {
  t.equal(dashboard.uid, 'portcullis-gateway')
  t.ok(dashboard.title.length > 0)
  const panels = allPanels(dashboard.panels).filter((p) => p.type !== 'row')
  t.ok(panels.length >= 10)
  t.equal(new Set(allPanels(dashboard.panels).map((p) => p.id)).size, allPanels(dashboard.panels).length, 'panel ids are unique')
  for (const p of panels) {
    t.ok((p.targets ?? []).length > 0 && p.gridPos !== undefined, `${p.title}: has queries and a place`)
  }
  const all = exprs.join('\n')
  t.match(all, /rate\(portcullis_requests_total/, 'request rate')
  t.match(all, /status_class="5xx"/, 'error rate')
  t.match(all, /histogram_quantile\(0\.5, sum by \(route, le\) \(rate\(portcullis_request_duration_seconds_bucket/, 'p50 by route')
  t.match(all, /histogram_quantile\(0\.99, sum by \(route, le\) \(rate\(portcullis_request_duration_seconds_bucket/, 'p99 by route')
  for (const name of ['portcullis_upstream_errors_total', 'portcullis_auth_failures_total', 'portcullis_rate_limited_total']) t.match(all, name)
})

t.test('every metric and label the dashboard queries is one the gateway exports', async (t) => {
  const up = await startUpstream(t)
  const { url } = await startTestGateway(t, { routes: [{ name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` }] })
  await (await request(`${url}/api/people/1`)).body.dump()
  // Every event once, so that the labelled counters have series.
  channels.upstreamError.publish({ route: 'people', kind: 'refused' })
  channels.authFailure.publish({ route: 'people', scheme: 'jwt', reason: 'expired' })
  channels.authzDenied.publish({ route: 'people', scope: 'people:write' })
  channels.validationFailure.publish({ route: 'people', part: 'body', reportOnly: false })
  channels.validationFailure.publish({ route: 'people', part: 'body', reportOnly: true })
  channels.rateLimited.publish({ route: 'people', by: 'ip' })
  const text = await (await request(`${url}/metrics`)).body.text()

  const exported = new Set<string>()
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    exported.add(name)
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) exported.add(name + suffix)
    if (type === 'summary') for (const suffix of ['_sum', '_count']) exported.add(name + suffix)
  }
  const labels = new Set(['job', 'instance']) // added by Prometheus at scrape time
  for (const [, list] of text.matchAll(/^[a-zA-Z_:][a-zA-Z0-9_:]*\{([^}]*)\}/gm)) {
    for (const [, name] of list.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) labels.add(name)
  }

  const queried = new Set([...exprs, ...variableQueries].flatMap(metricNames))
  t.ok(queried.size >= 10, `the dashboard queries ${queried.size} metrics`)
  for (const name of queried) t.ok(exported.has(name), `${name} is exported`)
  for (const name of new Set(exprs.flatMap(labelNames))) t.ok(labels.has(name), `label ${name} is exported`)
  t.notOk(queried.has('route'), 'the helper does not take labels for metrics')
})

t.test('the Prometheus example scrapes the path the gateway serves', async (t) => {
  const config = parseYaml(readFileSync(new URL('../deploy/prometheus/prometheus.yml', import.meta.url), 'utf8')) as {
    scrape_configs: Array<{ job_name: string, metrics_path: string, static_configs: Array<{ targets: string[] }> }>
  }
  const job = config.scrape_configs.find((j) => j.job_name === 'portcullis')
  t.ok(job)
  t.equal(job?.metrics_path, '/metrics')
  t.ok((job?.static_configs[0].targets.length ?? 0) > 0)
})

/**
 * deploy/grafana/portcullis-dashboard.json parses, covers what operators ask first (upstream
 * targets included), and queries only metrics (and labels) that a real gateway exports, each with
 * a series after some traffic; its "Gateway overhead" panel reads only proxied requests (checked
 * against the access log of a real gateway); and deploy/prometheus/prometheus.yml scrapes the
 * path the gateway serves.
 */
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { request } from 'undici'
import { channels } from '../schemas/events.js'
import { buildGateway } from '../src/app.js'
import { parseConfig } from '../src/config.js'
import { hsToken, SECRET } from './auth-helper.js'
import { freePort, startTestGateway, startUpstream } from './helper.js'
import { samples, type Sample } from './metrics-helper.js'

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
  // Upstream targets (issue 16): up per route, ejections, breaker state and transitions, retries and the exhausted budget.
  t.match(all, /sum by \(route\) \(min by \(route, target\) \(portcullis_upstream_target_up\{/, 'targets up per route')
  for (const name of [
    'portcullis_upstream_ejections_total', 'portcullis_upstream_breaker_state', 'portcullis_upstream_breaker_transitions_total',
    'portcullis_upstream_retries_total', 'portcullis_upstream_retry_budget_exhausted_total'
  ]) t.match(all, name)
})

t.test('every metric and label the dashboard queries is one the gateway exports', async (t) => {
  const up = await startUpstream(t)
  const dead = await freePort() // bound, then closed: its target fails, is retried around and ejected
  const { url } = await startTestGateway(t, {
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${up.origin}/people` },
      { name: 'pair', prefix: '/pair', upstream: [`${up.origin}/pair`, `http://127.0.0.1:${dead}/pair`], outlierDetection: { consecutiveFailures: 2 } }
    ]
  })
  await (await request(`${url}/api/people/1`)).body.dump()
  for (let i = 0; i < 6; i++) await (await request(`${url}/pair/${i}`)).body.dump()
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

  const sampled = new Set([...text.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/gm)].map((m) => m[1]))

  const queried = new Set([...exprs, ...variableQueries].flatMap(metricNames))
  t.ok(queried.size >= 10, `the dashboard queries ${queried.size} metrics`)
  for (const name of queried) t.ok(exported.has(name), `${name} is exported`)
  for (const name of queried) t.ok(sampled.has(name), `${name} has a series after this traffic`)
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

/**
 * The overhead panel's expression, evaluated on one scrape of a gateway that started from zero:
 * over a window that holds all of its traffic, `rate(counter[w])` is the counter over w, and w
 * cancels out of the panel's ratio, so each `sum by (route) (rate(m{…}[w]))` is read as the sum
 * of m by route. The expression must have the shape `(A - B) / C` with three such terms.
 */
const TERM = /sum by \(route\) \(rate\(([a-zA-Z_:][a-zA-Z0-9_:]*)\{job=~"\$job", route=~"\$route"\}\[\$__rate_interval\]\)\)/g
function overheadTerms (expr: string): { a: string, b: string, c: string } {
  const names = [...expr.matchAll(TERM)].map((m) => m[1])
  const skeleton = expr.replace(TERM, 'T').replace(/\s+/g, ' ').trim()
  if (skeleton !== '(T - T) / T' || names.length !== 3) throw new Error(`the overhead panel's expression is not (A - B) / C: ${expr}`)
  return { a: names[0], b: names[1], c: names[2] }
}
const byRoute = (all: Sample[], name: string): Map<string, number> => {
  const sums = new Map<string, number>()
  for (const s of all) if (s.name === name) sums.set(s.labels.route, (sums.get(s.labels.route) ?? 0) + s.value)
  return sums
}

t.test('"Gateway overhead" reads proxied requests only: its histograms count the access log\'s lines with upstreamMs', async (t) => {
  const panel = allPanels(dashboard.panels).find((p) => /^Gateway overhead/.test(p.title))
  const expr = panel?.targets?.[0]?.expr ?? ''
  const { a, b, c } = overheadTerms(expr)
  t.match(a, /_sum$/, 'numerator: a sum of request times')
  t.match(b, /_sum$/, 'minus a sum of upstream times')
  t.match(c, /_count$/, 'over a count of requests')

  const up = await startUpstream(t)
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-dashboard-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const logFile = join(dir, 'access.log')
  const config = parseConfig({
    logging: { level: 'info' },
    jwt: { algorithms: ['HS256'], secret: SECRET },
    routes: [
      { name: 'people', prefix: '/api/people', upstream: `${up.origin}/people`, auth: ['jwt'], scopes: { GET: ['people:read'], '*': ['people:write'] }, validate: [{ method: 'PUT', path: '/:id', body: { type: 'object', required: ['name'] } }] },
      { name: 'limited', prefix: '/limited', upstream: `${up.origin}/limited`, rateLimit: { max: 2, window: '1m', by: 'ip' } }
    ]
  })
  const app = await buildGateway(config, { logDestination: logFile })
  let closed = false
  t.teardown(async () => { if (!closed) await app.close() })
  const url = await app.listen({ host: '127.0.0.1', port: 0 })

  const reader = { authorization: `Bearer ${hsToken({ sub: 'r', scope: 'people:read' })}` }
  const writer = { authorization: `Bearer ${hsToken({ sub: 'w', scope: 'people:read people:write' })}`, 'content-type': 'application/json' }
  const send = async (path: string, options: { method?: 'GET' | 'PUT', headers?: Record<string, string>, body?: string } = {}): Promise<number> => {
    const res = await request(`${url}${path}`, options)
    await res.body.dump()
    return res.statusCode
  }
  const statuses = [
    await send('/api/people/1', { headers: reader }), // 200, proxied
    await send('/api/people/2', { headers: reader }), // 200, proxied
    await send('/api/people/3', { method: 'PUT', headers: writer, body: '{"name":"x"}' }), // 200, proxied
    await send('/api/people/1'), // 401
    await send('/api/people/1', { headers: { authorization: 'Bearer not.a.token' } }), // 401
    await send('/api/people/1', { method: 'PUT', headers: { ...reader, 'content-type': 'application/json' }, body: '{"name":"x"}' }), // 403
    await send('/api/people/1', { method: 'PUT', headers: writer, body: '{}' }), // 400
    await send('/limited/a'), await send('/limited/b'), // 200, 200: proxied
    await send('/limited/c'), await send('/limited/d'), // 429, 429
    await send('/nowhere') // 404
  ]
  t.same(statuses, [200, 200, 200, 401, 401, 403, 400, 200, 200, 429, 429, 404], 'a mix of proxied and refused requests')
  const scraped = samples(await (await request(`${url}/metrics`)).body.text())
  await app.close()
  closed = true

  const lines = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes('"request completed"'))
    .map((l) => JSON.parse(l) as { route: string, status: number, upstreamMs: number | null })
  const proxied = new Map<string, number>()
  for (const l of lines) if (l.upstreamMs !== null) proxied.set(l.route, (proxied.get(l.route) ?? 0) + 1)
  t.same(Object.fromEntries(proxied), { people: 3, limited: 2 }, 'the access log: 5 proxied requests (upstreamMs set), the 7 refused ones have upstreamMs null')
  t.equal(lines.filter((l) => l.upstreamMs === null && l.route !== 'metrics').length, 7)

  const counted = (name: string): Record<string, number> => Object.fromEntries(byRoute(scraped, name.replace(/_(sum|count)$/, '_count')))
  t.same(counted(c), Object.fromEntries(proxied), `the denominator (${c}) counts the proxied requests of each route`)
  t.same(counted(b), Object.fromEntries(proxied), `the upstream times (${b}) are those of the proxied requests`)
  t.equal(a, 'portcullis_proxied_request_duration_seconds_sum', 'the numerator is the whole time of the proxied requests only')
  t.same(counted(a), Object.fromEntries(proxied), `the request times (${a}) are those of the proxied requests, none the gateway answered itself`)
  const [sumA, sumB, countC] = [byRoute(scraped, a), byRoute(scraped, b), byRoute(scraped, c)]
  for (const route of proxied.keys()) {
    const overhead = ((sumA.get(route) ?? NaN) - (sumB.get(route) ?? NaN)) / (countC.get(route) ?? NaN)
    t.ok(overhead >= 0, `${route}: the panel's value is a number ≥ 0 (${overhead} s): a request's time includes its upstream's`)
  }
})

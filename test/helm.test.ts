/**
 * deploy/helm/portcullis: `helm lint --strict` and `helm template` with the real helm binary
 * (deploy/tools/k8s-tools.sh), for the shipped values and the value sets in ci/; every rendered
 * object matches its Kubernetes schema (kubernetes-models, the ServiceMonitor's from
 * @kubernetes-models/prometheus-operator) and has no unknown field, the rendered gateway.yaml is
 * a valid gateway config,
 * and what must refuse does: no secret, a misspelt value, two Redis topologies at once.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { ConfigError, parseConfig } from '../src/config.js'
import { parseDuration } from '../schemas/common.js'
import { requireCommand } from './helper.js'
import { allSchemaProblems, type Doc, HELM, INSTALL_TOOLS, parseManifests, ROOT, run, unknownFieldProblems } from './k8s-helper.js'

const CHART = join(ROOT, 'deploy/helm/portcullis')
const CI = (name: string): string => join(CHART, 'ci', `${name}-values.yaml`)

function template (args: string[]): { status: number | null, docs: Doc[], stderr: string } {
  const r = run(HELM, ['template', 'demo', CHART, '--namespace', 'gw', ...args])
  return { status: r.status, docs: r.status === 0 ? parseManifests(r.stdout) : [], stderr: r.stderr }
}
const one = (docs: Doc[], kind: string): Doc => {
  const found = docs.filter((d) => d.kind === kind)
  if (found.length !== 1) throw new Error(`${found.length} × ${kind}`)
  return found[0] as Doc
}
function configProblems (docs: Doc[], env: Record<string, string>): string[] {
  try {
    parseConfig(parse(one(docs, 'ConfigMap').data['gateway.yaml'] as string), { env })
    return []
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
}
const ENV = { JWT_SECRET: 'k'.repeat(48), ALICE_PASSWORD: 'alice-own-pw', REDIS_PASSWORD: 'redis-pw' }

t.test('helm lint --strict passes for the shipped values and every ci/ value set', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  for (const name of ['default', 'sentinel-existing-secret', 'hpa-servicemonitor']) {
    const r = run(HELM, ['lint', '--strict', CHART, '-f', CI(name)])
    t.equal(r.status, 0, `${name}: ${r.stdout}${r.stderr}`)
    t.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/)
  }
})

t.test('helm template: no default secret; without one the install stops saying what to set', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  const values = parse(readFileSync(join(CHART, 'values.yaml'), 'utf8')) as Doc
  t.same(values.secrets, { existingSecret: '', values: {} }, 'values.yaml holds no secret value')
  const bare = template([])
  t.not(bare.status, 0, 'the shipped values alone do not render')
  t.match(bare.stderr, /portcullis: no secrets: set secrets\.existingSecret .* or secrets\.values .*; the chart has no default secret/)
  const empty = template(['--set', 'secrets.values.JWT_SECRET='])
  t.not(empty.status, 0, 'an empty secret value is refused')
  t.match(empty.stderr, /secrets\/values\/JWT_SECRET|secrets\.values\.JWT_SECRET/)
})

t.test('helm template, shipped values + existingSecret: valid objects, a valid gateway config, shutdown timing', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  const { status, docs, stderr } = template(['-f', CI('default')])
  t.equal(status, 0, stderr)
  t.same(docs.map((d) => d.kind).sort(), ['ConfigMap', 'Deployment', 'PodDisruptionBudget', 'Service'], 'no Secret, HPA, ServiceMonitor or NetworkPolicy by default')
  t.same(await allSchemaProblems(docs), [], 'every object matches its Kubernetes schema')
  const deployment = one(docs, 'Deployment')
  const pod = deployment.spec.template.spec
  const container = pod.containers[0]
  t.equal(container.image, 'ghcr.io/example/portcullis:0.1.0', 'the tag defaults to appVersion')
  t.equal(container.envFrom[0].secretRef.name, 'portcullis-secrets', 'the environment from the existing Secret')
  t.equal(deployment.metadata.name, 'demo-portcullis')
  t.equal(container.livenessProbe.httpGet.path, '/healthz')
  t.equal(container.readinessProbe.httpGet.path, '/readyz')
  t.match(pod.securityContext, { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } })
  t.same(container.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } })
  t.same(pod.topologySpreadConstraints.map((c: Doc) => c.whenUnsatisfiable), ['DoNotSchedule', 'ScheduleAnyway'])
  t.same(one(docs, 'PodDisruptionBudget').spec.selector.matchLabels, deployment.spec.selector.matchLabels)
  t.same(one(docs, 'Service').spec.selector, deployment.spec.template.metadata.labels)

  t.same(configProblems(docs, ENV), [], 'the rendered gateway.yaml is a valid config')
  const config = parseConfig(parse(one(docs, 'ConfigMap').data['gateway.yaml'] as string), { env: ENV })
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.server.port, container.ports[0].containerPort)
  t.equal(config.server.metrics.port, container.ports[1].containerPort)
  t.equal(config.rateLimit.store, 'memory', 'no Redis given: per-pod counters (NOTES.txt warns)')
  const grace = parseDuration(config.server.shutdownGrace) / 1000
  t.equal(pod.terminationGracePeriodSeconds, container.lifecycle.preStop.sleep.seconds + grace + 5, 'preStop + shutdownGrace + 5 s')
  t.same(configProblems(docs, { ...ENV, JWT_SECRET: '' }), ['jwt.secret: environment variable JWT_SECRET is not set (write ${JWT_SECRET:-default} to give a default)'], 'a Secret without JWT_SECRET: the gateway refuses to start')
})

t.test('helm template, Redis Sentinel + existingSecret + NetworkPolicy + image digest', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  const { status, docs, stderr } = template(['-f', CI('sentinel-existing-secret')])
  t.equal(status, 0, stderr)
  t.same(await allSchemaProblems(docs), [], 'every object matches its Kubernetes schema')
  const container = one(docs, 'Deployment').spec.template.spec.containers[0]
  t.equal(container.image, 'ghcr.io/example/portcullis@sha256:' + '0'.repeat(64), 'pulled by digest')
  t.same(container.env, [{ name: 'REDIS_PASSWORD', valueFrom: { secretKeyRef: { name: 'redis-auth', key: 'redis-password' } } }], 'the Redis password from its own Secret')
  const config = parse(one(docs, 'ConfigMap').data['gateway.yaml'] as string) as Doc
  // The shape of issue 18 item 1 (rateLimit.redis: { sentinels, name }); the gateway's schema
  // accepts it once that item lands.
  t.same(config.rateLimit, {
    onStoreError: 'allow',
    store: 'redis',
    redis: { sentinels: ['redis-sentinel-0.redis:26379', 'redis-sentinel-1.redis:26379', 'redis-sentinel-2.redis:26379'], name: 'mymaster', password: '${REDIS_PASSWORD}' }
  })
  const policy = one(docs, 'NetworkPolicy')
  t.same(policy.spec.ingress.map((r: Doc) => r.ports[0].port), ['http', 'metrics'], 'in: the gateway and metrics ports only')
  t.equal(policy.spec.ingress[1].from[0].namespaceSelector.matchLabels['kubernetes.io/metadata.name'], 'monitoring')
  t.same(policy.spec.egress.map((r: Doc) => r.ports.map((p: Doc) => p.port)), [[53, 53], [8000], [26379, 6379]], 'out: DNS, then the upstream and Redis of the values')
  t.equal(one(docs, 'Deployment').spec.replicas, 2)
})

t.test('helm template, HPA + ServiceMonitor + a Secret generated from values + Redis URL', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  const { status, docs, stderr } = template(['-f', CI('hpa-servicemonitor')])
  t.equal(status, 0, stderr)
  t.same(docs.map((d) => d.kind).sort(), ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Secret', 'Service', 'ServiceMonitor'])
  t.same(await allSchemaProblems(docs), [], 'every object, the ServiceMonitor too, matches its schema')
  const deployment = one(docs, 'Deployment')
  t.equal(deployment.spec.replicas, undefined, 'the HPA owns the replica count')
  const hpa = one(docs, 'HorizontalPodAutoscaler')
  t.match(hpa.spec, { minReplicas: 3, maxReplicas: 12, scaleTargetRef: { kind: 'Deployment', name: deployment.metadata.name } })
  const monitor = one(docs, 'ServiceMonitor')
  const service = one(docs, 'Service')
  t.same(monitor.spec.selector.matchLabels, Object.fromEntries(Object.entries(service.metadata.labels as Record<string, string>).filter(([k]) => k in monitor.spec.selector.matchLabels)), 'selects the Service')
  t.ok((service.spec.ports as Doc[]).some((p) => p.name === monitor.spec.endpoints[0].port), 'by a port name the Service has')
  t.equal(monitor.metadata.labels.release, 'kube-prometheus-stack', 'with the labels the operator selects on')
  const secret = one(docs, 'Secret')
  const env = Object.fromEntries(Object.entries(secret.data as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]))
  t.equal(deployment.spec.template.spec.containers[0].envFrom[0].secretRef.name, secret.metadata.name)
  t.same(configProblems(docs, env), [], 'the config is valid with the generated Secret\'s values')
  const config = parseConfig(parse(one(docs, 'ConfigMap').data['gateway.yaml'] as string), { env })
  t.equal(config.rateLimit.store, 'redis')
  t.equal(config.rateLimit.redis, 'redis://:ci-only-redis-password@redis-master.redis.svc:6379/0', 'the password substituted from the Secret')
})

t.test('helm template: no object of any value set has a field its kind does not know', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  const all = ['default', 'sentinel-existing-secret', 'hpa-servicemonitor'].flatMap((name) => template(['-f', CI(name)]).docs)
  t.equal(all.length, 16)
  t.same(unknownFieldProblems(all), [])
  const typo = template(['-f', CI('default'), '--set', 'securityContext.readOnlyRootFileSystem=true'])
  t.match(unknownFieldProblems(typo.docs), [/^Deployment\/demo-portcullis: .*'"readOnlyRootFileSystem"' does not exist in type/], 'a misspelt pass-through value is caught')
})

t.test('helm template refuses bad values, and the schema check fails on a broken render', async (t) => {
  if (!requireCommand(t, HELM, INSTALL_TOOLS)) return
  const base = ['-f', CI('default')]
  const typo = template([...base, '--set', 'redis.urll=redis://r:6379'])
  t.not(typo.status, 0)
  t.match(typo.stderr, /additional properties 'urll' not allowed/, 'values.schema.json: a misspelt key')
  const digest = template([...base, '--set', 'image.digest=latest'])
  t.match(digest.stderr, /image\/digest/, 'a digest that is not sha256:…')
  const both = template([...base, '--set', 'redis.url=redis://r:6379', '--set', 'redis.cluster[0]=r:6379'])
  t.match(both.stderr, /portcullis: set only one of redis\.url, redis\.sentinels and redis\.cluster/)
  const noName = template([...base, '--set', 'redis.sentinels[0]=s:26379'])
  t.match(noName.stderr, /redis\.name .* is required with redis\.sentinels/)

  // podSecurityContext is passed through: a wrong type renders, and the Kubernetes schema catches it.
  const broken = template([...base, '--set-string', 'podSecurityContext.runAsUser=node'])
  t.equal(broken.status, 0, broken.stderr)
  t.match(await allSchemaProblems(broken.docs), [/^Deployment\/demo-portcullis: .*securityContext\/runAsUser must be integer/])
})

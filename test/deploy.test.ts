/**
 * The deployment files users start from: the Kubernetes manifests in deploy/k8s parse as YAML
 * and hang together (labels, probes, the config they mount is a valid gateway config), the
 * compose file and its gateway config are consistent, and the Dockerfile keeps its promises.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { parseConfig } from '../src/config.js'
import { checkValidation } from '../plugins/validate.js'

const ROOT = new URL('..', import.meta.url).pathname
type Doc = Record<string, any>

const secrets = { JWT_SECRET: 'x'.repeat(48), ALICE_PASSWORD: 'alice-pw', BOB_PASSWORD: 'bob-pw', REDIS_URL: 'redis://127.0.0.1:6379', DRF_URL: 'http://127.0.0.1:8000' }

function k8s (): Doc[] {
  const dir = join(ROOT, 'deploy/k8s')
  const docs: Doc[] = []
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.yaml'))) {
    for (const d of parseAllDocuments(readFileSync(join(dir, f), 'utf8'))) {
      if (d.errors.length > 0) throw new Error(`${f}: ${d.errors.map((e) => e.message).join('; ')}`)
      docs.push({ ...d.toJS() as Doc, file: f })
    }
  }
  return docs
}

t.test('deploy/k8s: every manifest is valid YAML with apiVersion, kind and name', async (t) => {
  const docs = k8s()
  const kinds = docs.map((d) => d.kind as string).sort()
  t.same(kinds, ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Kustomization', 'Secret', 'Service'])
  for (const d of docs) {
    t.type(d.apiVersion, 'string', `${String(d.file)}: apiVersion`)
    if (d.kind !== 'Kustomization') t.type(d.metadata?.name, 'string', `${String(d.file)}: metadata.name`)
  }
  const listed = (docs.find((d) => d.kind === 'Kustomization')?.resources as string[]).sort()
  t.same(listed, docs.filter((d) => d.kind !== 'Kustomization').map((d) => d.file as string).sort(), 'kustomization lists every manifest')
})

t.test('deploy/k8s: the Deployment probes /healthz and /readyz, and the pieces refer to each other', async (t) => {
  const docs = k8s()
  const by = (kind: string): Doc => docs.find((d) => d.kind === kind) as Doc
  const deployment = by('Deployment')
  const pod = deployment.spec.template
  const container = pod.spec.containers[0]
  t.same(deployment.spec.selector.matchLabels, pod.metadata.labels, 'the selector matches the pod labels')
  t.equal(container.livenessProbe.httpGet.path, '/healthz')
  t.equal(container.readinessProbe.httpGet.path, '/readyz')
  t.equal(container.ports[0].containerPort, 8080)
  t.equal(pod.spec.securityContext.runAsNonRoot, true, 'non-root')
  t.equal(container.securityContext.readOnlyRootFilesystem, true)
  t.same(by('Service').spec.selector, pod.metadata.labels, 'the Service selects the pods')
  t.equal(by('Service').spec.ports[0].targetPort, 'http')
  t.equal(by('HorizontalPodAutoscaler').spec.scaleTargetRef.name, deployment.metadata.name, 'the HPA scales the Deployment')
  t.equal(pod.spec.volumes[0].configMap.name, by('ConfigMap').metadata.name, 'the ConfigMap is mounted')
  t.equal(container.envFrom[0].secretRef.name, by('Secret').metadata.name, 'the Secret provides the environment')
  t.ok(pod.spec.terminationGracePeriodSeconds > 20, 'termination grace longer than the gateway\'s shutdownGrace')

  // The mounted config is a valid gateway config once the Secret's variables are set.
  const config = parseConfig(parse(by('ConfigMap').data['gateway.yaml'] as string), { env: { ...by('Secret').stringData } })
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.rateLimit.store, 'redis', 'replicas share their limits through Redis')
  t.equal(container.args.at(-1), '/etc/portcullis/gateway.yaml')
})

t.test('docker-compose.yml: gateway, drf and redis with healthchecks; the gateway config is valid', async (t) => {
  const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as Doc
  t.same(Object.keys(compose.services).sort(), ['drf', 'gateway', 'redis'])
  for (const [name, service] of Object.entries(compose.services as Record<string, Doc>)) {
    t.ok(Array.isArray(service.healthcheck?.test), `${name} has a healthcheck`)
  }
  const gateway = compose.services.gateway as Doc
  t.same(Object.keys(gateway.depends_on).sort(), ['drf', 'redis'])
  t.equal(gateway.volumes[0], './deploy/compose/gateway.yaml:/etc/portcullis/gateway.yaml:ro')
  t.same(Object.keys(compose.services).filter((s) => compose.services[s].ports !== undefined), ['gateway'], 'only the gateway publishes a port')
  // DRF believes identity headers only from the gateway's fixed address.
  t.equal(compose.services.drf.environment.GATEWAY_TRUSTED_ADDRESSES, gateway.networks.backend.ipv4_address)

  // In the container the DRF OpenAPI document is mounted next to the config: resolve it the same way.
  t.ok(gateway.volumes.includes('./examples/drf/openapi.yaml:/etc/portcullis/openapi.yaml:ro'), 'the OpenAPI document is mounted')
  const config = parseConfig(parse(readFileSync(join(ROOT, 'deploy/compose/gateway.yaml'), 'utf8')), { env: secrets, baseDir: join(ROOT, 'examples/drf') })
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.rateLimit.store, 'redis')
  t.same(config.jwt?.requiredClaims, { token_type: 'access' }, 'refresh tokens are refused')
  t.ok(config.routes.some((r) => r.prefix === '/api/people'))
  await t.resolves(checkValidation(config), 'its validation rules and the OpenAPI document compile')

  // Every variable the compose file requires is in .env.example.
  const example = readFileSync(join(ROOT, '.env.example'), 'utf8')
  const required = [...readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8').matchAll(/\$\{([A-Z_]+):\?/g)].map((m) => m[1])
  for (const v of new Set(required)) t.match(example, new RegExp(`^${v ?? ''}=`, 'm'), `.env.example sets ${v ?? ''}`)
})

t.test('Dockerfile: multi-stage node:20-slim, production dependencies, non-root, HEALTHCHECK with node', async (t) => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  t.equal([...text.matchAll(/^FROM node:20-slim AS /gm)].length, 2, 'a build and a runtime stage')
  t.match(text, /npm ci --omit=dev --ignore-scripts/, 'runtime: production dependencies only, no prepare script')
  t.match(text, /^USER node$/m, 'runs as the non-root node user')
  t.match(text, /^HEALTHCHECK [\s\S]*CMD \["node", "-e", "fetch\('http:\/\/127\.0\.0\.1:' .*\/healthz'\)/m, 'healthcheck on /healthz with node')
  const instructions = text.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n')
  t.notMatch(instructions, /curl|wget/, 'no curl in the slim image')
})

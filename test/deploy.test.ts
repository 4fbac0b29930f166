/**
 * The deployment files users start from: the Kubernetes manifests in deploy/k8s parse as YAML
 * and hang together (labels, probes, the config they mount is a valid gateway config), the
 * compose file and its gateway config are consistent, and the Dockerfile keeps its promises.
 */
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { ConfigError, parseConfig } from '../src/config.js'
import { checkValidation } from '../plugins/validation/validate.js'
import { KNOWN_DEMO_SECRETS } from '../schemas/secure-defaults.js'

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

/** The problems parseConfig reports for `raw` with `env`, or [] when it is valid. */
function problemsOf (raw: unknown, env: Record<string, string | undefined>, baseDir?: string): string[] {
  try {
    parseConfig(raw, { env, baseDir })
    return []
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
}

/** `KEY=value` lines of an env file (comments and blank lines skipped). */
function envFile (path: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line)
    if (m?.[1] !== undefined) out[m[1]] = m[2] ?? ''
  }
  return out
}

t.test('deploy/k8s: every manifest is valid YAML with apiVersion, kind and name', async (t) => {
  const docs = k8s()
  const kinds = docs.map((d) => d.kind as string).sort()
  t.same(kinds, ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Kustomization', 'Service'], 'no Secret manifest: it is generated')
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
  const generated = by('Kustomization').secretGenerator as Doc[]
  t.equal(container.envFrom[0].secretRef.name, generated[0]?.name, 'the generated Secret provides the environment')
  t.ok(pod.spec.terminationGracePeriodSeconds > 20, 'termination grace longer than the gateway\'s shutdownGrace')

  // The mounted config is a valid gateway config once the Secret's variables are set.
  const raw = parse(by('ConfigMap').data['gateway.yaml'] as string)
  const example = envFile(join(ROOT, 'deploy/k8s/secret.env.example'))
  const config = parseConfig(raw, { env: { ...example, JWT_SECRET: 'k'.repeat(48), ALICE_PASSWORD: 'alice-own-pw', REDIS_URL: 'redis://redis:6379' } })
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.rateLimit.store, 'redis', 'replicas share their limits through Redis')
  t.equal(container.args.at(-1), '/etc/portcullis/gateway.yaml')
})

t.test('deploy/k8s: the Secret is generated from the operator\'s git-ignored secret.env, never from a committed value', async (t) => {
  const kustomization = parse(readFileSync(join(ROOT, 'deploy/k8s/kustomization.yaml'), 'utf8')) as Doc
  t.notOk((kustomization.resources as string[]).includes('secret.yaml'), 'secret.yaml is not applied')
  t.notOk(existsSync(join(ROOT, 'deploy/k8s/secret.yaml')), 'and not shipped')
  t.same(kustomization.secretGenerator, [{ name: 'portcullis-secrets', envs: ['secret.env'], options: { labels: { 'app.kubernetes.io/name': 'portcullis' } } }])
  const ignored = spawnSync('git', ['check-ignore', '-q', 'deploy/k8s/secret.env'], { cwd: ROOT })
  t.equal(ignored.status, 0, 'deploy/k8s/secret.env is git-ignored')
  t.equal(spawnSync('git', ['check-ignore', '-q', 'deploy/k8s/secret.env.example'], { cwd: ROOT }).status, 1, 'the example is not')

  // The example lists every variable the mounted config reads, with no value.
  const example = envFile(join(ROOT, 'deploy/k8s/secret.env.example'))
  const configMap = parse(readFileSync(join(ROOT, 'deploy/k8s/configmap.yaml'), 'utf8')) as Doc
  const text = configMap.data['gateway.yaml'] as string
  const vars = [...new Set([...text.matchAll(/\$\{([A-Z_][A-Z0-9_]*)\}/g)].map((m) => m[1] ?? ''))].sort()
  t.same(Object.keys(example).sort(), vars, 'secret.env.example lists exactly the variables of the config')
  t.same(Object.values(example).filter((v) => v !== ''), [], 'with no values')

  // Copied as it is, the gateway refuses to start (empty = unset), naming each variable.
  t.same(problemsOf(parse(text), example), [
    'jwt.secret: environment variable JWT_SECRET is not set (write ${JWT_SECRET:-default} to give a default)',
    'rateLimit.redis: environment variable REDIS_URL is not set (write ${REDIS_URL:-default} to give a default)',
    'users[0].password: environment variable ALICE_PASSWORD is not set (write ${ALICE_PASSWORD:-default} to give a default)'
  ])
  // With the placeholders the former secret.yaml applied, it refuses too.
  const old = problemsOf(parse(text), { JWT_SECRET: 'replace-me-with-48-random-bytes-base64-xxxxxxxxxxxxxxxx', ALICE_PASSWORD: 'replace-me', REDIS_URL: 'redis://redis:6379' })
  t.same(old, [
    'jwt.secret: is the published demo secret; set JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)',
    'users[0].password: is a published demo password; set ALICE_PASSWORD to a password of your own (or write passwordHash from `portcullis hash-password`)'
  ])
})

t.test('deploy/k8s: kubectl kustomize fails without secret.env and generates the Secret the Deployment uses from it', async (t) => {
  if (spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status !== 0) {
    t.comment('SKIPPED: kubectl is not installed (the static checks above still ran)')
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-k8s-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const f of readdirSync(join(ROOT, 'deploy/k8s'))) if (f !== 'secret.env') copyFileSync(join(ROOT, 'deploy/k8s', f), join(dir, f))
  const missing = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' })
  t.not(missing.status, 0, 'no secret.env: kustomize stops')
  t.match(missing.stderr, /secret\.env/, 'naming the file')

  writeFileSync(join(dir, 'secret.env'), 'JWT_SECRET=' + 'k'.repeat(48) + '\nALICE_PASSWORD=alice-own-pw\nREDIS_URL=redis://redis:6379\n')
  const built = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' })
  t.equal(built.status, 0, built.stderr)
  const docs = parseAllDocuments(built.stdout).map((d) => d.toJS() as Doc)
  const secret = docs.find((d) => d.kind === 'Secret') as Doc
  t.match(secret.metadata.name, /^portcullis-secrets-[a-z0-9]+$/, 'a generated Secret, named with a hash of its contents')
  t.same(Object.keys(secret.data).sort(), ['ALICE_PASSWORD', 'JWT_SECRET', 'REDIS_URL'])
  t.equal(Buffer.from(secret.data.JWT_SECRET as string, 'base64').toString(), 'k'.repeat(48), 'holding the operator\'s value')
  const deployment = docs.find((d) => d.kind === 'Deployment') as Doc
  t.equal(deployment.spec.template.spec.containers[0].envFrom[0].secretRef.name, secret.metadata.name, 'the Deployment reads that Secret')
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

  // .env.example's values are published placeholders: the gateway (on 0.0.0.0) refuses every one.
  const placeholders = envFile(join(ROOT, '.env.example'))
  for (const v of ['JWT_SECRET', 'ALICE_PASSWORD', 'BOB_PASSWORD', 'DJANGO_SECRET_KEY']) {
    t.ok(KNOWN_DEMO_SECRETS.includes(placeholders[v] ?? ''), `.env.example's ${v} is a known demo value`)
  }
  const drfUsers = JSON.parse(placeholders.DRF_USERS ?? '[]') as Array<{ password: string }>
  t.ok(drfUsers.length > 0 && drfUsers.every((u) => KNOWN_DEMO_SECRETS.includes(u.password)), 'so are DRF_USERS\' passwords')
  const refused = problemsOf(parse(readFileSync(join(ROOT, 'deploy/compose/gateway.yaml'), 'utf8')), { ...placeholders, REDIS_URL: 'redis://redis:6379', DRF_URL: 'http://drf:8000' }, join(ROOT, 'examples/drf'))
  t.same(refused, [
    'jwt.secret: is the published demo secret; set JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)',
    'users[0].password: is a published demo password; set ALICE_PASSWORD to a password of your own (or write passwordHash from `portcullis hash-password`)',
    'users[1].password: is a published demo password; set BOB_PASSWORD to a password of your own (or write passwordHash from `portcullis hash-password`)'
  ], 'compose with .env.example as it is: the gateway exits naming each variable')
})

t.test('Dockerfile: multi-stage node:20-slim, production dependencies, non-root, HEALTHCHECK with node', async (t) => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  t.equal([...text.matchAll(/^FROM node:20-slim AS /gm)].length, 2, 'a build and a runtime stage')
  t.match(text, /npm ci --omit=dev --ignore-scripts/, 'runtime: production dependencies only, no prepare script')
  t.match(text, /^USER node$/m, 'runs as the non-root node user')
  t.match(text, /^HEALTHCHECK [\s\S]*CMD \["node", "-e", "fetch\('http:\/\/127\.0\.0\.1:' .*\/healthz'\)/m, 'healthcheck on /healthz with node')
  const instructions = text.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n')
  t.notMatch(instructions, /curl|wget/, 'no curl in the slim image')

  // The image serves the repository's gateway.yaml on 0.0.0.0: without the operator's own secrets
  // it exits with the message naming each variable (fail closed), with them it starts.
  t.match(text, /^COPY gateway\.yaml \/etc\/portcullis\/gateway\.yaml$/m)
  const imageEnv = Object.fromEntries([...(/^ENV PORTCULLIS_HOST=.*$/m.exec(text)?.[0] ?? '').slice(4).matchAll(/([A-Z_]+)=(\S+)/g)].map((m) => [m[1], m[2]]))
  t.equal(imageEnv.PORTCULLIS_HOST, '0.0.0.0')
  const shipped = parse(readFileSync(join(ROOT, 'gateway.yaml'), 'utf8'))
  t.same(problemsOf(shipped, imageEnv), [
    'jwt.secret: is the published demo secret; set JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)',
    'users[0].password: is a published demo password; set DEMO_PASSWORD to a password of your own (or write passwordHash from `portcullis hash-password`)',
    'users[1].password: is a published demo password; set READER_PASSWORD to a password of your own (or write passwordHash from `portcullis hash-password`)'
  ], 'docker run without secrets: refused')
  t.match(text, /JWT_SECRET[\s\S]*DEMO_PASSWORD[\s\S]*READER_PASSWORD/, 'the Dockerfile\'s comments say what to set')
  t.same(problemsOf(shipped, { ...imageEnv, JWT_SECRET: 'k'.repeat(48), DEMO_PASSWORD: 'own-demo-pw', READER_PASSWORD: 'own-reader-pw' }), [], 'with them: starts')
})

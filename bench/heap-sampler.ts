/**
 * Preloaded into the gateway by the soak test (`node --import …/heap-sampler.js`): appends
 * process.memoryUsage() as one JSON line to $BENCH_HEAP_FILE every $BENCH_HEAP_INTERVAL_MS
 * (default 1000). No endpoint, no dependency on /metrics; the timer never keeps the process up.
 */
import { appendFileSync } from 'node:fs'

const file = process.env.BENCH_HEAP_FILE
const interval = Number(process.env.BENCH_HEAP_INTERVAL_MS ?? 1000)

if (file !== undefined && file !== '') {
  const sample = (): void => {
    const m = process.memoryUsage()
    try {
      appendFileSync(file, JSON.stringify({ t: Date.now(), rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external }) + '\n')
    } catch { /* the soak test is gone */ }
  }
  sample()
  setInterval(sample, interval).unref()
}

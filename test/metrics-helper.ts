/** Reading the Prometheus text exposition in tests (test/dashboard.test.ts, test/upstream-metrics.test.ts). */

/** One sample of the text exposition: `name{labels} value`. */
export interface Sample { name: string, labels: Record<string, string>, value: number }

export function samples (text: string): Sample[] {
  const found: Sample[] = []
  for (const [, name, labels, value] of text.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/gm)) {
    const parsed: Record<string, string> = {}
    for (const [, k, v] of (labels ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) parsed[k] = v
    found.push({ name, labels: parsed, value: Number(value) })
  }
  return found
}

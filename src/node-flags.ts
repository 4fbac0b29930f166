/**
 * The Node flags the gateway runs with, in one place. The CLI's shebang and the image's
 * ENTRYPOINT start `node` with them, the benchmark starts every Portcullis process with them, and
 * `portcullis start --workers N` hands them to each worker whose primary was started without them
 * (test/node-flags.test.ts checks that all of these agree).
 *
 * `--max-semi-space-size=32`: V8's young generation may grow to 32 MB per semi-space instead of
 * Node 20's 16. With everything on, the ≈ 50 requests in flight hold a megabyte or two of
 * request-scoped objects, and every scavenge copies (the second time, promotes) whatever is alive
 * then; a young generation twice as large scavenges half as often. Measured as 8 fresh pairs of
 * processes (one process's GC runs in one of two modes, so one pair says little), portcullis-full,
 * CPU per request with the flag ÷ without: GET 0.92× (quartiles 0.89–0.96), POST 0.98×
 * (0.93–1.06); RSS under load about 25 MB more (bench/PROFILE.md, "Node flags"). It can only be
 * given at start: V8 sizes its heap once.
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32']

/**
 * `execArgv` with each of NODE_FLAGS added unless `execArgv` or NODE_OPTIONS already sets that
 * option (the operator's value wins).
 */
export function withNodeFlags (execArgv: readonly string[], nodeOptions: string = process.env.NODE_OPTIONS ?? ''): string[] {
  // NODE_OPTIONS may quote its values ("--max-semi-space-size=8"), as tap and some launchers write it.
  const given = [...execArgv, ...nodeOptions.split(/\s+/).map((o) => o.replace(/^"|"$/g, ''))].map(optionName)
  const out = [...execArgv]
  for (const flag of NODE_FLAGS) if (!given.includes(optionName(flag))) out.push(flag)
  return out
}

/** `--max-semi-space-size=32` → `--max-semi-space-size` (V8 also takes underscores). */
function optionName (arg: string): string {
  const eq = arg.indexOf('=')
  return (eq === -1 ? arg : arg.slice(0, eq)).replaceAll('_', '-')
}

/** Helpers of the config tests (config, config-errors, cli): the problems parseConfig reports, and files in a temporary folder. */
import type { Test } from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, parseConfig } from '../src/config.js'

/** The problems parseConfig reports for `raw` with `env`, or [] when it is valid. */
export function configProblems (raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(raw, { env })
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

/** A temporary folder, removed when `t` ends, and a function that writes a file in it and returns its path. */
export function tempFolder (t: Test, prefix: string): { dir: string, file: (name: string, text: string) => string } {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return {
    dir,
    file (name: string, text: string): string {
      const path = join(dir, name)
      writeFileSync(path, text)
      return path
    }
  }
}

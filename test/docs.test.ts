/**
 * The generated pages (docs/configuration.md, docs/errors.md) are what `npm run docs` writes
 * today: the generator runs in-process, into memory, and each committed page must equal its
 * output. Also: every key of the config schema has a description, and every page the README
 * and the docs link to exists.
 */
import t from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { configKeys, generatedDocs, projectRoot, renderConfigurationDoc, renderErrorsDoc, typeOf } from '../src/docs-gen.js'
import { ERRORS } from '../schemas/errors.js'

const ROOT = join(import.meta.dirname, '..')

t.test('the committed generated pages are what `npm run docs` writes', async (t) => {
  for (const [path, text] of Object.entries(await generatedDocs(ROOT))) {
    const committed = existsSync(join(ROOT, path)) ? readFileSync(join(ROOT, path), 'utf8') : ''
    t.ok(committed === text, `${path} is current (run \`npm run docs\` and commit the result)`)
  }
})

t.test('every config key has a description, and the reference lists it with its default', async (t) => {
  const keys = configKeys()
  t.ok(keys.length > 100, `${keys.length} key paths`)
  for (const key of keys) t.not(key.description.trim(), '', `${key.path} has a description`)
  const page = renderConfigurationDoc()
  t.match(page, /\| `server\.timeouts\.headers` \| duration \| `10s` \|/, 'a nested key, its type and default')
  t.match(page, /\| `routes\[\]\.upstream` \| string \\\| \(string \\\| object\)\[\] \| required \|/, 'a required key of a list item (a union type spelled out)')
  t.match(page, /\| `server\.headersWithUnderscores` \| "drop" \\\| "reject" \\\| "allow" \| `drop` \|/, 'the allowed values')
  t.match(page, /\| `routes\[\]\.ipFilter` \|[^\n]*its keys are those of `ipFilter`/, 'a schema used twice is expanded once')
  t.equal(typeOf({ type: 'integer', minimum: 1 }), 'integer ≥ 1')
  t.equal(typeOf({ type: 'number', exclusiveMinimum: 0 }), 'number > 0')
})

t.test('the errors page lists every code with its status, type, title and when', async (t) => {
  const page = renderErrorsDoc()
  const rows = [...page.matchAll(/^\| `(GW_ERR_[A-Z_]+)` \| ([0-9]{3}) \| `(urn:portcullis:problem:[a-z-]+)` \| ([^|]+) \| (.+) \|$/gm)]
  t.equal(rows.length, Object.keys(ERRORS).length, 'one row per code')
  for (const [, code, status, , title, when] of rows) {
    const def = ERRORS[code as keyof typeof ERRORS]
    t.equal(Number(status), def.status, `${code}: status`)
    t.equal(title.trim(), def.title, `${code}: title`)
    t.ok(when.trim().length > 10, `${code}: says when`)
  }
})

t.test('the project root is found from src/ and from dist/src/', async (t) => {
  t.equal(projectRoot(join(ROOT, 'src')), ROOT)
  t.equal(projectRoot(join(ROOT, 'dist', 'src')), ROOT)
  t.throws(() => projectRoot('/'), /no package\.json/)
})

/** Relative links `[text](target)` of a markdown file, without their #fragment. */
function relativeLinks (file: string): string[] {
  const text = readFileSync(file, 'utf8').replace(/```[\s\S]*?```/g, '')
  return [...text.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1].split('#')[0])
    .filter((target) => target !== '' && !/^[a-z]+:/i.test(target))
}

t.test('every relative link of the README and docs/ points at a file that exists', async (t) => {
  const pages = ['README.md', 'SECURITY.md', 'CONTRIBUTING.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)]
  for (const page of pages) {
    for (const target of relativeLinks(join(ROOT, page))) {
      const resolved = join(dirname(page), target)
      t.ok(existsSync(join(ROOT, resolved)), `${page} → ${target}`)
    }
  }
})

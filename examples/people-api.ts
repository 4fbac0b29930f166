/**
 * A small stand-in for the DRF example: an in-memory `people` resource with DRF's shapes
 * (page-number pagination, APPEND_SLASH redirects, `{"field": ["message"]}` errors).
 * `npm start` runs it behind the gateway so the README's curl examples work with no Python.
 * The real DRF app lives in examples/drf.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'

interface Person { id: number, name: string, age: number }

const PAGE_SIZE = 10

export function createPeopleApi (): Server {
  const people = new Map<number, Person>()
  let nextId = 1
  for (const [name, age] of [['Ada Lovelace', 36], ['Alan Turing', 41], ['Grace Hopper', 85]] as const) {
    people.set(nextId, { id: nextId, name, age }); nextId++
  }

  function send (res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
    const text = body === undefined ? '' : JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
    res.end(text)
  }

  function readJson (req: IncomingMessage): Promise<unknown> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        try { resolve(JSON.parse(Buffer.concat(chunks).toString('utf8'))) } catch { resolve(undefined) }
      })
    })
  }

  function check (body: unknown, partial: boolean): Record<string, string[]> | Omit<Person, 'id'> {
    const errors: Record<string, string[]> = {}
    const b = (body ?? {}) as Record<string, unknown>
    if (b.name !== undefined || !partial) {
      if (typeof b.name !== 'string' || b.name.length < 1 || b.name.length > 100) errors.name = ['A valid name (1..100 characters) is required.']
    }
    if (b.age !== undefined || !partial) {
      if (typeof b.age !== 'number' || !Number.isInteger(b.age) || b.age < 0 || b.age > 150) errors.age = ['A valid integer from 0 to 150 is required.']
    }
    return Object.keys(errors).length > 0 ? errors : { name: b.name as string, age: b.age as number }
  }

  return createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://upstream')
    const m = /^\/api\/people(?:\/([0-9]+))?(\/)?$/.exec(url.pathname)
    if (m === null) return send(res, 404, { detail: 'Not found.' })
    const [, id, slash] = m
    if (slash === undefined) {
      // Django's APPEND_SLASH: a relative redirect to the same path with a slash.
      return send(res, 301, undefined, { location: url.pathname + '/' + url.search })
    }
    const host = req.headers['x-forwarded-host'] ?? req.headers.host ?? 'localhost'
    const proto = req.headers['x-forwarded-proto'] ?? 'http'
    if (id === undefined) {
      if (req.method === 'GET' || req.method === 'HEAD') {
        const page = Math.max(1, Number(url.searchParams.get('page') ?? '1') || 1)
        const all = [...people.values()]
        const results = all.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE)
        const link = (p: number): string => `${String(proto)}://${String(host)}/api/people/?page=${p}`
        return send(res, 200, {
          count: all.length,
          next: page * PAGE_SIZE < all.length ? link(page + 1) : null,
          previous: page > 1 ? link(page - 1) : null,
          results
        })
      }
      if (req.method === 'POST') {
        const result = check(await readJson(req), false)
        if (!('name' in result && typeof result.name === 'string' && 'age' in result)) return send(res, 400, result)
        const person = { id: nextId++, ...(result as Omit<Person, 'id'>) }
        people.set(person.id, person)
        return send(res, 201, person)
      }
      return send(res, 405, { detail: `Method "${req.method ?? ''}" not allowed.` }, { allow: 'GET, POST, HEAD, OPTIONS' })
    }
    const person = people.get(Number(id))
    if (person === undefined) return send(res, 404, { detail: 'No Person matches the given query.' })
    switch (req.method) {
      case 'GET': case 'HEAD': return send(res, 200, person)
      case 'DELETE': people.delete(person.id); return send(res, 204)
      case 'PUT': case 'PATCH': {
        const result = check(await readJson(req), req.method === 'PATCH')
        if ('name' in result || 'age' in result) {
          if (Array.isArray((result as Record<string, unknown>).name) || Array.isArray((result as Record<string, unknown>).age)) return send(res, 400, result)
        }
        Object.assign(person, Object.fromEntries(Object.entries(result).filter(([, v]) => v !== undefined)))
        return send(res, 200, person)
      }
      default: return send(res, 405, { detail: `Method "${req.method ?? ''}" not allowed.` })
    }
  })
}

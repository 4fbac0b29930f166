/**
 * The generated request id: a version 4 UUID drawn from the secure random source in batches
 * (plugins/core/request-id.ts), unique across batch boundaries; a safe id the client gives is kept.
 */
import t from 'tap'
import type { IncomingMessage } from 'node:http'
import { requestId, uuid } from '../plugins/core/request-id.js'

const V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

t.test('uuid: RFC 9562 version 4 text, unique, random in every free position, across batches', async (t) => {
  const ids = Array.from({ length: 1000 }, () => uuid()) // almost 8 batches of 128
  t.equal(ids.filter((id) => V4.test(id)).length, 1000, 'every id is a v4 UUID')
  t.equal(new Set(ids).size, 1000, 'no id twice')
  for (let i = 0; i < 36; i++) {
    const seen = new Set(ids.map((id) => id[i]))
    if ([8, 13, 18, 23].includes(i)) t.same([...seen], ['-'], `position ${i} is a dash`)
    else if (i === 14) t.same([...seen], ['4'], 'the version')
    else if (i === 19) t.ok(seen.size === 4, 'the variant takes its four values')
    else t.ok(seen.size === 16, `position ${i} takes all 16 digits`)
  }
})

t.test('requestId: a safe given id is kept, anything else gets a fresh UUID', async (t) => {
  const req = (id?: string | string[]): IncomingMessage => ({ headers: id === undefined ? {} : { 'x-request-id': id } }) as unknown as IncomingMessage
  t.equal(requestId(req('req-42_A.b')), 'req-42_A.b')
  for (const given of [undefined, 'a'.repeat(65), 'has space', ['one', 'two'], '']) {
    const id = requestId(req(given as string))
    t.match(id, V4, `${JSON.stringify(given)}: generated`)
    t.not(id, requestId(req(given as string)), 'and fresh each time')
  }
})

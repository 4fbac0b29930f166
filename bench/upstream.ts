/**
 * The benchmark's upstream: a tiny node:http server on 127.0.0.1, keep-alive on.
 *   GET  any path → 200 `{"id":1,"name":"Ada Lovelace","age":36}`
 *   POST any path → 200 with the JSON body it received, echoed back
 * Usage: node dist/bench/upstream.js PORT [ADDRESSES] — prints `listening PORT` once it listens,
 * and exits when its stdin closes (so it never outlives the runner that started it). ADDRESSES
 * (default 1): also listen on 127.0.0.2, 127.0.0.3… with the same port, so a route balanced over
 * that many origins is served by this one process (npm run ab -- --head-targets N).
 */
import { createServer } from 'node:http'

const GET_BODY = JSON.stringify({ id: 1, name: 'Ada Lovelace', age: 36 })
const getBody = Buffer.from(GET_BODY)

function handle (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
  if (req.method === 'GET' || req.method === 'HEAD') {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': getBody.length })
    res.end(req.method === 'HEAD' ? undefined : getBody)
    return
  }
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    const body = chunks.length === 0 ? Buffer.from('{}') : Buffer.concat(chunks)
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    res.end(body)
  })
  req.on('error', () => { res.destroy() })
}

const server = createServer(handle)
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.requestTimeout = 0

const port = Number(process.argv[2] ?? 0)
const addresses = Math.max(1, Number(process.argv[3] ?? 1))
server.listen(port, '127.0.0.1', () => {
  const address = server.address()
  const bound = typeof address === 'object' && address !== null ? address.port : port
  for (let i = 2; i <= addresses; i++) {
    const more = createServer(handle)
    more.keepAliveTimeout = server.keepAliveTimeout
    more.headersTimeout = server.headersTimeout
    more.requestTimeout = 0
    more.listen(bound, `127.0.0.${i}`)
  }
  process.stdout.write(`listening ${bound}\n`)
})
process.stdin.resume()
process.stdin.on('end', () => process.exit(0))
process.stdin.on('error', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))

/**
 * The floor a Node.js gateway stands on: node:http's server and an undici Pool, and nothing
 * else — no framework, no hooks, no logging, no header policy beyond dropping hop-by-hop
 * headers. Any gateway built on Node's HTTP server and undici (Portcullis, @fastify/http-proxy,
 * fast-gateway) costs at least this per request, so its req/s is the ceiling for all of them
 * in the benchmark's topology (see bench/PROFILE.md).
 * Usage: node dist/bench/node-floor.js UPSTREAM_URL PORT — prints `listening PORT`, exits when
 * its stdin closes.
 */
import { createServer } from 'node:http'
import { Pool, type Dispatcher } from 'undici'

const [upstream, portArg] = process.argv.slice(2)
if (upstream === undefined) {
  process.stderr.write('usage: node-floor UPSTREAM_URL [PORT]\n')
  process.exit(2)
}
const pool = new Pool(upstream, { connections: 128, pipelining: 1 })
const host = new URL(upstream).host
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'host', 'te', 'upgrade', 'proxy-connection'])

const server = createServer((req, res) => {
  const headers: string[] = []
  const raw = req.rawHeaders
  for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1])
  headers.push('host', host)
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
  const handler: Dispatcher.DispatchHandler = {
    onConnect () {},
    onHeaders (status, rawHeaders, resume) {
      const out: string[] = []
      for (let i = 0; i < rawHeaders.length; i += 2) {
        const name = rawHeaders[i].toString('latin1')
        if (!HOP.has(name.toLowerCase())) out.push(name, rawHeaders[i + 1].toString('latin1'))
      }
      res.writeHead(status, out)
      res.on('drain', resume)
      return true
    },
    onData (chunk) { return res.write(chunk) },
    onComplete () { res.end() },
    onError () {
      if (res.headersSent) res.destroy()
      else { res.statusCode = 502; res.end() }
    }
  }
  pool.dispatch({ path: req.url ?? '/', method: req.method as Dispatcher.HttpMethod, headers, body: hasBody ? req : null }, handler)
})
server.keepAliveTimeout = 120_000
server.listen(Number(portArg ?? 0), '127.0.0.1', () => {
  const address = server.address()
  process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : String(portArg)}\n`)
})
process.stdin.resume()
process.stdin.on('end', () => process.exit(0))
process.stdin.on('error', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))

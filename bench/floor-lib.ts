/**
 * What bench/node-floor.ts and bench/fastify-floor.ts share: the smallest correct forwarding
 * (hop-by-hop headers dropped both ways) on an undici Pool, and the way every bench server
 * script ends with the runner that started it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Pool, type Dispatcher } from 'undici'

const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'host', 'te', 'upgrade', 'proxy-connection'])

/** `forward(req, res, onStart)`: dispatches to the upstream; `onStart` runs before the response head is written. */
export function floorForwarder (upstream: string): (req: IncomingMessage, res: ServerResponse, onStart?: () => void, onFail?: () => void) => void {
  const pool = new Pool(upstream, { connections: 128, pipelining: 1 })
  const host = new URL(upstream).host
  return (req, res, onStart, onFail) => {
    const headers: string[] = []
    const raw = req.rawHeaders
    for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1])
    headers.push('host', host)
    const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
    const handler: Dispatcher.DispatchHandler = {
      onConnect () {},
      onHeaders (status, rawHeaders, resume) {
        onStart?.()
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
        else if (onFail !== undefined) onFail()
        else { res.statusCode = 502; res.end() }
      }
    }
    pool.dispatch({ path: req.url ?? '/', method: req.method as Dispatcher.HttpMethod, headers, body: hasBody ? req : null }, handler)
  }
}

/** Prints `listening PORT` for the runner, and exits when the runner closes our stdin (or on SIGTERM). */
export function announceAndFollowParent (port: number): void {
  process.stdout.write(`listening ${port}\n`)
  process.stdin.resume()
  process.stdin.on('end', () => process.exit(0))
  process.stdin.on('error', () => process.exit(0))
  process.on('SIGTERM', () => process.exit(0))
}

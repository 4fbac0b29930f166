/**
 * Raw HTTP/1.1 over node:net, for the tests that send what fetch and undici would never send
 * (unnormalised paths, broken framing): the bytes go out exactly as written.
 */
import { connect } from 'node:net'
import { once } from 'node:events'

export interface RawResponse { status: number, headers: Record<string, string>, body: string }

/** Sends `raw` as it is on a new connection and reads the whole answer (the gateway closes). */
export async function sendRaw (port: number, raw: string | Buffer): Promise<RawResponse> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  socket.on('error', () => {})
  socket.write(raw)
  await Promise.race([once(socket, 'close'), new Promise((resolve) => setTimeout(resolve, 5000))])
  socket.destroy()
  const text = Buffer.concat(chunks).toString('latin1')
  const at = text.indexOf('\r\n\r\n')
  const head = at === -1 ? text : text.slice(0, at)
  const [statusLine, ...lines] = head.split('\r\n')
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
  }
  return { status: Number(/^HTTP\/1\.1 ([0-9]{3}) /.exec(statusLine)?.[1] ?? 0), headers, body: at === -1 ? '' : text.slice(at + 4) }
}

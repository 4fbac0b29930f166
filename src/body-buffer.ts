/**
 * Request buffering (routes[].requestBuffering, on by default; nginx's `proxy_request_buffering
 * on`): the whole request body is read before the upstream is contacted, so a client that uploads
 * one byte a second holds a gateway socket and nothing else — never an upstream connection.
 *
 * A body up to `server.requestBuffer` bytes stays in memory; a larger one is written to a
 * temporary file (mode 0600, in a folder of its own made on first use and removed at close) and
 * sent from there. Every byte held, in memory or on disk, is counted against one budget per
 * gateway (`server.requestBufferTotal`): a body that would pass it is refused with 503. The
 * generations of a live reload share one BodyBuffers (src/app.ts takes it from the shared
 * objects, plugins/core/shared.ts): one budget, and the folder removed when the last one closes.
 *
 * Written here rather than taken from a library: the spooling libraries on npm (multer's disk
 * storage, busboy, raw-body) either parse multipart or keep the whole body in memory; what a
 * gateway needs — memory, then a file, under a shared byte budget, with backpressure — is the
 * 150 lines below.
 */
import { mkdtempSync, rmSync, createWriteStream, createReadStream, unlink, type WriteStream } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { IncomingMessage } from 'node:http'
import type { Readable } from 'node:stream'
import { BodyError, BodyTooLarge } from '../plugins/validation/json-body.js'

/** The gateway's byte budget for buffered bodies, and the folder their files go to (shared across a reload). */
export class BodyBuffers {
  used = 0
  private next = 0
  private dir: string | null = null

  constructor (readonly total: number, private readonly parent: string = tmpdir()) {}

  /** Counts `bytes` against the budget; false (and nothing counted) when it would pass it. */
  reserve (bytes: number): boolean {
    if (this.used + bytes > this.total) return false
    this.used += bytes
    return true
  }

  release (bytes: number): void {
    this.used -= bytes
  }

  /** A new file name in the gateway's own folder (made on first use, mode 0700). */
  file (): string {
    this.dir ??= mkdtempSync(join(this.parent, 'portcullis-body-'))
    return join(this.dir, String(this.next++))
  }

  close (): void {
    if (this.dir !== null) rmSync(this.dir, { recursive: true, force: true })
    this.dir = null
  }
}

/** The budget is spent: the gateway holds as many body bytes as it may (503, Retry-After). */
export class BuffersFull extends BodyError {
  constructor () { super('busy', 'The gateway is holding too many request bodies; retry shortly.') }
}

/** A buffered body: in memory, or in a file. `release()` gives its bytes back and removes the file. */
export interface BufferedBody {
  readonly size: number
  /** The bytes, when the body stayed in memory. */
  readonly bytes: Buffer | null
  /** A fresh stream of the file's bytes, when it did not. */
  open: () => Readable
  release: () => void
}

/**
 * Reads the whole body of `raw` and calls `done` once: with the buffered body, or with a
 * BodyError (over `limit`, broken off, over the budget, or the file could not be written), in
 * which case nothing is held any more. `done` must not throw: it runs inside a stream event.
 */
export function bufferBody (
  raw: IncomingMessage,
  limit: number,
  memory: number,
  buffers: BodyBuffers,
  done: (err: BodyError | null, body: BufferedBody | null) => void
): void {
  let chunks: Buffer[] | null = []
  let size = 0
  let held = 0
  let file: WriteStream | null = null
  let path = ''
  let settled = false

  const releaseAll = (): void => {
    buffers.release(held)
    held = 0
    if (file !== null) {
      file.destroy()
      unlink(path, ignore)
      file = null
    }
  }
  const fail = (err: BodyError): void => {
    if (settled) return
    settled = true
    chunks = null
    raw.pause()
    releaseAll()
    done(err, null)
  }
  const finish = (): void => {
    if (settled) return
    settled = true
    let released = false
    const total = size
    const keep = held
    const release = (): void => {
      if (released) return
      released = true
      buffers.release(keep)
      if (path !== '') unlink(path, ignore)
    }
    if (file === null) {
      const all = chunks as Buffer[]
      chunks = null
      const bytes = all.length === 1 ? all[0] : Buffer.concat(all, total)
      done(null, { size: total, bytes, open: () => { throw new Error('in memory') }, release })
    } else {
      const name = path
      done(null, { size: total, bytes: null, open: () => createReadStream(name), release })
    }
  }

  raw.on('data', (chunk: Buffer) => {
    if (settled) return
    size += chunk.length
    if (size > limit) { fail(new BodyTooLarge(limit)); return }
    if (!buffers.reserve(chunk.length)) { fail(new BuffersFull()); return }
    held += chunk.length
    if (file === null) {
      (chunks as Buffer[]).push(chunk)
      if (size <= memory) return
      // Past the memory threshold: everything so far, and the rest, goes to a file.
      path = buffers.file()
      file = createWriteStream(path, { flags: 'wx', mode: 0o600 })
      file.on('error', () => fail(new BodyError('io', 'The request body could not be buffered.')))
      file.on('drain', () => { if (!settled) raw.resume() })
      for (const c of chunks as Buffer[]) file.write(c)
      chunks = []
      if (file.writableNeedDrain) raw.pause()
      return
    }
    if (!file.write(chunk)) raw.pause()
  })
  raw.on('end', () => {
    if (settled) return
    if (file === null) { finish(); return }
    const writing = file
    writing.end(() => { if (file === writing) finish() })
  })
  raw.on('error', () => { fail(new BodyError('aborted', 'The request body ended before it was complete.')) })
  raw.on('close', () => { if (!raw.complete) fail(new BodyError('aborted', 'The request body ended before it was complete.')) })
}

function ignore (): void {}

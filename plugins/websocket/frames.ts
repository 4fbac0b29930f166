/**
 * Just enough of RFC 6455 §5.2 to know where frames begin, never to change one: a tunnel passes
 * the bytes as they come and feeds them here, so that when it must close a side itself (idle,
 * shutdown, the other side dropped) it knows whether it stands between two frames — where a close
 * frame of its own may go — or inside one, where the only clean thing left is to close the socket.
 *
 * Not `ws`'s Receiver: it decodes every frame (unmasks, inflates, buffers messages) to hand
 * them to an application; this reads 2–14 header bytes a frame and skips payloads by arithmetic.
 */
import { randomBytes } from 'node:crypto'

const OPCODE_CLOSE = 0x8

export class FrameTracker {
  /** Payload bytes of the current frame still to come. */
  private left = 0
  /** Header bytes of the next frame read so far (a header can be split across chunks). */
  private readonly header = Buffer.alloc(14)
  private have = 0
  /** A close frame passed (its sender will send no more frames). */
  closeSeen = false

  /** Whether the bytes so far end exactly at a frame's end. */
  atBoundary (): boolean { return this.left === 0 && this.have === 0 }

  feed (chunk: Buffer): void {
    let i = 0
    while (i < chunk.length) i = this.step(chunk, i)
  }

  /**
   * Feeds `chunk` up to the end of the frame under way: the number of its bytes that end that
   * frame (0 when already between frames), or -1 when the whole chunk was fed and the frame goes on.
   */
  feedToBoundary (chunk: Buffer): number {
    let i = 0
    while (!this.atBoundary()) {
      if (i === chunk.length) return -1
      i = this.step(chunk, i)
    }
    return i
  }

  /** Consumes, from `chunk[i]`, the current frame's payload bytes there, or one header byte: the next index. */
  private step (chunk: Buffer, i: number): number {
    if (this.left > 0) {
      const skip = Math.min(this.left, chunk.length - i)
      this.left -= skip
      return i + skip
    }
    this.header[this.have++] = chunk[i]
    if (this.have < 2) return i + 1
    const len7 = this.header[1] & 0x7f
    const size = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + ((this.header[1] & 0x80) !== 0 ? 4 : 0)
    if (this.have < size) return i + 1
    this.left = len7 === 126 ? this.header.readUInt16BE(2) : len7 === 127 ? Number(this.header.readBigUInt64BE(2)) : len7
    if ((this.header[0] & 0x0f) === OPCODE_CLOSE) this.closeSeen = true
    this.have = 0
    return i + 1
  }
}

/**
 * A close frame with a status code and no reason: masked (a random key) toward a server, as a
 * client's frames must be (RFC 6455 §5.3), unmasked toward a client.
 */
export function closeFrame (code: number, masked: boolean): Buffer {
  if (!masked) {
    const frame = Buffer.alloc(4)
    frame[0] = 0x80 | OPCODE_CLOSE
    frame[1] = 2
    frame.writeUInt16BE(code, 2)
    return frame
  }
  const frame = Buffer.alloc(8)
  frame[0] = 0x80 | OPCODE_CLOSE
  frame[1] = 0x80 | 2
  randomBytes(4).copy(frame, 2)
  frame[6] = (code >> 8) ^ frame[2]
  frame[7] = (code & 0xff) ^ frame[3]
  return frame
}

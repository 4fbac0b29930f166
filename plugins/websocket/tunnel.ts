/**
 * An accepted WebSocket: the client's socket and the upstream's, bytes passed both ways as they
 * come (backpressure: a side that cannot take more pauses the other), frames untouched — the
 * extensions both ends agreed on (permessage-deflate…) work because nothing in between reads them.
 *
 * The gateway closes a tunnel itself only when it must: no byte either way for idleTimeout, the
 * gateway shutting down, or one side gone without a close frame. A close frame of the gateway's
 * (1001 going away; 1014 bad gateway to the client when the upstream dropped) only ever goes
 * between two frames, never inside one: when the gateway closes (idle, shutdown) while a frame
 * toward a side is under way, the rest of that frame still passes, then the close frame; a frame
 * that has not ended within boundaryWaitMs, or whose sender is gone, cannot end, and that side's
 * socket is destroyed instead. A side that does not finish its close within closeWaitMs is
 * destroyed.
 */
import type { Duplex } from 'node:stream'
import type { FastifyBaseLogger } from 'fastify'
import { FrameTracker, closeFrame } from './frames.js'

/** Close codes (RFC 6455 §7.4.1; 1014 from the IANA registry). */
export const GOING_AWAY = 1001
export const BAD_GATEWAY = 1014

/** What a route's tunnels add up (read by /metrics at scrape time). */
export interface TunnelCounters {
  open: number
  /** Bytes from the client to the upstream. */
  bytesUp: number
  /** Bytes from the upstream to the client. */
  bytesDown: number
}

export interface TunnelOptions {
  idleTimeoutMs: number
  /** How long the sides get to finish a close the gateway started, before their sockets are destroyed. */
  closeWaitMs: number
  /** How long a close the gateway started waits for the frame under way toward a side to end (at most closeWaitMs). */
  boundaryWaitMs: number
  counters: TunnelCounters
  log: FastifyBaseLogger
  onClosed: (tunnel: Tunnel) => void
}

/** One direction: the bytes from `src` to `dst`, and the frames in them. */
class Direction {
  readonly tracker = new FrameTracker()
  /** `src` sent its last byte (FIN) or its socket closed. */
  ended = false
  /** The gateway sent `dst` a close frame of its own (or gave it up): nothing more from `src` is passed. */
  stopped = false
  /** The gateway is closing `dst` with this code once the frame under way ends (0: not closing). */
  closing = 0
  constructor (readonly src: Duplex, readonly dst: Duplex, readonly toUpstream: boolean) {}
}

function ignoreError (): void {}

export class Tunnel {
  private readonly up: Direction
  private readonly down: Direction
  private lastActive = performance.now()
  private idleTimer: NodeJS.Timeout | null = null
  private closeTimer: NodeJS.Timeout | null = null
  private boundaryTimer: NodeJS.Timeout | null = null
  private socketsClosed = 0
  private readonly startedAt = performance.now()
  /** Why the tunnel ended, for its log line. */
  private reason = ''
  over = false

  constructor (readonly client: Duplex, readonly upstream: Duplex, private readonly options: TunnelOptions) {
    this.up = new Direction(client, upstream, true)
    this.down = new Direction(upstream, client, false)
  }

  /** Passes `early` (what the client sent after its request head, before the 101) on, then everything else. */
  start (early: readonly Buffer[]): void {
    const { client, upstream } = this
    client.on('error', ignoreError) // a reset shows as 'close', handled there
    upstream.on('error', ignoreError)
    ;(client as { setTimeout?: (ms: number) => void }).setTimeout?.(0) // the server's socket timeout no longer applies
    for (const chunk of early) if (chunk.length > 0) this.pass(this.up, chunk, 'bytesUp')
    this.wire(this.up, 'bytesUp')
    this.wire(this.down, 'bytesDown')
    this.armIdle(this.options.idleTimeoutMs)
  }

  private pass (d: Direction, chunk: Buffer, counter: 'bytesUp' | 'bytesDown'): void {
    d.tracker.feed(chunk)
    this.options.counters[counter] += chunk.length
    if (!d.dst.write(chunk)) d.src.pause()
  }

  private wire (d: Direction, counter: 'bytesUp' | 'bytesDown'): void {
    const { src, dst } = d
    // `dst` may already be full of the early bytes: `src` waits for its 'drain' (a 'data'
    // listener would otherwise start the flow).
    if (dst.writableNeedDrain) src.pause()
    src.on('data', (chunk: Buffer) => {
      if (d.stopped) return
      this.lastActive = performance.now()
      if (d.closing === 0) { this.pass(d, chunk, counter); return }
      // Closing: the rest of the frame under way passes, then the close frame; nothing after it.
      const end = d.tracker.feedToBoundary(chunk)
      const part = end === -1 ? chunk : chunk.subarray(0, end)
      this.options.counters[counter] += part.length
      if (!dst.write(part)) src.pause()
      if (end !== -1) this.stop(d, d.closing)
    })
    dst.on('drain', () => { src.resume() })
    src.once('end', () => { this.ended(d, d.toUpstream ? 'client closed' : 'upstream closed') })
    src.once('close', () => {
      this.ended(d, d.toUpstream ? 'client socket closed' : 'upstream socket closed')
      if (++this.socketsClosed === 2) this.finish()
      else this.closeSoon()
    })
    if (!dst.writableNeedDrain) src.resume()
  }

  /**
   * `d.src` will send nothing more. With a close frame before it, that was a clean close: `d.dst`
   * is ended once its bytes are out. Without one the side dropped: `d.dst` gets a close frame of
   * the gateway's first, if it is between frames.
   */
  private ended (d: Direction, reason: string): void {
    if (d.ended) return
    d.ended = true
    if (this.reason === '') this.reason = reason
    if (d.closing !== 0) {
      // The gateway was waiting for the frame under way toward `d.dst` to end: it never will.
      d.closing = 0
      d.stopped = true
      d.dst.destroy()
      return
    }
    if (!d.tracker.closeSeen && !d.stopped && !d.dst.destroyed) {
      if (d.tracker.atBoundary()) d.dst.write(closeFrame(d.toUpstream ? GOING_AWAY : BAD_GATEWAY, d.toUpstream))
      else { d.dst.destroy(); return }
    }
    d.dst.end()
    this.closeSoon()
  }

  /**
   * The gateway closes the tunnel (idle, shutdown): a close frame to each side, then FIN — at once
   * where the bytes toward it stand between frames, else once the frame under way has passed
   * (within boundaryWaitMs, else its socket is destroyed).
   */
  close (code: number, reason: string): void {
    if (this.over) return
    if (this.reason === '') this.reason = reason
    for (const d of [this.up, this.down]) {
      if (d.stopped || d.closing !== 0 || d.dst.destroyed || d.dst.writableEnded) continue
      if (d.tracker.atBoundary()) { this.stop(d, code); continue }
      d.closing = code // the data listener passes the rest of the frame, then stop()
      if (this.boundaryTimer === null) {
        this.boundaryTimer = setTimeout(() => { this.giveUpFrames() }, this.options.boundaryWaitMs)
        this.boundaryTimer.unref()
      }
    }
    this.closeSoon()
  }

  /** Between frames toward `d.dst`: the gateway's close frame (unless its sender already sent one), FIN, and nothing more from `d.src`. */
  private stop (d: Direction, code: number): void {
    d.stopped = true
    d.closing = 0
    d.src.resume() // read on to the peer's FIN, dropping what it still sends
    if (d.dst.destroyed || d.dst.writableEnded) return
    if (d.tracker.closeSeen) d.dst.end() // a close of its own is already under way
    else d.dst.end(closeFrame(code, d.toUpstream))
  }

  /** The frames still under way when boundaryWaitMs ran out: no close frame can follow them, their sockets are destroyed. */
  private giveUpFrames (): void {
    for (const d of [this.up, this.down]) {
      if (d.closing === 0) continue
      d.stopped = true
      d.closing = 0
      d.dst.destroy()
    }
  }

  /** Whatever is still open when the sides had closeWaitMs to close is destroyed. */
  private closeSoon (): void {
    if (this.closeTimer !== null || this.over) return
    this.closeTimer = setTimeout(() => {
      this.client.destroy()
      this.upstream.destroy()
    }, this.options.closeWaitMs)
    this.closeTimer.unref()
  }

  private armIdle (ms: number): void {
    this.idleTimer = setTimeout(() => {
      const idle = performance.now() - this.lastActive
      if (idle >= this.options.idleTimeoutMs) this.close(GOING_AWAY, 'idle timeout')
      else this.armIdle(this.options.idleTimeoutMs - idle)
    }, Math.max(1, Math.ceil(ms)))
    this.idleTimer.unref()
  }

  private finish (): void {
    if (this.over) return
    this.over = true
    if (this.idleTimer !== null) clearTimeout(this.idleTimer)
    if (this.closeTimer !== null) clearTimeout(this.closeTimer)
    if (this.boundaryTimer !== null) clearTimeout(this.boundaryTimer)
    this.options.log.info({
      ms: Math.round(performance.now() - this.startedAt),
      reason: this.reason
    }, 'websocket tunnel closed')
    this.options.onClosed(this)
  }
}

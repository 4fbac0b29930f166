/**
 * The gateway's logging: one pino logger, an access line per request written without pino's
 * per-request machinery, and request loggers that cost nothing until a request logs something.
 *
 * Why not plain pino per request (bench/PROFILE.md, issue 8): with the access log on, pino's
 * per-request child logger, its serializer and redaction, and one `write(2)` per line were
 * ≈ 12 µs of the ≈ 125 µs a proxied request costs. Here:
 *  - lines gather in a `LineBuffer`, written when 3.5 KB have gathered or every
 *    `FLUSH_INTERVAL_MS`, and on close and at process exit: under load one `write(2)` carries
 *    ≈ 17 lines; a quiet gateway's lines appear within 100 ms;
 *  - the access line is built from fixed fields (`formatAccessLine`), the same JSON pino would
 *    write for them, with no redaction needed: it never carries headers or the query string;
 *  - `request.log` is a `LazyRequestLogger`: pino's child (bindings, redaction) is made the
 *    first time a request logs at an enabled level — most requests never do.
 */
import { hostname } from 'node:os'
import pino, { type Logger } from 'pino'

/** Longest a log line waits in the buffer when the gateway is quiet. */
export const FLUSH_INTERVAL_MS = 100
/**
 * Bytes gathered before a write (≈ 17 access lines). A write never exceeds PIPE_BUF (4096 on
 * Linux) unless one line does, so with `--workers N` sharing a pipe, one worker's batch is never
 * split by another's — the same guarantee as one write per line.
 */
export const FLUSH_BYTES = 3584
const PIPE_BUF = 4096

/**
 * Lines gathered in an array and handed to the destination as one string. (SonicBoom's own
 * `minLength` buffering appends to one growing string and measures its byte length on every
 * write: 1.6 µs per line against 0.7 here, in a 200 000-line loop.)
 */
export class LineBuffer {
  private lines: string[] = []
  private bytes = 0
  private readonly timer: NodeJS.Timeout
  private passThrough = false

  constructor (private readonly destination: { write: (chunk: string) => unknown }, intervalMs = FLUSH_INTERVAL_MS) {
    this.timer = setInterval(() => { this.flush() }, intervalMs).unref()
  }

  write (line: string): boolean {
    if (this.passThrough) {
      this.destination.write(line)
      return true
    }
    const size = Buffer.byteLength(line)
    if (this.bytes + size > PIPE_BUF) this.flush()
    this.lines.push(line)
    this.bytes += size
    if (this.bytes >= FLUSH_BYTES) this.flush()
    return true
  }

  /** Writes what is buffered. `done` is for pino's `logger.flush(cb)`, which waits for it. */
  flush (done?: (err?: Error) => void): void {
    if (this.lines.length > 0) {
      const batch = this.lines.length === 1 ? this.lines[0] : this.lines.join('')
      this.lines = []
      this.bytes = 0
      this.destination.write(batch)
    }
    done?.()
  }

  /** Writes what is buffered; from then on every line is written as it comes. */
  close (): void {
    this.flush()
    this.passThrough = true
    clearInterval(this.timer)
  }
}

export interface GatewayLogger {
  logger: Logger
  /** The buffer every line goes through (the access line is written into it directly). */
  lines: LineBuffer
  /** Writes what is buffered; later lines are written as they come (no buffering). */
  close: () => void
}

/**
 * The logger the gateway builds when it is not given one: JSON lines to `dest` (fd 1 by
 * default, or a file path), secrets redacted, buffered as described above. The destination
 * itself (SonicBoom, as pino's default) writes each batch synchronously and retries EAGAIN.
 */
export function createGatewayLogger (options: { level: string, redact: string[], dest?: number | string }): GatewayLogger {
  const destination = pino.destination({ dest: options.dest ?? 1, sync: true, mkdir: typeof options.dest === 'string' })
  const lines = new LineBuffer(destination)
  const logger = pino({ level: options.level, redact: { paths: options.redact, censor: '[redacted]' } }, lines)
  // A crash or process.exit() must not lose the lines still in the buffer.
  const onExit = (): void => { flushQuietly(lines) }
  process.on('exit', onExit)
  let closed = false
  return {
    logger,
    lines,
    close () {
      if (closed) return
      closed = true
      process.removeListener('exit', onExit)
      try { lines.close() } catch {}
    }
  }
}

function flushQuietly (lines: LineBuffer): void {
  try { lines.flush() } catch {}
}

/** The fields of an access line, in the order they are written. */
export interface AccessFields {
  reqId: string
  method: string
  ip: string
  route: string | null
  path: string
  status: number
  ms: number
  upstreamMs: number | null
  traceId: string | null
}

const PID = process.pid
const HOSTNAME = JSON.stringify(hostname())
const INFO = 30

/** Printable ASCII except `"` and a backslash: what JSON.stringify writes unchanged between its quotes. */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/
const LINE_START = '{"level":' + INFO + ',"time":'
const LINE_PROCESS = ',"pid":' + PID + ',"hostname":' + HOSTNAME + ',"reqId":"'
const LINE_END = ',"msg":"request completed"}\n'

/**
 * What pino writes for `logger.child({ reqId }).info(fields, 'request completed')`, built directly.
 * The usual line (every string plain) is one array joined: the string comes out flat, where a
 * chain of `+` made ≈ 25 intermediate strings and LineBuffer's byteLength then copied it flat once
 * more (1.85 KB of garbage per line against 1.1 KB, and ≈ 25 % less CPU in a 2·10⁶-line loop).
 */
export function formatAccessLine (fields: AccessFields, time: number = Date.now()): string {
  const { reqId, method, ip, route, path, traceId } = fields
  if (ip === null || route === null || !PLAIN.test(reqId) || !PLAIN.test(method) || !PLAIN.test(ip) || !PLAIN.test(route) ||
    !PLAIN.test(path) || (traceId !== null && !PLAIN.test(traceId))) return formatEscaped(fields, time)
  return [
    LINE_START, time, LINE_PROCESS, reqId, '","method":"', method, '","ip":"', ip, '","route":"', route, '","path":"', path,
    '","status":', fields.status, ',"ms":', fields.ms, ',"upstreamMs":', fields.upstreamMs === null ? 'null' : fields.upstreamMs,
    traceId === null ? ',"traceId":null' + LINE_END : ',"traceId":"' + traceId + '"' + LINE_END
  ].join('')
}

/** The same line for fields that need escaping (or are null). */
function formatEscaped (fields: AccessFields, time: number): string {
  return '{"level":' + INFO + ',"time":' + time + ',"pid":' + PID + ',"hostname":' + HOSTNAME +
    ',"reqId":' + JSON.stringify(fields.reqId) +
    ',"method":' + JSON.stringify(fields.method) +
    ',"ip":' + JSON.stringify(fields.ip) +
    ',"route":' + (fields.route === null ? 'null' : JSON.stringify(fields.route)) +
    ',"path":' + JSON.stringify(fields.path) +
    ',"status":' + fields.status +
    ',"ms":' + fields.ms +
    ',"upstreamMs":' + (fields.upstreamMs === null ? 'null' : fields.upstreamMs) +
    ',"traceId":' + (fields.traceId === null ? 'null' : JSON.stringify(fields.traceId)) +
    ',"msg":"request completed"}\n'
}

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'
type LogFn = (...args: unknown[]) => void

/**
 * `request.log`: the methods of a pino child with `bindings`, but the child is only made when a
 * line at an enabled level is logged. A disabled level costs one lookup, as with pino itself.
 */
export class LazyRequestLogger {
  private real: Logger | null = null

  constructor (private readonly parent: Logger, private readonly bindings: Record<string, unknown>) {}

  private materialize (): Logger {
    if (this.real === null) this.real = this.parent.child(this.bindings)
    return this.real
  }

  get level (): string { return (this.real ?? this.parent).level }
  set level (value: string) { this.materialize().level = value }

  isLevelEnabled (level: string): boolean { return (this.real ?? this.parent).isLevelEnabled(level) }

  fatal (...args: unknown[]): void { this.log('fatal', args) }
  error (...args: unknown[]): void { this.log('error', args) }
  warn (...args: unknown[]): void { this.log('warn', args) }
  info (...args: unknown[]): void { this.log('info', args) }
  debug (...args: unknown[]): void { this.log('debug', args) }
  trace (...args: unknown[]): void { this.log('trace', args) }
  silent (): void {}

  /** A child of the request's logger, its bindings (the request id) included. */
  child (bindings: Record<string, unknown>, options?: Record<string, unknown>): Logger {
    return this.materialize().child(bindings, options)
  }

  private log (level: Level, args: unknown[]): void {
    if (!(this.real ?? this.parent).isLevelEnabled(level)) return
    ;(this.materialize()[level] as LogFn)(...args)
  }
}

/** Fastify's `childLoggerFactory`: a lazy child unless the route sets its own level or serializers. */
export function lazyChildLoggerFactory (logger: Logger, bindings: Record<string, unknown>, options: Record<string, unknown>): Logger {
  if (hasKeys(options)) return logger.child(bindings, options) // a route's own level or serializers
  return new LazyRequestLogger(logger, bindings) as unknown as Logger
}

/** Object.keys(o).length > 0 without the array (this runs once per request). */
function hasKeys (o: Record<string, unknown>): boolean {
  for (const key in o) if (Object.hasOwn(o, key)) return true
  return false
}

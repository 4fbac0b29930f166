/**
 * Building blocks shared by the config schema and the plugins' option schemas.
 * Durations and sizes are written as strings in the config file and parsed once, at start.
 * Not `ms` 2.1 or `bytes` 3.1: on this grammar they give the same numbers in about the same time
 * (parseDuration 63 ns vs ms 86 ns, parseSize 70 ns vs bytes.parse 80 ns a call on an idle
 * machine, once per config value; `node --import=@swc-node/register/esm-register parse-bench.mts`,
 * script in the issue 14 report) and beyond it they accept what the patterns refuse (1.5h, -1s,
 * 2 days, 1.5MB), so they would add two dependencies and nothing else.
 */
import Type from 'typebox'

/** The methods a route can proxy (and a validation rule can name). */
export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const

export const DURATION_PATTERN = '^[0-9]+(ms|s|m|h)$'
export const SIZE_PATTERN = '^[0-9]+(b|kb|mb|gb)$'
/** routes[].hosts entries: a lower-case DNS name, or `*.` and one; no port, no trailing dot. */
export const HOST_PATTERN = '^(\\*\\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'

/** A duration string: `500ms`, `10s`, `15m`, `1h`. */
export function Duration (options: { default?: string, description?: string } = {}) {
  return Type.String({ pattern: DURATION_PATTERN, description: 'a duration: 500ms, 10s, 15m, 1h', ...options })
}
/** A size string: `512kb`, `1mb`. */
export function Size (options: { default?: string, description?: string } = {}) {
  return Type.String({ pattern: SIZE_PATTERN, description: 'a size: 512b, 512kb, 1mb, 1gb', ...options })
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 }

/** Milliseconds in a duration string that matched DURATION_PATTERN. */
export function parseDuration (value: string): number {
  const m = /^([0-9]+)(ms|s|m|h)$/.exec(value)
  if (m === null) throw new TypeError(`not a duration: ${value}`)
  return Number(m[1]) * DURATION_UNITS[m[2]]
}

/** Bytes in a size string that matched SIZE_PATTERN. */
export function parseSize (value: string): number {
  const m = /^([0-9]+)(b|kb|mb|gb)$/.exec(value)
  if (m === null) throw new TypeError(`not a size: ${value}`)
  return Number(m[1]) * SIZE_UNITS[m[2]]
}

/**
 * A phrase for each pattern, so that config errors read as sentences, not regexes. Keyed by the
 * pattern's exact text, written out here (the other schemas/*.ts import this file, so it cannot
 * import their constants); test/config-errors.test.ts fails when a pattern in the config schema
 * has no phrase here, or a phrase here belongs to no pattern.
 */
export const PATTERN_PHRASES: Record<string, string> = {
  [DURATION_PATTERN]: 'must be a duration such as 500ms, 10s, 15m or 1h',
  [SIZE_PATTERN]: 'must be a size such as 512kb or 1mb',
  [HOST_PATTERN]: 'must be a lower-case host name such as api.example.com, or *. and one such as *.example.com (letters, digits and - in labels of up to 63; no port, no trailing dot)',
  // Paths: routes[].prefix and tokenEndpoint.path; validate rules add {param} placeholders.
  '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/-]*$': 'must start with / and hold only letters, digits and the URL path characters - . _ ~ ! $ & \' ( ) * + , ; = : @ % /',
  '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/{}-]*$': 'must start with / and hold only letters, digits, {param} placeholders and the URL path characters - . _ ~ ! $ & \' ( ) * + , ; = : @ % /',
  '^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$': 'must be a path such as /metrics: it starts with /, does not end with /, and its segments hold only letters, digits and - . _ ~',
  // Names.
  '^[A-Za-z0-9_.-]{1,64}$': 'must be 1 to 64 letters, digits and - . _ (no spaces)',
  '^[A-Za-z0-9_.:@-]{1,64}$': 'must be 1 to 64 letters, digits and - . _ : @ (no spaces)',
  '^[A-Za-z0-9:_.-]{0,64}$': 'must be at most 64 letters, digits and - . _ : (no spaces)',
  // rateLimit.redis.sentinels and .cluster.
  '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9._-]+):[0-9]{1,5}$': 'must be host:port, such as redis-0.redis:6379, 10.0.0.5:26379 or [fd00::5]:6379',
  '^[^:\\x00-\\x1F\\x7F]+$': 'must not contain ":" or control characters',
  // RFC 9110 tokens: header names (apiKeyHeader, identityHeaders, cors, hideUpstreamHeaders), cookie names, methods.
  "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$": "must be a header name (an HTTP token): letters, digits and ! # $ % & ' * + . ^ _ ` | ~ - only, no spaces or \":\"",
  '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$': 'must be a scope such as people:read: printable ASCII without spaces, " or \\',
  '^[\\x20\\x21\\x23-\\x5B\\x5D-\\x7E]{1,64}$': 'must be 1 to 64 printable ASCII characters, without " or \\',
  '^(ip|consumer|header:[A-Za-z0-9!#$%&\'*+.^_`|~-]+)$': 'must be ip, consumer or header:<header name>, e.g. header:X-Tenant',
  '^(\\*|https?://[^/\\s]+)$': 'must be * or an origin such as https://app.example.com (scheme, host and port; no path, not even a trailing /)',
  '^[a-z-]+(, *[a-z-]+)*$': 'must be a Referrer-Policy such as no-referrer or strict-origin-when-cross-origin (or a comma-separated list of them)',
  '^(round-robin|least-requests|hash:(ip|header:[A-Za-z0-9!#$%&\'*+.^_`|~-]+))$': 'must be round-robin, least-requests, hash:ip or hash:header:<header name>, e.g. hash:header:X-User',
  '^/[A-Za-z0-9._~!$&\'()*+,;=:@%/?-]*$': 'must be an absolute path such as /healthz (it may have a ?query)',
  // routes[].scopes keys.
  '^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|\\*)$': 'must be a method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS) or * for every other method',
  // Credentials, written by the CLI's own commands.
  '^scrypt\\$[0-9]+\\$[0-9]+\\$[0-9]+\\$[A-Za-z0-9_-]+\\$[A-Za-z0-9_-]+$': 'must be an scrypt hash from `portcullis hash-password` (scrypt$N$r$p$salt$hash)',
  '^sha256\\$[0-9a-f]{64}$': 'must be sha256$ and 64 lowercase hex digits, from `portcullis api-key`'
}

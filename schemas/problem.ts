/** RFC 9457 problem details: the body of every response the gateway makes itself. */
import Type, { type Static } from 'typebox'

export const ProblemViolationSchema = Type.Object({
  pointer: Type.String({ description: 'JSON Pointer (RFC 6901) into the request part that failed' }),
  message: Type.String()
}, { additionalProperties: false })

export const ProblemSchema = Type.Object({
  type: Type.String({ description: 'urn:portcullis:problem:<code>' }),
  title: Type.String(),
  status: Type.Integer({ minimum: 400, maximum: 599 }),
  detail: Type.String(),
  instance: Type.String({ description: 'the request path, without the query string' }),
  requestId: Type.String(),
  errors: Type.Optional(Type.Array(ProblemViolationSchema))
}, { additionalProperties: false })

export type Problem = Static<typeof ProblemSchema>

export const PROBLEM_CONTENT_TYPE = 'application/problem+json; charset=utf-8'

/** One key as a JSON Pointer (RFC 6901) token: `~` → `~0`, `/` → `~1`. */
export function escapePointer (key: string): string {
  return key.includes('~') || key.includes('/') ? key.replaceAll('~', '~0').replaceAll('/', '~1') : key
}

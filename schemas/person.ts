/**
 * The seed's example request schema: a person as the people API creates it. The default
 * gateway.yaml validates `POST /api/people/` bodies with it (`body: Person`). Any TypeBox schema
 * exported from a module in schemas/ can be named this way in `routes[].validate`.
 */
import Type, { type Static } from 'typebox'

export const Person = Type.Object({
  name: Type.String({ description: 'full name' }),
  age: Type.Integer({ description: 'age in years' })
}, { additionalProperties: false, description: 'a person to create' })

/** A valid `Person` body, as TypeScript sees it. */
export type PersonBody = Static<typeof Person>

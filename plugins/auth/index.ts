/**
 * Authentication, authorization and what the upstream learns of the client's identity.
 */
import { gatewayStage, routeStage } from '../core/stage.js'
import authenticatePlugin, { authSchemes } from './authenticate.js'
import authorizePlugin from './authorize.js'
import { identityHeaderSource, routeStripHeaders } from './identity.js'
import tokenEndpointPlugin from './token-endpoint.js'

/** The gateway's schemes, built once and shared by every route: user table, JWT verifier and JWKS cache, API keys. */
export const schemes = gatewayStage({
  name: 'auth schemes',
  key: 'users, jwt, apiKeys',
  phase: 'onRequest',
  setup: ({ config }) => ({ config }),
  plugin: authSchemes
})

/** The route's schemes in order (basic, jwt, apiKey): 401 with a challenge for each when none passes. */
export const authenticate = routeStage({
  name: 'authenticate',
  key: 'routes[].auth',
  phase: 'onRequest',
  setup: ({ config, route }) => route.auth.length === 0 ? null : { config, route },
  plugin: authenticatePlugin
})

/** Scopes per route and method, and claim requirements: 403 when the identity lacks them. */
export const authorize = routeStage({
  name: 'authorize',
  key: 'routes[].scopes, routes[].require',
  phase: 'onRequest',
  setup: ({ config, route }) => route.auth.length === 0 ? null : { route, realm: config.authRealm },
  plugin: authorizePlugin
})

/**
 * The identity headers the upstream receives (`identityHeaders`), set at dispatch; the client's
 * own copies, and the credentials `routes[].forwardAuthorization` keeps back, never pass.
 */
export const identity = gatewayStage({
  name: 'identity headers',
  key: 'identityHeaders, routes[].forwardAuthorization',
  phase: 'handler',
  setup: ({ config }) => ({ config, headers: identityHeaderSource(config) }),
  forwarding: ({ config, headers }, { route }) => ({
    stripHeaders: routeStripHeaders(config, route),
    bearerOnlyAuthorization: route.forwardAuthorization === 'bearer',
    identityHeaders: headers
  })
})

/** POST /auth/token: the gateway's users trade their password for a JWT. */
export const tokenEndpoint = gatewayStage({
  name: 'token endpoint',
  key: 'tokenEndpoint',
  phase: 'handler',
  setup: ({ config }) => config.tokenEndpoint === undefined ? null : { config },
  plugin: tokenEndpointPlugin
})

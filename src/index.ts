/** The package entry: everything a user needs to embed or extend the gateway. */
export { loadConfig, parseConfig, ConfigError } from './config.js'
export { buildGateway, type BuildOptions } from './app.js'
export { startServer, type StartOptions, type RunningGateway } from './server.js'
export { createForwarder, type Forwarder, type ForwarderOptions, type ForwardExtras } from './forward.js'
export { GatewayError, ERRORS, type ErrorCode } from '../schemas/errors.js'
export type { GatewayConfig, RouteConfig, ServerConfig } from '../schemas/config.js'
export { GatewayConfigSchema } from '../schemas/config.js'
export type { Problem } from '../schemas/problem.js'
export { sendProblem } from '../plugins/core/problem.js'
// Exporting from plugins/auth/authenticate brings its declaration merging (`request.identity`) along.
export { AuthFailure, type Authenticator, type Identity } from '../plugins/auth/authenticate.js'
export { hashPasswordSync, hashApiKey } from '../plugins/auth/password-hash.js'
export { channels } from '../schemas/events.js'

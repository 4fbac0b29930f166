/**
 * Request validation: path, query, headers and JSON body against schemas compiled at start-up
 * (named TypeBox/JSON schemas, or an OpenAPI document).
 */
import { upstreamTargets } from '../../schemas/upstream.js'
import { parseSize } from '../../schemas/common.js'
import { routeStage } from '../core/stage.js'
import validatePlugin from './validate.js'

export const validate = routeStage({
  name: 'validate',
  key: 'routes[].validate',
  phase: 'preValidation',
  setup: ({ config, route, index }) => {
    if (route.validate === undefined) return null
    const upstream = upstreamTargets(route.upstream)[0].url
    return {
      validate: route.validate,
      at: `routes[${index}].validate`,
      routeName: route.name,
      prefix: route.prefix,
      upstreamPath: new URL(upstream).pathname.replace(/\/+$/, ''),
      bodyLimit: parseSize(route.bodyLimit ?? config.server.bodyLimit)
    }
  },
  plugin: validatePlugin
})

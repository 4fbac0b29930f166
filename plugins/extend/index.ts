/**
 * Extension points of the route pipeline: where your own plugins run (docs/plugins.md).
 */
import { routeStage } from '../core/stage.js'
import { placeOf, userPlugins, type PluginPlace } from './user-plugins.js'

function pluginsAt (at: PluginPlace) {
  return routeStage({
    name: `your plugins (${at})`,
    key: `routes[].plugins[].at: ${at}, buildGateway(config, { plugins })`,
    phase: 'onRequest',
    setup: ({ route, plugins }) => {
      const entries = route.plugins.filter((entry) => placeOf(entry) === at)
      const embedded = plugins.filter((p) => (p.at ?? 'afterAuth') === at)
      return entries.length === 0 && embedded.length === 0 ? null : { entries, embedded }
    },
    plugin: userPlugins
  })
}

/** After the edge checks and the per-IP limit: sees (and may refuse) requests before authentication. */
export const pluginsBeforeAuth = pluginsAt('beforeAuth')
/** After authorization, the per-consumer limit and body validation: `request.identity` is set. */
export const pluginsAfterAuth = pluginsAt('afterAuth')

export type { EmbeddedPlugin } from './user-plugins.js'

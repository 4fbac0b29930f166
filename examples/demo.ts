/**
 * `npm start`: the example people API on 127.0.0.1:8000 and the gateway on 127.0.0.1:8080 in
 * front of it, configured by ./gateway.yaml (or PORTCULLIS_CONFIG). Ctrl-C stops both.
 * In production run `portcullis start --config FILE` against your own upstream instead.
 */
import { once } from 'node:events'
import { loadConfig, ConfigError } from '../src/config.js'
import { startServer } from '../src/server.js'
import { createPeopleApi } from './people-api.js'

const upstreamPort = Number(process.env.PEOPLE_API_PORT ?? 8000)
const file = process.env.PORTCULLIS_CONFIG ?? 'gateway.yaml'
// gateway.yaml reads the API's URL from PEOPLE_API_URL: moving the API moves the route with it.
if (process.env.PEOPLE_API_PORT !== undefined && process.env.PEOPLE_API_URL === undefined) {
  process.env.PEOPLE_API_URL = `http://127.0.0.1:${upstreamPort}/api/people`
}

let config
try {
  config = loadConfig(file)
} catch (err) {
  process.stderr.write((err instanceof ConfigError ? err.message : String(err)) + '\n')
  process.exit(1)
}

const api = createPeopleApi()
api.listen(upstreamPort, '127.0.0.1')
try {
  await once(api, 'listening')
} catch (err) {
  process.stderr.write(`example people API: cannot listen on 127.0.0.1:${upstreamPort}: ${(err as Error).message} (set PEOPLE_API_PORT)\n`)
  process.exit(1)
}
process.stderr.write(`example people API on http://127.0.0.1:${upstreamPort}/api/people/\n`)

const { app, url } = await startServer(config, {
  setup (gateway) {
    gateway.addHook('onClose', async () => { api.closeAllConnections(); api.close() })
  }
})
app.log.info({ url }, `portcullis listening: try  curl ${url}/api/people/`)

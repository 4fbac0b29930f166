/**
 * An authorization plugin of your own, reading `request.identity` (README: "Writing an
 * authorization plugin of your own"). The caller names a tenant in a header; the request passes
 * only if the verified identity's claim lists that tenant. It runs in the route's scope after the
 * gateway's authentication and authorization, so `request.identity` is set when auth is on.
 *
 *   routes:
 *     - name: people
 *       auth: [jwt]
 *       plugins:
 *         - path: ./examples/plugins/tenant-guard.js
 *           options: { header: x-tenant, claim: tenants }
 *
 * Outside this repository, import GatewayError from 'portcullis'.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { GatewayError } from '../../schemas/errors.js'

export interface TenantGuardOptions {
  /** Request header naming the tenant. */
  header?: string
  /** Identity claim listing the caller's tenants. */
  claim?: string
}

async function tenantGuard (scope: FastifyInstance, opts: TenantGuardOptions): Promise<void> {
  const header = (opts.header ?? 'x-tenant').toLowerCase()
  const claim = opts.claim ?? 'tenants'
  scope.addHook('onRequest', async (request) => {
    const tenant = request.headers[header]
    if (typeof tenant !== 'string' || tenant === '') {
      throw new GatewayError('GW_ERR_BAD_REQUEST', `The ${header} header is required.`)
    }
    const allowed = request.identity?.claims[claim]
    if (!Array.isArray(allowed) || !allowed.includes(tenant)) {
      throw new GatewayError('GW_ERR_FORBIDDEN', `Not a member of tenant ${tenant}.`)
    }
    // Tell the upstream which tenant was checked.
    request.upstream = { ...request.upstream, headers: [...(request.upstream?.headers ?? []), ['x-checked-tenant', tenant]] }
  })
}

export default fp(tenantGuard, { name: 'tenant-guard', fastify: '5.x' })

# The Portcullis gateway. `docker build -t portcullis .`, then
#   docker run -p 8080:8080 --read-only --tmpfs /tmp \
#     -v $PWD/my-gateway.yaml:/etc/portcullis/gateway.yaml:ro portcullis
# The config must listen on 0.0.0.0 (server.host) to be reachable from outside the container.
# The gateway refuses to start on a non-loopback address with a published demo secret or password
# (and with an HS* secret under 32 bytes): the image fails closed until you give your own. With the
# built-in gateway.yaml that means all three of
#   docker run -p 8080:8080 -e JWT_SECRET="$(openssl rand -base64 48)" \
#     -e DEMO_PASSWORD=… -e READER_PASSWORD=… -e PEOPLE_API_URL=http://api:8000/api/people portcullis
# and otherwise it exits 1 naming each key to set (`jwt.secret: is the published demo secret; set
# JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)`).
#
# The base: node:22.23.2-bookworm-slim (Node 22 LTS on Debian 12), pinned by the digest of its
# multi-platform index as published in docker-library/repo-info, file
# repos/node/remote/22.23.2-bookworm-slim.md at commit 3179cb4d576b9929bf86873c87f279ac67661c6e
# (built 19 Sep 2026; amd64 image 79.9 MB compressed). To update: take the `docker pull
# node@sha256:…` line of the newer tag's file there (or `docker buildx imagetools inspect
# node:22-bookworm-slim`) and replace both FROM lines; docs/deployment.md#the-image.
ARG NODE_IMAGE=node:22.23.2-bookworm-slim@sha256:48e4b67d85f87bd551df43704e24d252f56cc5f8e9718841aace50f19948f0f9

# --- build: compile TypeScript with the dev dependencies --------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would run tsc before the sources are copied.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
# Only what the gateway runs: the compiled CLI imports dist/src, dist/plugins and dist/schemas
# (and reads package.json for --version), never examples/ or bench/.
COPY src ./src
COPY plugins ./plugins
COPY schemas ./schemas
RUN npx tsc -p tsconfig.build.json \
 && find dist -name '*.d.ts' -delete

# --- production dependencies, installed apart so that npm's cache stays behind ----------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` builds with tsc, which is a dev dependency and is not installed here.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# --- runtime: node, production dependencies and the compiled gateway, as a non-root user -------
FROM ${NODE_IMAGE} AS runtime
# The gateway never runs npm or yarn: without them the image has less to patch and to exploit.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /opt/yarn-* \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg
ENV NODE_ENV=production
WORKDIR /app
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/dist/plugins ./dist/plugins
COPY --from=build /app/dist/schemas ./dist/schemas
# The default config (listens on $PORTCULLIS_HOST:$PORTCULLIS_PORT, proxies to $PEOPLE_API_URL);
# mount your own over it. Its secrets default to the demo's published values, which the gateway
# refuses on 0.0.0.0: set JWT_SECRET, DEMO_PASSWORD and READER_PASSWORD (see the top of this file).
COPY gateway.yaml /etc/portcullis/gateway.yaml
# `node` (uid 1000) comes with the image; it owns nothing in /app, so the code is read-only to it.
# Nothing is written outside /tmp (TMPDIR): request bodies over server.requestBuffer are spooled
# there (or to server.requestBufferDir). With a read-only root filesystem mount a tmpfs or an
# emptyDir on /tmp.
USER node
ENV PORTCULLIS_HOST=0.0.0.0 PORTCULLIS_PORT=8080
EXPOSE 8080
# node, not curl: the slim image has no curl. /healthz answers while the process serves.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORTCULLIS_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGTERM
# Node flags: src/node-flags.ts (test/node-flags.test.ts keeps this line and it in step).
ENTRYPOINT ["node", "--max-semi-space-size=32", "dist/src/cli.js"]
CMD ["start", "--config", "/etc/portcullis/gateway.yaml"]

# The Portcullis gateway. `docker build -t portcullis .`, then
#   docker run -p 8080:8080 -v $PWD/my-gateway.yaml:/etc/portcullis/gateway.yaml:ro portcullis
# The config must listen on 0.0.0.0 (server.host) to be reachable from outside the container.
# The gateway refuses to start on a non-loopback address with a published demo secret or password
# (and with an HS* secret under 32 bytes): the image fails closed until you give your own. With the
# built-in gateway.yaml that means all three of
#   docker run -p 8080:8080 -e JWT_SECRET="$(openssl rand -base64 48)" \
#     -e DEMO_PASSWORD=… -e READER_PASSWORD=… -e PEOPLE_API_URL=http://api:8000/api/people portcullis
# and otherwise it exits 1 naming each key to set (`jwt.secret: is the published demo secret; set
# JWT_SECRET to your own secret of at least 32 bytes (openssl rand -base64 48)`).

# --- build: compile TypeScript with the dev dependencies --------------------------------------
FROM node:20-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would run tsc before the sources are copied.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY plugins ./plugins
COPY schemas ./schemas
COPY examples ./examples
COPY bench ./bench
RUN npm run build

# --- runtime: production dependencies and the compiled output only, as a non-root user ---------
FROM node:20-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` builds with tsc, which is a dev dependency and is not installed here.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# The default config (listens on $PORTCULLIS_HOST:$PORTCULLIS_PORT, proxies to $PEOPLE_API_URL);
# mount your own over it. Its secrets default to the demo's published values, which the gateway
# refuses on 0.0.0.0: set JWT_SECRET, DEMO_PASSWORD and READER_PASSWORD (see the top of this file).
COPY gateway.yaml /etc/portcullis/gateway.yaml
# `node` (uid 1000) comes with the image; it owns nothing in /app, so the code is read-only to it.
USER node
ENV PORTCULLIS_HOST=0.0.0.0 PORTCULLIS_PORT=8080
EXPOSE 8080
# node, not curl: the slim image has no curl. /healthz answers while the process serves.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORTCULLIS_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["start", "--config", "/etc/portcullis/gateway.yaml"]

# The Portcullis gateway. `docker build -t portcullis .`, then
#   docker run -p 8080:8080 -v $PWD/my-gateway.yaml:/etc/portcullis/gateway.yaml:ro portcullis
# The config must listen on 0.0.0.0 (server.host) to be reachable from outside the container.

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
# mount your own over it.
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

# The jitrunner control plane: `jitrunner server | worker | all`.
# Build: docker build -t jitrunner .   (NODE_IMAGE lets you pick the base, e.g. a mirror)
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm install --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --ignore-scripts

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
# The server needs no privileges. A worker needs the Docker socket of its host: run it with the
# socket's group (compose: group_add) rather than as root.
USER node
EXPOSE 8080
ENTRYPOINT ["node", "/app/bin/jitrunner.js"]
CMD ["all", "--config", "/etc/jitrunner/jitrunner.yml"]

# The jitrunner control plane: `jitrunner server | worker | all`.
# Build: docker build -t jitrunner .   (NODE_IMAGE lets you pick the base, e.g. a mirror)
# Without a registry: docker build --network none --build-arg NPM_OFFLINE=true -t jitrunner .
#   with an npm cache in ./npm-cache (below) and NODE_IMAGE naming a Node 24 image you have.
# Node 24 (LTS); Node 20 also runs jitrunner, but it is past its end of life.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# Dependencies come from the npm registry, as package-lock.json pins them. A build that cannot reach
# the registry installs them from an npm cache instead: fill one where the registry is reachable
# (`npm install --cache ./npm-cache` in the checkout), keep it in the build context as ./npm-cache
# and pass NPM_OFFLINE=true; npm then reads that cache only. The cache stays in this stage.
# (`npm-cach[e]` matches nothing when there is no ./npm-cache; package.json keeps the COPY valid.)
ARG NPM_OFFLINE=false
ENV npm_config_cache=/tmp/npm-cache npm_config_offline=${NPM_OFFLINE}
COPY package.json npm-cach[e] /tmp/npm-cache/
COPY package.json package-lock.json ./
RUN case "$NPM_OFFLINE" in \
      true | false) npm install --ignore-scripts --no-audit --no-fund ;; \
      *) echo "NPM_OFFLINE must be true or false, not '$NPM_OFFLINE'" >&2; exit 1 ;; \
    esac
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
# It runs as `node`. Started as root instead (the Compose files' `user: root`), jitrunner reads
# its config and secrets, then runs on as `node` (JITRUNNER_USER), with the group of its Docker
# socket added, whatever that group's id on the host: so the secret files need not be readable by
# uid 1000, and Compose needs no group id.
ENV JITRUNNER_USER=1000:1000
USER node
EXPOSE 8080
ENTRYPOINT ["node", "/app/bin/jitrunner.js"]
CMD ["all", "--config", "/etc/jitrunner/jitrunner.yml"]

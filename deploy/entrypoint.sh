#!/bin/sh
# The image's entry point: `atelier` with the container's command (serve, worker, keys, db ...).
#
# An API listening beyond loopback needs an API key before it starts. Deployments keep that key in their
# secrets (Compose's .env, a Kubernetes Secret) as ATELIER_ADMIN_KEY; it is installed here on every start
# (`keys install` does nothing when it is already there), so no one has to run `atelier keys create` by hand.
set -eu
if [ "${1:-}" = "serve" ] && [ -n "${ATELIER_ADMIN_KEY:-}" ]; then
    atelier keys install "${ATELIER_ADMIN_KEY_NAME:-admin}" --admin --from-env ATELIER_ADMIN_KEY
fi
exec atelier "$@"

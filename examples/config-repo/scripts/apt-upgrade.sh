#!/bin/bash
# Upgrade Debian packages; LINKOPS_PARAM_PACKAGE limits it to one package.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
simulate=()
[ "${LINKOPS_PARAM_DRY_RUN:-false}" = true ] && simulate=(--simulate)
apt-get update -qq
if [ -n "${LINKOPS_PARAM_PACKAGE:-}" ]; then
    apt-get install --only-upgrade -y "${simulate[@]}" -- "$LINKOPS_PARAM_PACKAGE"
else
    apt-get upgrade -y "${simulate[@]}"
fi

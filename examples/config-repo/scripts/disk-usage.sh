#!/bin/sh
# Filesystems above LINKOPS_PARAM_THRESHOLD percent used.
set -eu
df -P | awk -v limit="${LINKOPS_PARAM_THRESHOLD:-80}" \
    'NR > 1 { used = $5; sub("%", "", used); if (used + 0 > limit) print $6 ": " $5 }'

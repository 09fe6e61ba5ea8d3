#!/usr/bin/env bash
# Fault drill: SQLite on a full filesystem (a 4 MiB tmpfs mounted for the drill; needs root), then space freed.
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-disk-full.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill disk-full "$@"

#!/usr/bin/env bash
# Fault drill: Postgres restarted twice mid-drain under 3 outboxd processes.
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-pg-restart.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill pg-restart "$@"

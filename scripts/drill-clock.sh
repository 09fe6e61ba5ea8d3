#!/usr/bin/env bash
# Fault drill: the daemon's wall clock stepped +2h and back (libfaketime; apt-get install -y faketime).
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-clock.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill clock "$@"

#!/usr/bin/env bash
# Fault drill: kill -9 the daemon 20 times at random during a 20,000-row drain (--quick: 5 kills, 2,000 rows).
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-kill9.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill kill9 "$@"

#!/usr/bin/env bash
# Fault drill: every drill, then a summary table.
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-all.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill all "$@"

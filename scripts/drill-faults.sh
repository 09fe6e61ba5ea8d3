#!/usr/bin/env bash
# Fault drill: a platform with 30% 503s, 10% connection resets and slow replies, 4pyun and epeis rows.
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-faults.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill faults "$@"

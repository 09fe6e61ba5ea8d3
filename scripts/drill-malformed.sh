#!/usr/bin/env bash
# Fault drill: malformed rows (bad JSON, unknown sink and type, huge payloads, invalid fields, non-UTF-8) among good ones.
# Prints accepted, delivered, duplicates, lost (must be 0) and dead-lettered rows with their
# reasons; exits non-zero when the drill fails. Leaves nothing behind (processes, temp dirs,
# mounts, clusters).
#   scripts/drill-malformed.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/bench.sh drill malformed "$@"

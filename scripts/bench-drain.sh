#!/usr/bin/env bash
# Drain benchmark: ROWS charge_end rows in a SQLite outbox (synchronous=FULL), delivered by
# the release outboxd to the 4pyun simulator on loopback, beside the bare tokio+reqwest loop
# sending the same requests to the same simulator. Prints rows/s, the ratio to the bare loop,
# CPU and peak RSS.
#   scripts/bench-drain.sh [ROWS] [CONCURRENCY]     (0, the default: the sinks' defaults; PG=1 adds Postgres with 1, 2, 4 workers)
#   PERF="perf record -g -o /tmp/outboxd.perf --" scripts/bench-drain.sh 30000 128
#   KEEP=1 keeps the work directory (database, configs, logs); REPEAT=3 runs each figure 3 times.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000}
CONC=${2:-0}
pg=(--no-pg)
[[ -n ${PG:-} ]] && pg=()
exec scripts/bench.sh "${pg[@]}" drain --rows "$ROWS" --concurrency "$CONC" --repeat "${REPEAT:-1}"

#!/usr/bin/env bash
# Benchmarks and fault drills of outboxd (docs/BENCHMARKS.md, docs/RELIABILITY.md).
#
#   scripts/bench.sh                  every benchmark scenario, full sizes (~15 min)
#   scripts/bench.sh --quick          the same at CI sizes (< 2 min)
#   scripts/bench.sh drain --rows 100000 --concurrency 64,128
#   scripts/bench.sh drill kill9 faults [--quick]   (scripts/drill-*.sh call this)
#   scripts/bench.sh --help           every subcommand and option
#
# Builds the release binaries, then runs `outbox-bench`, which starts the real
# platform-sim, outbox-migrate and outboxd as separate processes, on SQLite files and on a
# throwaway Postgres cluster (scripts/pg-cluster.sh; --no-pg skips Postgres, --pg-url URL
# uses a server of yours). Everything it starts is stopped, and its work directory removed,
# when it ends, also on Ctrl-C. KEEP=1 keeps the work directory (databases, configs, logs);
# PERF="perf record -g -o /tmp/outboxd.perf --" runs each outboxd under perf.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p outbox-worker -p outbox-migrate -p platform-sim -p outbox-bench

# The clock drill runs the daemon under libfaketime (its own clock only, never the machine's).
if [[ " $* " == *" drill "* ]] && ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null &&
    [[ ! -e /usr/lib/faketime/libfaketime.so.1 ]]; then
    echo "bench.sh: libfaketime not found; installing Debian's faketime with apt-get" >&2
    apt-get install -y -qq faketime >/dev/null
fi
BIN="${CARGO_TARGET_DIR:-target}/release"

WORK=$(mktemp -d /tmp/outbox-bench.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    # What outbox-bench normally removes itself, in case it was interrupted.
    if [[ -f $WORK/pg/.pg-cluster ]]; then scripts/pg-cluster.sh stop "$WORK/pg" >/dev/null 2>&1 || true; fi
    if mountpoint -q "$WORK/fullfs" 2>/dev/null; then umount "$WORK/fullfs" || true; fi
    if [[ -z ${KEEP:-} ]]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
}
trap cleanup EXIT

args=("$@")
has_command=""
for a in "${args[@]}"; do
    case $a in -*) ;; *) has_command=1; break ;; esac
done
[[ -n $has_command || " ${args[*]} " == *" --help "* ]] || args+=(all)

"$BIN/outbox-bench" --work-dir "$WORK" ${KEEP:+--keep} "${args[@]}"

#!/usr/bin/env bash
# Drain benchmark: N charge_end rows in a SQLite outbox, delivered by outboxd (release build)
# to the 4pyun simulator on loopback. Prints rows/s, wall time and outboxd's peak RSS.
#   scripts/bench-drain.sh [ROWS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000}
CONC=${2:-64}
BIN="${CARGO_TARGET_DIR:-target}/release"
cargo build --release --quiet -p outbox-worker -p outbox-migrate -p platform-sim
command -v sqlite3 >/dev/null || apt-get install -y sqlite3 >/dev/null
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null

DIR=$(mktemp -d /tmp/outboxd-bench.XXXXXX)
SIM_PID=""
cleanup() { [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$DIR"; }
trap cleanup EXIT

DB="$DIR/outbox.db"
"$BIN/outbox-migrate" --database-url "sqlite://$DB" >/dev/null
sqlite3 "$DB" <<SQL
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ROWS)
INSERT INTO outbox (sink, event_type, idempotency_key, payload)
SELECT 'pyun', 'charge_end', 'B' || i,
       json_object('station_uuid', '8f5fdb60-9374-4c11-bdc2-a32d8369258c', 'device_no', 'S1', 'port_no', '1',
                   'replenish_order', 'B' || i, 'start_time', '2026-11-24T08:20:00Z',
                   'end_time', '2026-11-24T09:20:00Z', 'vin', '川A660N2', 'quantity', 6556,
                   'energy_value', 207, 'fee_value', 975, 'total_value', 1182, 'energy_code', 'CN_AC')
FROM n;
SQL

"$BIN/platform-sim" --listen 127.0.0.1:0 >"$DIR/sim.out" 2>"$DIR/sim.log" &
SIM_PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$DIR/sim.out" 2>/dev/null && break; sleep 0.05; done
SIM_URL=$(sed -n 's/^listening on //p' "$DIR/sim.out")

printf '%s' 6409292d66625a2a0912acfc61ed956c > "$DIR/secret"
cat > "$DIR/outboxd.toml" <<TOML
database_url = "sqlite://$DB"
log_level = "warn"
[admin]
listen = ""
[sinks.pyun]
type = "pyun"
url = "$SIM_URL/gate/1.0/energy/internal/replenish"
app_id = "op00961963581daa7"
secret_file = "$DIR/secret"
concurrency = $CONC
TOML

${PERF:-} /usr/bin/time -v "$BIN/outboxd" --config "$DIR/outboxd.toml" run --until-idle >"$DIR/run.out" 2>"$DIR/run.err" || { cat "$DIR/run.err"; exit 1; }
WALL=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$DIR/run.err")
RSS_KB=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$DIR/run.err")
CPU=$(sed -n 's/.*Percent of CPU this job got: //p' "$DIR/run.err")
SIM_CPU=$(awk '{printf "%.2f", ($14 + $15) / 100}' /proc/$SIM_PID/stat)
DELIVERED=$(sqlite3 "$DB" "SELECT count(*) FROM outbox WHERE status = 'delivered'")
APPLIED=$(curl -s "$SIM_URL/_sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pyun"]["applied"])')
python3 - "$ROWS" "$WALL" "$RSS_KB" "$DELIVERED" "$APPLIED" "$CPU" "$CONC" "$SIM_CPU" <<'PY'
import sys
rows, wall, rss, delivered, applied, cpu, conc, sim_cpu = sys.argv[1:]
parts = [float(p) for p in wall.split(":")]
secs = parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) > 2 else 0)
print(f"rows={rows} concurrency={conc} delivered={delivered} applied_by_platform={applied}")
print(f"wall={secs:.2f}s rate={int(rows)/secs:,.0f} rows/s outboxd_cpu={cpu} simulator_cpu={float(sim_cpu)/secs:.0%} peak_rss={int(rss)/1024:.1f} MiB")
PY

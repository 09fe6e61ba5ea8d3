#!/usr/bin/env bash
# The product's main job on the embedded SQLite default, self-contained: builds the binaries,
# starts the platform simulator on loopback, creates and migrates a SQLite outbox, enqueues
# a realistic mix of events (some need retries, one gets a success-with-hint, some cannot
# be delivered), runs outboxd until every row is final, and prints what happened.
# Everything lives in ./.demo (recreated on each run); nothing else is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${CARGO_TARGET_DIR:-target}/debug"
DEMO=.demo
# DEMO_NO_BUILD=1: use the binaries already built (the test suite builds them first).
if [ -z "${DEMO_NO_BUILD:-}" ]; then
  echo "==> building outboxd, outbox-migrate and platform-sim (first build takes a few minutes)"
  cargo build --quiet -p outbox-worker -p outbox-migrate -p platform-sim
fi

rm -rf "$DEMO"
mkdir -p "$DEMO"
SIM_PID=""
cleanup() { [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true; }
trap cleanup EXIT

# What the simulated platforms will do, per order / settlement / SIM id.
cat > "$DEMO/sim-script.json" <<'JSON'
{
  "pyun": {
    "CE-RETRY-1": [{"code": "503"}, {"http": 502}, "ok"],
    "CE-RETRY-2": ["drop_before", "ok"],
    "CE-HINT":    [{"code": "200", "hint": "签名验证不通过"}],
    "CE-REJECT":  [{"code": "400", "hint": "`vin` 车牌格式错误~"}]
  },
  "epeis": {
    "SA00000000000002": [{"http": 503}, "ok"],
    "SA00000000000003": [{"code": 2001, "message": "结算户不存在"}],
    "SA00000000000004": ["drop_after"]
  },
  "lbbtech": {
    "865933034812501": {"result_after_polls": 2},
    "865933034812502": {"result_after_polls": 1},
    "865933034812503": {"result": 3},
    "865933034812504": {"never_result": true, "order": 2}
  },
  "tcec": {
    "pushes": {
      "TC-RETRY":    [{"ret": 500}],
      "TC-FORGED":   [{"bad_sig": true}],
      "TC-DISPUTED": [{"confirm_result": 1}],
      "TC-REJECT":   [{"ret": 4004, "msg": "充电设备接口编码不存在"}]
    }
  }
}
JSON

echo "==> starting the platform simulator"
"$BIN/platform-sim" --listen 127.0.0.1:0 --script "$DEMO/sim-script.json" >"$DEMO/sim.out" 2>"$DEMO/sim.log" &
SIM_PID=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$DEMO/sim.out" 2>/dev/null && break
  sleep 0.1
done
SIM_URL=$(sed -n 's/^listening on //p' "$DEMO/sim.out")
[ -n "$SIM_URL" ] || { echo "the simulator did not start:"; cat "$DEMO/sim.log"; exit 1; }
echo "    simulator at $SIM_URL"

# The demo's secrets live in files, as they would under systemd's LoadCredential=.
printf '%s' "6409292d66625a2a0912acfc61ed956c" > "$DEMO/pyun.secret"
printf '%s' "DK00000000000000000000000000000000000000000000000000000000000001" > "$DEMO/epeis.key"
printf '%s' "demo-token" > "$DEMO/lbbtech.token"
# T/CEC: the OperatorSecret and the three envelope keys (the simulator's demo values).
printf '%s' "demo-operator-secret" > "$DEMO/tcec-operator.secret"
printf '%s' "1234567890abcdef" > "$DEMO/tcec-data.secret"
printf '%s' "abcdef1234567890" > "$DEMO/tcec-iv.secret"
printf '%s' "demo-sig-secret" > "$DEMO/tcec-sig.secret"
chmod 600 "$DEMO"/*.secret "$DEMO"/*.key "$DEMO"/*.token
cat > "$DEMO/outboxd.toml" <<TOML
database_url = "sqlite://$PWD/$DEMO/outbox.db"

[worker]
poll_interval = "200ms"

# Quick retries so the demo finishes in seconds; see deploy/outboxd.toml for production values.
[retry]
base = "100ms"
cap = "1s"
floor = "50ms"
max_attempts = 5
max_age = "1h"

[sinks.pyun]
type = "pyun"
url = "$SIM_URL/gate/1.0/energy/internal/replenish"
app_id = "op00961963581daa7"
secret_file = "$PWD/$DEMO/pyun.secret"

[sinks.epeis]
type = "epeis"
url = "$SIM_URL/Service/v1/RepairDosageBack/"
channel_did = "CH00000000000001"
register_did = "RG00000000000001"
account_did = "AC00000000000001"
secret_file = "$PWD/$DEMO/epeis.key"

# Polling and the car-charger verification are shortened from 3s / 30s / 5m for the demo.
[sinks.lbb]
type = "lbbtech"
url = "$SIM_URL/open"
secret_file = "$PWD/$DEMO/lbbtech.token"
poll_interval = "200ms"
poll_window = "2s"
verify_after = "2s"

# A T/CEC 102 supervision platform: charge orders and connector statuses.
[sinks.supervision]
type = "tcec"
url = "$SIM_URL/evcs/v20160701"
operator_id = "123456789"
secret_file = "$PWD/$DEMO/tcec-operator.secret"
data_secret_file = "$PWD/$DEMO/tcec-data.secret"
data_secret_iv_file = "$PWD/$DEMO/tcec-iv.secret"
sig_secret_file = "$PWD/$DEMO/tcec-sig.secret"
TOML
export OUTBOXD_CONFIG="$DEMO/outboxd.toml"

echo "==> checking the config and creating the SQLite outbox"
"$BIN/outboxd" check-config
"$BIN/outbox-migrate" --create --database-url "sqlite://$PWD/$DEMO/outbox.db"

echo "==> enqueuing events (what station software does in its own transaction)"
charge_end() { # order start end [energy_code]
  cat <<JSON
{"station_uuid":"8f5fdb60-9374-4c11-bdc2-a32d8369258c","device_no":"S1","port_no":"1",
 "replenish_order":"$1","start_time":"$2","end_time":"$3","vin":"川A660N2",
 "quantity":6556,"energy_value":207,"fee_value":975,"total_value":1182,"energy_code":"${4:-CN_AC}"}
JSON
}
enqueue() { "$BIN/outboxd" enqueue --sink "$1" --type "$2" --key "$3" --payload @- >/dev/null; }
for i in $(seq -w 1 20); do
  charge_end "CE-OK-$i" "2026-11-24T08:${i}:00Z" "2026-11-24T09:${i}:00Z" | enqueue pyun charge_end "CE-OK-$i"
done
charge_end CE-RETRY-1 2026-11-24T08:00:00Z 2026-11-24T09:00:00Z | enqueue pyun charge_end CE-RETRY-1
charge_end CE-RETRY-2 2026-11-24T08:00:00Z 2026-11-24T09:00:00Z | enqueue pyun charge_end CE-RETRY-2
charge_end CE-HINT 2026-11-24T08:00:00Z 2026-11-24T09:00:00Z | enqueue pyun charge_end CE-HINT
charge_end CE-REJECT 2026-11-24T08:00:00Z 2026-11-24T09:00:00Z | enqueue pyun charge_end CE-REJECT
# Invalid: the charge ends before it starts. Dead-lettered without any HTTP call.
charge_end CE-INVALID 2026-11-24T09:00:00Z 2026-11-24T08:00:00Z | enqueue pyun charge_end CE-INVALID
# A producer bug: a sink that is not configured.
charge_end CE-NOSINK 2026-11-24T08:00:00Z 2026-11-24T09:00:00Z | enqueue pyun-backup charge_end CE-NOSINK
# Usage adjustments for epeis (no idempotency key on their side: a reply that never came is
# parked as "outcome unknown" rather than sent twice).
dosage() { # settlement
  cat <<JSON
{"COM_METERAGE": {"SETTLEMENT_AID": "$1", "NORMAL_RETRO_TYPE": "2"},
 "COM_METER_INFO_TMP": [{"DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
                         "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "3", "ADDED_CONS": 12.5}]}
JSON
}
for n in 1 2 3 4; do dosage "SA0000000000000$n" | enqueue epeis dosage "DS-$n"; done
# Charge starts for lbbtech: start, poll the result, and for a car charger that never
# confirms, verify the order later. Each one ends started, failed (refund) or unknown.
charge_start() { # simId charger
  echo "{\"simId\": \"$1\", \"portNum\": 5, \"param\": 1, \"payMoney\": 20.5, \"selectPriceType\": 1, \"infoPriceId\": 42, \"chargeBefore\": 0, \"isAdvanceReceive\": 0, \"charger\": \"$2\"}"
}
charge_start 865933034812501 car | enqueue lbb charge_start CS-1
charge_start 865933034812502 two_wheeler | enqueue lbb charge_start CS-2
charge_start 865933034812503 two_wheeler | enqueue lbb charge_start CS-3
charge_start 865933034812504 car | enqueue lbb charge_start CS-4
# Charge orders and connector statuses for the supervision platform (T/CEC 102): the payload
# is the platform's own Data object, the key its StartChargeSeq. One is retried (Ret 500), one
# gets a reply with a forged signature (not taken as delivered: retried), one is disputed
# (ConfirmResult 1: final, surfaced as a hint), one is rejected (Ret 4004).
charge_order() { # StartChargeSeq
  cat <<JSON
{"StartChargeSeq": "$1", "ConnectorID": "3702120244102_1",
 "StartTime": "2026-11-24 08:20:00", "EndTime": "2026-11-24 09:20:00",
 "TotalPower": 20.7, "TotalElecMoney": 9.75, "TotalSeviceMoney": 2.07, "TotalMoney": 11.82,
 "StopReason": 0, "SumPeriod": 1,
 "ChargeDetails": [{"DetailStartTime": "2026-11-24 08:20:00", "DetailEndTime": "2026-11-24 09:20:00",
                    "ElecPrice": 0.4710, "SevicePrice": 0.1000, "DetailPower": 20.7,
                    "DetailElecMoney": 9.75, "DetailSeviceMoney": 2.07}]}
JSON
}
for key in TC-OK-1 TC-OK-2 TC-OK-3 TC-RETRY TC-FORGED TC-DISPUTED TC-REJECT; do
  charge_order "$key" | enqueue supervision charge_order "$key"
done
# A burst of connector statuses, as a station writes them while the platform is away: each
# status carries its connector as supersede_key, so only the newest of each connector is sent
# and the older ones end `superseded`, unsent.
for n in 1 2 3; do
  for step in 1 2 3 4; do
    echo "{\"ConnectorStatusInfo\": {\"ConnectorID\": \"3702120244102_$n\", \"Status\": $((step % 4))}}" \
      | "$BIN/outboxd" enqueue --sink supervision --type connector_status --key "ST-$n-$step" \
        --supersede-key "3702120244102_$n" --payload @- >/dev/null
  done
done
"$BIN/outboxd" status

echo "==> running outboxd until every row is final"
RUST_LOG=warn "$BIN/outboxd" run --until-idle 2>"$DEMO/outboxd.log"

echo
echo "==> status per sink"
"$BIN/outboxd" status
echo
echo "==> dead-lettered rows (an operator fixes the cause, then: outboxd dead requeue ID)"
"$BIN/outboxd" dead list
echo
echo "==> the success that carried a hint (delivered, never retried, kept for operators)"
"$BIN/outboxd" show --sink pyun --key CE-HINT
echo
echo "==> the disputed charge order (T/CEC ConfirmResult 1: final, surfaced like a hint)"
"$BIN/outboxd" show --sink supervision --key TC-DISPUTED
echo
echo "==> charge starts as the station software reads them (one query on the outbox_outcomes view)"
python3 - "$DEMO/outbox.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
query = "SELECT idempotency_key, outcome, result FROM outbox_outcomes WHERE sink = ? ORDER BY idempotency_key"
print("    " + query)
for key, outcome, result in db.execute(query, ("lbb",)):
    print(f"    {key}: {outcome:8} {result}")
PY
echo
echo "==> the connector status burst: the newest status per connector sent, the rest superseded"
python3 - "$DEMO/outbox.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
query = ("SELECT idempotency_key, status FROM outbox "
         "WHERE sink = 'supervision' AND event_type = 'connector_status' ORDER BY idempotency_key")
for key, status in db.execute(query):
    print(f"    {key}: {status}")
PY
echo
echo "==> what the simulated platforms saw"
curl -s "$SIM_URL/_sim/stats" 2>/dev/null | python3 -m json.tool 2>/dev/null || true
echo
echo "Files: $DEMO/outbox.db (the outbox), $DEMO/outboxd.log (daemon log), $DEMO/outboxd.toml (config)."
echo
# Absolute paths, so the two lines work from any directory of the same shell.
BIN_ABS=$(cd "$BIN" && pwd)
echo "==> to keep exploring the demo's outbox, paste these two lines into your shell, then try"
echo "    outboxd status, outboxd dead list, outboxd show --sink pyun --key CE-RETRY-1, outboxd --help:"
printf 'export OUTBOXD_CONFIG=%q\n' "$PWD/$DEMO/outboxd.toml"
printf 'export PATH=%q:"$PATH"\n' "$BIN_ABS"

#!/usr/bin/env bash
# The real-data check of .ci/run (issue 6): replays every lot of ../shared/data (2,295 lots,
# ~48,000 meals) through a running pipeline with `gaveurs replay`, stops it (which publishes
# everything), and fails unless every lot's ITM from `gaveurs query` equals the file's `itm`
# to 2 decimals, the built-in meal model flags at most 2 % of those meals (all as backfill),
# and `gaveurs model train` on the same files reproduces the built-in model byte for byte (and
# `gaveurs model train --model sqal|outcome` the built-in SQAL and lot outcome models).
# Fails when the data files are missing.
#
# GAVEURS_REAL_DATA overrides the data folder; GAVEURS_BIN the binary (default: a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"

DATA="${GAVEURS_REAL_DATA:-$(cd .. && pwd)/shared/data}"
MEALS="$DATA/meals_2023.csv.gz"
LOTS="$DATA/lots_2023.csv.gz"
for f in "$MEALS" "$LOTS"; do
  [ -f "$f" ] || { echo "real-data check: $f is missing (set GAVEURS_REAL_DATA)" >&2; exit 1; }
done

if [ -z "${GAVEURS_BIN:-}" ]; then
  # The binary of the test build (`scripts/test.sh` ran it just before in .ci/run): the same
  # dependencies' features, so nothing is compiled twice.
  cargo test --workspace --locked --no-run --quiet
  GAVEURS_BIN="$CARGO_TARGET_DIR/debug/gaveurs"
fi

WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cat > "$WORK/gaveurs.toml" <<TOML
[http]
listen = "127.0.0.1:0"
[mqtt]
listen = "127.0.0.1:0"
[storage]
data_dir = "$WORK/data"
[logs]
dir = "$WORK/logs"
console = false
TOML

started=$(date +%s)
(cd "$WORK" && exec "$GAVEURS_BIN" run --config gaveurs.toml > "$WORK/stdout.log" 2> "$WORK/stderr.log") &
PID=$!
for _ in $(seq 1 600); do
  grep -q "^gaveurs ready" "$WORK/stdout.log" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/stderr.log" >&2; exit 1; }
  sleep 0.1
done
MQTT=$(grep "^gaveurs ready" "$WORK/stdout.log" | sed -E 's/.* mqtt=([^ ]+).*/\1/')
[ -n "$MQTT" ] || { echo "the pipeline did not get ready" >&2; cat "$WORK/stderr.log" >&2; exit 1; }

HTTP=$(grep "^gaveurs ready" "$WORK/stdout.log" | sed -E 's/.* http=([^ ]+).*/\1/')

(cd "$WORK" && "$GAVEURS_BIN" replay --config gaveurs.toml --mqtt "$MQTT" --meals "$MEALS" --lots "$LOTS")
# The ITMs are the analytics operator's: it reads the log at its own pace, so the check waits
# until its cursor has no entry left to read (/metrics) rather than leaving the rest to the
# shutdown's 5 s.
lag() {
  curl -fs "http://$HTTP/metrics" | awk '$1 == "gaveurs_cursor_lag_entries{cursor=\"analytics\"}" {print $2}'
}
for _ in $(seq 1 1200); do
  [ "$(lag)" = "0.0" ] || [ "$(lag)" = "0" ] && break
  sleep 0.1
done
echo "real-data check: analytics caught up $(( $(date +%s) - started )) s after start (lag $(lag))" >&2
kill -TERM "$PID"
wait "$PID" || { echo "the pipeline did not stop cleanly" >&2; tail -20 "$WORK/stderr.log" >&2; exit 1; }
PID=""
(cd "$WORK" && "$GAVEURS_BIN" query --config gaveurs.toml --format csv \
  "SELECT code_lot, itm FROM lot_kpis ORDER BY code_lot") > "$WORK/itm.csv"
(cd "$WORK" && "$GAVEURS_BIN" query --config gaveurs.toml --format csv \
  "SELECT rule, severity, count(*) AS opened, sum(CASE WHEN backfill THEN 0 ELSE 1 END) AS live
   FROM alerts WHERE transition = 'opened' GROUP BY rule, severity ORDER BY rule, severity") > "$WORK/alerts.csv"
(cd "$WORK" && "$GAVEURS_BIN" query --config gaveurs.toml --format csv \
  "SELECT (SELECT count(*) FROM anomalies) AS anomalies,
          (SELECT count(*) FROM anomalies WHERE NOT _backfill) AS live,
          (SELECT count(*) FROM gavage_meals) AS meals") > "$WORK/anomalies.csv"
ended=$(date +%s)
python3 - "$WORK/anomalies.csv" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
anomalies, live, meals = int(row["anomalies"]), int(row["live"]), int(row["meals"])
share = anomalies / max(meals, 1)
print(f"real-data check: the meal model flagged {anomalies} of {meals} meals ({share:.2%})", file=sys.stderr)
if share > 0.02 or live:
    print(f"real-data check: more than 2 % flagged, or {live} anomalies not backfill", file=sys.stderr)
    sys.exit(1)
PY
"$GAVEURS_BIN" model train --data "$DATA" --out "$WORK/gavage_meal.json" >&2
cmp "$WORK/gavage_meal.json" operators/models/gavage_meal.json \
  || { echo "real-data check: gaveurs model train does not reproduce operators/models/gavage_meal.json" >&2; exit 1; }
"$GAVEURS_BIN" model train --model sqal --out "$WORK/sqal_sample.json" >&2
cmp "$WORK/sqal_sample.json" operators/models/sqal_sample.json \
  || { echo "real-data check: gaveurs model train --model sqal does not reproduce operators/models/sqal_sample.json" >&2; exit 1; }
"$GAVEURS_BIN" model train --model outcome --data "$DATA" --out "$WORK/lot_outcome.json" >&2
cmp "$WORK/lot_outcome.json" operators/models/lot_outcome.json \
  || { echo "real-data check: gaveurs model train --model outcome does not reproduce operators/models/lot_outcome.json" >&2; exit 1; }
# Trained from the replay's Parquet datasets instead of the CSV files, the meal model learns
# the same parameters (the rows are the same meals; only the order of sums may differ).
"$GAVEURS_BIN" model train --data "$WORK/data" --out "$WORK/gavage_meal_parquet.json" >&2
python3 - "$WORK/gavage_meal_parquet.json" operators/models/gavage_meal.json <<'PY'
import json, math, sys
parquet, csv = (json.load(open(p)) for p in sys.argv[1:])
assert (parquet["training"]["lots"], parquet["training"]["meals"]) == (csv["training"]["lots"], csv["training"]["meals"]), \
    f"from Parquet {parquet['training']}, from CSV {csv['training']}"
def numbers(v):
    if isinstance(v, dict): return [x for k in sorted(v) for x in numbers(v[k])]
    if isinstance(v, list): return [x for i in v for x in numbers(i)]
    return [v] if isinstance(v, float) else []
a, b = numbers(parquet["steps"]) + [parquet["threshold"]], numbers(csv["steps"]) + [csv["threshold"]]
worst = max(abs(x - y) / max(abs(y), 1e-3) for x, y in zip(a, b))
print(f"real-data check: the meal model trained from Parquet differs from the CSV one by at most {worst:.1e} (relative)", file=sys.stderr)
assert len(a) == len(b) and worst < 1e-6, "the meal model trained from Parquet is not the CSV one"
PY
# Every replayed record is flagged backfill, so every alert it opened must be too (never texted).
python3 - "$WORK/alerts.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
summary = ", ".join(f"{r['rule']}/{r['severity']} {r['opened']}" for r in rows)
print(f"real-data check: alerts opened by the replay: {summary or 'none'}", file=sys.stderr)
live = sum(int(r["live"]) for r in rows)
if live:
    print(f"real-data check: {live} alerts opened by the replay are not flagged backfill", file=sys.stderr)
    sys.exit(1)
PY

python3 - "$LOTS" "$WORK/itm.csv" <<'PY'
import csv, gzip, sys
lots = {row["code_lot"]: float(row["itm"]) for row in csv.DictReader(gzip.open(sys.argv[1], "rt"))}
computed = {}
for row in csv.DictReader(open(sys.argv[2])):
    computed[row["code_lot"]] = float(row["itm"]) if row["itm"] not in ("", "NULL") else None
missing = sorted(set(lots) - set(computed))
wrong = [(c, lots[c], computed[c]) for c in sorted(lots)
         if c in computed and (computed[c] is None or round(computed[c], 2) != round(lots[c], 2))]
print(f"real-data check: {len(lots)} lots in the file, {len(computed)} in lot_kpis, "
      f"{len(missing)} missing, {len(wrong)} with another ITM", file=sys.stderr)
for code in missing[:5]:
    print(f"  missing: {code}", file=sys.stderr)
for code, want, got in wrong[:5]:
    print(f"  {code}: file {want}, pipeline {got}", file=sys.stderr)
sys.exit(1 if missing or wrong else 0)
PY
echo "real-data check passed in $((ended - started)) s (replay, shutdown and query)" >&2

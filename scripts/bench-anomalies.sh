#!/usr/bin/env bash
# Added acknowledgement latency of anomaly scoring (issue 16): MQTT PUBACK latency at a paced
# 20 k meals/s through the release binary with scoring on (the default), on with nothing
# flagged (`[ml] threshold = 1000`: the scoring alone, without the anomalies it raises) and
# off (`[ml] enabled = false`), alternating in one run so the noisy machine treats them alike.
# Prints a Markdown table of medians (benches/results/anomalies.md quotes it).
#
# REPEAT runs of DURATION seconds per setting (default 3 × 10); GAVEURS_BIN_DIR: binaries to
# use instead of a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
REPEAT="${REPEAT:-3}"
DURATION="${DURATION:-10}"
RATE="${RATE:-20000}"
source scripts/bench-common.sh

n=0
for r in $(seq "$REPEAT"); do
  for setting in on quiet off; do
    n=$((n + 1))
    case "$setting" in
      on) EXTRA_CONFIG="" ;;
      quiet) EXTRA_CONFIG=$'[ml]\nthreshold = 1000\n' ;;
      off) EXTRA_CONFIG=$'[ml]\nenabled = false\n' ;;
    esac
    start_pipeline "run$n"
    line=$("$BIN/gaveurs-load" --mqtt "$mqtt" --kind gavage --rate "$RATE" --connections 4 \
      --window 256 --duration "$DURATION" --pid "$pid" --tag "a$n" --json)
    metrics=$(curl -s "http://$http/metrics")
    scored=$(sed -n 's/^gaveurs_ml_scored_total{model="gavage_meal"} //p' <<<"$metrics")
    flagged=$(sed -n 's/^gaveurs_anomalies_total{model="gavage_meal"} //p' <<<"$metrics")
    echo "scoring $setting: $line (scored ${scored:-0}, flagged ${flagged:-0})" >&2
    stop_pipeline "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["acked"])' "$line")"
    echo "{\"setting\": \"$setting\", \"scored\": ${scored:-0}, \"flagged\": ${flagged:-0}, \"result\": $line}" >> "$results"
  done
done
python3 - "$results" "$RATE" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"| scoring | records/s | PUBACK p50 ms | PUBACK p99 ms | PUBACK max ms | meals scored | anomalies |")
print("|---|---|---|---|---|---|---|")
names = {"on": "on (default)", "quiet": "on, nothing flagged", "off": "off"}
for setting in ("on", "quiet", "off"):
    rs = [r for r in rows if r["setting"] == setting]
    med = lambda k: statistics.median(r["result"][k] for r in rs)
    print(f"| {names[setting]} | {med('records_per_s'):.0f} | {med('ack_p50_ms'):.2f} | {med('ack_p99_ms'):.2f} | {med('ack_max_ms'):.0f} | {statistics.median(r['scored'] for r in rs):.0f} | {statistics.median(r['flagged'] for r in rs):.0f} |")
PY

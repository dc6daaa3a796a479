#!/usr/bin/env bash
# Added acknowledgement latency of the ledger (issue 17): MQTT PUBACK latency at a paced
# 20 k meals/s through the release binary with the ledger on (the default) and off
# (`[ledger] enabled = false`), alternating in one run so the noisy machine treats them
# alike. After each run, `gaveurs ledger verify` checks the chain the run wrote. Prints a
# Markdown table of medians (benches/results/ledger.md quotes it).
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
  for setting in on off; do
    n=$((n + 1))
    case "$setting" in
      on) EXTRA_CONFIG="" ;;
      off) EXTRA_CONFIG=$'[ledger]\nenabled = false\n' ;;
    esac
    start_pipeline "run$n"
    line=$("$BIN/gaveurs-load" --mqtt "$mqtt" --kind gavage --rate "$RATE" --connections 4 \
      --window 256 --duration "$DURATION" --pid "$pid" --tag "a$n" --json)
    kill -TERM "$pid"; wait "$pid"
    entries=0
    if [ "$setting" = on ]; then
      verified=$("$BIN/gaveurs" ledger verify --data "$run/data")
      entries=$(sed -n 's/^ledger ok: \([0-9]*\) entries.*/\1/p' <<<"$verified")
    fi
    echo "ledger $setting: $line (entries ${entries})" >&2
    echo "{\"setting\": \"$setting\", \"entries\": $entries, \"result\": $line}" >> "$results"
    rm -rf "$run/data"
  done
done
python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| ledger | records/s | PUBACK p50 ms | PUBACK p99 ms | PUBACK max ms | entries chained |")
print("|---|---|---|---|---|---|")
for setting, name in (("on", "on (default)"), ("off", "off (`[ledger] enabled = false`)")):
    rs = [r for r in rows if r["setting"] == setting]
    med = lambda k: statistics.median(r["result"][k] for r in rs)
    print(f"| {name} | {med('records_per_s'):.0f} | {med('ack_p50_ms'):.2f} | {med('ack_p99_ms'):.2f} | {med('ack_max_ms'):.0f} | {statistics.median(r['entries'] for r in rs):.0f} |")
PY

#!/usr/bin/env bash
# Live-push benchmark: records published over MQTT → /ws/gaveur/{id} clients. Latency is the
# client's receive time minus the record's timestamp (set to the publish time). A fresh
# pipeline per run; REPEAT runs per configuration, medians in benches/results/live-ws.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
REPEAT="${REPEAT:-3}"
DURATION="${DURATION:-10}"
source scripts/bench-common.sh

# label|rate|gaveurs|clients per gaveur
configs=(
  "1 k/s, 10 gaveurs × 1 client|1000|10|1"
  "1 k/s, 10 gaveurs × 10 clients|1000|10|10"
  "2 k/s, 10 gaveurs × 10 clients|2000|10|10"
  "5 k/s, 10 gaveurs × 1 client|5000|10|1"
  "5 k/s, 10 gaveurs × 10 clients|5000|10|10"
  "20 k/s, 10 gaveurs × 1 client|20000|10|1"
  "20 k/s, 10 gaveurs × 10 clients|20000|10|10"
)
n=0
for config in "${configs[@]}"; do
  IFS='|' read -r label rate gaveurs clients <<<"$config"
  for r in $(seq "$REPEAT"); do
    n=$((n + 1))
    start_pipeline "run$n"
    line=$("$BIN/gaveurs-load" --mqtt "$mqtt" --http "$http" --rate "$rate" --gaveurs "$gaveurs" \
      --clients-per-gaveur "$clients" --connections 4 --window 256 --duration "$DURATION" \
      --pid "$pid" --tag "l$n" --json)
    echo "$label $line" >&2
    stop_pipeline "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["acked"])' "$line")"
    echo "{\"label\": \"$label\", \"result\": $line}" >> "$results"
  done
done
python3 - "$results" <<'PY'
import json, sys, statistics, subprocess, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows: by.setdefault(r["label"], []).append(r["result"])
med = statistics.median
cpu = subprocess.run(["sh","-c","grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
out = ["# Live pushes: MQTT publish → /ws/gaveur receive", "",
       f"Measured {datetime.date.today()} by `scripts/bench-live.sh` (release build, {len(rows)//len(by)} runs of {os.environ.get('DURATION','10')} s per configuration, medians shown), {cpu}, 2 cores, shared. Load tool (publisher and WebSocket clients) and pipeline share the 2 cores. Latency = client receive time − record timestamp (the publish time).", "",
       "| load | records/s | frames received | push p50 ms | push p99 ms | clients closed 1013 | PUBACK p99 ms | pipeline peak RSS MB |",
       "|---|---|---|---|---|---|---|---|"]
for label, rs in by.items():
    out.append(f"| {label} | {med([x['records_per_s'] for x in rs]):.0f} | {med([x['ws_received'] for x in rs]):.0f} | {med([x['ws_latency_p50_ms'] for x in rs]):.2f} | {med([x['ws_latency_p99_ms'] for x in rs]):.2f} | {max(x['ws_closed_slow'] for x in rs)} | {med([x['ack_p99_ms'] for x in rs]):.2f} | {med([x['peak_rss_mb'] for x in rs]):.0f} |")
open("benches/results/live-ws.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY

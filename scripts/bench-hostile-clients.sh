#!/usr/bin/env bash
# Hostile clients against well-behaved ones: the push latency of two /ws/gaveur/1 clients
# reading meals published at 250/s, alone and beside `gaveurs-hostile` (a deaf channel on the
# same gaveur, 500 idle MQTT connections, 500 idle channel sockets, and every second a
# 100 MB MQTT packet, a 100 MB channel message, a 100 MB ingest message, 50 sessions opened
# and dropped and 30 bad-password CONNECTs), which runs in a process of its own. One fresh
# pipeline per run, both phases in it, their order alternating between runs; REPEAT runs,
# medians and the per-run ratio in benches/results/hostile-clients.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
REPEAT="${REPEAT:-5}"
DURATION="${DURATION:-20}"
source scripts/bench-common.sh

measure() {
  "$BIN/gaveurs-load" --mqtt "$mqtt" --http "$http" --rate 250 --gaveurs 1 \
    --clients-per-gaveur 2 --connections 1 --window 8 --meals-per-lot 28 --duration "$DURATION" \
    --pid "$pid" --tag "$1" --json
}

# The hostile clients' own work (masking 200 MB a second, as WebSocket clients must) would
# otherwise take the 2 cores from the pipeline: niced, they measure what the pipeline's
# handling of them costs the others. HOSTILE_NICE=0 measures the machine shared evenly.
with_hostile() {
  nice -n "${HOSTILE_NICE:-19}" "$BIN/gaveurs-hostile" --mqtt "$mqtt" --http "$http" --duration "$((DURATION + 2))" \
    > "$run/hostile.txt" 2> "$run/hostile.err" &
  local hostile=$!
  for _ in $(seq 600); do grep -q "hostile ready" "$run/hostile.txt" 2>/dev/null && break; sleep 0.1; done
  grep -q "hostile ready" "$run/hostile.txt" || { cat "$run/hostile.err" >&2; exit 1; }
  local line
  line=$(measure "$1")
  wait "$hostile"
  echo "$line"
}

for r in $(seq "$REPEAT"); do
  start_pipeline "run$r"
  if [ $((r % 2)) -eq 1 ]; then
    alone=$(measure "a$r"); hostile=$(with_hostile "h$r")
  else
    hostile=$(with_hostile "h$r"); alone=$(measure "a$r")
  fi
  echo "run $r alone: $alone" >&2
  echo "run $r hostile: $hostile; $(tail -1 "$run/hostile.txt")" >&2
  acked=$(python3 -c 'import json,sys; print(sum(json.loads(a)["acked"] for a in sys.argv[1:]))' "$alone" "$hostile")
  stop_pipeline "$acked"
  echo "{\"alone\": $alone, \"hostile\": $hostile, \"clients\": $(tail -1 "$run/hostile.txt")}" >> "$results"
done
python3 - "$results" <<'PY'
import json, sys, statistics, subprocess, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
cpu = subprocess.run(["sh","-c","grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
build = "release build" if not os.environ.get("GAVEURS_BIN_DIR") else f"binaries of {os.path.basename(os.environ['GAVEURS_BIN_DIR'].rstrip('/'))} profile"
out = ["# Hostile clients beside well-behaved ones", "",
       f"Measured {datetime.date.today()} by `scripts/bench-hostile-clients.sh` ({build}, {len(rows)} runs of {os.environ.get('DURATION','20')} s per phase), {cpu}, 2 cores, shared by the pipeline, the load tool and `gaveurs-hostile` (at nice {os.environ.get('HOSTILE_NICE', '19')}).",
       "Two clients on `/ws/gaveur/1` read meals published at 250/s, 28 to a lot (as on a farm: with a new lot per meal the pipeline's per-lot state grows all run long, and a pipeline's second phase was slower than its first whatever ran in it); latency = receive time − publish time. The hostile phase runs `gaveurs-hostile` in its own process: a deaf channel on the same gaveur, 500 idle MQTT connections, 500 idle channel sockets and, every second, a 100 MB MQTT packet, a 100 MB channel message, a 100 MB ingest message, 50 sessions opened and dropped and 30 bad-password CONNECTs.", "",
       "| run | push p50 alone ms | push p50 hostile ms | push p99 alone ms | push p99 hostile ms | p99 ratio | frames alone / hostile | hostile rounds | pipeline peak RSS MB |",
       "|---|---|---|---|---|---|---|---|---|"]
ratios = []
for i, r in enumerate(rows, 1):
    a, h = r["alone"], r["hostile"]
    ratio = h["ws_latency_p99_ms"] / a["ws_latency_p99_ms"]
    ratios.append(ratio)
    out.append(f"| {i} | {a['ws_latency_p50_ms']:.2f} | {h['ws_latency_p50_ms']:.2f} | {a['ws_latency_p99_ms']:.2f} | {h['ws_latency_p99_ms']:.2f} | {ratio:.2f}× | {a['ws_received']} / {h['ws_received']} | {r['clients']['rounds']} | {max(a['peak_rss_mb'], h['peak_rss_mb']):.0f} |")
out += ["", f"Medians: push p99 {med([r['alone']['ws_latency_p99_ms'] for r in rows]):.2f} ms alone, {med([r['hostile']['ws_latency_p99_ms'] for r in rows]):.2f} ms beside the hostile clients; per-run ratio median {med(ratios):.2f}×.",
        "", "What the pipeline answered the hostile clients (last run): `" + json.dumps(rows[-1]["clients"]) + "`"]
open("benches/results/hostile-clients.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY

#!/usr/bin/env bash
# The durable log as the spine (issue 15), measured through the release binary:
#  1. MQTT PUBACK latency at a paced RATE (default 20 k records/s) with analytics on and off,
#     interleaved run by run (A/B in one run), REPEAT times each, over MEMORY_LOTS lots living
#     their whole life (each lot's meals, then its outcome);
#  2. memory under a steady load of lots living their whole life (`gaveurs-load --lots`):
#     RSS sampled every 10 s over MEMORY_S seconds (default 600) at MEMORY_RATE;
#  3. start-up with a year of history: ../shared/data replayed, the pipeline stopped, then
#     started again REPEAT times, timed to the first 200 of /health/ready.
# Writes benches/results/log-spine.md (keeping its Notes section and what follows). SKIP_MEMORY=1 leaves out part 2 (it takes 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
REPEAT="${REPEAT:-3}"
RATE="${RATE:-20000}"
DURATION="${DURATION:-20}"
MEMORY_S="${MEMORY_S:-600}"
MEMORY_RATE="${MEMORY_RATE:-2000}"
MEMORY_LOTS="${MEMORY_LOTS:-20000}"
DATA="${GAVEURS_REAL_DATA:-$(cd .. && pwd)/shared/data}"
# GAVEURS_BIN_DIR: binaries to use instead of a release build (to try the script quickly).
source scripts/bench-common.sh

# 1. PUBACK latency, analytics on / off.
for r in $(seq "$REPEAT"); do
  for variant in on off; do
    analytics=$([ "$variant" = on ] && echo true || echo false)
    EXTRA_CONFIG=$(printf '[analytics]\nenabled = %s\n' "$analytics")
    start_pipeline "puback$r-$variant"
    line=$("$BIN/gaveurs-load" --mqtt "$mqtt" --rate "$RATE" --lots "$MEMORY_LOTS" --connections 4 \
      --window 256 --duration "$DURATION" --pid "$pid" --tag "p$r$variant" --json)
    stop_pipeline "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["acked"])' "$line")"
    echo "puback run $r ($variant): $line" >&2
    echo "{\"part\": \"puback\", \"variant\": \"$variant\", \"result\": $line}" >> "$results"
  done
done

# 2. Memory under a steady load over many lots.
if [ -z "${SKIP_MEMORY:-}" ]; then
  EXTRA_CONFIG=""
  start_pipeline memory
  line=$("$BIN/gaveurs-load" --mqtt "$mqtt" --rate "$MEMORY_RATE" --lots "$MEMORY_LOTS" \
    --connections 4 --window 64 --duration "$MEMORY_S" --pid "$pid" --rss-every 10 --tag mem \
    --json 2> "$work/rss.txt")
  stop_pipeline "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["acked"])' "$line")"
  python3 - "$work/rss.txt" "$line" >> "$results" <<'PY'
import json, re, sys
samples = [(float(t), float(mb)) for t, mb in re.findall(r"rss t=(\d+)s rss_mb=([\d.]+)", open(sys.argv[1]).read())]
print(json.dumps({"part": "memory", "samples": samples, "result": json.loads(sys.argv[2])}))
PY
fi

# 3. Start-up with the replayed history.
EXTRA_CONFIG=""
start_pipeline history
"$BIN/gaveurs" replay --config "$run/gaveurs.toml" --mqtt "$mqtt" \
  --meals "$DATA/meals_2023.csv.gz" --lots "$DATA/lots_2023.csv.gz" >&2
kill -TERM "$pid"; wait "$pid"
history_mb=$(du -sm "$run/data" | cut -f1)
for r in $(seq "$REPEAT"); do
  : > "$run/ready.txt"
  started=$(date +%s.%N)
  (cd "$run" && exec "$BIN/gaveurs" run --config gaveurs.toml > ready.txt 2> stderr.txt) &
  pid=$!
  for _ in $(seq 600); do grep -q "gaveurs ready" "$run/ready.txt" 2>/dev/null && break; sleep 0.02; done
  http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$run/ready.txt")
  until curl -fs "http://$http/health/ready" > /dev/null; do sleep 0.02; done
  ready=$(date +%s.%N)
  lot=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cd "$run" && "$BIN/gaveurs" token --user admin@euralis.fr --config gaveurs.toml | tail -1)" \
    "http://$http/api/v1/lots/$(zcat "$DATA/lots_2023.csv.gz" | sed -n 2p | cut -d, -f1)")
  kill -TERM "$pid"; wait "$pid"
  echo "{\"part\": \"startup\", \"seconds\": $(python3 -c "print($ready - $started)"), \"first_lot_status\": $lot, \"data_mb\": $history_mb}" >> "$results"
done

python3 - "$results" "$RATE" "$DURATION" "$MEMORY_LOTS" "$MEMORY_RATE" "$MEMORY_S" <<'PY'
import json, sys, statistics, subprocess, datetime
rows = [json.loads(l) for l in open(sys.argv[1])]
rate, duration, lots, memory_rate, memory_s = sys.argv[2:7]
cpu = subprocess.run(["sh","-c","grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
med = statistics.median
out = ["# The durable log as the spine", "",
  f"Measured {datetime.date.today()} by `scripts/bench-log-spine.sh` (release build), {cpu}, 2 cores shared by the load tool and the pipeline; noisy machine. A fresh pipeline per run; after each, its Parquet output held exactly the records it acknowledged.", "",
  f"## PUBACK latency at {int(rate):,} records/s, analytics on and off", "",
  f"`gaveurs-load --rate {rate} --lots {lots} --connections 4 --window 256 --duration {duration}`, the two variants interleaved run by run.", "",
  "| analytics | runs | records/s | PUBACK p50 ms | p99 ms | max ms | peak RSS MB |", "|---|---|---|---|---|---|---|"]
p99 = {}
for variant in ("on", "off"):
    rs = [r["result"] for r in rows if r["part"] == "puback" and r["variant"] == variant]
    p99[variant] = med(x["ack_p99_ms"] for x in rs)
    runs = " / ".join("%.1f" % x["ack_p99_ms"] for x in rs)
    out.append(f"| {variant} | {len(rs)} | {med(x['records_per_s'] for x in rs):,.0f} | {med(x['ack_p50_ms'] for x in rs):.1f} | {p99[variant]:.1f} ({runs}) | {med(x['ack_max_ms'] for x in rs):.1f} | {med(x['peak_rss_mb'] for x in rs):.0f} |")
out += ["", f"p99 with analytics on / off: {p99['on'] / p99['off']:.2f}."]
memory = [r for r in rows if r["part"] == "memory"]
if memory:
    m = memory[0]
    peak = lambda lo, hi: max((mb for t, mb in m["samples"] if lo <= t < hi), default=float("nan"))
    last = max(t for t, _ in m["samples"])
    minute2, final = peak(60, 120), peak(last - 60, last + 1)
    out += ["", f"## Memory over {lots} lots at {int(memory_rate):,} records/s", "",
      f"`gaveurs-load --lots {lots} --rate {memory_rate} --duration {memory_s}`: each lot's 28 meals then its outcome, a new lot in its slot after; {m['result']['acked']:,} records acknowledged (every record of a lot one event-time day apart, so lots finish and age out as over months).", "",
      "| window | peak RSS MB |", "|---|---|",
      f"| minute 2 | {minute2:.0f} |", f"| last minute | {final:.0f} |", "",
      f"Last minute / minute 2: {final / minute2:.2f}. RSS every 10 s: " + ", ".join(f"{mb:.0f}" for _, mb in m["samples"]) + "."]
startup = [r for r in rows if r["part"] == "startup"]
seconds = " / ".join("%.2f" % r["seconds"] for r in startup)
statuses = ", ".join(str(r["first_lot_status"]) for r in startup)
out += ["", "## Start-up with a year of history", "",
  f"`../shared/data` (2,295 lots, 48,146 meals and 2,295 outcomes) replayed with `gaveurs replay`, the pipeline stopped, then started {len(startup)} times on that data dir ({startup[0]['data_mb']} MB): seconds from exec to the first 200 of `/health/ready`: median {med(r['seconds'] for r in startup):.2f} ({seconds}). `GET /api/v1/lots/{{first lot}}` right after: {statuses}."]
# Notes and earlier figures stay below the new ones.
try:
    earlier = open("benches/results/log-spine.md").read().split("\n## Notes", 1)[1]
    out += ["", "## Notes" + earlier.rstrip("\n")]
except (FileNotFoundError, IndexError):
    pass
open("benches/results/log-spine.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY

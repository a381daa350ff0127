#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine with only Rust installed.
# Installs the system packages the tests need (when missing), then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need:
# - redis-server: tests/redis_*.rs (and the Redis group of the circuit breaker bench);
# - postgresql: tests/postgres_*.rs start a throwaway server (initdb, as an unprivileged
#   user) per test binary (and the Postgres group of benches/stores.rs);
# - chromium + chromium-driver: the llm-proxy review page test (examples/proxy/tests/escalations/);
# - curl: the llm-proxy demo test runs the curl line the demo prints (examples/proxy/tests/binary/);
# - prometheus: promtool for the alert rules (scripts/check-alerts.sh) and a real
#   Prometheus scraping a proxy (examples/proxy/tests/alerts.rs);
# - python3 + python3-venv: the llm-proxy tools test drives the proxy with the official OpenAI
#   Python SDK, installed from PyPI into a venv under the target directory (examples/proxy/tests/tools/).
need=(redis-server postgresql chromium chromium-driver curl prometheus python3 python3-venv)
missing=()
for pkg in "${need[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# The alert rules: promtool check + unit tests.
./scripts/check-alerts.sh

# The library's package: what `cargo publish` would upload.
./scripts/check-package.sh
# The import graph of layers/: no cycles between files or folders (fails fast,
# before the whole suite; it runs again as part of it).
cargo test --all-features --test import_cycles

cargo test --workspace --all-features --all-targets
cargo test --workspace --all-features --doc

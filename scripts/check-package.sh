#!/usr/bin/env bash
# Packages the library crate as `cargo publish` would, checks what goes into the
# .crate, and builds it from the packaged sources (`cargo publish --dry-run`: no
# upload; it needs the crates.io index, which CI reaches).
set -euo pipefail
cd "$(dirname "$0")/.."

list=$(cargo package -p tower-llm-resilience --no-verify --allow-dirty --list)
fail=0
for required in Cargo.toml README.md layers/lib.rs layers/fallback/client_example.md; do
  grep -qx "$required" <<<"$list" || { echo "package misses $required" >&2; fail=1; }
done
# Nothing of the proxy, CI, local scripts or build output.
if grep -E '^(examples/proxy/|\.ci/|\.cargo/|scripts/|target/)' <<<"$list" >&2; then
  echo "package carries files it should not (above)" >&2
  fail=1
fi
[ "$fail" = 0 ] || exit 1
cargo publish --dry-run -p tower-llm-resilience --allow-dirty --quiet
# `publish --dry-run` leaves the .crate in package/tmp-crate/ (cargo >= 1.84),
# `cargo package` in package/.
pkg="${CARGO_TARGET_DIR:-target}/package"
crate=$(ls -t "$pkg"/tmp-crate/tower-llm-resilience-*.crate "$pkg"/tower-llm-resilience-*.crate 2>/dev/null | head -1 || true)
[ -n "$crate" ] || { echo "cargo publish --dry-run left no .crate in $pkg" >&2; exit 1; }
echo "package ok: $crate ($(grep -c . <<<"$list") files, $(du -k "$crate" | cut -f1) KiB)"

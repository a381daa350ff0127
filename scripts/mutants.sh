#!/usr/bin/env bash
# Mutation testing of the core files with cargo-mutants (https://mutants.rs).
# Not run in CI: over every file below it takes about half an hour on a laptop,
# much longer on a small shared machine.
#
#   cargo install cargo-mutants --locked
#   scripts/mutants.sh                          # every core file
#   scripts/mutants.sh layers/classify/headers.rs   # one file
#
# Reports land in mutants.out/ (caught.txt, missed.txt, unviable.txt, timeout.txt).
# Figure per file: caught / (caught + missed); unviable mutants (that do not build)
# do not count. Equivalent mutants (no test can tell them apart) are listed in
# .cargo/mutants.toml with the reason, and excluded there.
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=(
  layers/circuit_breaker/circuit.rs
  layers/circuit_breaker/window.rs
  layers/classify/headers.rs
  layers/classify/body.rs
  layers/fallback/sse.rs
  layers/partial_batch/driver/mod.rs
  layers/escalation/engine.rs
)
if [ "$#" -gt 0 ]; then
  FILES=("$@")
fi

args=()
for file in "${FILES[@]}"; do
  args+=(--file "$file")
done

# The library's own tests are enough to judge these files; the proxy's are not
# needed and would triple the time.
exec cargo mutants --package tower-llm-resilience --all-features "${args[@]}"

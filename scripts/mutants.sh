#!/usr/bin/env bash
# Mutation testing of the core files with cargo-mutants (https://mutants.rs).
# Not run in CI: each mutant rebuilds the library and the test binaries chosen
# for its file, about 20-40 s on a 2-core machine, and a file has 50-110 mutants.
#
#   cargo install cargo-mutants --locked
#   scripts/mutants.sh                                  # every core file, one at a time
#   scripts/mutants.sh layers/classify/headers.rs       # one file
#   ITERATE=1 scripts/mutants.sh layers/fallback/sse.rs # only what the last run missed
#
# Cheap enough for a small machine:
# - one file per run, and only the test binaries that exercise that file (the
#   table below), not the whole suite;
# - `--in-place`: mutants are built in this tree with its target dir
#   ($CARGO_TARGET_DIR, or ./target), so the dependencies are built once, not per
#   run. Do not edit, format or build this tree while it runs; cargo-mutants puts
#   the file back when it ends or is interrupted (Ctrl-C);
# - no cargo features: the core files compile without any, and the library
#   then builds in about half the time.
#
# Reports land in mutants.out/<file stem>/mutants.out/ (caught.txt, missed.txt,
# unviable.txt, timeout.txt, outcomes.json). Figure per file:
# caught / (caught + missed); unviable mutants (that do not build) do not count.
# Equivalent mutants (no test can tell them apart) are excluded in
# .cargo/mutants.toml with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests that pin each file's behaviour. `--lib` runs the library's unit tests
# (where a file has private ones); `--test NAME` one file of tests/.
tests_for() {
  case "$1" in
    layers/circuit_breaker/circuit.rs)
      echo "--test circuit_breaker --test circuit_breaker_edges --test circuit_breaker_model --test circuit_breaker_rates --test circuit_breaker_logs" ;;
    layers/circuit_breaker/window.rs)
      echo "--lib --test circuit_breaker --test circuit_breaker_edges --test circuit_breaker_model" ;;
    layers/classify/headers.rs)
      echo "--lib --test classify_edges --test retry_after_cap --test retry_after_setting" ;;
    layers/classify/body.rs)
      echo "--lib --test classify_providers --test classify_edges --test classify_body" ;;
    layers/fallback/sse.rs)
      echo "--lib --test fallback_stream --test fallback_whole --test fallback_first_event" ;;
    layers/partial_batch/driver/mod.rs)
      echo "--test partial_batch --test partial_batch_edges --test retry_after_cap --test partial_batch_driver" ;;
    layers/escalation/engine.rs)
      echo "--test escalation_edges --test escalation_detach --test escalation_wait --test escalation_engine --test escalation_logs" ;;
    *)
      echo "scripts/mutants.sh: no test selection for $1; add one to tests_for" >&2
      return 1 ;;
  esac
}

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

for file in "${FILES[@]}"; do
  selection=$(tests_for "$file")
  stem=$(basename "$(dirname "$file")")-$(basename "$file" .rs)
  out="mutants.out/$stem"
  mkdir -p "$out"
  # --cargo-arg, not `-- ARGS`: trailing args reach only the test phase, and the
  # build phase would then build every test binary and example of the package.
  # Without debug info the library and its tests build faster; only this
  # package is rebuilt for it, the dependencies are shared with normal builds.
  extra=(--cargo-arg=--config=profile.dev.package.tower-llm-resilience.debug=0)
  for word in $selection; do
    extra+=("--cargo-arg=$word")
  done
  if [ -n "${ITERATE:-}" ]; then
    extra+=(--iterate)
  fi
  echo "== $file ($selection)"
  start=$(date +%s)
  cargo mutants --in-place --package tower-llm-resilience --file "$file" \
    --output "$out" "${extra[@]}" || true
  echo "== $file: $(( $(date +%s) - start )) s"
  for outcome in caught missed unviable timeout; do
    printf '%s %s\n' "$outcome" "$(wc -l < "$out/mutants.out/$outcome.txt" 2>/dev/null || echo 0)"
  done
done

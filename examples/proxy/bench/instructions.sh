#!/usr/bin/env bash
# Instructions (and allocations) per proxied request, counted by valgrind's
# callgrind: the same count on a quiet or a busy machine, unlike req/s.
#
#   examples/proxy/bench/instructions.sh                      # this tree's release build
#   examples/proxy/bench/instructions.sh /path/to/older/llm-proxy target/release/llm-proxy
#   examples/proxy/bench/instructions.sh target/release/llm-proxy \
#       target/release/llm-proxy:examples/proxy/bench/usage_on.toml   # a config's cost
#
# An argument BIN:FILE runs BIN with FILE's TOML appended to the config.
# KEEP=DIR keeps each run's callgrind profile there (for callgrind_annotate).
# Each binary serves $REQUESTS chat requests (oha, $CONNECTIONS connections, after
# $WARMUP uncounted ones) in front of `llm-proxy mock-upstream`, with load.sh's
# config; only the proxy runs under callgrind. Counts are user-space instructions
# of the proxy process (kernel work, the same syscalls for both, is not counted).
set -euo pipefail
cd "$(dirname "$0")/../../.."

REQUESTS=${REQUESTS:-4000}
WARMUP=${WARMUP:-500}
CONNECTIONS=${CONNECTIONS:-16}
OHA=target/bench-tools/bin/oha
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
[ -x "$OHA" ] || { echo "run load.sh once first (it builds oha into target/bench-tools)" >&2; exit 1; }
if [ $# -eq 0 ]; then
  cargo build --release -p llm-proxy --bin llm-proxy >&2
  set -- target/release/llm-proxy
fi
# shellcheck source=common.sh
source "examples/proxy/bench/common.sh"

start MOCK "$WORK/mock.out" "${1%%:*}" mock-upstream --listen 127.0.0.1:0 --name bench
load_config "$MOCK" "workers = 1" >"$WORK/proxy.toml"
echo '{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}' >"$WORK/body.json"
ask() { # url count
  "$OHA" --no-tui -n "$2" -c "$CONNECTIONS" -m POST -T application/json -D "$WORK/body.json" \
    --output-format json "$1/v1/chat/completions" >"$WORK/oha.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); c=r.get("statusCodeDistribution") or {}; sys.exit(0 if set(c)=={"200"} else "not all 200: %s" % c)' "$WORK/oha.json"
}
printf '%-40s %14s %14s\n' "binary ($REQUESTS requests)" "instr/request" "allocs/request"
n=0
for arg in "$@"; do
  n=$((n + 1))
  out="$WORK/cg.$n"
  bin=${arg%%:*}
  config="$WORK/proxy.toml"
  if [ "$bin" != "$arg" ]; then
    config="$WORK/proxy.$n.toml"
    with_extra "$WORK/proxy.toml" "${arg#*:}" "$config"
  fi
  RUST_LOG=warn start PROXY "$WORK/proxy.$n.out" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$out" "$bin" --config "$config"
  pid=$LAST_PID
  ask "$PROXY" "$WARMUP"
  # Counted from here: everything before is dumped into $out.1.
  callgrind_control -i on "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  ask "$PROXY" "$REQUESTS"
  callgrind_control -d "$pid" >/dev/null 2>&1
  callgrind_control -i off "$pid" >/dev/null 2>&1
  kill "$pid"
  for _ in $(seq 50); do [ -s "$out.2" ] && break; sleep 0.1; done
  instr=$(awk '/^totals:/ {print $2}' "$out.2")
  # Calls into malloc from Rust's allocator shim (callgrind names each function
  # once, then by its number).
  allocs=$(python3 - "$out.2" <<'PY'
import re, sys
names, fn, cfn, total = {}, "", "", 0
def name(text):
    m = re.match(r"\((\d+)\)(?: (.*))?", text)
    if m and m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), "") if m else text
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("fn="):
        fn = name(line[3:].strip())
    elif line.startswith("cfn="):
        cfn = name(line[4:].strip())
    elif line.startswith("calls=") and re.search(r"__rdl_(alloc|alloc_zeroed|realloc)$", fn) \
            and cfn in ("malloc", "calloc", "realloc"):
        total += int(line[6:].split()[0])
print(total)
PY
  )
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out.2" "$KEEP/callgrind.$n"
  printf '%-40s %14d %14.1f\n' "$arg" $((instr / REQUESTS)) "$(echo "$allocs $REQUESTS" | awk '{print $1 / $2}')"
done

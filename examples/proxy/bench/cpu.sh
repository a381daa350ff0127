#!/usr/bin/env bash
# CPU time (user + system, from /proc) the proxy process spends per request:
# unlike req/s, it hardly moves when other work shares the cores, and unlike
# instructions.sh it counts the kernel's share (sockets, wake-ups) too.
#
#   examples/proxy/bench/cpu.sh target/release/llm-proxy \
#       target/release/llm-proxy:examples/proxy/bench/usage_on.toml
#
# Arguments as instructions.sh's (BIN, or BIN:FILE to append FILE's TOML to the
# config). Each round sends $REQUESTS requests (oha, $CONNECTIONS connections)
# to every binary in turn; the table gives the median CPU microseconds per
# request over $ROUNDS rounds, and each binary's median per-round ratio to the
# first one (rounds interleave, so a busy moment hits every column alike).
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-7}
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-32}
OHA=target/bench-tools/bin/oha
[ -x "$OHA" ] || { echo "run load.sh once first (it builds oha into target/bench-tools)" >&2; exit 1; }
if [ $# -eq 0 ]; then
  cargo build --release -p llm-proxy --bin llm-proxy >&2
  set -- target/release/llm-proxy
fi
# shellcheck source=common.sh
source "examples/proxy/bench/common.sh"

start MOCK "$WORK/mock.out" "${1%%:*}" mock-upstream --listen 127.0.0.1:0 --name bench
load_config "$MOCK" >"$WORK/proxy.toml"
echo '{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}' >"$WORK/body.json"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
urls=() pids=()
n=0
for arg in "$@"; do
  n=$((n + 1))
  bin=${arg%%:*}
  config="$WORK/proxy.toml"
  if [ "$bin" != "$arg" ]; then
    config="$WORK/proxy.$n.toml"
    with_extra "$WORK/proxy.toml" "${arg#*:}" "$config"
  fi
  RUST_LOG=warn start PROXY "$WORK/proxy.$n.out" "$bin" --config "$config"
  urls+=("$PROXY") pids+=("$LAST_PID")
done
ask() { # url count
  "$OHA" --no-tui -n "$2" -c "$CONNECTIONS" -m POST -T application/json -D "$WORK/body.json" \
    --output-format json "$1/v1/chat/completions" >"$WORK/oha.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); c=r.get("statusCodeDistribution") or {}; sys.exit(0 if set(c)=={"200"} else "not all 200: %s" % c)' "$WORK/oha.json"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for i in "${!urls[@]}"; do ask "${urls[$i]}" 2000; done
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS..." >&2
  for i in "${!urls[@]}"; do
    before=$(ticks "${pids[$i]}")
    ask "${urls[$i]}" "$REQUESTS"
    echo "$(( ($(ticks "${pids[$i]}") - before) * TICK_US )) $REQUESTS" >>"$WORK/cpu.$i"
  done
done
python3 - "$WORK" "$@" <<'PY'
import statistics, sys
work, args = sys.argv[1], sys.argv[2:]
runs = [[int(c) / int(n) for c, n in (l.split() for l in open(f"{work}/cpu.{i}"))] for i in range(len(args))]
print(f"{'binary':<64} {'CPU us/request':>15} {'ratio to first':>15}")
for arg, cpu in zip(args, runs):
    ratio = statistics.median(c / f for c, f in zip(cpu, runs[0]))
    print(f"{arg:<64} {statistics.median(cpu):>15.2f} {ratio:>15.3f}")
print("every round (CPU us/request):")
for arg, cpu in zip(args, runs):
    print(f"  {arg}: " + " ".join(f"{c:.2f}" for c in cpu))
PY

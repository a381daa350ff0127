#!/usr/bin/env bash
# Load test of llm-proxy: the same requests straight to a mock upstream and through
# the proxy, side by side, plus the proxy's peak RSS.
#
#   examples/proxy/bench/load.sh            # 10 s per run
#   DURATION=30s CONNECTIONS=256 examples/proxy/bench/load.sh
#
# Runs (each against the mock directly, then through the proxy):
#   1. saturation: wrk with $CONNECTIONS connections, as fast as it goes;
#   2. paced: $PACED_CONNECTIONS connections, each waiting $PACED_DELAY_MS ms between
#      requests (wrk's delay()), about $PACED_CONNECTIONS*1000/$PACED_DELAY_MS req/s
#      (5,000 by default): the latency the proxy adds at a steady rate.
# Everything (load tool, mock, proxy) shares this machine's cores: compare the two
# columns of one run, not absolute numbers across machines.
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-256}
THREADS=${THREADS:-2}
PACED_CONNECTIONS=${PACED_CONNECTIONS:-50}
PACED_DELAY_MS=${PACED_DELAY_MS:-10}

if ! command -v wrk >/dev/null; then
  echo "installing wrk..." >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  fi
fi

cargo build --release -p llm-proxy >&2
BIN=target/release/llm-proxy
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# start VAR OUT CMD...: run CMD in the background and set VAR to the first
# http://ADDR it prints (LAST_PID to its pid).
start() {
  local var=$1 out=$2; shift 2
  "$@" >"$out" 2>"$out.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  for _ in $(seq 1 100); do
    if grep -qo 'http://[0-9.:]*' "$out" 2>/dev/null; then
      printf -v "$var" '%s' "$(grep -o 'http://[0-9.:]*' "$out" | head -1)"
      return
    fi
    sleep 0.1
  done
  echo "did not start: $*" >&2; cat "$out.err" >&2; exit 1
}

start MOCK "$WORK/mock.out" "$BIN" mock-upstream --listen 127.0.0.1:0 --name bench
cat >"$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:0"

[[upstreams]]
name = "primary"
kind = "openai"
base_url = "$MOCK/v1"

[[upstreams]]
name = "secondary"
kind = "openai"
base_url = "$MOCK/v1"

[[models]]
name = "bench"
tiers = [ { upstream = "primary", model = "gpt-4o" }, { upstream = "secondary", model = "gpt-4o-mini" } ]
template = "busy"

[escalation]
store = "memory"
TOML
RUST_LOG=warn start PROXY "$WORK/proxy.out" "$BIN" --config "$WORK/proxy.toml"
PROXY_PID=$LAST_PID

body='{"model":"MODEL","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
for target in mock proxy; do
  model=$([ $target = mock ] && echo gpt-4o || echo bench)
  for paced in 0 1; do
    {
      echo 'wrk.method = "POST"'
      echo 'wrk.headers["Content-Type"] = "application/json"'
      echo "wrk.body = '${body/MODEL/$model}'"
      [ $paced = 1 ] && echo "function delay() return $PACED_DELAY_MS end"
    } >"$WORK/$target-$paced.lua"
  done
done

# Warm both paths (connections, allocator).
curl -sf "$MOCK/v1/chat/completions" -H 'content-type: application/json' -d "${body/MODEL/gpt-4o}" >/dev/null
curl -sf "$PROXY/v1/chat/completions" -H 'content-type: application/json' -d "${body/MODEL/bench}" >/dev/null
wrk -t"$THREADS" -c64 -d2s -s "$WORK/proxy-0.lua" "$PROXY/v1/chat/completions" >/dev/null

run() { # target url paced connections -> "rps p50 p99 non2xx"
  local out
  out=$(wrk -t"$THREADS" -c"$4" -d"$DURATION" --latency -s "$WORK/$1-$3.lua" "$2/v1/chat/completions")
  echo "$out" >"$WORK/$1-$3.wrk"
  local rps p50 p99 bad
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$rps $p50 $p99 ${bad:-0}"
}

read -r m_rps m_p50 m_p99 m_bad < <(run mock "$MOCK" 0 "$CONNECTIONS")
read -r p_rps p_p50 p_p99 p_bad < <(run proxy "$PROXY" 0 "$CONNECTIONS")
read -r mp_rps mp_p50 mp_p99 mp_bad < <(run mock "$MOCK" 1 "$PACED_CONNECTIONS")
read -r pp_rps pp_p50 pp_p99 pp_bad < <(run proxy "$PROXY" 1 "$PACED_CONNECTIONS")
rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$PROXY_PID/status")

echo
echo "llm-proxy load test ($(nproc) cores, wrk -t$THREADS, $DURATION per run; load tool, mock and proxy share the machine)"
printf '%-34s %14s %14s\n' "" "direct (mock)" "through proxy"
printf '%-34s %14s %14s\n' "saturation, $CONNECTIONS conns: req/s" "$m_rps" "$p_rps"
printf '%-34s %14s %14s\n' "  p50 latency" "$m_p50" "$p_p50"
printf '%-34s %14s %14s\n' "  p99 latency" "$m_p99" "$p_p99"
printf '%-34s %14s %14s\n' "  non-2xx responses" "$m_bad" "$p_bad"
printf '%-34s %14s %14s\n' "paced, $PACED_CONNECTIONS conns x 1/${PACED_DELAY_MS}ms: req/s" "$mp_rps" "$pp_rps"
printf '%-34s %14s %14s\n' "  p50 latency" "$mp_p50" "$pp_p50"
printf '%-34s %14s %14s\n' "  p99 latency" "$mp_p99" "$pp_p99"
printf '%-34s %14s %14s\n' "  non-2xx responses" "$mp_bad" "$pp_bad"
echo "proxy peak RSS (VmHWM): $rss"

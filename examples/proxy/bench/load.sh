#!/usr/bin/env bash
# Load test of llm-proxy: the same requests straight to a mock upstream, through
# a bare hyper forwarder (the floor: one more hop, no work), and through the
# proxy, side by side, plus the proxy's peak RSS.
#
#   examples/proxy/bench/load.sh                  # 3 rounds of 5 s runs
#   ROUNDS=5 DURATION=10s examples/proxy/bench/load.sh
#   BASELINE_BIN=/path/to/older/llm-proxy examples/proxy/bench/load.sh
#
# With BASELINE_BIN, another column runs that (older) llm-proxy binary with the same
# config in the same rounds: a before/after comparison on one machine in one run.
#
# Two more proxy columns (issue 17): "usage on" is the proxy with `[usage]
# enabled = true` (the "through proxy" column has it off, the default), so the
# cost of usage accounting is read side by side; "cache hits" is the proxy with
# `[cache] mode = "deterministic"` sent one `temperature: 0` request again and
# again (every request after the first is a hit).
# PACED=0 skips the paced runs (and oha).
#
# Each round runs, one target after the other (mock, forwarder, proxy):
#   1. saturation: wrk with $CONNECTIONS connections, as fast as it goes;
#      the CPU time (user + system) the target's process used per request is
#      read from /proc: steadier than req/s on a busy machine, and the cost
#      of a feature in CPU, whatever else competes for the cores;
#   2. paced: oha sending $RATE requests per second at a constant rate over
#      $PACED_CONNECTIONS connections, latencies measured from when each request was
#      due (--latency-correction: no coordinated omission): the latency the proxy
#      adds at a steady rate.
# wrk comes from apt, oha from crates.io (built once into target/bench-tools).
# The table gives the median of the rounds. Everything (load tool, mock, proxy)
# shares this machine's cores, and shared machines are noisy: compare the
# columns of one run, not absolute numbers across machines.
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-256}
THREADS=${THREADS:-2}
PACED_CONNECTIONS=${PACED_CONNECTIONS:-50}
RATE=${RATE:-5000}
PACED=${PACED:-1}
OHA_VERSION=1.16.0

if ! command -v wrk >/dev/null; then
  echo "installing wrk..." >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  fi
fi

OHA=target/bench-tools/bin/oha
if [ "$PACED" = 1 ] && ! "$OHA" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
  echo "building oha $OHA_VERSION (once)..." >&2
  cargo install oha --version "$OHA_VERSION" --locked --root target/bench-tools >&2
fi
command -v python3 >/dev/null || { echo "python3 is needed to read oha's report" >&2; exit 1; }

cargo build --release -p llm-proxy --bin llm-proxy --example bare_forward >&2
BIN=target/release/llm-proxy
# shellcheck source=common.sh
source "examples/proxy/bench/common.sh"

start MOCK "$WORK/mock.out" "$BIN" mock-upstream --listen 127.0.0.1:0 --name bench
PID_mock=$LAST_PID
start BARE "$WORK/bare.out" target/release/examples/bare_forward "$MOCK"
PID_bare=$LAST_PID
load_config "$MOCK" >"$WORK/proxy.toml"
RUST_LOG=warn start PROXY "$WORK/proxy.out" "$BIN" --config "$WORK/proxy.toml"
PROXY_PID=$LAST_PID PID_proxy=$LAST_PID
{ cat "$WORK/proxy.toml"; printf '\n[usage]\nenabled = true\n'; } >"$WORK/usage_on.toml"
RUST_LOG=warn start USAGE_ON "$WORK/usage_on.out" "$BIN" --config "$WORK/usage_on.toml"
PID_usage_on=$LAST_PID
{ cat "$WORK/proxy.toml"; printf '\n[cache]\nmode = "deterministic"\n'; } >"$WORK/cached.toml"
RUST_LOG=warn start CACHED "$WORK/cached.out" "$BIN" --config "$WORK/cached.toml"
PID_cached=$LAST_PID
TARGETS="mock bare proxy usage_on cached"
if [ -n "${BASELINE_BIN:-}" ]; then
  RUST_LOG=warn start BASE "$WORK/base.out" "$BASELINE_BIN" --config "$WORK/proxy.toml"
  BASE_PID=$LAST_PID PID_base=$LAST_PID
  TARGETS="$TARGETS base"
fi
is_proxy() { case $1 in proxy | base | usage_on | cached) true ;; *) false ;; esac; }

body='{"model":"MODEL","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
for target in $TARGETS; do
  model=$(is_proxy $target && echo bench || echo gpt-4o)
  request=${body/MODEL/$model}
  # The cache column asks a deterministic question: after the first, every request is a hit.
  [ "$target" = cached ] && request=${request/\"max_tokens\"/\"temperature\":0,\"max_tokens\"}
  {
    echo 'wrk.method = "POST"'
    echo 'wrk.headers["Content-Type"] = "application/json"'
    echo "wrk.body = '$request'"
  } >"$WORK/$target.lua"
  echo "$request" >"$WORK/$target.json"
done
url_of() {
  case $1 in
    mock) echo "$MOCK" ;; bare) echo "$BARE" ;; proxy) echo "$PROXY" ;; base) echo "$BASE" ;;
    usage_on) echo "$USAGE_ON" ;; cached) echo "$CACHED" ;;
  esac
}

# Warm every path (connections, allocator).
for target in $TARGETS; do
  model=$(is_proxy $target && echo bench || echo gpt-4o)
  curl -sf "$(url_of $target)/v1/chat/completions" -H 'content-type: application/json' \
    -d @"$WORK/$target.json" >/dev/null
  wrk -t"$THREADS" -c64 -d2s -s "$WORK/$target.lua" "$(url_of $target)/v1/chat/completions" >/dev/null
done

# wrk's latency ("485.00us", "1.02ms", "1.10s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

saturate() { # target -> appends "rps p50 p99 non2xx cpu_us_per_request" to $WORK/target-0.runs
  local out rps p50 p99 bad pid before requests cpu
  pid=$(eval echo "\$PID_$1")
  before=$(cpu_ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/$1.lua" \
    "$(url_of "$1")/v1/chat/completions")
  cpu=$(( ($(cpu_ticks "$pid") - before) * TICK_US ))
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$rps $p50 $p99 ${bad:-0} $(awk -v c="$cpu" -v n="$requests" 'BEGIN {printf "%.2f", n ? c / n : 0}')" \
    >>"$WORK/$1-0.runs"
}

pace() { # target -> appends "rps p50 p99 non2xx" to $WORK/target-1.runs
  "$OHA" --no-tui -z "$DURATION" -c "$PACED_CONNECTIONS" -q "$RATE" --latency-correction \
    -m POST -T application/json -D "$WORK/$1.json" --output-format json \
    "$(url_of "$1")/v1/chat/completions" >"$WORK/oha.json"
  python3 - "$WORK/oha.json" >>"$WORK/$1-1.runs" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
codes = report.get("statusCodeDistribution") or {}
bad = sum(n for code, n in codes.items() if not code.startswith("2"))
# Requests still in flight when the run ends are not failures.
errors = report.get("errorDistribution") or {}
bad += sum(n for error, n in errors.items() if error != "aborted due to deadline")
p = report["latencyPercentiles"]
print("%.0f %.3f %.3f %d" % (report["summary"]["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000, bad))
PY
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS..." >&2
  for target in $TARGETS; do saturate $target; done
  if [ "$PACED" = 1 ]; then for target in $TARGETS; do pace $target; done; fi
done
rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$PROXY_PID/status")
[ -n "${BASE_PID:-}" ] && rss="$rss (baseline: $(awk '/VmHWM/ {print $2, $3}' "/proc/$BASE_PID/status"))"

median() { # file column -> median of that column
  awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
total() { awk '{s += $4} END {print s + 0}' "$1"; }
row() { # label paced column format
  local label=$1 paced=$2 col=$3 fmt=$4
  printf '%-36s' "$label"
  for target in $TARGETS; do
    if [ "$col" = bad ]; then
      printf ' %16s' "$(total "$WORK/$target-$paced.runs")"
    else
      printf " %16s" "$(printf "$fmt" "$(median "$WORK/$target-$paced.runs" "$col")")"
    fi
  done
  echo
}

echo
echo "llm-proxy load test: $(nproc) cores, wrk -t$THREADS and oha $OHA_VERSION, $ROUNDS rounds of $DURATION, medians"
echo "(load tool, mock, forwarder and proxy share the machine)"
printf '%-36s %16s %16s %16s %16s %16s' "" "direct (mock)" "bare forwarder" "through proxy" \
  "usage on" "cache hits"
[ -n "${BASE_PID:-}" ] && printf ' %16s' "baseline proxy"
echo
row "saturation, $CONNECTIONS conns: req/s" 0 1 '%.0f'
row "  p50 latency (ms)" 0 2 '%.2f'
row "  p99 latency (ms)" 0 3 '%.2f'
row "  non-2xx responses (all rounds)" 0 bad ''
row "  CPU per request (us, that process)" 0 5 '%.2f'
if [ "$PACED" = 1 ]; then
  row "paced at $RATE req/s ($PACED_CONNECTIONS conns): req/s" 1 1 '%.0f'
  row "  p50 latency (ms)" 1 2 '%.2f'
  row "  p99 latency (ms)" 1 3 '%.2f'
  row "  failed requests (all rounds)" 1 bad ''
fi
cache_hits=$(curl -sf "$CACHED/metrics" | awk '/^llm_proxy_cache_requests_total\{outcome="hit"\}/ {print $2}')
echo "cache hits counted by the cache column's proxy: ${cache_hits:-0}"
echo "proxy peak RSS (VmHWM): $rss"
echo
echo "every run (req/s p50_ms p99_ms failed [cpu_us_per_request]):"
for paced in 0 $([ "$PACED" = 1 ] && echo 1); do
  for target in $TARGETS; do
    echo "  $([ $paced = 1 ] && echo paced || echo saturation) $target: $(tr '\n' ';' <"$WORK/$target-$paced.runs")"
  done
done

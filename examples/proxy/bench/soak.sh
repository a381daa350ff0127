#!/usr/bin/env bash
# Soak: the proxy at saturation for $DURATION with mixed traffic and nobody
# scraping /metrics, then RSS at the end against RSS after the first $SETTLE.
#
#   examples/proxy/bench/soak.sh                      # 3 minutes
#   DURATION=60 BIN=target/release/llm-proxy examples/proxy/bench/soak.sh
#
# Mixed traffic, round robin per request (wrk Lua): a model whose primary answers
# ("direct"), a model whose primary fails half the time and falls back ("fallback",
# fast once its circuit opens),
# and streaming requests ("stream"). Target (issue 12): RSS at the end within 10% of
# RSS after the first 15 s. Linux only (procfs); wrk from apt.
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-180}
SETTLE=${SETTLE:-15}
CONNECTIONS=${CONNECTIONS:-128}
THREADS=${THREADS:-2}

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release -p llm-proxy --bin llm-proxy >&2
  BIN=target/release/llm-proxy
fi

# shellcheck source=common.sh
source "examples/proxy/bench/common.sh"

start GOOD "$WORK/good.out" "$BIN" mock-upstream --listen 127.0.0.1:0 --name good
start FLAKY "$WORK/flaky.out" "$BIN" mock-upstream --listen 127.0.0.1:0 --name flaky --fail-rate 0.5
cat >"$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:0"

[[upstreams]]
name = "good"
kind = "openai"
base_url = "$GOOD/v1"

[[upstreams]]
name = "flaky"
kind = "openai"
base_url = "$FLAKY/v1"

[[models]]
name = "direct"
tiers = [ { upstream = "good", model = "gpt-4o" } ]

[[models]]
name = "fallback"
tiers = [ { upstream = "flaky", model = "gpt-4o" }, { upstream = "good", model = "gpt-4o-mini" } ]
template = "busy"

[escalation]
store = "memory"
TOML
RUST_LOG=error start PROXY "$WORK/proxy.out" "$BIN" --config "$WORK/proxy.toml"
PROXY_PID=$LAST_PID

cat >"$WORK/mixed.lua" <<'LUA'
local bodies = {
  '{"model":"direct","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}',
  '{"model":"fallback","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}',
  '{"model":"direct","stream":true,"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}',
}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, bodies[(n % 3) + 1])
end
LUA

for model in direct fallback; do
  curl -sf "$PROXY/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" >/dev/null
done

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$PROXY_PID/status"; }
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/mixed.lua" \
  "$PROXY/v1/chat/completions" >"$WORK/wrk.out" &
WRK=$!
sleep "$SETTLE"
early=$(rss_kb)
samples="$early"
elapsed=$SETTLE
while kill -0 "$WRK" 2>/dev/null && [ "$elapsed" -lt "$DURATION" ]; do
  sleep 15
  elapsed=$((elapsed + 15))
  samples="$samples $(rss_kb)"
done
wait "$WRK" || true
late=$(rss_kb)

echo "llm-proxy soak: $(nproc) cores, ${DURATION}s at saturation ($CONNECTIONS conns), mixed direct/fallback/stream, no scraper"
awk '/Requests\/sec|requests in|Non-2xx/' "$WORK/wrk.out"
echo "RSS after ${SETTLE}s: $((early / 1024)) MB; at the end: $((late / 1024)) MB; every 15 s (kB): $samples"
awk -v a="$early" -v b="$late" 'BEGIN { printf "end / early = %.3f (target <= 1.10)\n", b / a }'

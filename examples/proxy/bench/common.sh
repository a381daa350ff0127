# Sourced by the bench scripts: a work directory removed on exit, background
# processes killed on exit, and `start` for servers that print their address.

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

# load_config MOCK_URL [LINES]: load.sh's proxy config (a model with two tiers on
# the mock and a template), LINES added at the top (e.g. `workers = 1`).
load_config() {
  cat <<TOML
listen = "127.0.0.1:0"
${2:-}

[[upstreams]]
name = "primary"
kind = "openai"
base_url = "$1/v1"

[[upstreams]]
name = "secondary"
kind = "openai"
base_url = "$1/v1"

[[models]]
name = "bench"
tiers = [ { upstream = "primary", model = "gpt-4o" }, { upstream = "secondary", model = "gpt-4o-mini" } ]
template = "busy"

[escalation]
store = "memory"
TOML
}

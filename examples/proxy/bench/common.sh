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

# otlp_sink: a stand-in OTLP/HTTP collector on a free port (answers every POST
# with an empty protobuf 200, as a collector does); sets OTLP to its traces URL.
otlp_sink() {
  start OTLP_BASE "$WORK/otlp.out" python3 -u -c '
import http.server, socketserver
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
server = Server(("127.0.0.1", 0), Sink)
print("http://127.0.0.1:%d" % server.server_address[1], flush=True)
server.serve_forever()
'
  OTLP="$OTLP_BASE/v1/traces"
}

# with_extra BASE FILE OUT: BASE's config with FILE's TOML appended, `@OTLP@`
# in it replaced by the stand-in collector's URL (started on first use).
with_extra() {
  if grep -q '@OTLP@' "$2" && [ -z "${OTLP:-}" ]; then otlp_sink; fi
  { cat "$1"; echo; sed "s|@OTLP@|${OTLP:-}|g" "$2"; } >"$3"
}

#!/usr/bin/env bash
# Hostile cases against a running llm-proxy, each with its peak RSS and a normal
# request made while it runs:
#
#   1. big:     an upstream answering a 2 GiB body ($BIG_BYTES)
#   2. endless: an upstream answering a chunked body that never ends
#   3. batches: 300 batches with 900 KB batch ids ($BATCHES, $BATCH_ID_BYTES)
#   4. escalations: 2,000 escalation requests ($ESCALATIONS; over the caps: 429)
#   5. idle:    20,000 idle client connections ($IDLE), opened by processes of at
#               most 10,000 sockets each; the proxy holds $MAX_CONNECTIONS of them
#               (default 1024, the config's default) and closes the longest-idle
#               one for each new connection. Open files: the script raises its
#               soft `ulimit -n` (inherited by the proxy and the clients) to the hard
#               limit; with MAX_CONNECTIONS=19000 the proxy holds (nearly) all of
#               them (a container's hard limit often is 20,000).
#
# "normal" is the status of the normal request made during the case, and its
# time in seconds.
#
#   examples/proxy/bench/hostile.sh
#   BIN=target/debug/llm-proxy BIG_BYTES=$((256<<20)) IDLE=5000 examples/proxy/bench/hostile.sh
#
# The hostile upstream is a small Python server (python3); the normal requests go
# to `llm-proxy mock-upstream`. Peak RSS per case: the kernel's high-water mark
# (VmHWM), reset before each case (`echo 5 > /proc/PID/clear_refs`). Target
# (issue 12): within 64 MB for each case, and every normal request answered 200.
# Linux only (procfs).
set -euo pipefail
cd "$(dirname "$0")/../../.."

BIG_BYTES=${BIG_BYTES:-$((2 << 30))}
BATCHES=${BATCHES:-300}
BATCH_ID_BYTES=${BATCH_ID_BYTES:-900000}
ESCALATIONS=${ESCALATIONS:-2000}
IDLE=${IDLE:-20000}
ENDLESS_SECS=${ENDLESS_SECS:-15}
IDLE_SECS=${IDLE_SECS:-12}
PARALLEL=${PARALLEL:-16}

if [ -z "${BIN:-}" ]; then
  cargo build --release -p llm-proxy --bin llm-proxy >&2
  BIN=target/release/llm-proxy
fi
command -v python3 >/dev/null || { echo "python3 is needed (hostile upstream)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }

# shellcheck source=common.sh
source "examples/proxy/bench/common.sh"

# The hostile upstream: /big/... answers $BIG_BYTES bytes (Content-Length),
# /endless/... a chunked body that never ends.
cat >"$WORK/hostile.py" <<'PY'
import http.server, socketserver, sys
BIG = int(sys.argv[1])
CHUNK = b"x" * 65536
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            if self.path.startswith("/big"):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(BIG))
                self.end_headers()
                left = BIG
                while left > 0:
                    n = min(left, len(CHUNK)); self.wfile.write(CHUNK[:n]); left -= n
            else:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                while True:
                    self.wfile.write(b"10000\r\n" + CHUNK + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{s.server_address[1]}", flush=True)
s.serve_forever()
PY

# first_url FILE: wait for the first http://ADDR line in FILE.
first_url() {
  for _ in $(seq 1 200); do
    if grep -qo 'http://[0-9.:]*' "$1" 2>/dev/null; then
      grep -o 'http://[0-9.:]*' "$1" | head -1
      return
    fi
    sleep 0.1
  done
  echo "nothing listening in $1" >&2
  exit 1
}

python3 "$WORK/hostile.py" "$BIG_BYTES" >"$WORK/hostile.out" 2>&1 &
PIDS+=($!)
HOSTILE=$(first_url "$WORK/hostile.out")
"$BIN" mock-upstream --listen 127.0.0.1:0 >"$WORK/mock.out" 2>&1 &
PIDS+=($!)
MOCK=$(first_url "$WORK/mock.out")

# Descriptors: the soft limit up to the hard one, for the proxy and the clients.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
if [ "$FD_LIMIT" = unlimited ]; then FD_LIMIT=$((IDLE + 4096)); fi
# The config's default; idle connections over it are reclaimed (closed for new ones).
MAX_CONNECTIONS=${MAX_CONNECTIONS:-1024}
echo "open files: $FD_LIMIT; proxy max_connections = $MAX_CONNECTIONS" >&2

cat >"$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:0"
workers = 2

[[upstreams]]
name = "normal"
kind = "openai"
base_url = "$MOCK/v1"

[[upstreams]]
name = "big"
kind = "openai"
base_url = "$HOSTILE/big/v1"
timeout_secs = 30

[[upstreams]]
name = "endless"
kind = "openai"
base_url = "$HOSTILE/endless/v1"
timeout_secs = $ENDLESS_SECS

[[models]]
name = "normal"
tiers = [ { upstream = "normal", model = "m" } ]

[[models]]
name = "big"
tiers = [ { upstream = "big", model = "m" } ]

[[models]]
name = "endless"
tiers = [ { upstream = "endless", model = "m" } ]

[limits]
max_connections = $MAX_CONNECTIONS

[auth]
client_keys = ["bench-key"]
admin_keys = ["bench-admin"]

[escalation]
mode = "detach"
store = "memory"
TOML
"$BIN" --config "$WORK/proxy.toml" >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
PROXY_PID=$!
PIDS+=($PROXY_PID)
PROXY=$(first_url "$WORK/proxy.out")

chat() { # chat MODEL [extra curl args...]: prints the status and the time taken
  local model=$1; shift
  curl -s -o /dev/null -w '%{http_code}/%{time_total}s' --max-time 60 "$PROXY/v1/chat/completions" \
    -H 'authorization: Bearer bench-key' -H 'content-type: application/json' \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" "$@" || echo "---"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$PROXY_PID/status"; }
reset_peak() { echo 5 >"/proc/$PROXY_PID/clear_refs" 2>/dev/null || true; }

echo "warming up..." >&2
for _ in $(seq 1 20); do chat normal >/dev/null; done
printf '%-12s %10s %10s %16s %s\n' case peak_MB after_MB normal detail
report() { # report CASE NORMAL_STATUS DETAIL
  printf '%-12s %10.1f %10.1f %16s %s\n' "$1" "$(($(hwm_kb)))e-3" "$(($(rss_kb)))e-3" "$2" "$3"
}
reset_peak
report baseline "$(chat normal)" ""

# 1. A huge answer.
reset_peak
big_status=$(chat big) &
BIG_JOB=$!
sleep 1
normal=$(chat normal)
wait $BIG_JOB || true
report big "$normal" "$((BIG_BYTES >> 20)) MiB answer"

# 2. An answer that never ends.
reset_peak
( chat endless >"$WORK/endless.status" ) &
END_JOB=$!
sleep 2
normal=$(chat normal)
wait $END_JOB || true
report endless "$normal" "client saw $(cat "$WORK/endless.status") (cut at max_upstream_body_bytes or the ${ENDLESS_SECS} s upstream timeout, whichever first)"

# 3. Batches with huge ids.
reset_peak
python3 - "$BATCH_ID_BYTES" >"$WORK/batch.json" <<'PY'
import json, sys
print(json.dumps({"batch_id": "b" * int(sys.argv[1]),
  "requests": [{"key": "a", "body": {"model": "normal", "messages": [{"role": "user", "content": "hi"}]}}]}))
PY
seq 1 "$BATCHES" | xargs -P "$PARALLEL" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  --max-time 30 "$PROXY/v1/batch" -H 'authorization: Bearer bench-key' \
  -H 'content-type: application/json' --data-binary "@$WORK/batch.json" >"$WORK/batch.codes" &
BATCH_JOB=$!
sleep 0.5
normal=$(chat normal)
wait $BATCH_JOB || true
report batches "$normal" "$(sort "$WORK/batch.codes" | uniq -c | tr -s ' \n' ' ')"

# 4. Escalations.
reset_peak
seq 1 "$ESCALATIONS" | xargs -P "$PARALLEL" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  --max-time 30 "$PROXY/v1/chat/completions" -H 'authorization: Bearer bench-key' \
  -H 'x-require-approval: true' -H 'content-type: application/json' \
  -d '{"model":"normal","messages":[{"role":"user","content":"please approve"}]}' \
  >"$WORK/esc.codes" &
ESC_JOB=$!
sleep 0.5
normal=$(chat normal)
wait $ESC_JOB || true
list_bytes=$(curl -s --max-time 30 "$PROXY/v1/escalations" -H 'authorization: Bearer bench-admin' | wc -c)
report escalations "$normal" "$(sort "$WORK/esc.codes" | uniq -c | tr -s ' \n' ' ')list page ${list_bytes} B"

# 5. Idle connections, from processes of at most 10,000 sockets each.
reset_peak
cat >"$WORK/idle.py" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect_ex((host, int(port)))
    except OSError:
        break
    socks.append(s)
print(len(socks), flush=True)
time.sleep(float(sys.argv[3]))
PY
IDLE_JOBS=()
left=$IDLE
i=0
while [ "$left" -gt 0 ]; do
  n=$((left > 10000 ? 10000 : left))
  python3 "$WORK/idle.py" "${PROXY#http://}" "$n" "$IDLE_SECS" >"$WORK/idle.$i.out" 2>&1 &
  IDLE_JOBS+=($!)
  left=$((left - n))
  i=$((i + 1))
done
sleep 5
held=$(ls "/proc/$PROXY_PID/fd" | wc -l)
idle_peak=$(($(hwm_kb)))
normal=$(chat normal)
for job in "${IDLE_JOBS[@]}"; do wait "$job" || true; done
opened=$(cat "$WORK"/idle.*.out | awk '{s += $1} END {print s + 0}')
report idle "$normal" "$opened connections opened; the proxy held $held descriptors, peak $((idle_peak / 1024)) MB with them"

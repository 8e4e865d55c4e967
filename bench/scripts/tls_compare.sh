#!/usr/bin/env bash
# edgeplane vs nginx over TLS, until the compare harness has TLS stages:
# HTTP/2 (ALPN h2) and HTTP/1.1 over TLS, keep-alive, h2load as the client;
# TLS handshakes per second, full and resumed (openssl s_time).
# Each proxy runs alone on core 0 (edgeplane threads = 1, nginx one worker,
# the same self-signed certificate, ECDSA P-256); h2load and the bench
# backend run on core 1. edgeplane routes over a 1,000,000-repl table.
# CPU per request = the proxy's user+system time over the run / requests.
# Neither proxy closes keep-alive connections by request count during a run.
#
# Usage: bench/scripts/tls_compare.sh [SECONDS]   (after cargo build --release)
# Prints a Markdown table. Needs h2load (Debian: nghttp2-client) and nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
command -v h2load >/dev/null || apt-get install -y -q nghttp2-client >/dev/null

wait_line() { # FILE REGEX
  for _ in $(seq 600); do
    if l=$(grep -m1 -E "$2" "$1" 2>/dev/null); then echo "$l"; return 0; fi
    sleep 0.05
  done
  echo "no /$2/ in $1" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

taskset -c 1 "$bin/edgeplane-bench" backend --listen 127.0.0.1:0 >"$work/backend.out" 2>&1 &
pids+=($!)
backend=$(wait_line "$work/backend.out" "backend listening on" | awk '{print $NF}')
"$bin/edgeplane-bench" world --repls 1000000 --vm-addr "$backend" >"$work/world.json" 2>/dev/null
mkdir "$work/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/certs/repl.co.key" -out "$work/certs/repl.co.crt" \
  -subj "/CN=*.repl.co" -addext "subjectAltName=DNS:*.repl.co" 2>/dev/null
head -c 48 /dev/urandom | base64 >"$work/hop.secret"
cat >"$work/edge.toml" <<TOML
[edge]
region = "region-0"
instance_id = "bench-tls"
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
threads = 1
pid_file = "edge.pid"
upgrade_sock = "edge.sock"

[placement]
source = "file"
file = "world.json"

[security]
hop_secret_file = "hop.secret"

[limits]
# Keep-alive connections are not cut by a request count (nginx: keepalive_requests).
max_requests_per_connection = 1000000

[tls]
listen = ["127.0.0.1:0"]
certs_dir = "certs"
TOML
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream be { server $backend; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port ssl http2;
    ssl_certificate $work/certs/repl.co.crt;
    ssl_certificate_key $work/certs/repl.co.key;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX

# run PEER PID PORT MODE: one h2load run; prints a table row.
run() {
  local peer=$1 pid=$2 port=$3 mode=$4 flags
  case $mode in
    h2) flags=(-c 64 -m 10) ;;
    h1) flags=(--h1 -c 64 -m 1) ;;
  esac
  # Warm up (connections, table pages), then measure.
  taskset -c 1 h2load -D 1 "${flags[@]}" --connect-to "127.0.0.1:$port" "https://app0.repl.co:$port/" >/dev/null 2>&1 || true
  local before after out reqs rps
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 h2load -D "$secs" "${flags[@]}" --connect-to "127.0.0.1:$port" "https://app0.repl.co:$port/" 2>&1)
  after=$(cpu_ticks "$pid")
  reqs=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  local proto
  proto=$(grep -m1 -o 'Application protocol: [a-z0-9/.]*' <<<"$out" | awk '{print $3}')
  awk -v p="$peer" -v m="$mode" -v pr="$proto" -v r="$reqs" -v s="$rps" -v t=$((after - before)) -v hz="$hz" \
    'BEGIN { printf "| %s | %s (%s) | %.0f | %d | %.1f |\n", p, m, pr, s, r, (r > 0 ? t / hz * 1e6 / r : 0) }'
}

# hs PEER PID PORT MODE: TLS handshakes, one connection at a time from a
# small Python client (SNI app0.repl.co, TLS 1.3; MODE new: full
# handshakes, reuse: session resumption with the first connection's
# ticket), each followed by a clean close; prints a row.
hs() {
  local peer=$1 pid=$2 port=$3 mode=$4 before after n
  before=$(cpu_ticks "$pid")
  n=$(taskset -c 1 python3 - "$port" "$mode" "$secs" <<'PY'
import socket, ssl, sys, time
port, mode, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
session, n, end = None, 0, time.time() + secs
while time.time() < end:
    with socket.create_connection(("127.0.0.1", port)) as s:
        with ctx.wrap_socket(s, server_hostname="app0.repl.co", session=session if mode == "reuse" else None) as t:
            t.sendall(b"GET / HTTP/1.1\r\nHost: app0.repl.co\r\nConnection: close\r\n\r\n")
            while t.recv(4096):
                pass
            if mode == "reuse" and session is None:
                session = t.session
            if mode == "reuse" and n > 0 and not t.session_reused:
                sys.exit("session not resumed")
    n += 1
print(n)
PY
)
  after=$(cpu_ticks "$pid")
  awk -v p="$peer" -v m="$mode" -v n="${n:-0}" -v s="$secs" -v t=$((after - before)) -v hz="$hz" \
    'BEGIN { printf "| %s | TLS connection, one request (%s) | %.0f | %d | %.1f |\n", p, m, n / s, n, (n > 0 ? t / hz * 1e6 / n : 0) }'
}

taskset -c 0 "$bin/edgeplane" serve -c "$work/edge.toml" >"$work/edge.out" 2>"$work/edge.log" &
edge_pid=$!
pids+=("$edge_pid")
edge_port=$(wait_line "$work/edge.out" "https listening on" | awk '{print $NF}' | sed 's/.*://')
wait_line "$work/edge.out" "table" >/dev/null || true
for _ in $(seq 100); do
  curl -sk --max-time 1 --connect-to "app0.repl.co:$edge_port:127.0.0.1:$edge_port" "https://app0.repl.co:$edge_port/" -o /dev/null && break
  sleep 0.1
done
echo "| peer | protocol | req/s | requests | CPU-µs/req |"
echo "|---|---|---:|---:|---:|"
run edgeplane "$edge_pid" "$edge_port" h2
run edgeplane "$edge_pid" "$edge_port" h1
hs edgeplane "$edge_pid" "$edge_port" new
hs edgeplane "$edge_pid" "$edge_port" reuse
kill "$edge_pid"

taskset -c 0 nginx -c "$work/nginx.conf" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/nginx.pid" ] && pgrep -f "nginx: worker" >/dev/null && break; sleep 0.05; done
worker=$(pgrep -n -f "nginx: worker")
run nginx "$worker" "$nginx_port" h2
run nginx "$worker" "$nginx_port" h1
hs nginx "$worker" "$nginx_port" new
hs nginx "$worker" "$nginx_port" reuse
kill "$(cat "$work/nginx.pid")"

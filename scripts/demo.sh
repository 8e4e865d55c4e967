#!/usr/bin/env bash
# Runs the demo on the embedded default: two edges (us-east1 on :8080,
# ap-south1 on :8081) routing from config/examples/snapshot.json to three
# fake conman VMs (:7001-7003), no database. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGEPLANE_SKIP_SERVICES=1 ./scripts/setup.sh
cargo build --workspace --bins --quiet
B=target/debug
vms=()
edges=()
# Background jobs of a script ignore SIGINT, so Ctrl-C reaches them only
# through this trap: the edges drain on SIGTERM and exit as soon as no
# connection is left (at once when idle), and so do the fake VMs.
cleanup() {
  trap - EXIT INT TERM
  kill -TERM "${edges[@]}" 2>/dev/null || true
  kill -TERM "${vms[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for i in 1 2 3; do
  $B/edgeplane-bench fake-vm --id vm-$i --listen 127.0.0.1:700$i --metrics-listen 127.0.0.1:710$i &
  vms+=($!)
done
RUST_LOG=${RUST_LOG:-warn} $B/edgeplane serve -c config/examples/edgeplane.toml &
edges+=($!)
RUST_LOG=${RUST_LOG:-warn} $B/edgeplane serve -c config/examples/edgeplane-ap-south1.toml &
edges+=($!)
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9901/readyz >/dev/null && curl -sf http://127.0.0.1:9902/readyz >/dev/null && break
  sleep 0.1
done
# A workspace session token, as the platform's web server mints it (the
# edges hold only the public key).
TOKEN=$($B/placectl token mint --key scripts/demo-web-server.secret --repl r1 --region us-east1 --ttl 1h)
cat <<TXT

edgeplane demo is up: edge us-east1 on 127.0.0.1:8080 (admin :9901),
edge ap-south1 on 127.0.0.1:8081 (admin :9902), fake VMs on :7001-:7003.
Try:
  curl -i -H 'Host: app1.repl.co' http://127.0.0.1:8080/hello         # running on vm-1
  curl -i -H 'Host: APP1.Repl.Co.:8080' http://127.0.0.1:8080/         # same app, canonicalised
  curl -i -H 'Host: www.example.com' http://127.0.0.1:8080/            # custom domain
  curl -i -H 'Host: app2.repl.co' http://127.0.0.1:8080/               # not running: placed, then sticky
  curl -i -H 'Host: app3.repl.co' http://127.0.0.1:8080/               # homed in ap-south1: forwarded
  curl -i -H 'Host: moved.repl.co' http://127.0.0.1:8080/              # tombstone forward
  curl -i -H 'Host: nope.repl.co' http://127.0.0.1:8080/               # 404, no VM touched
  curl -i -H 'Host: app1.repl.co' http://127.0.0.1:8081/               # wrong region's edge: one hop home
  curl -s -X POST -d '{"replay":"vm=vm-2"}' http://127.0.0.1:7101/control   # vm-1 asks for a replay...
  curl -i -H 'Host: app1.repl.co' http://127.0.0.1:8080/               # ...so vm-2 answers
  $B/edgeplane-bench ws --edge 127.0.0.1:8080 --host app1.repl.co hello-websocket
  $B/edgeplane-bench ws --edge 127.0.0.1:8080 --host edge.local --path "/__ws/r1?token=$TOKEN" hi-workspace
  $B/edgeplane-bench ws --edge 127.0.0.1:8081 --host edge.local --path "/__ws/r1?token=$TOKEN" wrong-region  # one hop home
  curl -s "http://127.0.0.1:9902/debug/route?host=edge.local&path=/__ws/r1%3Ftoken%3D$TOKEN"   # region from the token
  $B/edgeplane route -c config/examples/edgeplane.toml app2.repl.co    # explain a decision
  curl -s 'http://127.0.0.1:9901/debug/route?host=moved.repl.co'
  curl -s http://127.0.0.1:9901/metrics | grep ^edgeplane_
Ctrl-C stops the demo.
TXT
wait

#!/usr/bin/env bash
# Setup (as on 2026-12-07): /tmp/sys/ng.conf is the nginx.conf the compare harness writes,
# with its listen port set to 7813, the TLS lines dropped and the upstream set to
# 127.0.0.1:7001; /tmp/cg/edge.toml is callgrind_ab.sh's edge (threads = 1, port 7812).
# User and system CPU per request at saturation: edgeplane (threads = 1) and
# nginx (1 worker), each alone on core 0, wrk on core 1, same backend.
set -u
cd /tmp/sys
tick() { awk '{print $14, $15}' /proc/$1/stat; }
run() { # name pid port
  taskset -c 1 wrk -t1 -c32 -d2s -H 'Host: app0.repl.co' http://127.0.0.1:$3/ > /dev/null
  read u0 s0 < <(tick $2)
  out=$(taskset -c 1 wrk -t1 -c32 -d10s -H 'Host: app0.repl.co' http://127.0.0.1:$3/)
  read u1 s1 < <(tick $2)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  python3 -c "u=($u1-$u0)*1e4/$reqs; s=($s1-$s0)*1e4/$reqs; print(f'$1: {$reqs} requests, user {u:.2f} us/req, system {s:.2f} us/req, total {u+s:.2f}')"
}
taskset -c 1 /work/main/target/release/edgeplane-bench backend --listen 127.0.0.1:7001 > backend.log 2>&1 &
B=$!
sleep 0.5
for round in ${ROUNDS:-1 2}; do
  taskset -c 0 /usr/sbin/nginx -c /tmp/sys/ng.conf -p /tmp/sys > ng.log 2>&1 &
  sleep 1
  run nginx $(pgrep -f "nginx: worker" | head -1) 7813
  kill %2 2>/dev/null; pkill -f "nginx: master"; sleep 0.5
  (cd /tmp/cg && taskset -c 0 /work/main/target/release/edgeplane serve -c ${EDGE_TOML:-edge.toml} > /tmp/sys/edge.log 2>&1 &)
  sleep 1.5
  run edgeplane $(cat /tmp/cg/edge.pid) 7812
  kill $(cat /tmp/cg/edge.pid); sleep 1
done
kill $B

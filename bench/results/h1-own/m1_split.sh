#!/usr/bin/env bash
# Setup: /tmp/m1 holds world1m.json (`edgeplane-bench world --repls 1000000`), hosts.txt (the
# comparison's 4,096 hosts: app{k*240}.repl.co), hosts.lua (the comparison's wrk script over them),
# hop.secret and edge.toml (callgrind_ab.sh's edge on port 7832); /tmp/sys/ng.conf as in
# user_system_split.sh. PERF=perf also records the edge's profile (perf.data).
# User and system CPU per request with the comparison's load: 1,000,000 repls, wrk -t1 -c64
# cycling over its 4,096 hosts; the edge (threads = 1) and nginx alone on core 0.
set -u
cd /tmp/m1
tick() { awk '{print $14, $15}' /proc/$1/stat; }
run() { # name pid port [perf]
  taskset -c 1 wrk -t1 -c64 -d2s -s hosts.lua http://127.0.0.1:$3/ > /dev/null
  read u0 s0 < <(tick $2)
  [ "${4:-}" = perf ] && (perf record -F 999 -g -p $2 -o perf.data -- sleep 8 > /dev/null 2>&1 &)
  out=$(taskset -c 1 wrk -t1 -c64 -d10s -s hosts.lua http://127.0.0.1:$3/)
  read u1 s1 < <(tick $2)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  python3 -c "u=($u1-$u0)*1e4/$reqs; s=($s1-$s0)*1e4/$reqs; print(f'$1: {$reqs} requests, user {u:.2f} us/req, system {s:.2f} us/req, total {u+s:.2f}')"
}
taskset -c 1 /work/main/target/release/edgeplane-bench backend --listen 127.0.0.1:7001 > backend.log 2>&1 &
B=$!
rm -f edge-m1.pid
taskset -c 0 /work/main/target/release/edgeplane serve -c edge.toml > edge.log 2>&1 &
E=$!
for i in $(seq 120); do curl -sf -o /dev/null -H 'Host: app0.repl.co' http://127.0.0.1:7832/ && break; sleep 0.5; done
run edgeplane-1M $E 7832 ${PERF:-}
kill $E; wait $E 2>/dev/null
taskset -c 0 /usr/sbin/nginx -c /tmp/sys/ng.conf -p /tmp/sys > ng.log 2>&1 &
sleep 1
run nginx $(pgrep -f "nginx: worker" | head -1) 7813
pkill -f "nginx: master"; kill $B

#!/usr/bin/env bash
# HTTP/2 over TLS with many streams to one app: CPU per request of the edge at threads = 1
# and 2. Setup: /tmp/h2/edge1.toml and edge2.toml are /tmp/cg/edge.toml (callgrind_ab.sh) with
# threads set, ports 7815/7816, pid files edge1.pid/edge2.pid and a [tls] listener on
# 127.0.0.1:782N with certs_dir = "certs" (a self-signed *.repl.co pair named repl.co.crt/.key).
set -u
cd /tmp/h2
tick() { awk '{print $14+$15}' /proc/$1/stat; }
taskset -c 1 /work/main/target/release/edgeplane-bench backend --listen 127.0.0.1:7001 > backend.log 2>&1 &
B=$!
for t in ${THREADS:-1 2}; do
  taskset -c 0 ${BIN:-/work/main/target/release/edgeplane} serve -c edge$t.toml > edge$t.log 2>&1 &
  sleep 1.5
  P=$(cat edge$t.pid)
  taskset -c 1 h2load -n 20000 -c 64 -m 10 --connect-to 127.0.0.1:782$t https://app0.repl.co:782$t/ > /dev/null
  c0=$(tick $P)
  out=$(taskset -c 1 h2load -n ${N:-100000} -c 64 -m 10 --connect-to 127.0.0.1:782$t https://app0.repl.co:782$t/)
  c1=$(tick $P)
  echo "$out" | grep -E "^requests:|finished in"
  python3 -c "print(f'threads $t: {($c1-$c0)*1e4/${N:-100000}:.1f} CPU-us/req')"
  kill $P; sleep 1
done
kill $B

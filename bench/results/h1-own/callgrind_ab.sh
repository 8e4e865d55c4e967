#!/usr/bin/env bash
# Instructions per proxied request of two edgeplane binaries
# (/tmp/ab/before, /tmp/ab/after), counted by callgrind: repeatable for
# the same binary and inputs whatever else the machine does, so a change
# of a few percent shows where CPU-time A/B runs on a noisy VM cannot.
# The edge runs under `valgrind --tool=callgrind` with $CG/edge.toml
# (threads = 1, a 10,000-repl world; listen 127.0.0.1:7812), the backend
# `edgeplane-bench backend` on 127.0.0.1:7001; after a warm-up the
# counters are zeroed, N keep-alive requests are sent (h2load --h1, 8
# connections), the counters are dumped, and the total is divided by N.
set -euo pipefail
cd "${CG:-/tmp/cg}"
N=${N:-20000}
for name in ${NAMES:-before after}; do
  rm -f callgrind.$name.*
  valgrind --tool=callgrind --callgrind-out-file=callgrind.$name.%p --collect-atstart=yes \
    /tmp/ab/$name serve -c edge.toml > edge-$name.log 2>&1 &
  for i in $(seq 600); do
    curl -sf -o /dev/null -H 'Host: app0.repl.co' http://127.0.0.1:7812/ && break
    sleep 0.5
  done
  h2load --h1 -n 2000 -c 8 -H ':authority: app0.repl.co' http://127.0.0.1:7812/ > /dev/null
  callgrind_control -z > /dev/null 2>&1
  h2load --h1 -n "$N" -c 8 -H ':authority: app0.repl.co' http://127.0.0.1:7812/ | grep -E '^requests:|^status codes:'
  callgrind_control -d > /dev/null 2>&1
  sleep 1
  PID=$(cat edge.pid)
  kill "$PID"; wait 2>/dev/null || true
  # The dump after zeroing is the file with the highest part number.
  last=$(ls -v callgrind.$name.* | grep -v '\.0$' | tail -1 || true)
  total=$(grep -m1 '^summary:' "$last" 2>/dev/null | awk '{print $2}')
  [ -n "$total" ] || total=$(grep -h '^totals:' "$last" | awk '{print $2}')
  python3 -c "print(f'$name: {$total} instructions for $N requests, {$total/$N:.0f} per request ($last)')"
done

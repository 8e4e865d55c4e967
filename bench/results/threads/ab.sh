#!/usr/bin/env bash
# A/B of two edgeplane binaries (/tmp/ab/before, /tmp/ab/after), pinned to
# core 0, load on core 1: CPU per request at a fixed rate and saturation.
# The edge's config is $XT/edge.toml (threads = 2 for this directory's
# run; threads = 1 for bench/results/h1-own/answer-head-ab.txt, run with
# ROUNDS="1 2 3" RATE=8000 SECS=8).
set -euo pipefail
cd "${XT:-/tmp/xt}"
LOAD=/work/main/target/release/edgeplane-bench
cpu() { awk '{print $14+$15+$16+$17}' /proc/$1/stat; }
for round in ${ROUNDS:-3 4}; do
 for name in before after; do
  taskset -c 0 /tmp/ab/$name serve -c edge.toml > edge-$name.log 2>&1 &
  for i in $(seq 50); do curl -sf -o /dev/null -H 'Host: app0.repl.co' http://127.0.0.1:7802/ && break; sleep 0.1; done
  PID=$(cat edge.pid)
  for mode in rate sat; do
    args=(--target 127.0.0.1:7802 --host app0.repl.co --connections 32 --seconds ${SECS:-10} --warmup-ms 1000)
    [ $mode = rate ] && args+=(--rate ${RATE:-15000})
    c0=$(cpu $PID)
    out=$(taskset -c 1 $LOAD http-load "${args[@]}" 2>/dev/null)
    c1=$(cpu $PID)
    python3 -c "
import json,sys; r=json.loads('''$out''')
ticks=$c1-$c0; us=ticks*1e4/ r['answered_total']
print(f'round $round $name $mode: rps {r[\"rps\"]:.0f} answered {r[\"answered_total\"]} cpu_us_per_req {us:.2f} p50 {r[\"latency\"][\"p50_us\"]} p99 {r[\"latency\"][\"p99_us\"]} p999 {r[\"latency\"][\"p999_us\"]}')"
  done
  kill $PID; wait $! 2>/dev/null || true; sleep 1
 done
done

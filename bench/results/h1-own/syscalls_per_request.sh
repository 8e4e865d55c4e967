#!/usr/bin/env bash
# Setup: as user_system_split.sh (/tmp/sys/ng.conf, /tmp/cg/edge.toml), with the backend
# (`edgeplane-bench backend --listen 127.0.0.1:7001`) already running.
# Syscalls per proxied request: edgeplane (threads = 1) and nginx (1 worker),
# same backend (127.0.0.1:7001), 40,000 keep-alive requests over 8 connections.
set -u
cd /tmp/sys
sed -e 's/listen 127.0.0.1:[0-9]*;/listen 127.0.0.1:7813;/' -e 's/ *listen 127.0.0.1:[0-9]* ssl http2;//' \
    -e 's/server 127.0.0.1:[0-9]*;/server 127.0.0.1:7001;/' -e '/ssl_/d' -e "s#/tmp/edgeplane-compare-[A-Za-z0-9]*#/tmp/sys#g" nginx.conf > ng.conf
mkdir -p nginx-body nginx-proxy nginx-fastcgi nginx-uwsgi nginx-scgi
N=40000
count() { # $1 pid, $2 port
  h2load --h1 -n 2000 -c 8 -H ':authority: app0.repl.co' http://127.0.0.1:$2/ > /dev/null
  strace -c -f -p $1 -o strace-$2.txt & S=$!
  sleep 0.5
  h2load --h1 -n $N -c 8 -H ':authority: app0.repl.co' http://127.0.0.1:$2/ | grep -E '^requests:'
  kill -INT $S; wait $S 2>/dev/null
  awk -v n=$N 'NR>2 && $NF!="total" && $4 ~ /^[0-9]+$/ {printf "%8.3f/req  %s\n", $4/n, $NF} $NF=="total" {printf "%8.3f/req  total\n", $3/n}' strace-$2.txt
}
/usr/sbin/nginx -c /tmp/sys/ng.conf -p /tmp/sys > ng.log 2>&1 &
sleep 1
echo "== nginx"; count $(pgrep -f "nginx: worker" | head -1) 7813
kill %1; sleep 0.5
cd /tmp/cg && /work/main/target/release/edgeplane serve -c edge.toml > /tmp/sys/edge.log 2>&1 &
sleep 1.5; cd /tmp/sys
echo "== edgeplane"; count $(cat /tmp/cg/edge.pid) 7812
kill $(cat /tmp/cg/edge.pid); sleep 0.5

#!/usr/bin/env bash
# Memory per loaded certificate in Caddy and nginx, for comparison with the
# edge's 1.5 KiB per cached certificate (handshakes_200k.txt). 10,000
# self-signed ECDSA P-256 pairs (cert + key in one PEM file each), then:
# - Caddy 2.6 (Debian), JSON config, tls.certificates.load_folders: RSS
#   12 s after start, with an empty folder and with the 10,000;
# - nginx (Debian), one server block per name (nginx has no other way to
#   hold many certificates in memory), worker_processes 1: the worker's
#   RSS 8 s after start, with 0 and 10,000 extra server blocks.
set -euo pipefail
D=/tmp/c10k; mkdir -p $D /tmp/c0
if [ "$(ls $D | wc -l)" -lt 10000 ]; then
  for i in $(seq 0 9999); do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/k.pem -out /tmp/c.pem \
      -days 30 -subj "/CN=c$i.example.org" -addext "subjectAltName=DNS:c$i.example.org" 2>/dev/null
    cat /tmp/c.pem /tmp/k.pem > $D/c$i.pem
  done
fi
for f in c0 c10k; do
  cat > /tmp/caddy-$f.json <<JSON
{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}},
 "apps":{"http":{"servers":{"s":{"listen":[":18443"],"routes":[{"handle":[{"handler":"static_response","body":"ok"}]}],"automatic_https":{"disable":true}}}},
  "tls":{"certificates":{"load_folders":["/tmp/$f"]}}}}
JSON
  XDG_DATA_HOME=/tmp/caddydata-$f XDG_CONFIG_HOME=/tmp/caddycfg-$f caddy run --config /tmp/caddy-$f.json >/dev/null 2>&1 &
  pid=$!; sleep 12
  echo "caddy $f: $(grep VmRSS /proc/$pid/status)"
  kill $pid; wait $pid 2>/dev/null || true
done
for n in 0 10000; do
  d=/tmp/ngx$n; mkdir -p $d/logs
  {
    echo "worker_processes 1; pid $d/nginx.pid; error_log $d/logs/error.log; events {} http { access_log off;"
    echo "server { listen 127.0.0.1:18444 ssl default_server; ssl_certificate $D/c0.pem; ssl_certificate_key $D/c0.pem; }"
    for i in $(seq 1 $n); do j=$((i-1))
      echo "server { listen 127.0.0.1:18444 ssl; server_name c$j.example.org; ssl_certificate $D/c$j.pem; ssl_certificate_key $D/c$j.pem; }"
    done
    echo "}"
  } > $d/nginx.conf
  /usr/sbin/nginx -p $d -c $d/nginx.conf -e $d/logs/error.log 2>/dev/null; sleep 8
  w=$(pgrep -P "$(cat $d/nginx.pid)")
  echo "nginx $n extra server blocks: worker $(grep VmRSS /proc/$w/status)"
  /usr/sbin/nginx -p $d -c $d/nginx.conf -s stop 2>/dev/null; sleep 2
done

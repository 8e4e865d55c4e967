#!/usr/bin/env bash
# A two-region edgeplane on one machine, and a walk through a cross-region
# transfer with tombstone forwarding. A demo for people and a test for CI
# (proxy/tests/e2e/local_stack.rs runs it): every step checks what it shows
# and the script exits 1 on the first surprise.
#
#   scripts/local-stack.sh          run the walk-through, then stop everything
#   scripts/local-stack.sh --keep   leave the stack running (Ctrl-C stops it)
#
# What it starts (every port chosen by the OS, nothing fixed):
#   PostgreSQL and Redis   only if not already running (scripts/services.sh);
#                          one fresh database, dropped at the end
#   4 fake conman VMs      vm-use1-1, vm-use1-2 (us-east1), vm-aps1-1, vm-aps1-2
#                          (ap-south1), each with a /metrics listener
#   2 edges                use1-edge-1 (us-east1) and aps1-edge-1 (ap-south1),
#                          syncing from PostgreSQL, scraping their VMs
# and seeds the control plane with `placectl import`.
#
# Binaries come from $EDGEPLANE_BIN_DIR, else ${CARGO_TARGET_DIR:-target}/debug
# (built with `cargo build --bins` when missing). The database server is
# $EDGEPLANE_PG (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${EDGEPLANE_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}"
pg="${EDGEPLANE_PG:-postgres://postgres@127.0.0.1:5432}"
work=$(mktemp -d "${TMPDIR:-/tmp}/edgeplane-stack.XXXXXX")
db="edgeplane_stack_$$"
token="local-stack-admin-$$-$RANDOM$RANDOM"
pids=()
n_steps=6
step_no=0

step() { step_no=$((step_no + 1)); printf '\n== %d/%d %s\n' "$step_no" "$n_steps" "$*"; }
say() { printf '   %s\n' "$*"; }
# fail MESSAGE: says what went wrong (on stderr, also from inside $(...)),
# keeps the work directory with every log, and stops.
fail() {
  printf '   FAIL %s\n' "$*" >&2
  echo "local-stack: logs are in $work (kept)" >&2
  touch "$work/.keep"
  exit 1
}
# check DESCRIPTION ACTUAL PATTERN: ACTUAL must match the extended regex PATTERN.
check() {
  if [[ "$2" =~ $3 ]]; then printf '   ok   %s: %s\n' "$1" "$2"; else fail "$1: got '$2', wanted /$3/"; fi
}

keep_work=0
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  [ "$keep_work" = 1 ] || [ -e "$work/.keep" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_line FILE REGEX: waits (10 s) for a line of FILE matching REGEX, prints it.
wait_line() {
  for _ in $(seq 200); do
    if line=$(grep -m1 -E "$2" "$1" 2>/dev/null); then echo "$line"; return 0; fi
    sleep 0.05
  done
  fail "no line /$2/ in $1: $(tail -3 "$1" 2>/dev/null)"
}

# request EDGE_ADDR HOST: one GET with the debug token; sets status, served_by, route.
request() {
  local head
  head=$(curl -s -o "$work/body" -D - --max-time 10 -H "Host: $2" -H "x-edgeplane-debug: $token" "http://$1/" | tr -d '\r') ||
    fail "curl http://$1/ (Host: $2)"
  status=$(sed -n '1s/^HTTP\/1.1 \([0-9]*\).*/\1/p' <<<"$head")
  served_by=$(sed -n 's/^x-served-by: //Ip' <<<"$head")
  route=$(sed -n 's/^x-edgeplane-route: //Ip' <<<"$head")
}

admin() { curl -s --max-time 5 -H "Authorization: Bearer $token" "http://$1$2"; }

# metric ADMIN_ADDR NAME: the value of an unlabelled metric.
metric() { admin "$1" /metrics | awk -v m="$2" '$1 == m { print $2 }'; }

step "PostgreSQL and Redis"
for b in edgeplane placectl edgeplane-bench; do
  if [ ! -x "$bin/$b" ]; then
    say "building binaries (cargo build --bins)"
    (cd "$root" && cargo build --bins -q)
    break
  fi
done
"$root/scripts/services.sh"
psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null || fail "cannot create database $db on $pg"
export DATABASE_URL="$pg/$db"
"$bin/placectl" migrate >/dev/null
say "PostgreSQL up, database $db migrated; Redis up (the legacy store, for shadow comparisons)"

step "four fake conman VMs"
declare -A vm_http vm_metrics
for vm in vm-use1-1 vm-use1-2 vm-aps1-1 vm-aps1-2; do
  "$bin/edgeplane-bench" fake-vm --id "$vm" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --containers 3 --cpu 0.2 >"$work/$vm.out" 2>&1 &
  pids+=($!)
done
for vm in vm-use1-1 vm-use1-2 vm-aps1-1 vm-aps1-2; do
  line=$(wait_line "$work/$vm.out" "listening http=")
  vm_http[$vm]=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")
  vm_metrics[$vm]=$(sed -E 's/.*metrics=([^ ]+).*/\1/' <<<"$line")
  say "$vm http ${vm_http[$vm]} metrics ${vm_metrics[$vm]}"
done

step "two edges, one per region, syncing from PostgreSQL"
echo "local-stack-hop-secret-$$-$RANDOM$RANDOM" >"$work/hop.secret"
echo "$token" >"$work/admin.token"
declare -A proxy admin_addr
for e in use1:us-east1 aps1:ap-south1; do
  name=${e%%:*} region=${e#*:}
  cat >"$work/$name.toml" <<TOML
[edge]
region = "$region"
instance_id = "$name-edge-1"
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
threads = 1
pid_file = "$name.pid"
upgrade_sock = "$name.sock"
grace_period_ms = 0

[placement]
source = "postgres"
postgres_url = "$DATABASE_URL"
last_known_good = "$name-lkg.json"
poll_interval_ms = 200

[health]
scrape_interval_ms = 1000
scrape_timeout_ms = 500
stale_after_ms = 5000

[security]
hop_secret_file = "hop.secret"
admin_token_file = "admin.token"

[log]
access_log_sample = 1.0
TOML
  "$bin/edgeplane" serve -c "$work/$name.toml" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
done
for name in use1 aps1; do
  proxy[$name]=$(wait_line "$work/$name.out" "proxy listening on" | awk '{print $NF}')
  admin_addr[$name]=$(wait_line "$work/$name.out" "admin listening on" | awk '{print $NF}')
  say "$name-edge-1 proxy ${proxy[$name]} admin ${admin_addr[$name]} (not ready: no placement yet)"
done

step "seed the control plane (placectl import)"
cat >"$work/seed.json" <<JSON
{
  "regions": [{"name": "us-east1", "edge_addr": "${proxy[use1]}"},
              {"name": "ap-south1", "edge_addr": "${proxy[aps1]}"}],
  "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active", "weight": 100},
               {"name": "aps1-a", "region": "ap-south1", "state": "active", "weight": 100}],
  "vms": [
    {"id": "vm-use1-1", "cluster": "use1-a", "addr": "${vm_http[vm-use1-1]}", "metrics_addr": "${vm_metrics[vm-use1-1]}", "state": "active"},
    {"id": "vm-use1-2", "cluster": "use1-a", "addr": "${vm_http[vm-use1-2]}", "metrics_addr": "${vm_metrics[vm-use1-2]}", "state": "active"},
    {"id": "vm-aps1-1", "cluster": "aps1-a", "addr": "${vm_http[vm-aps1-1]}", "metrics_addr": "${vm_metrics[vm-aps1-1]}", "state": "active"},
    {"id": "vm-aps1-2", "cluster": "aps1-a", "addr": "${vm_http[vm-aps1-2]}", "metrics_addr": "${vm_metrics[vm-aps1-2]}", "state": "active"}],
  "repls": [{"id": "r-hello", "slug": "hello", "region": "us-east1"},
            {"id": "r-chai", "slug": "chai", "region": "ap-south1"},
            {"id": "r-fresh", "slug": "fresh", "region": "us-east1"}],
  "containers": [{"repl_id": "r-hello", "vm_id": "vm-use1-1"},
                 {"repl_id": "r-chai", "vm_id": "vm-aps1-1"}],
  "custom_domains": [{"hostname": "hello.example.com", "repl_id": "r-hello"}],
  "tombstones": []
}
JSON
"$bin/placectl" import "$work/seed.json" | sed 's/^/   /'
for name in use1 aps1; do
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://${admin_addr[$name]}/readyz")" = 200 ] && break
    sleep 0.05
  done
  check "$name-edge-1 ready" "$(curl -s "http://${admin_addr[$name]}/readyz")" "^ready version="
done

step "requests: running apps in each region, a custom domain, a new app"
request "${proxy[use1]}" hello.repl.co
check "hello.repl.co via us-east1: the VM that runs it" "$status $served_by" "^200 vm-use1-1$"
check "  x-edgeplane-route" "$route" "vm vm-use1-1 .*\(running\)"
request "${proxy[aps1]}" chai.repl.co
check "chai.repl.co via ap-south1: the VM that runs it" "$status $served_by" "^200 vm-aps1-1$"
request "${proxy[aps1]}" hello.repl.co
# An edge synced from PostgreSQL holds its own region's apps whole and every
# other region's by name (the world directory): a client that lands on the
# wrong region's edge takes one hop to the app's home.
check "hello.repl.co via ap-south1: one hop to its home region" "$status $served_by" "^200 vm-use1-1$"
check "  x-edgeplane-route" "$route" "forward to region us-east1 .*\(affinity, hop 1\)"
request "${proxy[use1]}" hello.example.com
check "hello.example.com (custom domain) via us-east1" "$status $served_by" "^200 vm-use1-1$"
request "${proxy[use1]}" fresh.repl.co
check "fresh.repl.co (not running): picked by the balancer" "$status $served_by" "^200 vm-use1-[12]$"
check "  x-edgeplane-route" "$route" "\((picked|remembered)\)"

step "cross-region transfer: hello moves to ap-south1, stale DNS still points at us-east1"
before=$(admin "${admin_addr[use1]}" /debug/snapshot | sed -E 's/.*"version":([0-9]+).*/\1/')
"$bin/placectl" transfer r-hello --to aps1-a | sed 's/^/   placectl: /'
for _ in $(seq 200); do
  now=$(admin "${admin_addr[use1]}" /debug/snapshot | sed -E 's/.*"version":([0-9]+).*/\1/')
  [ "$now" != "$before" ] && break
  sleep 0.05
done
check "us-east1 applied the delta (table version)" "$now" "^[0-9]+$"
[ "$now" != "$before" ] || fail "us-east1 never saw the transfer (version $before)"
request "${proxy[use1]}" hello.repl.co
check "hello.repl.co via us-east1 (old region): tombstone forward" "$status $served_by" "^200 vm-aps1-[12]$"
check "  x-edgeplane-route" "$route" "forward to region ap-south1 .*\(tombstone, hop 1\)"
moved_to=$served_by
request "${proxy[aps1]}" hello.repl.co
check "hello.repl.co via ap-south1 (new home): the same VM" "$status $served_by" "^200 $moved_to$"
check "us-east1 tombstone hits" "$(metric "${admin_addr[use1]}" edgeplane_tombstone_hits_total)" "^[1-9][0-9]*$"
page=$(admin "${admin_addr[use1]}" /)
check "us-east1 status page lists the forward" "$(grep -o '<td>hello.repl.co</td><td>ap-south1</td><td>tombstone</td>' <<<"$page" | head -1)" "tombstone"

echo
echo "local-stack: all checks passed"
if [ "$keep" = 1 ]; then
  keep_work=1
  cat <<EOF

The stack keeps running (Ctrl-C stops it and drops database $db). Try:
  curl -H 'Host: hello.repl.co' -H 'x-edgeplane-debug: $token' -i http://${proxy[use1]}/
  open http://${admin_addr[use1]}/ and http://${admin_addr[aps1]}/ (status pages;
    admin token: $token, e.g. curl -H 'Authorization: Bearer $token')
  DATABASE_URL=$DATABASE_URL $bin/placectl ls
  logs (access lines included): $work/use1.log $work/aps1.log
EOF
  while true; do sleep 3600; done
fi

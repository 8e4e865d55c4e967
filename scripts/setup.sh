#!/usr/bin/env bash
# Installs what building and testing edgeplane needs on a fresh Debian
# machine, and starts PostgreSQL and Redis when they are installed but not
# running. Idempotent and quick when everything is already there.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The balancer test runs a real Prometheus server (the `prometheus` health source).
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# The comparison harness's smoke run (bench/tests/compare_smoke.rs) puts
# nginx, HAProxy and Caddy beside edgeplane and loads them with wrk.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
# ... and over TLS (HTTP/2 and HTTP/1.1) with h2load.
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
# deploy/ checks: promtool comes with prometheus; systemd-analyze verifies the unit.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The resolver test runs a real DNS server (dnsmasq) whose answers it changes.
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
# The status page test opens the admin page in headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The ACME tests run a real CA: Debian's pebble (with pebble-challtestsrv).
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# Node's llhttp: the second HTTP/1 parser of the differential test (hostile.rs).
command -v node >/dev/null 2>&1 || need+=(nodejs)
if [ "${EDGEPLANE_SKIP_SERVICES:-0}" != 1 ]; then
  command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
installed_pg=0
case " ${need[*]:-} " in *" postgresql "*) installed_pg=1 ;; esac
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

if [ "${EDGEPLANE_SKIP_SERVICES:-0}" != 1 ]; then
  # PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379: use running
  # ones, start installed ones.
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ "$installed_pg" = 1 ] && [ -n "$ver" ]; then
    # A server we just installed: let local test connections in as
    # postgres without a password (loopback only), as on the CI machines.
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[a-z0-9-]+/\1trust/' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload 2>/dev/null || true
  fi
  "$(dirname "$0")/services.sh"
fi

# A third-party HTTP request smuggling scanner (smugglex, from crates.io,
# pinned), under the target directory like the Python peers: the suite
# runs its every check against the edge (proxy/tests/e2e/scanner.rs).
tools="${CARGO_TARGET_DIR:-target}/tools"
if ! "$tools/bin/smugglex" --version 2>/dev/null | grep -q "0.4.0"; then
  echo "setup: installing smugglex 0.4.0 into $tools"
  cargo install --quiet --locked --root "$tools" smugglex --version 0.4.0
fi

# Python test peers, in a virtualenv of the project's own (under the
# target directory, so a clean clone starts without it): pyseto, an
# independent PASETO implementation the workspace token tests check
# tokens against.
py="${CARGO_TARGET_DIR:-target}/py"
if ! "$py/bin/python" -c 'import pyseto' 2>/dev/null; then
  echo "setup: installing Python test peers into $py"
  python3 -m venv "$py"
  "$py/bin/pip" install -q --disable-pip-version-check pyseto
fi

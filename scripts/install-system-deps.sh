#!/usr/bin/env bash
# Install the Debian packages the relay's demo and tests need, only when missing:
#   postgresql-15 + postgresql-15-wal2json (the embedded throwaway cluster and wal2json),
#   nodejs + npm (the @supabase/realtime-js interop tests),
#   redis-server (cluster mode's change log and rooms; the tests start throwaway servers),
#   haproxy (docker/haproxy.cfg is checked with `haproxy -c` and run in front of test relays),
#   chromium (the /inspector page is tested in a real headless browser; RELAY_SKIP_BROWSER=1 skips it).
# Idempotent and quiet when everything is present.  Needs root (or sudo) to install.
set -euo pipefail

need=()
have_wal2json() { ls /usr/lib/postgresql/*/lib/wal2json.so >/dev/null 2>&1; }
have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
have_pg || need+=(postgresql-15)
have_wal2json || need+=(postgresql-15-wal2json)
if [ "${RELAY_SKIP_REDIS:-0}" != "1" ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
fi
if [ "${RELAY_SKIP_NODE:-0}" != "1" ]; then
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
if [ "${RELAY_SKIP_BROWSER:-0}" != "1" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing system packages: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: need root to install ${need[*]} (apt-get install ${need[*]})" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postgresql package starts a default cluster on 5432 and redis-server one on 6379
# (haproxy's default file listens nowhere); the relay and its tests never use them (tests
# start their own on free ports).
have_wal2json || { echo "error: wal2json still missing after install" >&2; exit 1; }

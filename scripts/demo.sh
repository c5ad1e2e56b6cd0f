#!/usr/bin/env bash
# The quick start's first command: one real job end to end through the real fetcher, against the
# mock API started in-process. Installs poetry and the project if needed; uses the running Docker
# engine (starting one only if none answers and this is root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export PATH="${FETCHER_TOOLS_DIR:-$HOME/.cache/decode-fetcher-tools}/poetry/bin:$PATH"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
timeout 10 docker info >/dev/null 2>&1 || timeout 10 /usr/bin/docker info >/dev/null 2>&1 || scripts/docker-engine.sh up
# the demo's job image is made from a static busybox (docker import, no registry needed)
if [ -z "${DEMO_IMAGE:-}" ] && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
fi
exec poetry run fetcher demo "$@"

#!/usr/bin/env bash
# THE test command (README, CI): installs and starts everything it needs, then lint, types and tests.
#   scripts/test.sh [pytest args]      e.g. scripts/test.sh -k pipeline
# Needs root or passwordless sudo on a machine without Docker or Slurm (it installs docker.io, slurm-wlm and
# munge, and starts dockerd, munged, slurmctld and slurmd itself: no systemd needed).
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/scripts
source "$HERE/bootstrap.sh"
export PATH="${FETCHER_TOOLS_DIR:-$HOME/.cache/decode-fetcher-tools}/poetry/bin:$PATH"
DOCKER=/usr/bin/docker; [ -x "$DOCKER" ] || DOCKER=docker

echo "== docker engine, test images, local registry"
"$HERE/docker-engine.sh" up
"$HERE/build-busybox-image.sh" fetcher-test/busybox:1
"$HERE/build-python-copy-image.sh" fetcher-test/pycopy:3.11
"$HERE/registry.sh" up
"$DOCKER" tag fetcher-test/busybox:1 127.0.0.1:5000/test/job:1
"$DOCKER" push -q 127.0.0.1:5000/test/job:1 >/dev/null

echo "== tools of the private engines (tests/helpers/private_engine.py: engine restarts)"
need=()
for tool in jq:jq curl:curl ip:iproute2 nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

echo "== slurm: a single-node cluster with fake GPUs (tests/integration/scripts/test_slurm.py)"
"$HERE/slurm-cluster.sh" up
SLURM_CONF=$("$HERE/slurm-cluster.sh" conf); export SLURM_CONF

echo "== deployment tools: docker-compose, systemd-analyze, promtool (tests/integration/test_deploy.py)"
command -v docker-compose >/dev/null || apt_install docker-compose   # Debian 12: 1.29, reads the Compose spec
command -v systemd-analyze >/dev/null || apt_install systemd
# promtool alone, out of Debian's prometheus package: installing that package would also start a
# Prometheus server on :9090 where systemd runs.
if ! command -v promtool >/dev/null && [ ! -x "$TOOLS/promtool/usr/bin/promtool" ]; then
  debs=$(mktemp -d); chmod 777 "$debs"   # apt-get download runs as _apt where it can
  (cd "$debs" && { apt-get download -qq prometheus || { $SUDO apt-get update -qq && apt-get download -qq prometheus; }; })
  mkdir -p "$TOOLS/promtool"
  dpkg-deb --fsys-tarfile "$debs"/prometheus_*.deb | tar -x -C "$TOOLS/promtool" ./usr/bin/promtool
  rm -rf "$debs"
fi
export PATH="$PATH:$TOOLS/promtool/usr/bin"
echo "$(docker-compose version --short 2>/dev/null || echo '?') docker-compose;" \
  "$(systemd-analyze --version | head -n 1);" "$(promtool --version 2>&1 | head -n 1)"

echo "== lint and types"
poetry run ruff check .
poetry run ruff format --check .
poetry run mypy

echo "== tests"
if [ $# -gt 0 ]; then
  poetry run pytest "$@"
else
  # The 10-minute API outage test mostly waits: it runs beside the rest instead of after it.
  outage_log=$(mktemp /tmp/fetcher-outage-test.XXXXXX)
  poetry run pytest -m outage -p no:cacheprovider >"$outage_log" 2>&1 &
  outage_pid=$!
  rc=0
  poetry run pytest -m "not outage" || rc=$?
  echo "== the outage test (started beside the others)"
  outage_rc=0
  wait "$outage_pid" || outage_rc=$?
  cat "$outage_log"; rm -f "$outage_log"
  [ "$rc" -eq 0 ] && [ "$outage_rc" -eq 0 ] || exit 1
fi

echo "== nothing left behind"
left=$("$DOCKER" ps -aq --filter label=org.decode-opencloud.fetcher)
if [ -n "$left" ]; then
  echo "containers left behind by the tests:" >&2
  "$DOCKER" ps -a --filter label=org.decode-opencloud.fetcher >&2
  exit 1
fi
echo "no fetcher container left"

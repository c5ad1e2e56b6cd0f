#!/usr/bin/env bash
# Install poetry (in its own venv, if missing) and the project's dependencies. Idempotent.
# Used by scripts/test.sh and scripts/demo.sh, so that a fresh machine needs nothing but python3 >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
TOOLS=${FETCHER_TOOLS_DIR:-$HOME/.cache/decode-fetcher-tools}

# Debian packages, quietly; the package lists are updated only when an install fails without it.
apt_install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "bootstrap: python3 >= 3.11 is needed (found $(python3 --version 2>&1))" >&2; exit 1; }

if ! command -v poetry >/dev/null 2>&1; then
  if [ ! -x "$TOOLS/poetry/bin/poetry" ]; then
    echo "bootstrap: installing poetry into $TOOLS/poetry"
    if ! python3 -m venv "$TOOLS/poetry" >/dev/null 2>&1; then
      rm -rf "$TOOLS/poetry"
      # Debian's python3 lacks ensurepip until python3-venv is installed
      apt_install python3-venv
      python3 -m venv "$TOOLS/poetry"
    fi
    "$TOOLS/poetry/bin/pip" install -q --disable-pip-version-check "poetry>=2.0,<3"
  fi
  export PATH="$TOOLS/poetry/bin:$PATH"
fi
poetry --version
poetry install --no-interaction --quiet

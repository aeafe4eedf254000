#!/bin/bash
# Set up everything dsas, its tests and its lab need on a fresh Debian 12, as root.
# Idempotent and quick when already done. Creates ./.venv with dsas installed (editable).
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  # Debian packages: git and OpenSSH for releases and tests, plus the lab's (IPVS, DRBD, UML, ...)
  bash .ci/lab-setup.sh
else
  echo "setup: not root: skipping Debian packages (the lab and the sshd tests need root to install them)" >&2
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "setup: dsas needs Python >= 3.10 ($PYTHON)" >&2; exit 2
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.dsas-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/dsas --version))"

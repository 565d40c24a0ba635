#!/usr/bin/env bash
# Installs everything p2pdist's demo and tests need on Debian 12 (as root): the real registry and
# clients from apt, and the project with its Python dependencies in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry skopeo iproute2 curl ca-certificates containerd runc podman docker.io busybox-static
              redis-server)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# systemd-analyze checks the shipped units' hardening (tests/test_deploy_systemd.py).
command -v systemd-analyze >/dev/null || missing+=(systemd)
# The simulator's compiled core needs a C compiler and the headers of the Python that runs it.
command -v gcc >/dev/null || missing+=(gcc)
python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
  2>/dev/null || missing+=(python3-dev)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,sim]'
# Compile the simulator's core (simulations/native.py) unless it is already built from these sources.
.venv/bin/python -m simulations status >/dev/null || .venv/bin/python -m simulations build --quiet >/dev/null

#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the local cluster demo: a tracker, agents and an origin on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/p2pdist demo "$@"

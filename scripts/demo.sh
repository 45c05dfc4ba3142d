#!/usr/bin/env bash
# The main job: set up (idempotent), bring up topologies/two-node.yaml, show pods talking across nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m netlab.demo "$@"

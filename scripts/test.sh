#!/usr/bin/env bash
# Every test: set up (idempotent), then unit tests and integration tests in throwaway namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -ra "$@"

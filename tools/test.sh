#!/usr/bin/env bash
# Quick start, part 2: set up a fresh machine and run the fast test suite (slow end-to-end
# tests: pass `-m slow`, or `-m ""` for everything).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest -q "$@"

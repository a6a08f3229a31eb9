#!/usr/bin/env bash
# Quick start, part 1: set up a fresh machine and run the demo on the built-in default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/npu-compress demo "$@"

#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent: a re-run with
# nothing changed does no installs. torch is pinned to the CPU build 2.13.0 *before* the
# package is installed, so pip never pulls the multi-gigabyte CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "npu_compress needs Python >= 3.10")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.npu_compress_setup
want="$(cat pyproject.toml tools/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up .venv (torch ${TORCH_VERSION} CPU, onnx, onnxruntime, onnxsim, numpy, pytest; ExecuTorch Arm" \
     "backend + Vela for the ethos-u extra) ..." >&2
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
# the ethos-u extra is optional for users; installed here so the tests and CI exercise it
.venv/bin/python -m pip install -q -e ".[test,ethos-u]" "torch==${TORCH_VERSION}"
echo "$want" > "$stamp"

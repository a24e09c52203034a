#!/usr/bin/env bash
# Create .venv with the harness and its test extras. CPU by default; on a CUDA machine set
# TORCH_SPEC to the torch build you want (the Dockerfile pins the GPU stack).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: a bare "torch" requirement can pull a multi-GB CUDA build
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[test]"
# DeepSpeed builds no ops here (they compile at first use on GPU machines); it needs torch at install time
DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet --no-build-isolation "deepspeed>=0.16"
echo "ready: .venv/bin/harness"

#!/usr/bin/env bash
# Create .venv with the harness, its test extras and DeepSpeed, at the versions of requirements/lock.txt (what CI
# passed with): a fresh machine installs exactly that. CPU torch by default; on a CUDA machine set TORCH_SPEC to
# the torch build you want (the lock's torch line is then left out; the Dockerfile pins the GPU stack).
#   VENV=DIR            another folder than .venv
#   HARNESS_UNLOCKED=1  the newest versions within pyproject.toml's ranges (scripts/refresh-lock.sh uses it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=requirements/lock.txt
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
if [ "${HARNESS_UNLOCKED:-0}" = 1 ]; then
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}  # the CPU build on this project's machines' disk
elif [ -n "${TORCH_SPEC:-}" ]; then
  grep -v '^torch==' "$LOCK" > "$CONSTRAINTS"
else
  cp "$LOCK" "$CONSTRAINTS"
  TORCH_SPEC=$(grep '^torch==' "$LOCK")
fi
PIP=("$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS")
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"${PIP[@]}" --upgrade pip setuptools
# torch first and pinned: a bare "torch" requirement can pull a multi-GB CUDA build
"${PIP[@]}" "$TORCH_SPEC"
# --build-constraint: the setuptools that builds the harness itself is locked too
"${PIP[@]}" --build-constraint "$CONSTRAINTS" -e ".[test]"
# DeepSpeed builds no ops here (they compile at first use on GPU machines); it needs torch at install time
DS_BUILD_OPS=0 "${PIP[@]}" --no-build-isolation deepspeed
echo "ready: $VENV/bin/harness"

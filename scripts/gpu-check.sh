#!/usr/bin/env bash
# The GPU checks in one command, offline, on a CUDA machine: every GPU path runs for real and fails loudly if a
# number is off (tests/test_gpu.py says what each check compares). The result files are kept under
# results/gpu-check/ with the device named in each: commit them.
#   bash scripts/gpu-check.sh            # uses .venv, or the python on PATH when there is none
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: nothing to check')"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HARNESS_GPU_RESULTS=${HARNESS_GPU_RESULTS:-results/gpu-check}
"$PYTHON" -m pytest -m gpu -q -rA tests/ "$@"  # tests/test_gpu.py, test_profiling.py: every test marked gpu
"$PYTHON" -m harness compare "$HARNESS_GPU_RESULTS" --metrics train_samples_per_s,real_tokens_per_s,mfu,cuda_peak_alloc_gib,step_p50_s

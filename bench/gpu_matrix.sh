#!/usr/bin/env bash
# The side-by-side speed matrix on one GPU, offline, in one command:
#   bash bench/gpu_matrix.sh                    # every arm: about 30-40 min on one H100
#   bash bench/gpu_matrix.sh --quick            # a few arms, one accuracy repeat each: about 8 min
#   bash bench/gpu_matrix.sh --data-dir DIR     # banking77 CSVs (train.csv, test.csv); default ../shared/data/banking77
#   bash bench/gpu_matrix.sh --check            # validate every recipe and setting it uses, on any machine
#
# What runs, all on the same GPU in one session, so every arm sees the same machine:
#   speed     modernbert-base-speed-matrix (precision x eager/sdpa x compile) and -fa2 (flash-attention 2 x
#             packing x compile; skipped with the reason without flash-attn), each on two synthetic workloads:
#             every text 512 tokens, and normal lengths (mean 128, std 96, clipped to 16..512). Plus the seed's
#             own Trainer recipe (padding inside datasets.map, bf16, fused AdamW) on both workloads as the peer arm.
#   accuracy  the pretrained MiniLM-L6 on banking77, plain (fp32, padded) against fast (bf16, packed, compiled),
#             3 seeds each (1 with --quick): macro-F1 must hold.
# Then the compare tables, the HTML report and the targets (bench/gpu_targets.py) go under
# results/gpu-matrix/<device>/: commit that folder. The exit code is the targets' (0 met, 1 missed, 2 no data).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
QUICK=0
CHECK=0
DATA=../shared/data/banking77
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --check) CHECK=1 ;;
    --data-dir) DATA=$2; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
FIXED='data.synthetic.lengths={distribution: fixed, length: 512}'
VARIABLE='data.synthetic.lengths={distribution: normal, mean: 128, std: 96, min: 16, max: 512}'
FAST=(--set precision.dtype=bf16 --set data.packing=true --set train.compile=true)
if [ "$CHECK" = 1 ]; then  # every cell of both workloads, and both accuracy arms: bad settings fail here
  for workload in "$FIXED" "$VARIABLE"; do
    "$PYTHON" -m harness validate modernbert-base-speed-matrix modernbert-base-speed-matrix-fa2 --set "$workload"
  done
  "$PYTHON" -m harness validate minilm-banking77-gpu-accuracy "${FAST[@]}"
  exit 0
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: nothing to measure')"
[ -f "$DATA/train.csv" ] && [ -f "$DATA/test.csv" ] || { echo "no $DATA/train.csv and test.csv: pass --data-dir" >&2; exit 2; }
DEVICE=$("$PYTHON" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9._-]+', '-', torch.cuda.get_device_name()))")
OUT=${OUT:-results/gpu-matrix/$DEVICE}
mkdir -p "$OUT/speed" "$OUT/accuracy"
HARNESS=("$PYTHON" -m harness)
HAS_FA2=$("$PYTHON" -c "import importlib.util as u; print(int(u.find_spec('flash_attn') is not None))")

speed_arms() {  # $1: the workload's --set
  if [ "$QUICK" = 1 ]; then
    for arm in "precision.dtype=bf16 model.attn_implementation=sdpa train.compile=false" \
               "precision.dtype=bf16 model.attn_implementation=sdpa train.compile=true" \
               "precision.dtype=bf16 model.attn_implementation=eager train.compile=false" \
               "precision.dtype=fp32 model.attn_implementation=sdpa train.compile=false"; do
      # shellcheck disable=SC2086  # each arm is several KEY=VALUE words
      "${HARNESS[@]}" run modernbert-base-speed-matrix --results-dir "$OUT/speed" --set "$1" $(printf -- '--set %s ' $arm) || true
    done
    if [ "$HAS_FA2" = 1 ]; then
      "${HARNESS[@]}" run modernbert-base-speed-matrix-fa2 --results-dir "$OUT/speed" --set "$1" \
        --set model.attn_implementation=flash_attention_2 --set data.packing=true || true
    fi
  else
    # a sweep's exit code counts its failed runs: they are recorded, and the matrix goes on
    "${HARNESS[@]}" sweep modernbert-base-speed-matrix --results-dir "$OUT/speed" --set "$1" || true
    "${HARNESS[@]}" sweep modernbert-base-speed-matrix-fa2 --results-dir "$OUT/speed" --set "$1" || true
  fi
  "$PYTHON" bench/seed_trainer.py modernbert-base-speed-matrix --results-dir "$OUT/speed" --set "$1" || true
}

speed_arms "$FIXED"
speed_arms "$VARIABLE"

REPEATS=$([ "$QUICK" = 1 ] && echo 1 || echo 3)
FILES=(--set "data.train_file=$DATA/train.csv" --set "data.test_file=$DATA/test.csv")
"${HARNESS[@]}" run minilm-banking77-gpu-accuracy --repeats "$REPEATS" --results-dir "$OUT/accuracy" "${FILES[@]}" || true
"${HARNESS[@]}" run minilm-banking77-gpu-accuracy --repeats "$REPEATS" --results-dir "$OUT/accuracy" "${FILES[@]}" \
  "${FAST[@]}" || true

"${HARNESS[@]}" compare "$OUT/speed" --rows recipe_name,data.synthetic.lengths.distribution \
  --cols precision.dtype,model.attn_implementation,data.packing,train.compile --value train_samples_per_s \
  > "$OUT/speed-samples-per-s.md" || true
"${HARNESS[@]}" compare "$OUT/speed" --metrics train_samples_per_s,real_tokens_per_s,mfu,padding_efficiency,cuda_peak_alloc_gib,step_p50_s \
  --pareto "$OUT/pareto.png" > "$OUT/speed.md" || true
"${HARNESS[@]}" compare "$OUT/accuracy" --metrics f1_macro,accuracy,train_samples_per_s > "$OUT/accuracy.md" || true
"${HARNESS[@]}" report "$OUT" --output "$OUT/report.html" || true
"$PYTHON" bench/gpu_targets.py "$OUT" --output "$OUT/targets.md"

#!/usr/bin/env bash
# One command for the whole digit pipeline: data -> dense DiT -> SparseDiT init -> fine-tune -> previews.
# Every stage is seeded and resumable: run it again after an interruption and it carries on.
#   train/pipeline.sh                       # defaults below
#   DENSE_STEPS=6000 FT_STEPS=2000 train/pipeline.sh
# Long stages run with 1 PyTorch thread under `nice -n 10` (the machine is shared with Rust builds).
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE_STEPS=${DENSE_STEPS:-5282}
FT_STEPS=${FT_STEPS:-5000}
RATES=${RATES:-0.6:0.85}
SEED=${SEED:-0}
PY="nice -n 10 python3"

[ -f train/.cache/digits16.npz ] || $PY train/data.py
$PY train/train.py dense --run dense --steps "$DENSE_STEPS" --seed "$SEED"
$PY train/train.py init-sparse --dense-run dense --run sparse
$PY train/train.py finetune --run sparse --steps "$FT_STEPS" --lr 2e-4 --min-lr-frac 0.1 --rates "$RATES" --seed "$SEED"
$PY train/sample_preview.py train/runs/dense/ema.pt
$PY train/sample_preview.py train/runs/sparse/ema.pt --rates "$RATES"

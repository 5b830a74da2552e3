#!/usr/bin/env bash
# The moving-digit video models, the paper's protocol at small scale (see train/README.md, "Video"):
# a dense Latte whose spatial blocks start from the bundled image DiT, then the spatial-temporal
# SparseDiT initialised from its EMA and fine-tuned with timestep-wise pruning, then packs for the
# page. Every stage resumes (or is skipped) when run again; 1 thread, nice.
#   DENSE_STEPS=6000 FT_STEPS=4000 RATES=0.6:0.85 bash train/pipeline_video.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE_STEPS=${DENSE_STEPS:-6000}
FT_STEPS=${FT_STEPS:-4000}
RATES=${RATES:-0.6:0.85}
B=target/release/sparsedit
[ -x "$B" ] || cargo build --release --locked --bin sparsedit
mkdir -p train/.cache train/runs
python3 train/data.py
# The dense Latte starts from the bundled image DiT (its ten blocks -> the ten spatial blocks), or
# from the committed EMA of an earlier run when there is one and no run in train/runs.
INIT=train/.cache/dit-tiny.safetensors
[ -f "$INIT" ] || "$B" convert web/models/dit-tiny-q8_0.gguf -o "$INIT" > /dev/null
if [ ! -f train/runs/video-dense/ckpt.pt ] && [ -f train/checkpoints/video-dense-ema.safetensors ]; then
  INIT=train/checkpoints/video-dense-ema.safetensors
fi
T="nice -n 10 python3 train/train.py"
$T dense --video --init-image "$INIT" --run video-dense --steps "$DENSE_STEPS" --batch 8 --lr 3e-4 --warmup 300 --keep-every 500 --log-every 25
$T init-sparse --dense-run video-dense --run video-sparse --semantic-size 4
$T finetune --run video-sparse --steps "$FT_STEPS" --batch 8 --lr 1e-4 --warmup 100 --min-lr-frac 0.1 --rates "$RATES" --keep-every 500 --log-every 25
"$B" convert train/runs/video-dense/ema.pt --heads 4 -o web/models/latte-tiny-q8_0.gguf --quant q8_0
"$B" convert train/runs/video-sparse/ema.pt --heads 4 --semantic-size 4 --trained-rates "$RATES" -o web/models/sparselatte-tiny-q8_0.gguf --quant q8_0
bash scripts/manifest.sh

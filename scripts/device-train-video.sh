#!/usr/bin/env bash
# The moving-digit video models trained on a lent GPU machine (see the device tool's README), in
# one call: the dense Latte goes on from the committed EMA (train/checkpoints/), then the
# spatial-temporal SparseDiT is initialised from its EMA and fine-tuned with timestep-wise
# pruning, each for a fixed number of minutes. Both EMAs (and f16 safetensors of them for
# train/checkpoints/), the logs and the configs come back under $OUT.
#
# On a 2-core CPU machine a step of batch 8 clips takes ~2 s; a GPU runs large batches in
# milliseconds, so the budget is set in minutes and the step count follows from a speed probe:
# the cosine learning-rate decay then ends when the budget does.
#
# Here, once per machine (the device machine reaches no registry; torch and numpy are there):
#   pip download --no-deps einops safetensors -d .wheels && echo /.wheels/ >> .git/info/exclude
#   python3 train/data.py                      # train/.cache/digits16.npz
# Then one device call (DENSE_MIN + FT_MIN minutes of training, ~1 min of start-up):
#   run(command="bash scripts/device-train-video.sh", carry=[".wheels", "train/.cache"], timeout_s=560)
# Back here: cp <files_at>/*-ema.safetensors train/checkpoints/ (the dense one is where the next run
# starts), and `sparsedit convert <files_at>/video-sparse/ema.pt --heads 4 --semantic-size 4
# --trained-rates <RATES> ...` (the rates are in the sparse EMA's metadata too).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
DENSE_MIN=${DENSE_MIN:-5}
FT_MIN=${FT_MIN:-2.5}
BATCH=${BATCH:-128}     # clips per step (x 8 frames)
DENSE_LR=${DENSE_LR:-3e-4}
FT_LR=${FT_LR:-1e-4}
RATES=${RATES:-0.6:0.85}
PROBE=${PROBE:-40}      # steps timed before the horizon is set
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu BATCH=2 PROBE=2 DENSE_MIN=0.1 FT_MIN=0.1: a dry run here
mkdir -p "$OUT"
python3 -c "import einops, safetensors" 2>/dev/null || pip install --no-index --find-links .wheels einops safetensors
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
fi

T="python3 train/train.py"
RUNS=train/runs
rm -rf $RUNS/video-dense-gpu $RUNS/video-sparse-gpu   # a fresh run each call (the machine is new anyway)
COMMON="--device $DEVICE --batch $BATCH --log-every 20 --keep-every 0 --ckpt-minutes 2"

# steps_for RUN MINUTES: the probe's seconds a step (its last log row) -> steps that fill MINUTES.
steps_for() {
  python3 - "$1" "$2" "$PROBE" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(f"train/runs/{sys.argv[1]}/log.csv")))
sps = float(rows[-1]["sec_per_step"])
print(int(sys.argv[3]) + int(float(sys.argv[2]) * 60 / sps))
EOF
}

# 1. Dense Latte, from the committed EMA (every weight, temp_embed included).
DENSE="$T dense --video --init-image train/checkpoints/video-dense-ema.safetensors --run video-dense-gpu $COMMON --lr $DENSE_LR --warmup 200 --min-lr-frac 0.1"
$DENSE --steps $PROBE 2>&1 | tee "$OUT/dense.out"
N=$(steps_for video-dense-gpu "$DENSE_MIN")
echo "dense: horizon $N steps for $DENSE_MIN min" | tee -a "$OUT/dense.out"
$DENSE --steps "$N" --max-minutes "$DENSE_MIN" 2>&1 | tee -a "$OUT/dense.out"

# 2. The spatial-temporal SparseDiT from the dense EMA (the paper's initialisation), then the
#    fine-tune with timestep-wise pruning.
$T init-sparse --dense-run video-dense-gpu --run video-sparse-gpu --semantic-size 4 2>&1 | tee "$OUT/sparse.out"
FT="$T finetune --run video-sparse-gpu $COMMON --lr $FT_LR --warmup 100 --min-lr-frac 0.1 --rates $RATES"
$FT --steps $PROBE 2>&1 | tee -a "$OUT/sparse.out"
N=$(steps_for video-sparse-gpu "$FT_MIN")
echo "finetune: horizon $N steps for $FT_MIN min" | tee -a "$OUT/sparse.out"
$FT --steps "$N" --max-minutes "$FT_MIN" 2>&1 | tee -a "$OUT/sparse.out"

# 3. What comes back: EMAs (f32 .pt for `sparsedit convert`, f16 safetensors for train/checkpoints/
#    with the steps and batch in the metadata), logs, configs.
for r in video-dense-gpu video-sparse-gpu; do
  mkdir -p "$OUT/${r%-gpu}"
  cp train/runs/$r/ema.pt train/runs/$r/log.csv train/runs/$r/config.json "$OUT/${r%-gpu}/"
done
python3 - "$OUT" "$BATCH" "$DEVICE" "$RATES" <<'EOF'
import sys, torch
from safetensors.torch import save_file
out, batch, dev, rates = sys.argv[1:5]
where = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
for r in ("video-dense", "video-sparse"):
    ck = torch.load(f"train/runs/{r}-gpu/ckpt.pt", map_location="cpu", weights_only=True)
    sd = {k: v.half().contiguous() for k, v in ck["ema"].items()}
    save_file(sd, f"{out}/{r}-ema.safetensors",
              metadata={"train_steps": str(ck["step"]), "batch_clips": batch, "device": where,
                        **({"rates": rates} if r == "video-sparse" else {})})
    print(f"{out}/{r}-ema.safetensors: step {ck['step']}, batch {batch}")
EOF

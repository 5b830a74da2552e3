#!/usr/bin/env bash
# The README's video figures, every clip drawn by `sparsedit sample`: a PNG grid (one strip per
# class: its 8 frames left to right, SEEDS clips of each class one under the other) and an animated
# GIF (10 classes side by side, one GIF frame per clip frame).
# Usage: bash scripts/video-grid.sh [pack] [out-prefix] [extra sample args...]
#   default: web/models/sparselatte-tiny-q8_0.gguf -> docs/video-grid.png, docs/video.gif;
#   the page's sampler for a video model: SAMPLER=ddim, STEPS=25, the CLI's CFG for a video model (7),
#   seed 0; SEEDS=2 clips per class in the PNG. (DPM-Solver++ 20 read worse on frames in the
#   500-clip table: docs/QUALITY.md.) The README's figures: ... docs/video --schedule 0.6:0.85
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${1:-web/models/sparselatte-tiny-q8_0.gguf}
OUT=${2:-docs/video}
shift $(( $# > 2 ? 2 : $# )) || true
SEEDS=${SEEDS:-2}
B=${SPARSEDIT:-target/release/sparsedit}
[ -x "$B" ] || cargo build --release --locked --bin sparsedit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for k in 0 1 2 3 4 5 6 7 8 9; do
  # one call per class: SEEDS clips -> SEEDS strips (PNG) and the first clip's frames (latent)
  "$B" sample --model "$PACK" --class "$k" --num "$SEEDS" --seed 0 --backend cpu --sampler "${SAMPLER:-ddim}" --steps "${STEPS:-25}" \
    --out "$tmp/class$k.png" --latent-out "$tmp/class$k.safetensors" "$@" > /dev/null 2>&1
done
python3 - "$tmp" "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
from safetensors.numpy import load_file
tmp, out = sys.argv[1:]
rows = [Image.open(f"{tmp}/class{k}.png").convert("L") for k in range(10)]
w, h = rows[0].size
grid = Image.new("L", (w, h * 10))
for k, r in enumerate(rows):
    grid.paste(r, (0, k * h))
grid.resize((w * 4, h * 40), Image.NEAREST).save(f"{out}-grid.png")
# GIF: clip 0 of every class side by side, frame by frame, x4 (nearest), 10 fps, looping.
clips = [load_file(f"{tmp}/class{k}.safetensors")["sample"][0] for k in range(10)]  # (F, C, H, W)
frames = []
for f in range(clips[0].shape[0]):
    row = np.concatenate([c[f, 0] for c in clips], axis=1)
    img = Image.fromarray(((np.clip(row, -1, 1) + 1) * 127.5).round().astype(np.uint8))
    frames.append(img.resize((img.width * 4, img.height * 4), Image.NEAREST))
frames[0].save(f"{out}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
print(f"wrote {out}-grid.png ({w * 4}x{h * 40}) and {out}.gif ({len(frames)} frames)")
PY

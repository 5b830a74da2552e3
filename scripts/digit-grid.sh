#!/usr/bin/env bash
# The README's digit grid: 10 classes x 8 seeds, every image drawn by `sparsedit sample` (one call
# per class writes its row of 8), stacked and scaled x4 (nearest) into one PNG.
# Usage: bash scripts/digit-grid.sh [pack] [out.png] [extra sample args...]
#   default: web/models/sparsedit-tiny-q8_0.gguf -> docs/grid.png, DDIM 50, CFG 4, seed 0
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${1:-web/models/sparsedit-tiny-q8_0.gguf}
OUT=${2:-docs/grid.png}
shift $(( $# > 2 ? 2 : $# )) || true
# docs/grid.png was drawn with respacing ddim50, the CLI's DDIM default then (it is "50" now, as
# the official sample.py): passed by name so the grid stays reproducible. RESPACING= (empty) takes
# the sampler's default instead (e.g. with --steps among the extra args).
RESPACING=${RESPACING-ddim50}
B=${SPARSEDIT:-target/release/sparsedit}
[ -x "$B" ] || cargo build --release --locked --bin sparsedit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for k in 0 1 2 3 4 5 6 7 8 9; do
  "$B" sample --model "$PACK" --class "$k" --num 8 --seed 0 --backend cpu --out "$tmp/row$k.png" ${RESPACING:+--respacing "$RESPACING"} "$@" > /dev/null 2>&1
done
python3 - "$tmp" "$OUT" <<'PY'
import sys
from PIL import Image
tmp, out = sys.argv[1:]
rows = [Image.open(f"{tmp}/row{k}.png").convert("L") for k in range(10)]
w, h = rows[0].size
grid = Image.new("L", (w, h * 10))
for k, r in enumerate(rows):
    grid.paste(r, (0, k * h))
grid.resize((w * 4, h * 40), Image.NEAREST).save(out)
print(f"wrote {out}: 10 classes x 8 seeds, {w * 4}x{h * 40}")
PY

#!/usr/bin/env bash
# The prepared real-GPU benchmark for a session that is lent a device machine (see the device
# tool's README): wgpu on Vulkan on an NVIDIA H100 / H200, dense vs sparse XL/2 at 256 and 512 px
# and the matmul kernel's GFLOP/s, in f32 and q8_0, Latte-XL/2 vs sparse Latte (16 x 256 px),
# and plain DiT-XL/2 with and without the
# training-free pooled middle, and the TAESD / SD-VAE decoders. Results go to docs/BENCHMARKS.md by hand.
#
# Here, once per machine (the loaders travel as .debs; the binary is built here, x86-64):
#   echo /.gl/ >> .git/info/exclude; echo /.devbin/ >> .git/info/exclude
#   mkdir -p .gl /tmp/amd64/partial; o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#   apt-get $o update; (cd .gl && apt-get $o download libvulkan1)
#   cargo build --release --bin sparsedit && mkdir -p .devbin && cp target/release/sparsedit .devbin/
# Then one device call: run(command="bash scripts/device-bench.sh", carry=[".gl", ".devbin"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
B=.devbin/sparsedit
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
run() {
  echo "### $*" | tee -a "$OUT/bench.md"
  timeout 150 "$B" "$@" 2>&1 | tee -a "$OUT/bench.md"
  echo | tee -a "$OUT/bench.md"
}
# `bench` samples on the default respacing ("K" now, "ddimK" when recorded): the same work, K
# steps at a fixed grid, either way.
run bench --preset sparsedit-xl2-256 --backend gpu --steps 10 --repeats 5 --quant f32
run bench --preset sparsedit-xl2-256 --backend gpu --steps 10 --repeats 5 --quant q8_0
run bench --preset sparsedit-xl2-512 --backend gpu --steps 5 --repeats 3 --quant q8_0
run bench --preset sparsedit-tiny --backend gpu --steps 10 --repeats 5
# Video: Latte-XL/2 vs the sparse Latte preset, 16 frames of 256 px (batch 1 clip, x2 for CFG).
run bench --preset sparselatte-xl2-ucf101 --backend gpu --steps 3 --repeats 3 --quant q8_0
# Training-free pooled middle vs plain DiT-XL/2 (random q8_0 weights): sampling time per run.
# Respacing ddim10, the CLI's DDIM default when docs/BENCHMARKS.md was recorded (now "10", as the
# official sample.py; 10 steps either way), passed by name so the runs stay the same.
"$B" random-pack --preset dit-xl2-256 --quant q8_0 -o /tmp/dit-xl2-256-random.gguf > /dev/null 2>&1
run sample --model /tmp/dit-xl2-256-random.gguf --class 207 --steps 10 --respacing ddim10 --backend gpu --latent-out /tmp/z-dense.safetensors
run sample --model /tmp/dit-xl2-256-random.gguf --class 207 --steps 10 --respacing ddim10 --backend gpu --pooled-middle default --semantic-size 8 --latent-out /tmp/z-pooled.safetensors
# Latent decoders at the published sizes (random weights), 32x32 latent -> 256 px, on the GPU:
# f32 and f16 packs (f16 conv weights stay f16 on the GPU); `--repeats 5` prints the median of 5
# decodes after the first (which loads the weights and compiles the pipelines).
for dec in taesd sdvae; do
  for q in f32 f16; do
    "$B" random-pack --preset $dec --quant $q -o /tmp/$dec-$q.gguf > /dev/null 2>&1
    run decode --decoder /tmp/$dec-$q.gguf --latents /tmp/z-dense.safetensors --out /tmp/img.safetensors --backend gpu --repeats 5
  done
done

#!/usr/bin/env bash
# Regenerates web/models/manifest.json (file, size, sha256 of every bundled pack) from the
# .gguf files in web/models/. Run it whenever a pack changes.
# Usage: bash scripts/manifest.sh
set -euo pipefail
cd "$(dirname "$0")/../web/models"

# The default model (the page loads it first) and the dense one used by "compare".
DEFAULT="sparsedit-tiny-q8_0.gguf"

entries=()
for f in *.gguf; do
  [ -e "$f" ] || continue
  id="${f%.gguf}"
  quant="${id##*-}"                     # ...-q8_0 -> q8_0
  case "$id" in sparsedit*) arch=sparsedit ;; sparselatte*) arch=sparselatte ;; latte*) arch=latte ;; *) arch=dit ;; esac
  size=$(stat -c %s "$f")
  sha=$(sha256sum "$f" | cut -d' ' -f1)
  def=false; [ "$f" = "$DEFAULT" ] && def=true
  entries+=("    {\"id\": \"$id\", \"file\": \"$f\", \"arch\": \"$arch\", \"quant\": \"$quant\", \"size\": $size, \"sha256\": \"$sha\", \"default\": $def}")
done

{
  echo '{'
  echo '  "models": ['
  for i in "${!entries[@]}"; do
    sep=","; [ "$i" -eq $((${#entries[@]} - 1)) ] && sep=""
    echo "${entries[$i]}$sep"
  done
  echo '  ]'
  echo '}'
} > manifest.json
echo "wrote web/models/manifest.json (${#entries[@]} models)"

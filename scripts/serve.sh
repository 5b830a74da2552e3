#!/usr/bin/env bash
# Builds the demo page and serves it on http://127.0.0.1:${PORT:-8080}/ (README command 1).
# On a fresh Debian machine it installs what is missing (wasm32 target, trunk and
# wasm-bindgen-cli into .tools/, Node.js for the static server).
# Usage: bash scripts/serve.sh          PORT=9000 bash scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8080}

if ! command -v node >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
  else
    echo "serve: Node.js is needed for the static server" >&2
    exit 1
  fi
fi

bash scripts/web-build.sh
echo "serve: open http://127.0.0.1:$PORT/ in a browser with WebGPU (Chrome/Edge; others use the CPU path)"
exec node scripts/static-server.mjs dist "$PORT" 127.0.0.1

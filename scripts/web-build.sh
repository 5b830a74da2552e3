#!/usr/bin/env bash
# Builds the browser demo (web/ -> dist/) with Trunk. Installs what a fresh Debian machine lacks:
# the wasm32 target, and trunk + wasm-bindgen-cli into the git-ignored .tools/ (skipped when the
# right versions are there). No wasm-opt (Debian's binaryen breaks the wasm; see Trunk.toml /
# web/index.html data-wasm-opt="0").
# Usage: bash scripts/web-build.sh        (serve.sh and test.sh call it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TRUNK_VERSION=0.21.14
# wasm-bindgen-cli must equal the wasm-bindgen crate in Cargo.lock.
WBG_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$WBG_VERSION" ]; then
  echo "web-build: no wasm-bindgen in Cargo.lock (the crate's wasm dependencies are missing)" >&2
  exit 1
fi

export PATH="$ROOT/.tools/bin:$HOME/.cargo/bin:$PATH"
export TRUNK_SKIP_VERSION_CHECK=true

if ! command -v cargo >/dev/null 2>&1; then
  echo "web-build: cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "web-build: adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
fi

have_version() { # tool expected-version: .tools/bin first (on PATH above), then anywhere on PATH
  command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -q " $2\$"
}

if ! have_version trunk "$TRUNK_VERSION"; then
  echo "web-build: installing trunk $TRUNK_VERSION into .tools/ (several minutes, once)"
  if ! cargo install --locked trunk --version "$TRUNK_VERSION" --root "$ROOT/.tools"; then
    # trunk 0.22 needs a newer rustc than stable 1.95: nightly builds it.
    echo "web-build: trunk $TRUNK_VERSION failed; trying the newest trunk with nightly" >&2
    cargo +nightly install --locked trunk --root "$ROOT/.tools"
  fi
fi
if ! have_version wasm-bindgen "$WBG_VERSION"; then
  echo "web-build: installing wasm-bindgen-cli $WBG_VERSION into .tools/ (a few minutes, once)"
  # not --locked: its lockfile fails to resolve (webpki-roots)
  cargo install wasm-bindgen-cli --version "$WBG_VERSION" --root "$ROOT/.tools"
fi

# The manifest follows the bundled packs (they change while the model trains).
if ls web/models/*.gguf >/dev/null 2>&1; then
  before=$(cat web/models/manifest.json 2>/dev/null || true)
  bash scripts/manifest.sh >/dev/null
  [ "$before" = "$(cat web/models/manifest.json)" ] || echo "web-build: web/models/manifest.json updated (packs changed)"
fi

trunk --version
trunk build --release "$@"
echo "web-build: dist/ is ready"

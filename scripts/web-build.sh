#!/usr/bin/env bash
# Builds the browser demo (web/ -> dist/) with Trunk. Installs what a fresh Debian machine lacks:
# the wasm32 target, and trunk + wasm-bindgen-cli into the git-ignored .tools/ (skipped when the
# right versions are there). No wasm-opt (Debian's binaryen breaks the wasm; see Trunk.toml /
# web/index.html data-wasm-opt="0").
# Usage: bash scripts/web-build.sh [trunk build args]   (serve.sh and test.sh call it)
#        bash scripts/web-build.sh --tools-only             (install the tools, build nothing)
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

# Built tools are also kept in a per-user cache outside the work tree, so a fresh clone on the
# same machine (CI) copies them instead of compiling them again (~30 min on 2 cores).
TOOL_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sparsedit-tools/bin"

from_cache() { # tool expected-version
  [ -x "$TOOL_CACHE/$1" ] && "$TOOL_CACHE/$1" --version 2>/dev/null | grep -q " $2\$" || return 1
  mkdir -p "$ROOT/.tools/bin"
  cp "$TOOL_CACHE/$1" "$ROOT/.tools/bin/$1"
  echo "web-build: $1 $2 copied from $TOOL_CACHE"
}

to_cache() { # tool
  mkdir -p "$TOOL_CACHE" && cp "$ROOT/.tools/bin/$1" "$TOOL_CACHE/$1.tmp" && mv "$TOOL_CACHE/$1.tmp" "$TOOL_CACHE/$1" || true
}

# (0.22.x is what the nightly fallback below installs)
if ! have_version trunk "$TRUNK_VERSION" && ! have_version trunk '0\.22\.[0-9]*' && ! from_cache trunk "$TRUNK_VERSION"; then
  echo "web-build: installing trunk $TRUNK_VERSION into .tools/ (several minutes, once)"
  if cargo install --locked trunk --version "$TRUNK_VERSION" --root "$ROOT/.tools"; then
    to_cache trunk
  else
    # trunk 0.22 needs a newer rustc than stable 1.95: nightly builds it.
    echo "web-build: trunk $TRUNK_VERSION failed; trying the newest trunk with nightly" >&2
    cargo +nightly install --locked trunk --root "$ROOT/.tools"
  fi
fi
if ! have_version wasm-bindgen "$WBG_VERSION" && ! from_cache wasm-bindgen "$WBG_VERSION"; then
  echo "web-build: installing wasm-bindgen-cli $WBG_VERSION into .tools/ (a few minutes, once)"
  # not --locked: its lockfile fails to resolve (webpki-roots)
  cargo install wasm-bindgen-cli --version "$WBG_VERSION" --root "$ROOT/.tools"
  to_cache wasm-bindgen
fi

if [ "${1:-}" = "--tools-only" ]; then
  echo "web-build: tools ready ($(trunk --version), $(wasm-bindgen --version))"
  exit 0
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

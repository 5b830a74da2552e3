#!/usr/bin/env bash
# Runs every test of the project. Installs what a fresh machine lacks first.
# Usage: bash scripts/test.sh   (README's test command; .ci/run calls it)
#
# GPU tests run on whatever WebGPU adapter wgpu finds; on a machine without a GPU that is Mesa's
# CPU Vulkan driver (lavapipe), installed here. With CI=true a missing adapter fails the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

# Vulkan loader + lavapipe, unless a Vulkan driver is already installed.
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || ! ldconfig -p | grep libvulkan.so.1 >/dev/null; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "note: no Vulkan driver and no apt-get: GPU tests will skip (or fail with CI=true)" >&2
  fi
fi

# Unit, PyTorch-reference fixture, GGUF, GPU-kernel, GPU-model and CLI tests.
# (Fixtures are committed; tests/fixtures/gen.py regenerates them with PyTorch.)
cargo test --locked --all-targets 2>&1

# Browser tests: the Trunk-built page (dist/) in Debian's chromium, WebGPU through its
# bundled SwiftShader, driven by playwright-core (npm; it never downloads a browser).
# SPARSEDIT_SKIP_BROWSER=1 skips them (CI never sets it).
if [ "${SPARSEDIT_SKIP_BROWSER:-}" = 1 ]; then
  echo "browser tests skipped (SPARSEDIT_SKIP_BROWSER=1)"
else
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  apt_pkgs=()
  [ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
  command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
  if [ ${#apt_pkgs[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "browser tests need: ${apt_pkgs[*]} (no apt-get here)" >&2
      exit 1
    fi
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  fi
  npm ci --no-audit --no-fund --loglevel=error
  bash scripts/web-build.sh
  node --test tests/browser/page.test.mjs
fi

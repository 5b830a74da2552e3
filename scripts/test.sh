#!/usr/bin/env bash
# Runs every test of the project. Installs what a fresh machine lacks first.
# Usage: bash scripts/test.sh   (README's test command; .ci/run calls it)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

# Unit, reference-fixture, GGUF and CLI tests (CPU; fixtures come from tests/fixtures/gen.py).
cargo test --locked --all-targets 2>&1

#!/usr/bin/env bash
# Runs every Selfcast check: formatting, lints and all tests (unit, QUIC on loopback, ffmpeg,
# headless Chromium). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

#!/usr/bin/env bash
# Builds the component and runs every test (unit, harness, end to end).
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
# The end-to-end tests load this release build of the component.
cargo build --release --target wasm32-wasip2 -p onepassword-collector
cargo test --workspace

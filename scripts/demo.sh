#!/usr/bin/env bash
# The offline first run: builds the component and the harness, then runs the
# collector against built-in 1Password and Devo emulators on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2 -p onepassword-collector
# The harness shares the test build (dev profile with optimised dependencies).
cargo run -q -p harness-test-kit --bin demo -- "$@"

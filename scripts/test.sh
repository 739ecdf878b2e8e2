#!/usr/bin/env bash
# Builds the component and runs every test (unit, harness, end to end).
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
# The Redis tests start a real redis-server of their own on loopback.
if ! command -v redis-server >/dev/null; then
    if command -v apt-get >/dev/null; then
        echo "installing redis-server (the Redis tests need it)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        # The package starts a system service; the tests run servers of their own.
        (service redis-server stop || systemctl stop redis-server) >/dev/null 2>&1 || true
    else
        echo "redis-server is missing: install Redis (the Debian/Ubuntu package is redis-server)" >&2
        exit 1
    fi
fi
# The end-to-end tests load this release build of the component.
cargo build --release --target wasm32-wasip2 -p onepassword-collector
cargo test --workspace

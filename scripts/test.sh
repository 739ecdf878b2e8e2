#!/usr/bin/env bash
# Builds the component and runs every test (unit, harness, end to end).
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
if [ -n "${CI:-}" ]; then
    # A one-off build gains nothing from incremental state and it costs GBs.
    export CARGO_INCREMENTAL=0
fi
# What disk the build has: a full one is the first thing to rule out when a
# build dies with "No space left on device" or a linker bus error.
df -h . | awk 'NR == 2 {print "disk free for the build: " $4}' || true
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
# The monitoring tests (host-harness/cli/tests/prometheus.rs) run a real
# Prometheus server and promtool on loopback: Debian's prometheus package has
# both. Its recommends (node exporter and friends) are not needed.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    if command -v apt-get >/dev/null; then
        echo "installing prometheus (the monitoring tests need prometheus and promtool)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
        # The package starts a system service; the tests run a server of their own.
        (service prometheus stop || systemctl stop prometheus) >/dev/null 2>&1 || true
    else
        echo "prometheus is missing: install Prometheus (the Debian/Ubuntu package is prometheus)" >&2
        exit 1
    fi
fi
# The alerting rules are valid Prometheus rules (the Rust tests check them
# again under a live Prometheus, with promtool check metrics on a live scrape).
promtool check rules monitoring/alerts.yaml
# The end-to-end tests load this release build of the component.
cargo build --release --target wasm32-wasip2 -p onepassword-collector
# The hostile-tenant suite (host-harness/test-kit/tests/hostile.rs) runs this
# malicious component next to the real one. Not a workspace member (it only
# builds for wasm32-wasip2); built into the same target folder.
cargo build --release --target wasm32-wasip2 \
    --manifest-path host-harness/test-kit/hostile-guest/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}"
cargo test --workspace

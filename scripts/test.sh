#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the end-to-end tests that
# start the real `meshcast edge` binary against a real origin.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_packages cmake:cmake gcc:cc g++:c++ pkg-config:pkg-config procps:kill curl:curl openssl:openssl
ensure_rust
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the edge's end-to-end tests,
# and the spine tests (tus upload → transcode → edge → ffmpeg, hls.js and
# dash.js in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_packages cmake:cmake gcc:cc g++:c++ pkg-config:pkg-config procps:kill curl:curl openssl:openssl \
  ffmpeg:ffmpeg chromium:chromium nodejs:node npm:npm nginx:nginx wrk:wrk
ensure_rust
npm ci --no-audit --no-fund --loglevel=error
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

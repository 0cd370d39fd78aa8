#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the edge's end-to-end tests,
# and the spine tests (tus upload → transcode → edge → ffmpeg, hls.js and
# dash.js in headless Chromium), then every fuzz target for a bounded time
# (scripts/fuzz.sh; FUZZ_SECONDS=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_packages cmake:cmake gcc:cc g++:c++ pkg-config:pkg-config procps:kill curl:curl openssl:openssl \
  ffmpeg:ffmpeg chromium:chromium nodejs:node npm:npm nginx:nginx wrk:wrk \
  iproute2:ip iptables:iptables
ensure_rust
npm ci --no-audit --no-fund --loglevel=error
# A clean clone never reuses incremental state; skipping it saves disk and time.
[ -n "${CI:-}" ] && export CARGO_INCREMENTAL=0
# The test build needs a few GiB; say so up front rather than die mid-link.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
echo "==> $((free_kib / 1048576)) GiB free for the build" >&2
if [ "$free_kib" -lt $((4 * 1048576)) ]; then
  echo "warning: under 4 GiB free here; the test build may run out of disk" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
if [ "${FUZZ_SECONDS:-15}" != 0 ]; then
  bash scripts/fuzz.sh
fi

#!/usr/bin/env bash
# The main job: a hub and two edges on this machine, a demo video uploaded,
# transcoded and playable (HLS, DASH, player page). Extra arguments go to
# `meshcast up`, e.g. `--video my.mp4` or `--ready-file ready.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_packages cmake:cmake gcc:cc g++:c++ pkg-config:pkg-config ffmpeg:ffmpeg nodejs:node npm:npm
ensure_rust
npm ci --no-audit --no-fund --loglevel=error
cargo build --release --locked
exec target/release/meshcast up "$@"

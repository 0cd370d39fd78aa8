#!/usr/bin/env bash
# The edge in front of a demo origin: builds meshcast, makes a small HLS
# video (real, with ffmpeg) to serve, starts the origin on :8000 and the edge
# on :8080 (admin on :9090), fetches a segment twice to show MISS then HIT,
# and keeps the edge in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_packages cmake:cmake gcc:cc g++:c++ pkg-config:pkg-config curl:curl ffmpeg:ffmpeg
ensure_rust
cargo build --release --locked
bin=target/release/meshcast
content=target/demo/content
if [ ! -f "$content/v/demo/index.m3u8" ]; then
  mkdir -p "$content/v/demo"
  echo "==> making a 20 s HLS test video in $content/v/demo"
  ffmpeg -loglevel error -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
    -t 20 -c:v libx264 -g 60 -keyint_min 60 -sc_threshold 0 -c:a aac -b:a 96k \
    -f hls -hls_time 4 -hls_playlist_type vod -hls_segment_type fmp4 \
    -hls_segment_filename "$content/v/demo/seg_%03d.m4s" "$content/v/demo/index.m3u8"
fi
$bin demo-origin --dir "$content" --listen 127.0.0.1:8000 &
origin=$!
trap 'kill $origin 2>/dev/null || true' EXIT
$bin edge --config examples/edge.toml --check
$bin edge --config examples/edge.toml &
edge=$!
trap 'kill $origin $edge 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs http://127.0.0.1:9090/healthz >/dev/null && break; sleep 0.1; done
for i in 1 2; do
  curl -s -o /dev/null -D - http://127.0.0.1:8080/v/demo/seg_001.m4s | grep -i '^cache-status'
done
cat <<TXT

meshcast edge is serving on http://127.0.0.1:8080 (origin: 127.0.0.1:8000).
  playlist:  http://127.0.0.1:8080/v/demo/index.m3u8   (try: ffplay or ffprobe on it)
  metrics:   http://127.0.0.1:9090/metrics
  purge:     curl -X POST -H 'Authorization: Bearer demo-admin-key-change-me' \\
               'http://127.0.0.1:9090/purge?prefix=/v/demo/'
Ctrl-C stops both.
TXT
wait $edge

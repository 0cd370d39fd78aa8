#!/usr/bin/env bash
# Side-by-side: meshcast edge vs nginx proxy_cache on this machine, warm
# caches, three objects (1 KB playlist, 100 KB object, 2 MB segment), wrk
# alternating A B A B A B; prints the median of three runs per cell.
# A stop-gap until the loadtest crate (issue 4) measures CPU and RSS too.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_packages nginx:nginx wrk:wrk curl:curl
ensure_rust
cargo build --release --locked -q
DUR=${DUR:-5s}; CONNS=${CONNS:-64}
work=$(pwd)/target/bench; rm -rf "$work"; mkdir -p "$work/content/b" "$work/nginx-cache"
head -c 1000 /dev/urandom | base64 -w 80 | head -c 1000 > "$work/content/b/p.m3u8"
head -c 100000 /dev/urandom > "$work/content/b/o.m4s"
head -c 2000000 /dev/urandom > "$work/content/b/s.m4s"
bin=target/release/meshcast
$bin demo-origin --dir "$work/content" --listen 127.0.0.1:18000 2>/dev/null &
pids=($!)
cat > "$work/edge.toml" <<TOML
[edge]
listen = ["127.0.0.1:18080"]
admin = "127.0.0.1:19090"
threads = 2
[cache]
dir = "$work/edge-cache"
disk_size = "1GiB"
memory_size = "256MiB"
[log]
access = "off"
level = "warn"
[[site]]
hosts = ["*"]
origin = "http://127.0.0.1:18000"
TOML
cat > "$work/nginx.conf" <<NGX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=c:64m max_size=1g inactive=1d use_temp_path=off;
  server {
    listen 127.0.0.1:18081;
    location / {
      proxy_pass http://127.0.0.1:18000;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
      proxy_cache_lock on;
      proxy_cache_valid 200 1d;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGX
$bin edge --config "$work/edge.toml" &
pids+=($!)
nginx -c "$work/nginx.conf"
trap 'kill ${pids[*]} 2>/dev/null; nginx -c "$work/nginx.conf" -s stop 2>/dev/null || true' EXIT
sleep 1
for port in 18080 18081; do for o in p.m3u8 o.m4s s.m4s; do
  curl -s -o /dev/null "http://127.0.0.1:$port/b/$o"; curl -s -o /dev/null "http://127.0.0.1:$port/b/$o"
done; done
run() { # port object -> "rps p50_ms p99_ms MBps"
  wrk -t2 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$1/b/$2" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)} /^Requests\/sec/ {rps=$2}
    /^Transfer\/sec/ {t=$2; if (t ~ /GB/) t*=1024; else if (t ~ /KB/) t/=1024; else t+=0}
    END {printf "%.0f %.3f %.3f %.1f\n", rps, p50, p99, t}'
}
median() { sort -n | sed -n 2p; }
echo "| object | server | req/s | p50 ms | p99 ms | MB/s | req/s ratio meshcast/nginx |"
echo "|---|---|---|---|---|---|---|"
for o in p.m3u8 o.m4s s.m4s; do
  : > "$work/m" ; : > "$work/n"
  for i in 1 2 3; do run 18080 "$o" >> "$work/m"; run 18081 "$o" >> "$work/n"; done
  for who in m n; do
    for col in 1 2 3 4; do awk -v c=$col '{print $c}' "$work/$who" | median > "$work/$who.$col"; done
  done
  ratio=$(awk -v a="$(cat "$work/m.1")" -v b="$(cat "$work/n.1")" 'BEGIN{printf "%.2f", a/b}')
  echo "| $o | meshcast | $(cat "$work/m.1") | $(cat "$work/m.2") | $(cat "$work/m.3") | $(cat "$work/m.4") | $ratio |"
  echo "| $o | nginx | $(cat "$work/n.1") | $(cat "$work/n.2") | $(cat "$work/n.3") | $(cat "$work/n.4") | |"
done

#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets for a bounded time (FUZZ_SECONDS
# each, 15 by default): libFuzzer through cargo fuzz, on the stable
# toolchain, so without a sanitizer — Rust's own bounds and overflow checks
# (debug assertions are on) and each target's asserts are the oracle. Each
# target starts from valid encodings it builds itself and mutates them.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run;
# replay it with `cd fuzz && cargo fuzz run -s none <target> <that file>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-15}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi
# The fuzz crate has its own lock file (the workspace's versions plus
# libFuzzer's); refuse to build on a stale one, as --locked does.
cargo metadata --locked --format-version 1 >/dev/null
cargo fuzz build -s none --codegen-units 16
mkdir -p ../target/fuzz-logs
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  log=../target/fuzz-logs/$t.log
  if cargo fuzz run -s none --codegen-units 16 "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    echo "==> fuzz $t: ${runs:-?} inputs in ${seconds}s, no failure" >&2
  else
    echo "==> fuzz $t FAILED; the end of its log ($log):" >&2
    tail -40 "$log" >&2
    exit 1
  fi
done

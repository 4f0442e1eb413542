#!/usr/bin/env bash
# Run every coverage-guided fuzz target of fuzz/ briefly (FUZZ_SECONDS each,
# default 8: about a minute and a half in all after the build), seeded from the
# recorded streams (fuzz/make-seeds.py). Needs the nightly toolchain and
# cargo-fuzz (ci/install.sh installs both); without them it says so and
# skips. A crash, timeout, leak or OOM fails the script and leaves the
# reproducer in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz-smoke: no nightly toolchain (rustup toolchain install nightly); skipped"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: cargo-fuzz missing (cargo install cargo-fuzz); skipped"
  exit 0
fi
secs="${FUZZ_SECONDS:-8}"
cd fuzz
python3 make-seeds.py corpus >/dev/null
cargo +nightly fuzz build
for t in $(cargo +nightly fuzz list); do
  echo "fuzz-smoke: $t (${secs} s)"
  log="target/fuzz-smoke-$t.log"
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" \
      -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz-smoke: $t FAILED (reproducer under fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" "$log" | tr '\n' ' '
  echo
done
echo "fuzz-smoke: every target ran clean"

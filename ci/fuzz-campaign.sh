#!/usr/bin/env bash
# A long coverage-guided fuzzing campaign over the targets of fuzz/ (issue
# 14's bar: 10 million executions per target without a finding). Each
# target runs for a number of executions (not a time), under nice, seeded
# from the recorded streams (fuzz/make-seeds.py) and its corpus of earlier
# runs; per target it logs the executions, the wall time and any crash,
# timeout, leak or OOM reproducer, and it ends with a summary table.
#
#   ci/fuzz-campaign.sh [-r RUNS] [-j JOBS] [-n NICE] [-t SECS] [-o DIR] [-B] [TARGET...]
#
#   -r RUNS  executions per target (default 10000000), split over the jobs
#   -j JOBS  libFuzzer -jobs/-workers per target (default 1)
#   -n NICE  niceness of the fuzzers (default 19)
#   -t SECS  libFuzzer -timeout per input (default 10)
#   -o DIR   logs, artifacts and the summary (default fuzz/campaign/DATE)
#   -B       do not build (binaries from an earlier `cargo +nightly fuzz build -O`)
#   TARGET   the targets to run (default: all of `cargo +nightly fuzz list`)
#
# Exit status: 0 when no target had a finding, 1 otherwise. The summary is
# also written to DIR/summary.tsv. Needs the nightly toolchain and
# cargo-fuzz (ci/install.sh). A reproducer found here becomes a fix and a
# unit test in the crate it belongs to (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
runs=10000000 jobs=1 nice=19 timeout=10 out="" build=1
while getopts "r:j:n:t:o:B" o; do
  case $o in
    r) runs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    n) nice=$OPTARG ;;
    t) timeout=$OPTARG ;;
    o) out=$OPTARG ;;
    B) build=0 ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
out=${out:-$root/fuzz/campaign/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd fuzz
if [ "$build" = 1 ]; then
  nice -n "$nice" cargo +nightly fuzz build -O
fi
bin=$root/fuzz/target/x86_64-unknown-linux-gnu/release
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
python3 make-seeds.py corpus >/dev/null
per_job=$(( (runs + jobs - 1) / jobs ))
printf "target\texecs\tseconds\texecs_per_s\tfindings\n" >"$out/summary.tsv"
failed=0
echo "fuzz-campaign: ${targets[*]}: $runs executions each ($jobs job(s)), nice $nice, logs in $out"
for t in "${targets[@]}"; do
  art="$out/artifacts/$t"
  mkdir -p "$art" "$out/$t"
  t0=$(date +%s)
  par=()
  if [ "$jobs" -gt 1 ]; then
    # One log per job (fuzz-N.log) in the working directory.
    par=(-jobs="$jobs" -workers="$jobs")
  fi
  set +e
  (cd "$out/$t" && nice -n "$nice" "$bin/$t" "$root/fuzz/corpus/$t" -runs="$per_job" \
    "${par[@]}" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout="$timeout" \
    -print_final_stats=1 -artifact_prefix="$art/" >"$out/$t.log" 2>&1)
  rc=$?
  set -e
  secs=$(( $(date +%s) - t0 ))
  # With jobs, the main log repeats each job's log: count the job logs.
  logs=("$out/$t.log")
  if [ "$jobs" -gt 1 ]; then
    shopt -s nullglob
    logs=("$out/$t"/fuzz-*.log)
    shopt -u nullglob
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "${logs[@]}" \
    | awk '{s += $1} END {print s + 0}')
  findings=$(find "$art" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \
    -o -name 'leak-*' \) | wc -l)
  if [ "$rc" != 0 ] && [ "$findings" = 0 ]; then
    findings="rc=$rc"
  fi
  eps=$(( execs / (secs > 0 ? secs : 1) ))
  printf "%s\t%s\t%s\t%s\t%s\n" "$t" "$execs" "$secs" "$eps" "$findings" >>"$out/summary.tsv"
  echo "fuzz-campaign: $t: $execs executions in $secs s ($eps/s), findings: $findings"
  if [ "$findings" != 0 ]; then
    failed=1
    find "$art" -type f -printf "  %p\n"
  fi
done
echo
column -t -s $'\t' "$out/summary.tsv"
exit $failed

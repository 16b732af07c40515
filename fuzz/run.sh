#!/usr/bin/env bash
# Builds every fuzz target (cargo-fuzz, libFuzzer, debug assertions so an arithmetic overflow
# is a crash) and runs each for SECONDS; fails on the first crash.
#
#   fuzz/run.sh 30                               # what .ci/run does
#   TARGETS="session" fuzz/run.sh 600            # one target, longer
#   FUZZ_SANITIZER=address fuzz/run.sh 360       # with AddressSanitizer
#
# No sanitizer by default: the code fuzzed (protocol/, service/, store/format.rs) has no
# unsafe, and without ASan the build takes about half as long and the session target runs
# ~6x more execs per second (measured here: 7.5 vs 13.6 min to build on a loaded machine,
# 14,658 vs 2,264 execs/s).
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked). Each target
# starts from its committed seeds (fuzz/seeds/TARGET, from docs/ by make_seeds.py) and the
# corpus earlier runs grew (fuzz/corpus/TARGET, not committed). A crash leaves its input in
# fuzz/artifacts/TARGET/; reproduce with `cargo +nightly fuzz run -a -s none TARGET FILE` in fuzz/.
# libFuzzer's output is in fuzz/logs/TARGET.log; the last status line and the final stats of
# each run are printed.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET=${1:?usage: fuzz/run.sh SECONDS}
TARGETS=${TARGETS:-"binary_decoder text_decoder stream_decoder state_decoder journal_decoder session"}
FLAGS=(--debug-assertions --sanitizer "${FUZZ_SANITIZER:-none}")

cargo +nightly fuzz build "${FLAGS[@]}"
mkdir -p logs
failed=()
for target in $TARGETS; do
  mkdir -p "corpus/$target"
  log=logs/$target.log
  echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
  status=0
  cargo +nightly fuzz run "${FLAGS[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 >"$log" 2>&1 ||
    status=$?
  grep -E '^#[0-9]+' "$log" | tail -1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  if ((status != 0)); then
    echo "fuzz $target FAILED (exit $status):"
    grep -E -A30 'panicked|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" | head -60
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: every target ran ${SECONDS_PER_TARGET}s without a crash"

#!/usr/bin/env bash
# Runs seqd's criterion benchmarks (benches/sequence.rs: the allocator in-process; benches/
# codec.rs: decode + encode of a 64 KiB buffer) and records them with the machine they ran on:
#
#   bench/criterion.sh             # writes results/criterion/<date>-<host>/
#
# The folder holds criterion's own output (bench.log), every benchmark's estimates
# (estimates.json, copied from target/criterion) and a README.md table generated from them by
# bench/lib/criterion_table.py. Nothing in it is edited by hand. Run it on a quiet machine:
# the two-thread benchmarks use both CPUs of a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-results/criterion/$(date -u +%Y-%m-%d)-$(hostname -s)}
mkdir -p "$OUT"
COMMAND="cargo bench --bench sequence --bench codec -- --noplot"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $COMMAND"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benches Cargo.toml || echo ' (with uncommitted changes)')"
  echo "cpus: $(nproc)"
  echo "cpu model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

# Fresh estimates only: a benchmark removed from the code must not linger in the table.
rm -rf target/criterion
$COMMAND 2>&1 | tee "$OUT/bench.log"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 bench/lib/criterion_table.py target/criterion "$OUT"
echo "wrote $OUT/README.md"

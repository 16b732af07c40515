#!/usr/bin/env bash
# The soak: seqd for MINUTES (default 30) at ~80% of its measured capacity with connection
# churn — clients that connect, pipeline and close; some that never read; some that vanish
# mid-request — sampling RSS, open fds and latency every 10 s. The goal: flat RSS and fds, no
# error.
#
#   bench/soak.sh                  # 30 minutes, into results/soak/
#   bench/soak.sh --minutes 2      # a short run while developing
#   LOAD=0.5 OUT=/tmp/soak bench/soak.sh --minutes 5
#
# What runs (bench/lib/soak.py does it, and writes the results): a release seqd (durable,
# one event loop, CPU 0, nice -5); on CPU 1 churners, vanishing clients, a never-reading
# client every 20 s and a probe timing one GETSEQ every 100 ms, started first; then seqd's
# capacity beside them, what it answers flat out (loadgen closed loop, 50 x 64 pipelined
# GETSEQ, 10 s); then loadgen open loop at LOAD (0.8) of that rate for the whole soak. Written to OUT
# (results/soak): README.md (command, machine, verdict, table), samples.tsv (every 10 s), soak.svg (the plot: no
# matplotlib needed), loadgen.json. Exit status 1 when RSS or fds grew or anything failed.
#
# Needs: a Rust toolchain, python3, taskset. Loopback only; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=30
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --minutes=*) MINUTES=${1#*=}; shift ;;
    *) echo "soak: unknown argument $1 (usage: bench/soak.sh [--minutes N])" >&2; exit 2 ;;
  esac
done
LOAD=${LOAD:-0.8}
OUT=${OUT:-results/soak}

command -v python3 >/dev/null || { echo "soak: python3 is not installed" >&2; exit 1; }
command -v taskset >/dev/null || { echo "soak: taskset (util-linux) is not installed" >&2; exit 1; }
cargo build --release --locked --quiet -p seqd -p loadgen
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src 2>/dev/null; then commit="$commit (with uncommitted changes)"; fi
exec nice -n -5 python3 bench/lib/soak.py --seqd "$PWD/target/release/seqd" --loadgen "$PWD/target/release/loadgen" \
  --minutes "$MINUTES" --load "$LOAD" --out "$OUT" --commit "$commit" \
  --command "bench/soak.sh --minutes $MINUTES"

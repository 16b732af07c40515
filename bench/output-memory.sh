#!/usr/bin/env bash
# Before/after of the output limits against issue 20's item 4 attack: clients that pipeline
# GETSEQ and never read. Two git revisions built side by side (target/ab, as bench/ab.sh),
# each attacked on fresh servers, A and B alternating round by round; writes
# results/output-memory/README.md (never edit it by hand: rerun this script).
#
#   bench/output-memory.sh                      # A = the merge base with main, B = HEAD
#   bench/output-memory.sh REV_A REV_B
#   CLIENTS=50,300 ROUNDS=2 bench/output-memory.sh
#
# What is measured (bench/lib/output_memory.py): seqd's RSS before, at the peak of, during
# and 5 s after the attack; how many attackers seqd closed; a fresh client's GETSEQ time
# meanwhile. Needs: git, a Rust toolchain, taskset, python3. Loopback only; bounded: at most
# CLIENTS attackers at once, each stopping when closed or when its writes stall for 2 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV_A=${1:-$(git merge-base main HEAD)}
REV_B=${2:-HEAD}
CLIENTS=${CLIENTS:-50,300}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-results/output-memory}
for tool in git cargo taskset python3; do
  command -v "$tool" >/dev/null || { echo "output-memory: $tool is not installed" >&2; exit 1; }
done
SHA_A=$(git rev-parse --short "$REV_A^{commit}") || { echo "output-memory: '$REV_A' is not a revision" >&2; exit 2; }
SHA_B=$(git rev-parse --short "$REV_B^{commit}") || { echo "output-memory: '$REV_B' is not a revision" >&2; exit 2; }
WORK=$(mktemp -d)
cleanup() {
  git worktree remove --force "$WORK/tree" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
build() { # rev -> $WORK/seqd-<rev>; a release build of rev kept as target/ab/seqd-<rev> is reused
  local rev=$1 kept=$ROOT/target/ab/seqd-$1
  if [[ ! -x $kept ]]; then
    git worktree add --detach --quiet "$WORK/tree" "$rev"
    (cd "$WORK/tree" && CARGO_TARGET_DIR=$ROOT/target/ab cargo build --release --locked --quiet -p seqd)
    cp "$ROOT/target/ab/release/seqd" "$kept"
    git worktree remove --force "$WORK/tree"
  fi
  cp "$kept" "$WORK/seqd-$rev"
}
echo "building $SHA_A and $SHA_B (target/ab)" >&2
build "$SHA_A"
build "$SHA_B"
python3 bench/lib/output_memory.py --out "$OUT" \
  --label-a "$SHA_A (before)" --seqd-a "$WORK/seqd-$SHA_A" \
  --label-b "$SHA_B (after)" --seqd-b "$WORK/seqd-$SHA_B" \
  --clients "$CLIENTS" --rounds "$ROUNDS" --command "bench/output-memory.sh $* (A=$SHA_A, B=$SHA_B)"

# Sourced by bench scripts that compare git revisions (ab.sh, lease-journal.sh, peer-flood.sh).
# build REV: a release seqd built from REV into $WORK/seqd-REV, in a throwaway worktree with
# target/ab as its target directory; kept in target/ab/bin/seqd-REV so the next run at the
# same commit reuses it. Needs ROOT (the checkout) and WORK (the run's scratch directory).
build() {
  local rev=$1
  if [[ -x $ROOT/target/ab/bin/seqd-$rev ]]; then
    cp "$ROOT/target/ab/bin/seqd-$rev" "$WORK/seqd-$rev"
    return
  fi
  git worktree add --detach --quiet "$WORK/tree" "$rev"
  (cd "$WORK/tree" && CARGO_TARGET_DIR=$ROOT/target/ab nice -n 5 cargo build --release --locked --quiet -p seqd)
  mkdir -p "$ROOT/target/ab/bin"
  cp "$ROOT/target/ab/release/seqd" "$ROOT/target/ab/bin/seqd-$rev"
  cp "$ROOT/target/ab/release/seqd" "$WORK/seqd-$rev"
  git worktree remove --force "$WORK/tree"
}

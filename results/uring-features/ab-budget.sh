#!/bin/bash
# Runs bench/ab.sh from the bench worktree in a cgroup of the highest CPU weight (the client and
# the script inherit it); SEQD_A/SEQD_B are wrappers that move the server into the 50% budget.
echo $$ > /sys/fs/cgroup/cpu/uring-ab-prio/cgroup.procs
cd /work/wt-uring-bench
exec env ROUNDS=${ROUNDS:-5} CONFIGS="${CONFIGS:-50x1 50x64 1x4096}" DURATION=${DURATION:-3s} bench/ab.sh "$@"

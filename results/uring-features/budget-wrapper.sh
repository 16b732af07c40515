#!/bin/sh
# seqd under the A/B budget: 5 ms of CPU per 10 ms period (cgroup v1 cpu controller)
# (bench/ab.sh runs it as SEQD_A/SEQD_B; @BIN@ is the binary built from that side's revision)
echo $$ > /sys/fs/cgroup/cpu/uring-ab-budget/cgroup.procs || exit 1
exec @BIN@ "$@"

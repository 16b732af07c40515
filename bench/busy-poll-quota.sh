#!/usr/bin/env bash
# Busy polling under a CPU quota (A/B in one run): seqd --busy-poll 50 (spins regardless)
# against seqd's default --busy-poll auto (no spinning while its cgroup has a quota) and Redis
# INCR, each started inside one cgroup with a CFS quota of half a CPU (as systemd CPUQuota=50%
# or docker --cpus 0.5 would run it), server on CPU 0, clients on CPU 1, rounds alternating.
# Measures loadgen binary 50x1 and 50x64 (GETSEQ; Redis: INCR) and redis-benchmark -c 50 -P 1
# and -P 64 (GETSEQ; Redis: INCR). Writes OUT (results/busy-poll-quota): README.md with every
# figure and the median of per-round ratios, raw.txt, the loadgen JSON.
#
#   bench/busy-poll-quota.sh            # 3 rounds
#   ROUNDS=5 OUT=/tmp/bpq bench/busy-poll-quota.sh
#
# Needs root (a cgroup of its own), redis-server and redis-benchmark. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-results/busy-poll-quota}
for tool in redis-server redis-benchmark redis-cli taskset python3; do
  command -v $tool >/dev/null || { echo "busy-poll-quota: $tool is not installed" >&2; exit 1; }
done
cargo build --release --locked --quiet -p seqd -p loadgen
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/raw.txt"

# The quota cgroup: v1 cpu controller, or v2 with cpu enabled for children.
if [ -e /sys/fs/cgroup/cpu/cgroup.procs ]; then
  G=/sys/fs/cgroup/cpu/seqd-bpq-$$
  mkdir "$G" && echo 10000 >"$G/cpu.cfs_period_us" && echo 5000 >"$G/cpu.cfs_quota_us"
  KIND="v1 cpu.cfs_quota_us 5000 per cpu.cfs_period_us 10000"
elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
  G=/sys/fs/cgroup/seqd-bpq-$$
  mkdir "$G" && echo "5000 10000" >"$G/cpu.max"
  KIND="v2 cpu.max 5000 10000"
else
  echo "busy-poll-quota: no writable cgroup cpu controller (run as root)" >&2; exit 1
fi
PID=""
cleanup() {
  [ -z "$PID" ] || kill "$PID" 2>/dev/null || true
  sleep 0.2
  rmdir "$G" 2>/dev/null || true
}
trap cleanup EXIT

# "${IN_QUOTA[@]}" COMMAND...: COMMAND inside the quota cgroup from its start, on CPU 0 (the
# shell moves itself in, then becomes COMMAND: $! is the server's PID).
IN_QUOTA=(sh -c "echo \$\$ > '$G/cgroup.procs' && exec nice -n -20 taskset -c 0 \"\$@\"" sh)

port=$((40000 + $$ % 20000))
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then variants=(spin auto redis); else variants=(redis auto spin); fi
  for v in "${variants[@]}"; do
    case $v in
      redis)
        "${IN_QUOTA[@]}" redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null 2>&1 &
        target=redis rb=(INCR bench:seq) ;;
      spin | auto)
        bp=$([ $v = spin ] && echo 50 || echo auto)
        "${IN_QUOTA[@]}" target/release/seqd --host 127.0.0.1 --port $port --threads 1 --in-memory --busy-poll $bp \
          --log-level info 2>"$OUT/seqd-$v-r$r.log" &
        target=binary rb=(GETSEQ) ;;
    esac
    PID=$!
    for _ in $(seq 200); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.05; done
    for c in "50 1" "50 64"; do
      set -- $c
      nice -n -20 taskset -c 1 target/release/loadgen run --target $target --addr 127.0.0.1:$port \
        -c "$1" -P "$2" -d 4s --warmup 1s --output "$OUT/$v-r$r-${1}x$2" >/dev/null 2>&1
      rps=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['totals']['throughput_rps']))" "$OUT/$v-r$r-${1}x$2.json")
      echo "$r $v loadgen-${1}x$2 $rps" | tee -a "$OUT/raw.txt"
    done
    for P in 1 64; do
      n=$((P == 1 ? 150000 : 3000000))
      rps=$(nice -n -20 taskset -c 1 redis-benchmark -p $port -c 50 -P $P -n $n --csv "${rb[@]}" | tail -1 | cut -d, -f2 | tr -d '"')
      echo "$r $v redis-benchmark-P$P $rps" | tee -a "$OUT/raw.txt"
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    port=$((port + 1))
  done
done
rm -f "$OUT"/*.hgrm "$OUT"/*.hlog "$OUT"/*.svg

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src loadgen || commit="$commit (with uncommitted changes)"
python3 - "$OUT" "$ROUNDS" "$KIND" "$commit" <<'PY'
import collections, statistics, subprocess, sys, datetime
out, rounds, kind, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fig = collections.defaultdict(dict)
for line in open(f"{out}/raw.txt"):
    r, v, row, rps = line.split()
    fig[row][(int(r), v)] = float(rps)
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
load = " ".join(open("/proc/loadavg").read().split()[:3])
lines = [
    "# Busy polling under a CPU quota",
    "",
    f"Written by `bench/busy-poll-quota.sh` (ROUNDS={rounds}) at commit {commit}, "
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}, `nproc` {sh('nproc')}, "
    f"kernel {sh('uname -r')}, {cpu}; load average at the end {load}.",
    "",
    f"Every server ran inside one cgroup with a CFS quota ({kind}: half of CPU 0) from its start; "
    "clients on CPU 1 without a quota. *spin*: seqd `--busy-poll 50`; *auto*: seqd's default "
    "`--busy-poll auto`, which does not spin under a quota; Redis: `redis-server` INCR. seqd "
    "`--threads 1 --in-memory`. loadgen rows: `loadgen run -c 50 -P N -d 4s --warmup 1s` (binary "
    "GETSEQ; Redis INCR); redis-benchmark rows: `redis-benchmark -c 50 -P N -n 150000|3000000 "
    "--csv GETSEQ` (Redis: `INCR bench:seq`). Requests/s per round; ratios are medians of per-round "
    "ratios.",
    "",
    "| row | " + " | ".join(f"r{r} spin / auto / Redis" for r in range(1, rounds + 1))
    + " | auto / spin | auto / Redis | spin / Redis |",
    "|---|" + "---|" * (rounds + 3),
]
for row, f in fig.items():
    cells = [f"{f[(r,'spin')]:,.0f} / {f[(r,'auto')]:,.0f} / {f[(r,'redis')]:,.0f}" for r in range(1, rounds + 1)]
    med = lambda a, b: statistics.median(f[(r, a)] / f[(r, b)] for r in range(1, rounds + 1))
    lines.append(f"| {row} | " + " | ".join(cells)
                 + f" | {med('auto','spin'):.2f}x | {med('auto','redis'):.2f}x | {med('spin','redis'):.2f}x |")
lines += ["", "Raw figures: `raw.txt` (round, variant, row, requests/s); seqd's logs `seqd-*.log` "
          "(auto's says `CPU quota in force`); loadgen's reports `*.json`."]
open(f"{out}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

#!/usr/bin/env bash
# epoll against io_uring: one release build of seqd served with `--io uring` and `--io epoll`
# in turn, at the same loads in one sitting, alternating round by round on fresh servers so
# that drift in the machine hits both alike. Prints one row per run (backend, load, round,
# requests/s, server CPU microseconds per request) and per load the medians and the median
# of the rounds' epoll/io_uring throughput ratios.
#
#   bench/epoll-vs-uring.sh                # ROUNDS=5 CONFIGS="1x1 50x1 50x16 50x64" DURATION=3s
#
# Server CPU is the process's user + system time over the load (/proc/PID/stat, in clock
# ticks); with the default --busy-poll it includes the spinning of a loop waiting for more.
#
# Each server: seqd --in-memory --threads 1 pinned to CPU 0; loadgen pinned to CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
CONFIGS=${CONFIGS:-"1x1 50x1 50x16 50x64"}
DURATION=${DURATION:-3s}
PORT=${PORT:-10393}
WORK=$(mktemp -d)
SERVER=""
cleanup() { [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release --locked --quiet -p seqd -p loadgen
SEQD=$PWD/target/release/seqd LOADGEN=$PWD/target/release/loadgen
ROWS=$WORK/rows.tsv
: >"$ROWS"

measure() { # backend config round
  local io=$1 config=$2 round=$3 log=$WORK/seqd.log
  local c=${config%x*} p=${config#*x}
  taskset -c 0 "$SEQD" --io "$io" --in-memory --host 127.0.0.1 --port "$PORT" --threads 1 2>"$log" &
  SERVER=$!
  for _ in $(seq 1 200); do grep -q "seqd listening" "$log" && break; sleep 0.05; done
  local serving=epoll
  [[ $io == uring ]] && serving=io_uring
  grep -q "io=$serving" "$log" || { cat "$log" >&2; exit 1; }
  local ticks_before
  ticks_before=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
  taskset -c 1 "$LOADGEN" run --addr "127.0.0.1:$PORT" -c "$c" -P "$p" -d "$DURATION" --warmup 0s \
    --cpus 1 -o "$WORK/run" >"$WORK/loadgen.txt" 2>&1 || { cat "$WORK/loadgen.txt" >&2; exit 1; }
  local ticks=$(($(awk '{print $14 + $15}' "/proc/$SERVER/stat") - ticks_before))
  kill "$SERVER" || { echo "seqd exited during the run; its log:" >&2; cat "$log" >&2; exit 1; }
  wait "$SERVER" || true
  SERVER=""
  python3 - "$WORK/run.json" "$ticks" "$(getconf CLK_TCK)" "$io" "$config" "$round" <<'PY' | tee -a "$ROWS"
import json, sys
run, ticks, hz, io, config, rnd = sys.argv[1:]
totals = json.load(open(run))["totals"]
cpu_us = int(ticks) / int(hz) * 1e6 / max(1, totals["requests"])
print(f"{io}\t{config}\t{rnd}\t{totals['throughput_rps']:.0f}\t{cpu_us:.3f}")
PY
}

for round in $(seq "$ROUNDS"); do
  for config in $CONFIGS; do
    if ((round % 2)); then order=(uring epoll); else order=(epoll uring); fi
    for io in "${order[@]}"; do measure "$io" "$config" "$round"; done
  done
done

python3 - "$ROWS" <<'PY'
import statistics, sys
runs, cpu = {}, {}
for line in open(sys.argv[1]):
    io, config, rnd, rps, cpu_us = line.split()
    runs[(io, config, rnd)] = float(rps)
    cpu[(io, config, rnd)] = float(cpu_us)
print("\n| connections x pipeline | io_uring (median) | epoll (median) | epoll / io_uring (median of rounds) | server CPU per request, io_uring / epoll (median) |")
print("|---|---|---|---|---|")
for config in dict.fromkeys(c for _, c, _ in runs):
    rounds = sorted({r for (_, c, r) in runs if c == config})
    med = lambda table, io: statistics.median(table[(io, config, r)] for r in rounds)
    ratio = statistics.median(runs[("epoll", config, r)] / runs[("uring", config, r)] for r in rounds)
    print(f"| {config} | {med(runs, 'uring'):,.0f}/s | {med(runs, 'epoll'):,.0f}/s | {ratio:.2f}x "
          f"| {med(cpu, 'uring'):.2f} us / {med(cpu, 'epoll'):.2f} us |")
PY

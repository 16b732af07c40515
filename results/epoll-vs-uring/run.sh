#!/usr/bin/env bash
# epoll against io_uring: one release build of seqd served with `--io uring` and `--io epoll`
# in turn, at the same loads in one sitting, alternating round by round on fresh servers so
# that drift in the machine hits both alike. Prints one row per run (backend, load, round,
# requests/s) and the median of the rounds' epoll/io_uring ratios per load.
#
#   results/epoll-vs-uring/run.sh                  # ROUNDS=5 CONFIGS="1x1 50x1 50x64" DURATION=3s
#
# Each server: seqd --in-memory --threads 1 pinned to CPU 0; loadgen pinned to CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
CONFIGS=${CONFIGS:-"1x1 50x1 50x64"}
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
  taskset -c 1 "$LOADGEN" run --addr "127.0.0.1:$PORT" -c "$c" -P "$p" -d "$DURATION" --warmup 0s \
    --cpus 1 -o "$WORK/run" >"$WORK/loadgen.txt" 2>&1 || { cat "$WORK/loadgen.txt" >&2; exit 1; }
  kill "$SERVER" || { echo "seqd exited during the run; its log:" >&2; cat "$log" >&2; exit 1; }
  wait "$SERVER" || true
  SERVER=""
  local rps
  rps=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["totals"]["throughput_rps"]))' "$WORK/run.json")
  printf '%s\t%s\t%s\t%s\n' "$io" "$config" "$round" "$rps" | tee -a "$ROWS"
}

for round in $(seq "$ROUNDS"); do
  for config in $CONFIGS; do
    if ((round % 2)); then order=(uring epoll); else order=(epoll uring); fi
    for io in "${order[@]}"; do measure "$io" "$config" "$round"; done
  done
done

python3 - "$ROWS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    io, config, rnd, rps = line.split()
    runs[(io, config, rnd)] = float(rps)
print("\n| connections x pipeline | io_uring (median) | epoll (median) | epoll / io_uring (median of rounds) |")
print("|---|---|---|---|")
for config in dict.fromkeys(c for _, c, _ in runs):
    rounds = sorted({r for (_, c, r) in runs if c == config})
    uring = [runs[("uring", config, r)] for r in rounds]
    epoll = [runs[("epoll", config, r)] for r in rounds]
    ratio = statistics.median(e / u for e, u in zip(epoll, uring))
    print(f"| {config} | {statistics.median(uring):,.0f}/s | {statistics.median(epoll):,.0f}/s | {ratio:.2f}x |")
PY

#!/usr/bin/env bash
# Where a server's time goes under one load of the benchmark matrix: the tools issue 6 asks
# for when a goal is missed, run the same way every time.
#
#   bench/profile.sh [--server seqd|baseline|redis] [-c N] [-P N] [-d SECONDS] [--out DIR]
#
# Starts the server pinned to CPU 0 (seqd: one event loop, in memory if the build has
# durability) and loadgen pinned to CPU 1, then, each over SECONDS of steady load:
#   1. perf stat: syscalls, io_uring submissions / completions / work punted to io-wq threads /
#      poll arming / task-work runs, context switches, CPU time; per request (requests counted
#      by the server's own counter where it has one, else by loadgen);
#   2. perf record -e cpu-clock -g (no hardware counters here): where the CPU time goes;
#   3. strace -c -f: syscall counts and time (strace slows the server, so its per-request
#      figures are from a slower, more batched run: read them as a lower bound).
# Writes DIR/{perf-stat.txt,perf-report.txt,strace.txt,loadgen-*.txt,summary.txt}.
# Needs perf (linux-perf) and strace; run as root (or with perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SERVER=seqd C=50 P=64 SECONDS_=5 OUT=""
while (($#)); do
  case $1 in
    --server) SERVER=$2; shift ;;
    -c) C=$2; shift ;;
    -P) P=$2; shift ;;
    -d) SECONDS_=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "profile.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
for tool in perf strace taskset redis-cli; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing (apt-get install linux-perf strace redis-tools util-linux)" >&2; exit 1; }
done
OUT=${OUT:-/tmp/seqd-profile-$SERVER-${C}x$P}
mkdir -p "$OUT"
SEQD=$ROOT/target/release/seqd
LOADGEN=$ROOT/target/release/loadgen
[[ -x $SEQD && -x $LOADGEN ]] || { echo "profile.sh: build first: cargo build --release -p seqd -p loadgen" >&2; exit 1; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

case $SERVER in
  seqd)
    extra=()
    "$SEQD" --help | grep -q -- --in-memory && extra=(--in-memory)
    taskset -c 0 "$SEQD" --host 127.0.0.1 --port 0 --threads 1 --log-level warn,seqd=info "${extra[@]}" 2>"$OUT/server.log" &
    SPID=$!
    for _ in $(seq 100); do grep -q 'listening on' "$OUT/server.log" && break; sleep 0.05; done
    ADDR=$(grep -oE 'listening on [^ ]+' "$OUT/server.log" | awk '{print $3}')
    TARGET=binary
    counter() { redis-cli -h 127.0.0.1 -p "${ADDR##*:}" CURRENT; } ;;
  baseline)
    taskset -c 0 "$LOADGEN" baseline-server 2>"$OUT/server.log" &
    SPID=$!
    for _ in $(seq 100); do grep -q 'listening on' "$OUT/server.log" && break; sleep 0.05; done
    ADDR=$(grep -oE 'listening on [^ ]+' "$OUT/server.log" | awk '{print $3}')
    TARGET=binary
    counter() { echo ""; } ;;
  redis)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/server.log" 2>&1 &
    SPID=$!
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
    ADDR=127.0.0.1:$port
    TARGET=redis
    counter() { redis-cli -p "$port" GET loadgen:seq; } ;;
  *) echo "profile.sh: --server seqd, baseline or redis" >&2; exit 2 ;;
esac
PIDS+=("$SPID")

# One loadgen run spanning a measurement window; prints requests in the window.
under_load() { # name, then the measuring command
  local name=$1; shift
  taskset -c 1 "$LOADGEN" run --target "$TARGET" --addr "$ADDR" -c "$C" -P "$P" --cpus 1 \
    --warmup 1s -d "$((SECONDS_ + 2))s" -o "$OUT/loadgen-$name" >"$OUT/loadgen-$name.txt" 2>&1 &
  local lpid=$!
  PIDS+=("$lpid")
  sleep 1.5
  local before after
  before=$(counter)
  "$@"
  after=$(counter)
  wait "$lpid" || true
  if [[ -n $before && -n $after ]]; then
    echo $((after - before))
  else # the baseline keeps no shared counter: loadgen's throughput times the window
    python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['totals']['throughput_rps'] * $SECONDS_))" "$OUT/loadgen-$name.json"
  fi
}

EVENTS=raw_syscalls:sys_enter,io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_queue_async_work,io_uring:io_uring_poll_arm,io_uring:io_uring_task_work_run,io_uring:io_uring_local_work_run,io_uring:io_uring_cqring_wait,context-switches,cpu-clock
echo "== perf stat ($SERVER, ${C}x$P, ${SECONDS_}s)" >&2
N_STAT=$(under_load stat perf stat -x, -e "$EVENTS" -p "$SPID" -o "$OUT/perf-stat.txt" -- sleep "$SECONDS_")
echo "== perf record" >&2
N_RECORD=$(under_load record perf record -e cpu-clock -F 1999 -g -p "$SPID" -o "$OUT/perf.data" -- sleep "$SECONDS_" 2>/dev/null)
perf report -i "$OUT/perf.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null >"$OUT/perf-report.txt" || true
perf report -i "$OUT/perf.data" --no-children --sort sym --percent-limit 0.5 --stdio -g none 2>/dev/null >"$OUT/perf-report-flat.txt" || true
echo "== strace -c" >&2
N_STRACE=$(under_load strace timeout -s INT "$SECONDS_" strace -c -f -p "$SPID" -o "$OUT/strace.txt")

python3 - "$OUT" "$N_STAT" "$N_STRACE" "$SERVER" "${C}x$P" "$SECONDS_" <<'PY' | tee "$OUT/summary.txt"
import re, sys, pathlib
out, n_stat, n_strace, server, config, seconds = sys.argv[1:]
out, n_stat, n_strace = pathlib.Path(out), int(n_stat), int(n_strace)
print(f"{server} {config}: {n_stat:,} requests in the perf stat window ({n_stat / float(seconds):,.0f}/s)")
for line in (out / "perf-stat.txt").read_text().splitlines():
    parts = line.split(",")
    if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
        continue
    value, event = float(parts[0]), parts[2]
    if event == "cpu-clock":
        print(f"  {'CPU time (ns) per request':40} {value * 1e6 / max(n_stat, 1):10.1f}   ({value:,.0f} ms in all)")
    else:
        print(f"  {event + ' per request':40} {value / max(n_stat, 1):10.4f}   ({value:,.0f})")
text = (out / "strace.txt").read_text()
print(f"strace -c ({n_strace:,} requests while traced, {n_strace / float(seconds):,.0f}/s):")
for line in text.splitlines():
    m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
    if m and m.group(2) != "total":
        print(f"  {m.group(2):20} {int(m.group(1)) / max(n_strace, 1):10.4f} per request ({int(m.group(1)):,})")
PY
echo "files in $OUT" >&2

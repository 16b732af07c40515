#!/usr/bin/env bash
# Before/after for a change to seqd: two git revisions built side by side, measured at the same
# loads in one sitting, alternating A and B round by round on fresh servers, so that drift in
# the machine hits both alike. Reports throughput and io_uring_enter system calls per request
# (perf's syscalls tracepoint, when perf can read it) and writes results/ab/<name>/README.md
# (never edit that file by hand: rerun this script).
#
#   bench/ab.sh NAME REV_A REV_B     # e.g. bench/ab.sh fewer-enters 1ea7741 HEAD
#   ROUNDS=7 CONFIGS="1x1 50x1 50x64" DURATION=3s bench/ab.sh NAME REV_A REV_B
#   SEQD_A=path SEQD_B=path bench/ab.sh NAME REV_A REV_B   # binaries already built from them
#   NOTE="..." adds a line about the conditions of the run to the README
#
# Needs: git, a Rust toolchain, taskset, python3, 2+ CPUs; perf for the system-call counts.
# Each server: seqd --in-memory --threads 1 pinned to CPU 0; the client: loadgen (built from
# the current checkout) pinned to CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -eq 3 ]] || usage
NAME=$1 REV_A=$2 REV_B=$3
[[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || { echo "ab.sh: NAME must be a plain folder name, not '$NAME'" >&2; exit 2; }
ROUNDS=${ROUNDS:-5}
CONFIGS=${CONFIGS:-"1x1 50x1 50x64"}
DURATION=${DURATION:-3s}
PORT=${PORT:-10391}
OUT=results/ab/$NAME

for tool in git cargo taskset python3; do
  command -v "$tool" >/dev/null || { echo "ab.sh: $tool is not installed" >&2; exit 1; }
done
((ROUNDS >= 1)) || { echo "ab.sh: ROUNDS must be at least 1" >&2; exit 2; }
SHA_A=$(git rev-parse --short "$REV_A^{commit}") || { echo "ab.sh: '$REV_A' is not a revision" >&2; exit 2; }
SHA_B=$(git rev-parse --short "$REV_B^{commit}") || { echo "ab.sh: '$REV_B' is not a revision" >&2; exit 2; }

WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null
  git worktree remove --force "$WORK/tree" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Both revisions build in one target directory beside the checkout's, so dependencies are
# compiled once.
# shellcheck source=lib/build_rev.sh
source "$ROOT/bench/lib/build_rev.sh"
for side in A B; do
  sha_var=SHA_$side bin_var=SEQD_$side
  if [[ -n ${!bin_var:-} ]]; then
    [[ -x ${!bin_var} ]] || { echo "ab.sh: $bin_var=${!bin_var} is not an executable" >&2; exit 2; }
    cp "${!bin_var}" "$WORK/seqd-${!sha_var}"
  else
    echo "building ${!sha_var} (target/ab)" >&2
    build "${!sha_var}"
  fi
done
cargo build --release --locked --quiet -p loadgen
LOADGEN=$ROOT/target/release/loadgen

PERF=0
if command -v perf >/dev/null && perf stat -e 'syscalls:sys_enter_io_uring_enter' -x, true 2>/dev/null; then
  PERF=1
else
  echo "ab.sh: perf cannot count syscalls:sys_enter_io_uring_enter here; system calls per request left out" >&2
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ROWS=$WORK/rows.tsv
: >"$ROWS"

# One measurement: a fresh server of revision $1, loadgen at $2 (CxP), one row.
measure() {
  local rev=$1 config=$2 round=$3 log=$WORK/seqd.log c p
  c=${config%x*} p=${config#*x}
  # Emptied first: the wait below must not read the previous server's listening line.
  : >"$log"
  taskset -c 0 "$WORK/seqd-$rev" --in-memory --host 127.0.0.1 --port "$PORT" --threads 1 2>"$log" &
  SERVER=$!
  for _ in $(seq 1 200); do
    grep -q "seqd listening" "$log" && break
    sleep 0.05
  done
  grep -q "seqd listening" "$log" || { cat "$log" >&2; exit 1; }
  local perf_pid="" counts=$WORK/perf.csv
  if ((PERF)); then
    perf stat -x, -e 'syscalls:sys_enter_io_uring_enter' -p "$SERVER" -o "$counts" &
    perf_pid=$!
    sleep 0.2
  fi
  taskset -c 1 "$LOADGEN" run --addr "127.0.0.1:$PORT" -c "$c" -P "$p" -d "$DURATION" --warmup 0s \
    --cpus 1 -o "$WORK/run" >"$WORK/loadgen.txt" 2>&1 || { cat "$WORK/loadgen.txt" >&2; exit 1; }
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
  fi
  # The server's CPU time (ns, all its threads) while it served the load: per request, it is
  # the figure least moved by other work on the machine.
  local cpu_ns
  cpu_ns=$(cat /proc/"$SERVER"/task/*/schedstat | awk '{ns += $1} END {printf "%d", ns}')
  kill "$SERVER"
  wait "$SERVER" || true
  SERVER=""
  python3 - "$WORK/run.json" "$counts" "$rev" "$config" "$round" "$PERF" "$cpu_ns" >>"$ROWS" <<'PY'
import json, sys
run, counts, rev, config, rnd, perf, cpu_ns = sys.argv[1:]
totals = json.load(open(run))["totals"]
enters = "-"
if perf == "1":
    for line in open(counts):
        if "io_uring_enter" in line and line.split(",")[0].isdigit():
            # Counted from just before the load to just after: a few idle calls more.
            enters = f"{int(line.split(',')[0]) / max(1, totals['requests']):.3f}"
cpu = f"{int(cpu_ns) / max(1, totals['requests']):.1f}"
print(f"{rev}\t{config}\t{rnd}\t{totals['throughput_rps']:.0f}\t{enters}\t{cpu}")
PY
  tail -1 "$ROWS" >&2
}

for round in $(seq "$ROUNDS"); do
  for config in $CONFIGS; do
    if ((round % 2)); then order=("$SHA_A" "$SHA_B"); else order=("$SHA_B" "$SHA_A"); fi
    for rev in "${order[@]}"; do
      measure "$rev" "$config" "$round"
    done
  done
done

mkdir -p "$OUT"
cp "$ROWS" "$OUT/rows.tsv"
STARTED=$started LOAD_BEFORE=$load_before LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg) \
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) NPROC=$(nproc) \
KERNEL=$(uname -r) RUSTC=$(rustc --version) COMMAND="bench/ab.sh $*" \
ENV_LINE="ROUNDS=$ROUNDS CONFIGS=\"$CONFIGS\" DURATION=$DURATION${SEQD_A:+ SEQD_A=$SEQD_A}${SEQD_B:+ SEQD_B=$SEQD_B}" \
NOTE=${NOTE:-} \
SHA_A=$SHA_A SHA_B=$SHA_B SUBJECT_A="$(git log -1 --format=%s "$SHA_A")" SUBJECT_B="$(git log -1 --format=%s "$SHA_B")" \
python3 - "$OUT/rows.tsv" "$OUT/README.md" <<'PY'
import os, statistics, sys
e = os.environ
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
a, b = e["SHA_A"], e["SHA_B"]
configs = list(dict.fromkeys(r[1] for r in rows))
def pick(rev, config, col):
    return [r[col] for r in rows if r[0] == rev and r[1] == config]
def med(values):
    nums = [float(v) for v in values if v != "-"]
    return statistics.median(nums) if nums else None
def rps(x):
    return f"{x / 1e6:.2f} M/s" if x >= 1e6 else f"{x / 1e3:.1f} k/s"
def enters(x):
    return "-" if x is None else f"{x:.2f}"
out = [f"# Before/after: {a} vs {b}", "",
       "Generated by `bench/ab.sh`; do not edit by hand.", "",
       f"- A = `{a}` {e['SUBJECT_A'][:100]}",
       f"- B = `{b}` {e['SUBJECT_B'][:100]}",
       f"- command: `{e['ENV_LINE']} {e['COMMAND']}`",
       f"- date: {e['STARTED']}; machine: {e['NPROC']} CPUs, {e['CPU_MODEL']}, kernel {e['KERNEL']}; {e['RUSTC']}",
       f"- load average before: {e['LOAD_BEFORE']}; after: {e['LOAD_AFTER']}",
       *([f"- conditions: {e['NOTE']}"] if e.get("NOTE") else []),
       "- each run: a fresh `seqd --in-memory --threads 1` pinned to CPU 0, `loadgen run -c C -P P` "
       "pinned to CPU 1; A and B alternate within each round (A first in odd rounds)",
       "- enters/request: `io_uring_enter` calls of the server counted by `perf stat -e "
       "syscalls:sys_enter_io_uring_enter` from just before the load to just after, over requests answered",
       "- server ns/request: the server's CPU time (all threads, `/proc/PID/task/*/schedstat`) over "
       "requests answered; less moved by other work on the machine than throughput is",
       "",
       "B / A is the median of the rounds' ratios: A and B of one round ran minutes apart at most, "
       "while the machine's speed may shift between rounds (see every run below).", "",
       "| connections x pipeline | A throughput (median) | B throughput (median) | B / A (median of rounds) | A enters/request | B enters/request | A ns/request | B ns/request | B / A CPU per request (median of rounds) |",
       "|---|---|---|---|---|---|---|---|---|"]
def round_ratios(config, col=3):
    ratios = []
    for rnd in sorted({int(r[2]) for r in rows}):
        ra = [float(r[col]) for r in rows if r[0] == a and r[1] == config and int(r[2]) == rnd]
        rb = [float(r[col]) for r in rows if r[0] == b and r[1] == config and int(r[2]) == rnd]
        if ra and rb and ra[0] > 0:
            ratios.append((rnd, ra[0], rb[0], rb[0] / ra[0]))
    return ratios
for config in configs:
    ta, tb = med(pick(a, config, 3)), med(pick(b, config, 3))
    ratio = statistics.median([x[3] for x in round_ratios(config)])
    cpu_ratio = statistics.median([x[3] for x in round_ratios(config, 5)])
    out.append(f"| {config} | {rps(ta)} | {rps(tb)} | {ratio:.2f}x | {enters(med(pick(a, config, 4)))} | "
               f"{enters(med(pick(b, config, 4)))} | {med(pick(a, config, 5)):.0f} | {med(pick(b, config, 5)):.0f} | {cpu_ratio:.3f}x |")
out += ["", "Every run (req/s, enters/request, server ns/request):", "",
        "| round | connections x pipeline | A | B | B / A (this round) |", "|---|---|---|---|---|"]
for config in configs:
    for rnd, _, _, ratio in round_ratios(config):
        ra = next(r for r in rows if r[0] == a and r[1] == config and int(r[2]) == rnd)
        rb = next(r for r in rows if r[0] == b and r[1] == config and int(r[2]) == rnd)
        out.append(f"| {rnd} | {config} | {float(ra[3]):,.0f} ({ra[4]}, {ra[5]}) | {float(rb[3]):,.0f} ({rb[4]}, {rb[5]}) | {ratio:.2f}x |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
echo "ab.sh: wrote $OUT/README.md" >&2

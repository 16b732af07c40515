#!/usr/bin/env bash
# The long fuzz run (issue 17): builds the fuzz targets once (cargo-fuzz, libFuzzer, debug
# assertions, no sanitizer: as fuzz/run.sh), runs each until RUNS executions (10^8 by default)
# or SECONDS of wall time, whichever comes first, and records execs, execs/s, the CPU time the
# fuzzer got and coverage (libFuzzer's cov/ft at start and end) per target in
# results/fuzz-long/TARGET.txt, then regenerates results/fuzz-long/README.md from every
# TARGET.txt there (so targets run at different times end up in one table). Never edit those
# files by hand: rerun this script.
#
#   bench/fuzz-long.sh 600                          # every target, at most 10 min each
#   TARGETS=journal_decoder bench/fuzz-long.sh 600  # one target (the others' rows are kept)
#   LANES=2 bench/fuzz-long.sh 3600                 # two targets at a time (one per core)
#   RESULTS=/elsewhere/results/fuzz-long bench/fuzz-long.sh 600
#   RUNS=100000000 (default): stop a target after this many executions (0: no bound)
#   UNIT_TIMEOUT=120 (default): libFuzzer's -timeout per unit, in seconds
#
# The fuzzers run at the lowest priority the machine offers, so the run can share a machine
# with builds and benchmarks and take only the CPU they leave: in a cgroup v1 `cpu` group
# with cpu.idle=1 (SCHED_IDLE for the whole group) where that is writable (root), else at
# `nice -n 19` — which, under the kernel's autogroup scheduling, only ranks the fuzzer among
# processes of its own session. The CPU time each target got is recorded beside its wall time.
#
# The built binaries are run directly rather than through `cargo fuzz run`, which would
# rebuild first: the tree may change while a long run is going. A crash stops that target,
# leaves its input in fuzz/artifacts/TARGET/ and is recorded; the script exits non-zero at
# the end. Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_TARGET=${1:?usage: bench/fuzz-long.sh SECONDS}
TARGETS=${TARGETS:-"binary_decoder text_decoder stream_decoder state_decoder journal_decoder session"}
RESULTS=${RESULTS:-$ROOT/results/fuzz-long}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-120}
RUNS=${RUNS:-100000000}
LANES=${LANES:-1}
mkdir -p "$RESULTS"

# The idle cgroup, if one can be made; its tasks go back to the root group when it is removed.
IDLE_GROUP=""
cpu_root=/sys/fs/cgroup/cpu
if [ -w "$cpu_root" ] && [ -e "$cpu_root/cpu.idle" ]; then
  IDLE_GROUP=$cpu_root/seqd-fuzz-$$
  if mkdir "$IDLE_GROUP" 2>/dev/null && echo 1 >"$IDLE_GROUP/cpu.idle" 2>/dev/null; then
    trap 'rmdir "$IDLE_GROUP" 2>/dev/null || true' EXIT
    PRIORITY="a cgroup with cpu.idle=1 (SCHED_IDLE: only CPU nothing else wants)"
  else
    rmdir "$IDLE_GROUP" 2>/dev/null || true
    IDLE_GROUP=""
  fi
fi
[ -n "$IDLE_GROUP" ] || PRIORITY="nice -n 19 (no writable cgroup cpu.idle here)"

cd fuzz
build_started=$(date -u +%s)
mkdir -p logs
nice -n 19 cargo +nightly fuzz build --debug-assertions --sanitizer none >logs/build.txt 2>&1 ||
  { tail -30 logs/build.txt >&2; exit 1; }
build_seconds=$(($(date -u +%s) - build_started))
BIN_DIR=$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release
commit=$(git -C "$ROOT" rev-parse --short HEAD)
# The build rewrites fuzz/Cargo.lock (seqd's optional dependencies): not a change to the code.
dirty=$(git -C "$ROOT" status --porcelain -- src fuzz/fuzz_targets Cargo.toml | grep -qv '^??' && echo " (with uncommitted changes)" || true)
mkdir -p logs
failed=()

field() { # the value of libFuzzer's "NAME: VALUE" on the line matching $2 in log $1
  grep -E "$2" "$1" | tail -1 | grep -oE "$3: *[0-9]+" | grep -oE '[0-9]+$' || echo "?"
}

run_target() {
  local target=$1 status=0 started load_before load_after execs rate rss cov_start ft_start cov_end ft_end corpus_files outcome timeout_input rerun rerun_started cpu_seconds
  mkdir -p "corpus/$target" "artifacts/$target"
  log=logs/long-$target.log
  started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "== fuzz $target for ${SECONDS_PER_TARGET}s ($started)"
  # At nice 19 on a loaded machine a unit can wait tens of seconds for a CPU: a short
  # -timeout stops the run on a starved unit, not a slow one (each timeout input is rerun
  # alone below to tell which).
  # The subshell moves itself into the idle group, then `times` reports the CPU its child got.
  (
    [ -z "$IDLE_GROUP" ] || echo "$BASHPID" >"$IDLE_GROUP/cgroup.procs"
    status=0
    nice -n 19 "$BIN_DIR/$target" "corpus/$target" "seeds/$target" \
      -artifact_prefix="artifacts/$target/" -max_total_time="$SECONDS_PER_TARGET" \
      -runs="$RUNS" -timeout="$UNIT_TIMEOUT" -print_final_stats=1 >"$log" 2>&1 || status=$?
    times >"logs/long-$target.times"
    exit "$status"
  ) || status=$?
  # The second line of `times`: the children's user and system time, e.g. "1m2.5s 0m0.3s".
  cpu_seconds=$(sed -n 2p "logs/long-$target.times" | python3 -c "
import re, sys
total = sum(int(m) * 60 + float(s) for m, s in re.findall(r'(\d+)m([\d.]+)s', sys.stdin.read()))
print(f'{total:.0f}')")
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  execs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  rss=$(grep -oE '^stat::peak_rss_mb: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov_start=$(field "$log" 'INITED' cov)
  ft_start=$(field "$log" 'INITED' ft)
  cov_end=$(field "$log" '^#[0-9]+' cov)
  ft_end=$(field "$log" '^#[0-9]+' ft)
  corpus_files=$(find "corpus/$target" -type f | wc -l)
  outcome="no crash"
  if ((status != 0)); then
    outcome="CRASH (exit $status; input in fuzz/artifacts/$target/)"
    timeout_input=$(grep -oE "artifacts/$target/timeout-[0-9a-f]+" "$log" | tail -1 || true)
    if [ -n "$timeout_input" ]; then
      # Rerun alone, at normal priority, with libFuzzer's default 10 s per unit.
      rerun_started=$(date +%s.%N)
      if "$BIN_DIR/$target" -timeout=10 "$timeout_input" >"logs/long-$target-rerun.log" 2>&1; then
        rerun=$(python3 -c "import time; print(f'{time.time() - $rerun_started:.2f}')")
        outcome="stopped early by a unit over ${UNIT_TIMEOUT} s at nice 19; that input alone runs in ${rerun} s (starved, not a hang)"
      else
        outcome="TIMEOUT: $timeout_input also fails alone"
        echo "$target" >>"logs/long-failed"
      fi
    else
      echo "$target" >>"logs/long-failed"
    fi
    grep -E -A20 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -40 >&2 || true
  fi
  cat >"$RESULTS/$target.txt" <<EOF
target: $target
started: $started
seconds: $SECONDS_PER_TARGET
runs_bound: $RUNS
cpu_seconds: $cpu_seconds
priority: $PRIORITY
execs: $execs
execs_per_second: $rate
cov_start: $cov_start
cov_end: $cov_end
ft_start: $ft_start
ft_end: $ft_end
corpus_files: $corpus_files
peak_rss_mb: $rss
load_before: $load_before
load_after: $load_after
commit: $commit$dirty
outcome: $outcome
EOF
  echo "   $execs execs, $rate/s, cov $cov_start -> $cov_end, ft $ft_start -> $ft_end: $outcome"
}

rm -f logs/long-failed
# LANES targets at a time, each lane running its share of the targets one after another.
read -ra all_targets <<<"$TARGETS"
lane_pids=()
for ((lane = 0; lane < LANES; lane++)); do
  (
    for ((i = lane; i < ${#all_targets[@]}; i += LANES)); do
      run_target "${all_targets[i]}"
    done
  ) &
  lane_pids+=($!)
done
for pid in "${lane_pids[@]}"; do wait "$pid"; done
[ ! -s logs/long-failed ] || mapfile -t failed <logs/long-failed

# The README, from every target's record.
nightly=$(cargo +nightly --version)
fuzz_version=$(cargo +nightly fuzz --version 2>/dev/null || echo "cargo-fuzz ?")
python3 - "$RESULTS" "$SECONDS_PER_TARGET" "$build_seconds" "$nightly" "$fuzz_version" <<'PY'
import glob, os, platform, subprocess, sys
results, seconds, build_seconds, nightly, fuzz_version = sys.argv[1:6]
rows = []
for path in sorted(glob.glob(os.path.join(results, "*.txt"))):
    record = {}
    for line in open(path):
        key, _, value = line.partition(":")
        record[key.strip()] = value.strip()
    rows.append(record)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def num(v):
    return f"{int(v):,}".replace(",", " ") if v.isdigit() else v
def reached(v):
    if not v.isdigit():
        return "?"
    return "yes" if int(v) >= 10**8 else f"no: {int(v) / 1e8:.1%} of 10⁸"
out = []
out.append("# Fuzzing: the long run (issue 17)\n")
priorities = sorted({r.get("priority", "nice -n 19") for r in rows})
out.append("Written by [`bench/fuzz-long.sh`](../../bench/fuzz-long.sh); never edited by hand. Each target")
out.append("ran from its committed seeds (`fuzz/seeds/`) plus the corpus earlier runs on this machine grew")
out.append("(`fuzz/corpus/`, not committed), without a sanitizer and with debug assertions (an arithmetic")
out.append("overflow is a crash), until 10⁸ executions or its wall-time bound, at the lowest priority")
out.append(f"({'; '.join(priorities)}) on a machine shared with other builds and benchmarks: a target got only")
out.append("the CPU they left, so *CPU s* (what the fuzzer really ran) is the figure to read beside the wall")
out.append("time, and *execs per CPU s* its speed on a core of its own.\n")
out.append(f"- Machine: `nproc` {os.cpu_count()}, kernel `{platform.release()}`, CPU \"{cpu}\"; shared (load averages per target below)")
out.append(f"- Toolchain: {nightly}; {fuzz_version}")
out.append(f"- Command: `bench/fuzz-long.sh {seconds}` (per target: `fuzz/target/.../TARGET corpus/TARGET seeds/TARGET -max_total_time=SECONDS -runs=RUNS -timeout=UNIT_TIMEOUT -print_final_stats=1`; RUNS 10⁸ by default; UNIT_TIMEOUT 120 s by default, since a unit at the lowest priority can wait long for a CPU; a timeout input is rerun alone to tell a starved unit from a hang)")
out.append(f"- Last build of the targets took {build_seconds} s\n")
def per_cpu(r):
    execs, cpu_s = r.get("execs", "?"), r.get("cpu_seconds", "?")
    if execs.isdigit() and cpu_s.isdigit() and int(cpu_s) > 0:
        return num(str(int(execs) // int(cpu_s)))
    return "?"
out.append("| target | started (UTC) | wall s (bound) | CPU s | execs | execs/s (wall) | execs per CPU s | ≥ 10⁸ execs? | cov start → end | ft start → end | corpus files | load avg before → after | code | outcome |")
out.append("|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---|---|---|")
for r in rows:
    out.append(f"| `{r.get('target')}` | {r.get('started')} | {r.get('seconds')} | {r.get('cpu_seconds', '?')} | {num(r.get('execs','?'))} | {num(r.get('execs_per_second','?'))} | {per_cpu(r)} | {reached(r.get('execs','?'))} | {r.get('cov_start')} → {r.get('cov_end')} | {r.get('ft_start')} → {r.get('ft_end')} | {r.get('corpus_files')} | {r.get('load_before')} → {r.get('load_after')} | {r.get('commit')} | {r.get('outcome')} |")
out.append("\ncov: edges covered; ft: libFuzzer's features; start is its `INITED` line (after loading the")
out.append("corpus), end its last status line. execs and execs/s are its final `stat::` lines.")
open(os.path.join(results, "README.md"), "w").write("\n".join(out) + "\n")
PY
echo "wrote $RESULTS/README.md"
if ((${#failed[@]})); then
  echo "fuzz-long: crashes in ${failed[*]}" >&2
  exit 1
fi

#!/usr/bin/env bash
# The side-by-side benchmark suite (issues 6 and 16): seqd against Redis INCR, PostgreSQL
# nextval, a naive blocking thread-per-connection server and "the limit" (a zero-work io_uring
# responder), measured in one run on one machine, judged as ratios against the goals in the
# issues. One command does everything:
#
#   bench/suite.sh              # the full matrix (about 20 minutes); writes results/<date>-<host>/
#                               # and regenerates the summary table in results/README.md
#   bench/suite.sh --quick      # the same matrix, short runs (about two minutes); writes
#                               # results/<date>-<host>-quick/ (git-ignored); CI runs this
#
# Throughput goals are judged under an equal CPU budget (issue 16): each server in turn is
# moved into one cgroup with a CFS bandwidth quota (cgroup v2 cpu.max, or v1
# cpu.cfs_quota_us; by default half of its CPU), so that the server saturates and the client,
# on its own CPU without a quota, keeps headroom; the client's busy share is recorded per row.
# The full-core rows (no quota) stay beside them for reference. Latency rows run without a
# quota (throttling would be in the latency) at fixed rates.
#
# It installs what is missing (redis-server, redis-tools, postgresql; apt-get update once
# first), builds seqd and loadgen in release mode, starts every server itself on loopback on
# free ports, pins the servers to one CPU and every client to another, runs the matrix, stops
# everything it started (also on Ctrl-C or an error), and writes JSON, .hgrm, .hlog, raw tool
# output and plots, then the summary (bench/lib/summarize.py). Nothing in the output
# directory is edited by hand.
#
# Exit status: 0 when every step ran (goals missed are reported, not failed); 1 when a step
# broke (a server would not start, a tool failed, a run had errors); 2 usage.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
  cat <<'EOF'
usage: bench/suite.sh [--quick] [--rounds N] [--out DIR] [--realtime] [--no-install] [--skip-build]

  --quick        short runs (CI): same matrix, about two minutes; output results/<date>-<host>-quick/
  --rounds N     rounds of the closed-loop, RESP and durability rows (median reported);
                 default 3, or 1 with --quick
  --out DIR      write the results here instead
  --realtime     run servers and clients under SCHED_FIFO (chrt --fifo 10; root): on a machine
                 shared with other work they then get their CPUs when they need them, so the
                 figures describe the servers rather than the neighbours. Other work on the two
                 CPUs nearly stops meanwhile (the kernel keeps 5% for it): not for CI. CFS
                 quotas do not apply to real-time tasks, so this skips the budgeted rows.
                 Without it, servers and clients run at nice -20 (as root).
  --no-install   never run apt-get; fail naming what is missing
  --skip-build   use target/release/{seqd,loadgen} as they are

environment: BUDGET_PERCENT (default 50) is the CPU budget of every server in the budgeted
rows, in percent of its one CPU, enforced as a CFS quota per BUDGET_PERIOD_US (default 10000);
BUDGET_PERCENT=0 skips the budgeted rows. BUDGET_RESP_PERCENT (default 30) is the budget of the
redis-benchmark rows: smaller, because redis-benchmark is one thread on one client CPU and at
50% seqd's share outruns it (a row whose client is over 75% busy cannot decide a goal); every
server gets the same budget in a row, so the ratio is still per unit of CPU. SERVER_CPU (default 0) is the CPU every server is pinned to; CLIENT_CPU (default
1) the CPUs of the clients: one CPU, or a taskset list (`1-3`, `1,3`) for one load-generator
thread per CPU (loadgen --threads, redis-benchmark --threads, pgbench -j), so that on a
machine with spare cores the clients can outrun the server;
SEQD_BINARY measures another seqd build than target/release/seqd (e.g. to compare two).
EOF
}

QUICK=0
ROUNDS=""
OUT=""
INSTALL=1
BUILD=1
REALTIME=0
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --no-install) INSTALL=0 ;;
    --skip-build) BUILD=0 ;;
    --realtime) REALTIME=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "suite.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -z $ROUNDS ]] && ROUNDS=$((QUICK ? 1 : 3))
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "suite.sh: --rounds must be a positive number" >&2; exit 2; }

# Scheduling of every server and client (and, above them, the CPU sampler). chrt goes before
# taskset: a process pinned first would wait behind a busy real-time one for its turn to chrt.
# Without --realtime, every server, client and the sampler run at nice -20 (when root), so that
# other work on a shared machine (builds) takes less of their CPUs; nice does not exempt them
# from the CFS quota of the budgeted rows, as SCHED_FIFO would.
PRIO=()
SAMPLER_PRIO=()
# (nice takes an increment: from the niceness this script runs at to -20.)
NICE_BY=$((-20 - $(nice)))
if ((!REALTIME)) && [[ $(nice -n "$NICE_BY" nice 2>/dev/null) == -20 ]]; then
  PRIO=(nice -n "$NICE_BY")
  SAMPLER_PRIO=(nice -n "$NICE_BY")
fi
PRIO_DESC=${PRIO[*]:+niceness -20}
if ((REALTIME)); then
  command -v chrt >/dev/null || { echo "suite.sh: --realtime needs chrt (apt-get install util-linux)" >&2; exit 1; }
  chrt --fifo 10 true 2>/dev/null || { echo "suite.sh: --realtime: cannot use SCHED_FIFO here (run as root)" >&2; exit 1; }
  PRIO=(chrt --fifo 10)
  SAMPLER_PRIO=(chrt --fifo 20)
  PRIO_DESC="chrt --fifo 10"
fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
if ((QUICK)); then
  DURATION=1s WARMUP=300ms WARMUP_S=0.4
  PROBE=500ms PROBES=4 CONFIRM=1s
  RB_P1=100000 RB_P16=1000000 RB_P64=2000000 RB_C1=20000
  RBB_P1=50000 RBB_P64=1000000
  PG_SECONDS=2
  INPROCESS=1s
  OPEN_RATES="100000 300000"
else
  DURATION=5s WARMUP=1s WARMUP_S=1.1
  PROBE=2s PROBES=10 CONFIRM=5s
  RB_P1=200000 RB_P16=3000000 RB_P64=6000000 RB_C1=30000
  RBB_P1=150000 RBB_P64=4000000
  PG_SECONDS=10
  INPROCESS=3s
  OPEN_RATES="100000 300000 1000000"
fi
# The budgeted rows: the configurations the throughput goals of issue 16 name, and
# redis-benchmark's -P 64 and -P 1 (RBB_* requests each, sized for a third of a core).
BUDGET_CONFIGS=("50 1" "50 16" "50 64")
BUDGET_PERCENT=${BUDGET_PERCENT:-50}
BUDGET_RESP_PERCENT=${BUDGET_RESP_PERCENT:-30}
BUDGET_PERIOD_US=${BUDGET_PERIOD_US:-10000}
[[ $BUDGET_PERCENT =~ ^[0-9]+$ ]] && ((BUDGET_PERCENT <= 100)) ||
  { echo "suite.sh: BUDGET_PERCENT must be 0 to 100" >&2; exit 2; }
[[ $BUDGET_RESP_PERCENT =~ ^[0-9]+$ ]] && ((BUDGET_RESP_PERCENT >= 1 && BUDGET_RESP_PERCENT <= 100)) ||
  { echo "suite.sh: BUDGET_RESP_PERCENT must be 1 to 100" >&2; exit 2; }
[[ $BUDGET_PERIOD_US =~ ^[0-9]+$ ]] && ((BUDGET_PERIOD_US >= 1000 && BUDGET_PERIOD_US <= 1000000)) ||
  { echo "suite.sh: BUDGET_PERIOD_US must be 1000 to 1000000 (microseconds)" >&2; exit 2; }
IDLE_CONNECTIONS=10000
# Open loop: wake up at most every 50 us and send what fell due meanwhile (late by at most that,
# counted in the latency), so the one client thread spends less on wake-ups.
GRANULARITY=50us

log() { printf '\n== %s\n' "$*" >&2; }
die() { echo "suite.sh: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- tools, installed if missing
pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null && dirname "$(readlink -f "$(command -v initdb)")" && return 0
  return 1
}

missing_packages() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null || need+=(redis-tools)
  { command -v pgbench >/dev/null && command -v psql >/dev/null && pg_bindir >/dev/null; } ||
    need+=(postgresql)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v python3 >/dev/null || need+=(python3)
  command -v setpriv >/dev/null || need+=(util-linux)
  echo "${need[@]}"
}

ensure_tools() {
  local need
  need=$(missing_packages)
  [[ -z $need ]] && return 0
  if ((!INSTALL)); then
    die "missing: $need (install them: apt-get install -y $need; or run without --no-install)"
  fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing: $need, and not root to install them (run: apt-get install -y $need)"
    sudo="sudo"
  fi
  log "installing: $need"
  local t0=$SECONDS
  if [[ $need == *postgresql* && ! -e /etc/postgresql-common/createcluster.conf ]]; then
    # Debian's postgresql package creates and starts a "main" cluster on install; this suite
    # makes its own throwaway cluster, so ask for none (dpkg keeps this file: --force-confold).
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086 # $need is a list of package names
  $sudo apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef $need >/dev/null
  echo "installed in $((SECONDS - t0)) s: $need" >&2
  need=$(missing_packages)
  [[ -z $need ]] || die "still missing after apt-get install: $need"
}

ensure_tools
PG_BIN=$(pg_bindir) || die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
NPROC=$(nproc)
if ((NPROC < 2)); then
  echo "suite.sh: warning: $NPROC CPU: servers and clients share it; ratios are still side by side, but client-bound rows are likely" >&2
  SERVER_CPU=0 CLIENT_CPU=0
fi
# How many CPUs CLIENT_CPU names (taskset also checks the list): one client thread on each.
CLIENT_THREADS=$(taskset -c "$CLIENT_CPU" nproc 2>/dev/null) ||
  die "CLIENT_CPU=$CLIENT_CPU is not a CPU list this machine has (CPUs 0-$((NPROC - 1)); e.g. CLIENT_CPU=1 or CLIENT_CPU=1-3)"
taskset -c "$SERVER_CPU" true 2>/dev/null && [[ $SERVER_CPU =~ ^[0-9]+$ ]] ||
  die "SERVER_CPU=$SERVER_CPU must be one CPU of this machine (0-$((NPROC - 1)))"
CLIENT_FIRST_CPU=$(taskset -c "$CLIENT_CPU" python3 -c 'import os; print(min(os.sched_getaffinity(0)))')
# redis-benchmark's thread option, for C connections: only with more than one client CPU (and
# connection), so the one-CPU commands stay exactly those of earlier runs.
rb_threads() {
  local n=$((CLIENT_THREADS < $1 ? CLIENT_THREADS : $1))
  ((n > 1)) && echo "--threads $n" || true
}

if ((BUILD)); then
  log "building seqd and loadgen (release)"
  cargo build --release --locked -p seqd -p loadgen >&2
fi
SEQD=${SEQD_BINARY:-$ROOT/target/release/seqd}
LOADGEN=$ROOT/target/release/loadgen
[[ -x $SEQD && -x $LOADGEN ]] || die "$SEQD or $LOADGEN missing (run without --skip-build)"

# ---------------------------------------------------------------- output and clean-up
HOST=$(hostname -s 2>/dev/null || hostname)
DATE=$(date -u +%Y-%m-%d)
if [[ -z $OUT ]]; then
  OUT=results/$DATE-$HOST
  ((QUICK)) && OUT+=-quick
fi
rm -rf "$OUT"
mkdir -p "$OUT"/{closed,closed-budget,resp,resp-budget,pgbench,open,capacity,idle,durability,inprocess,logs}
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/seqd-bench.XXXXXX)
MEASUREMENTS=$OUT/measurements.jsonl
: >"$MEASUREMENTS"
FAILED=()
PIDS=()
PG_DATA=""

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Wait at most 5 s each, then insist.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  [[ -n $PG_DATA ]] && rm -rf "$PG_DATA"
  budget_remove
  return 0
}
trap cleanup EXIT
trap 'echo "suite.sh: interrupted" >&2; exit 130' INT TERM

# Raise the open-file limit for the servers and clients started below (10,000 idle
# connections need as many descriptors on each side).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a log file has a line matching $2 (regex); prints the match.
wait_log() {
  local file=$1 pattern=$2 what=$3
  for _ in $(seq 200); do
    if grep -qE "$pattern" "$file" 2>/dev/null; then
      grep -oE "$pattern" "$file" | head -1
      return 0
    fi
    sleep 0.05
  done
  echo "suite.sh: $what did not start; its log ($file):" >&2
  cat "$file" >&2 || true
  return 1
}

# Forgets a PID we stopped ourselves.
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

stop() { # pid: SIGTERM, wait for it
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}

# ---------------------------------------------------------------- the CPU budget, priority
# BUDGET_DIR is a cgroup of our own with a CFS quota of BUDGET_PERCENT of one CPU; a server is
# moved into it (all its threads: cgroup.procs) for its budgeted rows and back to BUDGET_HOME
# after them. BUDGET_KIND says which interface (v2 cpu.max, v1 cpu.cfs_quota_us);
# BUDGET_WHY, when neither is usable, says why.
#
# PRIO_CGROUP, beside it, holds every server, client and the sampler (prio_exec) with the
# highest CPU weight: with autogrouping (kernel.sched_autogroup_enabled) niceness only orders
# the processes of one session, so nice -20 alone would not keep other sessions' builds off
# our CPUs; a cgroup of its own takes the suite out of autogrouping. The budget cgroup has the
# same weight, so that the quota, not other work, is what limits a budgeted server.
BUDGET_KIND="" BUDGET_DIR="" BUDGET_HOME="" BUDGET_WHY="" PRIO_CGROUP=""

# The path of our cgroup in the hierarchy of $1 ("v2", or "v1" for the cpu controller's).
own_cgroup() {
  if [[ $1 == v2 ]]; then
    awk -F: '$1 == "0" {print $3}' /proc/self/cgroup
  else
    awk -F: '{ n = split($2, c, ","); for (i = 1; i <= n; i++) if (c[i] == "cpu") print $3 }' /proc/self/cgroup
  fi
}

# set_quota KIND DIR QUOTA_US: the cgroup's CFS quota per BUDGET_PERIOD_US.
set_quota() {
  if [[ $1 == v2 ]]; then
    echo "$3 $BUDGET_PERIOD_US" >"$2/cpu.max"
  else
    echo "$BUDGET_PERIOD_US" >"$2/cpu.cfs_period_us" && echo "$3" >"$2/cpu.cfs_quota_us"
  fi
} 2>/dev/null

# make_cgroup KIND DIR [QUOTA_US]: a cgroup with the highest CPU weight (and a quota).
make_cgroup() {
  local kind=$1 dir=$2 quota=${3:-} weight=(cpu.shares 262144)
  mkdir "$dir" 2>/dev/null || return 1
  [[ $kind == v1 ]] || weight=(cpu.weight 10000)
  echo "${weight[1]}" >"$dir/${weight[0]}" 2>/dev/null &&
    { [[ -z $quota ]] || set_quota "$kind" "$dir" "$quota"; } && return 0
  rmdir "$dir" 2>/dev/null || true
  return 1
}
# budget_percent PERCENT: the budget cgroup's quota (while it holds no server).
budget_percent() {
  set_quota "$BUDGET_KIND" "$BUDGET_DIR" $((BUDGET_PERIOD_US * $1 / 100)) ||
    { echo "suite.sh: could not set the CPU budget to $1% in $BUDGET_DIR" >&2; exit 1; }
}

setup_cgroups() {
  if ((REALTIME)); then BUDGET_WHY="--realtime: CFS quotas do not apply to SCHED_FIFO tasks"; return 0; fi
  local quota=$((BUDGET_PERIOD_US * BUDGET_PERCENT / 100)) root kind="" why=()
  root=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
  if [[ -n $root ]] && grep -qw cpu "$root/cgroup.controllers" 2>/dev/null; then
    grep -qw cpu "$root/cgroup.subtree_control" 2>/dev/null || echo +cpu >"$root/cgroup.subtree_control" 2>/dev/null || true
    if make_cgroup v2 "$root/seqd-bench-$$-probe"; then
      rmdir "$root/seqd-bench-$$-probe"
      kind=v2
    else
      why+=("cgroup v2 at $root has the cpu controller, but no child cgroup with cpu.weight could be made (not root, or delegated without cpu)")
    fi
  elif [[ -n $root ]]; then
    why+=("cgroup v2 at $root has no cpu controller")
  fi
  if [[ -z $kind ]]; then
    root=$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ {print $2; exit}' /proc/mounts)
    if [[ -z $root ]]; then
      why+=("no cgroup v1 cpu controller is mounted")
    elif make_cgroup v1 "$root/seqd-bench-$$-probe"; then
      rmdir "$root/seqd-bench-$$-probe"
      kind=v1
    else
      why+=("cgroup v1 cpu controller at $root: no child cgroup could be made (not root?)")
    fi
  fi
  if [[ -z $kind ]]; then
    BUDGET_WHY=$(IFS=';'; echo "${why[*]}")
    return 0
  fi
  make_cgroup "$kind" "$root/seqd-bench-$$-run" && PRIO_CGROUP=$root/seqd-bench-$$-run
  BUDGET_HOME=${PRIO_CGROUP:-$root$(own_cgroup "$kind")}
  if ((BUDGET_PERCENT == 0)); then
    BUDGET_WHY="BUDGET_PERCENT=0"
  elif make_cgroup "$kind" "$root/seqd-bench-$$-budget" "$quota"; then
    BUDGET_KIND=$kind BUDGET_DIR=$root/seqd-bench-$$-budget
  else
    BUDGET_WHY="cgroup $kind at $root: the quota could not be set"
  fi
}

# prio_exec ARRAY COMMAND...: only in a background job (it execs): joins PRIO_CGROUP, then runs
# COMMAND under the scheduling the array names (PRIO or SAMPLER_PRIO). The job's PID stays.
prio_exec() {
  local -n how=$1
  shift
  [[ -z $PRIO_CGROUP ]] || echo "$BASHPID" >"$PRIO_CGROUP/cgroup.procs" 2>/dev/null || true
  exec "${how[@]}" "$@"
}

# budget_on PID [LOG] / budget_off PID [LOG]: into the budget's cgroup and out. seqd and the
# zero-work rival (--busy-poll auto, their default) stop busy-polling under a quota, seen once
# a second: given the server's LOG, wait (at most 5 s) until it has said so, so that the
# measurement starts with the server in the state the quota puts it in.
quota_said() {
  local n
  n=$(grep -cE "$2" "$1" 2>/dev/null) || true
  echo "${n:-0}"
}
quota_wait() {
  local log=$1 pattern=$2 before=$3
  for _ in $(seq 100); do
    (($(quota_said "$log" "$pattern") > before)) && return 0
    sleep 0.05
  done
  echo "suite.sh: note: $(basename "$log" .log) did not report the quota change (an older build?)" >&2
}
# budget_move PID CGROUP PATTERN [LOG]: PID into CGROUP; then waits for LOG to say PATTERN.
budget_move() {
  local before=0
  [[ -z ${4:-} ]] || before=$(quota_said "$4" "$3")
  echo "$1" >"$2/cgroup.procs"
  [[ -z ${4:-} ]] || quota_wait "$4" "$3" "$before"
}
budget_on() { budget_move "$1" "$BUDGET_DIR" "CPU quota in force" "${2:-}"; }
# (A server that has exited meanwhile has nothing to move or to wait for.)
budget_off() { ! kill -0 "$1" 2>/dev/null || budget_move "$1" "$BUDGET_HOME" "no CPU quota any more" "${2:-}"; }
# Removes our cgroups once their processes are gone (moving any left to our own cgroup).
budget_remove() {
  local dir pid home
  home=$(dirname "${PRIO_CGROUP:-${BUDGET_DIR:-/}}")$(own_cgroup "${BUDGET_KIND:-v1}")
  for dir in "$BUDGET_DIR" "$PRIO_CGROUP"; do
    [[ -n $dir && -d $dir ]] || continue
    while read -r pid; do echo "$pid" >"$home/cgroup.procs" 2>/dev/null || true; done <"$dir/cgroup.procs" 2>/dev/null || true
    rmdir "$dir" 2>/dev/null || echo "suite.sh: warning: could not remove the cgroup $dir" >&2
  done
}
# cpu.stat's throttling counters of the budget cgroup: "periods throttled throttled_us".
budget_throttling() {
  if [[ $BUDGET_KIND == v2 ]]; then
    awk '$1 == "nr_periods" {p=$2} $1 == "nr_throttled" {t=$2} $1 == "throttled_usec" {u=$2} END {print p+0, t+0, u+0}' "$BUDGET_DIR/cpu.stat"
  else
    awk '$1 == "nr_periods" {p=$2} $1 == "nr_throttled" {t=$2} $1 == "throttled_time" {u=int($2/1000)} END {print p+0, t+0, u+0}' "$BUDGET_DIR/cpu.stat"
  fi
}

# ---------------------------------------------------------------- servers
SEQD_DURABLE=0
if "$SEQD" --help 2>&1 | grep -q -- '--in-memory'; then SEQD_DURABLE=1; fi

# start_seqd NAME [extra args...]: sets SEQD_PID and SEQD_ADDR. With durability in the build,
# the state goes to a fresh directory under $WORK unless the extra args say --in-memory.
start_seqd() {
  local name=$1; shift
  local args=(--host 127.0.0.1 --port 0 --threads 1 --log-level warn,seqd=info)
  if ((SEQD_DURABLE)) && [[ " $* " != *" --in-memory "* ]]; then
    rm -rf "$WORK/$name-data"
    args+=(--data-dir "$WORK/$name-data")
  fi
  prio_exec PRIO taskset -c "$SERVER_CPU" "$SEQD" "${args[@]}" "$@" 2>"$OUT/logs/$name.log" &
  SEQD_PID=$!
  PIDS+=("$SEQD_PID")
  SEQD_ADDR=$(wait_log "$OUT/logs/$name.log" 'listening on [^ ]+' "seqd ($name)" | awk '{print $3}')
  SEQD_CMD="${PRIO[*]:+${PRIO[*]} }taskset -c $SERVER_CPU seqd ${args[*]} $*"
  SEQD_CMD=${SEQD_CMD//$WORK/\$TMP}
}

# start_redis NAME [extra args...]: sets REDIS_PID and REDIS_ADDR.
start_redis() {
  local name=$1; shift
  local port
  port=$(free_port)
  local args=(--port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no
    --loglevel warning --maxclients 12000)
  prio_exec PRIO taskset -c "$SERVER_CPU" redis-server "${args[@]}" "$@" >"$OUT/logs/$name.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis-cli -p "$port" ping >/dev/null 2>&1 || { cat "$OUT/logs/$name.log" >&2; die "redis-server ($name) did not start"; }
  REDIS_ADDR=127.0.0.1:$port
  REDIS_CMD="${PRIO[*]:+${PRIO[*]} }taskset -c $SERVER_CPU redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize no --loglevel warning --maxclients 12000 $*"
}

start_zerowork() {
  prio_exec PRIO taskset -c "$SERVER_CPU" "$LOADGEN" zero-work-server --addr 127.0.0.1:0 2>"$OUT/logs/zerowork.log" &
  ZERO_PID=$!
  PIDS+=("$ZERO_PID")
  ZERO_ADDR=$(wait_log "$OUT/logs/zerowork.log" 'listening on [^ ]+' "the zero-work responder" | awk '{print $3}')
  ZERO_CMD="${PRIO[*]:+${PRIO[*]} }taskset -c $SERVER_CPU loadgen zero-work-server --addr 127.0.0.1:0"
}

start_baseline() {
  prio_exec PRIO taskset -c "$SERVER_CPU" "$LOADGEN" baseline-server --addr 127.0.0.1:0 2>"$OUT/logs/baseline.log" &
  BASE_PID=$!
  PIDS+=("$BASE_PID")
  BASE_ADDR=$(wait_log "$OUT/logs/baseline.log" 'listening on [^ ]+' "the baseline server" | awk '{print $3}')
  BASE_CMD="${PRIO[*]:+${PRIO[*]} }taskset -c $SERVER_CPU loadgen baseline-server --addr 127.0.0.1:0"
}

# A throwaway PostgreSQL cluster, owned by an unprivileged user when we are root.
start_postgres() {
  local port user=""
  port=$(free_port)
  PG_DATA=$(mktemp -d /tmp/seqd-bench-pg.XXXXXX)
  local as=()
  if [[ $(id -u) -eq 0 ]]; then
    user=postgres
    getent passwd "$user" >/dev/null || die "running as root and there is no 'postgres' user to own the throwaway cluster (apt-get install postgresql creates it)"
    chown "$user" "$PG_DATA"
    # setpriv execs (no fork), so the PID we hold is the postmaster's own.
    as=(setpriv --reuid "$user" --regid "$user" --init-groups)
  fi
  chmod 700 "$PG_DATA"
  "${as[@]}" "$PG_BIN/initdb" -D "$PG_DATA/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$OUT/logs/postgres-initdb.log" 2>&1 || { cat "$OUT/logs/postgres-initdb.log" >&2; die "initdb failed"; }
  mkdir -p "$PG_DATA/socket"
  [[ -n $user ]] && chown "$user" "$PG_DATA/socket"
  PG_OPTS=(-c listen_addresses=127.0.0.1 -p "$port" -c unix_socket_directories="$PG_DATA/socket"
    -c max_connections=120)
  prio_exec PRIO taskset -c "$SERVER_CPU" "${as[@]}" "$PG_BIN/postgres" -D "$PG_DATA/data" "${PG_OPTS[@]}" \
    >"$OUT/logs/postgres.log" 2>&1 &
  PG_PID=$!
  PIDS+=("$PG_PID")
  for _ in $(seq 200); do
    psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'create sequence bench_seq' >/dev/null ||
    { cat "$OUT/logs/postgres.log" >&2; die "PostgreSQL did not start"; }
  PG_PORT=$port
  PG_CMD="${PRIO[*]:+${PRIO[*]} }taskset -c $SERVER_CPU postgres -D \$TMP/data -c listen_addresses=127.0.0.1 -p PORT -c max_connections=120 (initdb --auth=trust, all else default)"
}

# ---------------------------------------------------------------- measuring one step
SAMPLER=(python3 "$ROOT/bench/lib/sample.py")

# step ID SERVER_PID SERVER_NAME OUTPUT_FILE -- COMMAND...
# Runs a client command pinned to the client CPU while bench/lib/sample.py samples the
# server's and the client's threads (time on a CPU, time waiting for one), and records the
# step in measurements.jsonl. $SKIP seconds at the start (the warm-up) are left out of the CPU
# figures. Exit statuses in $OK_STATUSES count as success (default 0); others are recorded as
# failures: the suite goes on and exits 1 at the end.
OK_STATUSES="0"
SKIP=0
# BUDGETED=1: the server runs in the budget cgroup; its throttling counters are recorded.
BUDGETED=0
step() {
  local id=$1 spid=$2 server=$3 output=$4; shift 5
  local t0 t1 rc=0 samples=$WORK/samples.$id cpid sampler target=$spid throttle0="" throttle1=""
  ((BUDGETED)) && throttle0=$(budget_throttling)
  printf '  %-34s' "$id" >&2
  [[ $server == postgres ]] && target="$spid+" # its backends are child processes
  t0=$(date +%s%N)
  prio_exec PRIO taskset -c "$CLIENT_CPU" "$@" >"$output" 2>&1 &
  cpid=$!
  PIDS+=("$cpid")
  if [[ $server == none ]]; then
    prio_exec SAMPLER_PRIO taskset -c "$CLIENT_CPU" "${SAMPLER[@]}" watch "$samples" 0.1 "client=$cpid" &
  else
    prio_exec SAMPLER_PRIO taskset -c "$CLIENT_CPU" "${SAMPLER[@]}" watch "$samples" 0.1 "server=$target" "client=$cpid" &
  fi
  sampler=$!
  wait "$cpid" || rc=$?
  forget "$cpid"
  t1=$(date +%s%N)
  ((BUDGETED)) && throttle1=$(budget_throttling)
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  local status=ok
  if [[ " $OK_STATUSES " != *" $rc "* ]]; then
    status=failed
    FAILED+=("$id (exit $rc; see ${output#"$ROOT"/})")
  fi
  local cmd
  cmd=$(printf '%q ' "${PRIO[@]}" taskset -c "$CLIENT_CPU" "$@")
  cmd=${cmd//$ROOT\/target\/release\//}
  cmd=${cmd//$OUT\//\$OUT/}
  cmd=${cmd//$WORK/\$TMP}
  # One Python for the CPU window (bench/lib/sample.py) and the record: on a busy machine each
  # interpreter start costs a noticeable part of a second.
  python3 - "$MEASUREMENTS" "$id" "$server" "${output#"$OUT"/}" "$rc" "$status" "$t0" "$t1" \
    "$samples" "$SKIP" "$cmd" "$throttle0" "$throttle1" "$ROOT/bench/lib" <<'PY'
import json, sys
path, id_, server, output, rc, status, t0, t1, samples, skip, cmd, th0, th1, lib = sys.argv[1:]
sys.dont_write_bytecode = True
sys.path.insert(0, lib)
from sample import window_figures
window = window_figures(samples, float(skip))
record = {"id": id_, "server": server, "output": output, "exit": int(rc), "status": status,
          "wall_s": round((int(t1) - int(t0)) / 1e9, 3),
          "server_cpu": window.get("server"), "client_cpu": window.get("client"),
          "command": cmd.strip()}
if th0 and th1:
    a, b = [int(x) for x in th0.split()], [int(x) for x in th1.split()]
    # Over the whole step (warm-up included): quota periods, those that ran out, time throttled.
    record["budget"] = {"periods": b[0] - a[0], "throttled_periods": b[1] - a[1],
                        "throttled_us": b[2] - a[2]}
with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
def pct(x, k):
    return "-" if not x or x.get(k) is None else f"{x[k]:.0f}%"
s, c = record["server_cpu"], record["client_cpu"]
print(f"{status:6} {record['wall_s']:6.2f} s   server CPU {pct(s, 'cpu_percent')} (runnable {pct(s, 'runnable_percent')}), "
      f"client CPU {pct(c, 'cpu_percent')} (runnable {pct(c, 'runnable_percent')})", file=sys.stderr)
PY
  return 0
}

loadgen_run() { # id pid server prefix label loadgen-run-args...
  local id=$1 pid=$2 server=$3 prefix=$4 label=$5; shift 5
  SKIP=$WARMUP_S step "$id" "$pid" "$server" "$OUT/$prefix.txt" -- \
    "$LOADGEN" run --threads "$CLIENT_THREADS" --cpus "$CLIENT_CPU" --warmup "$WARMUP" -o "$OUT/$prefix" --label "$label" "$@"
}

# ---------------------------------------------------------------- the run
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "machine: $NPROC CPUs, load average $LOAD_BEFORE; servers on CPU $SERVER_CPU, clients on CPU $CLIENT_CPU ($CLIENT_THREADS thread(s))$( ((REALTIME)) && echo ', SCHED_FIFO' || true); output $OUT"
if awk -v l="${LOAD_BEFORE%% *}" -v n="$NPROC" 'BEGIN { exit !(l > n / 2) }'; then
  echo "suite.sh: note: the machine is busy (load average $LOAD_BEFORE on $NPROC CPUs); figures will be noisy (recorded in the results)" >&2
fi

setup_cgroups
if [[ -n $PRIO_CGROUP ]]; then
  PRIO_DESC+=", in a cgroup of the highest CPU weight ($PRIO_CGROUP: out of autogrouping)"
  echo "  priority: $PRIO_DESC" >&2
fi
if [[ -n $BUDGET_KIND ]]; then
  echo "  CPU budget: $BUDGET_PERCENT% of CPU $SERVER_CPU per server, $BUDGET_RESP_PERCENT% in the redis-benchmark rows (cgroup $BUDGET_KIND, $BUDGET_DIR: quota $((BUDGET_PERIOD_US * BUDGET_PERCENT / 100)) and $((BUDGET_PERIOD_US * BUDGET_RESP_PERCENT / 100)) us per $BUDGET_PERIOD_US us)" >&2
else
  echo "suite.sh: note: no budgeted rows: $BUDGET_WHY; the throughput goals are judged on the full-core rows (client-bound ones inconclusive)" >&2
fi

log "starting servers"
start_seqd seqd
start_baseline
start_zerowork
start_redis redis
start_postgres
echo "  seqd $SEQD_ADDR (pid $SEQD_PID, durable state: $( ((SEQD_DURABLE)) && echo on || echo 'not in this build'))" >&2
echo "  baseline $BASE_ADDR (pid $BASE_PID), zero-work $ZERO_ADDR (pid $ZERO_PID), Redis $REDIS_ADDR (pid $REDIS_PID), PostgreSQL 127.0.0.1:$PG_PORT (pid $PG_PID)" >&2
MAIN_SEQD_CMD=$SEQD_CMD

log "in-process allocation (client CPU)"
step inprocess-getseq "$SEQD_PID" none "$OUT/inprocess/getseq.txt" -- \
  "$LOADGEN" in-process --threads 1 --batch 1 -d "$INPROCESS" --cpus "$CLIENT_FIRST_CPU" -o "$OUT/inprocess/getseq"
step inprocess-batch1000 "$SEQD_PID" none "$OUT/inprocess/batch1000.txt" -- \
  "$LOADGEN" in-process --threads 1 --batch 1000 -d "$INPROCESS" --cpus "$CLIENT_FIRST_CPU" -o "$OUT/inprocess/batch1000"

# server NAME: sets pid, addr, target and name of one of the closed-loop servers.
server_vars() {
  case $1 in
    seqd) pid=$SEQD_PID addr=$SEQD_ADDR target=binary name="seqd binary" quota_log=$OUT/logs/seqd.log ;;
    baseline) pid=$BASE_PID addr=$BASE_ADDR target=binary name="naive baseline" quota_log="" ;;
    zerowork) pid=$ZERO_PID addr=$ZERO_ADDR target=binary name="zero-work io_uring" quota_log=$OUT/logs/zerowork.log ;;
    redis) pid=$REDIS_PID addr=$REDIS_ADDR target=redis name="Redis INCR" quota_log="" ;;
  esac
}

# redis_benchmark ID_PREFIX DIR SERVER C P N [budget]: one redis-benchmark step, GETSEQ on seqd,
# INCR on Redis.
redis_benchmark() {
  local prefix=$1 dir=$2 server=$3 c=$4 p=$5 n=$6 threads
  read -r -a threads <<<"$(rb_threads "$c")"
  case $server in
    seqd) step "$prefix-seqd-c${c}-P$p-r$round" "$SEQD_PID" seqd "$OUT/$dir/seqd-c${c}-P$p-r$round.csv" -- \
      redis-benchmark -h 127.0.0.1 -p "${SEQD_ADDR##*:}" -c "$c" -P "$p" -n "$n" "${threads[@]}" --csv GETSEQ ;;
    redis) step "$prefix-redis-c${c}-P$p-r$round" "$REDIS_PID" redis "$OUT/$dir/redis-c${c}-P$p-r$round.csv" -- \
      redis-benchmark -h 127.0.0.1 -p "${REDIS_ADDR##*:}" -c "$c" -P "$p" -n "$n" "${threads[@]}" --csv INCR bench:seq ;;
    *) ;;
  esac
}

CONFIGS=("1 1" "50 1" "50 16" "50 64" "1 4096")
SERVERS=(seqd baseline zerowork redis)
for round in $(seq "$ROUNDS"); do
  # Rotate which server goes first, so drift in the machine's load hits all alike.
  order=("${SERVERS[@]:$(((round - 1) % 4))}" "${SERVERS[@]:0:$(((round - 1) % 4))}")
  log "closed loop, full core, round $round of $ROUNDS (seqd binary, naive baseline, zero-work, Redis INCR; all via loadgen)"
  for config in "${CONFIGS[@]}"; do
    read -r c p <<<"$config"
    for server in "${order[@]}"; do
      server_vars "$server"
      loadgen_run "closed-$server-${c}x$p-r$round" "$pid" "$server" "closed/$server-${c}x$p-r$round" "$name ${c}x$p" \
        --target "$target" --addr "$addr" -c "$c" -P "$p" -d "$DURATION"
    done
  done

  log "RESP via redis-benchmark, full core, round $round of $ROUNDS (seqd GETSEQ vs Redis INCR)"
  for setting in "50 1 $RB_P1" "50 16 $RB_P16" "50 64 $RB_P64" "1 1 $RB_C1"; do
    read -r c p n <<<"$setting"
    for server in "${order[@]}"; do redis_benchmark resp resp "$server" "$c" "$p" "$n"; done
  done

  [[ -n $BUDGET_KIND ]] || continue
  log "closed loop under the CPU budget ($BUDGET_PERCENT% of CPU $SERVER_CPU), round $round of $ROUNDS"
  BUDGETED=1
  for config in "${BUDGET_CONFIGS[@]}"; do
    read -r c p <<<"$config"
    for server in "${order[@]}"; do
      server_vars "$server"
      budget_on "$pid" "$quota_log"
      loadgen_run "budget-closed-$server-${c}x$p-r$round" "$pid" "$server" "closed-budget/$server-${c}x$p-r$round" \
        "$name ${c}x$p, $BUDGET_PERCENT% CPU" --target "$target" --addr "$addr" -c "$c" -P "$p" -d "$DURATION"
      budget_off "$pid" "$quota_log"
    done
  done
  log "RESP via redis-benchmark under the CPU budget ($BUDGET_RESP_PERCENT% of CPU $SERVER_CPU), round $round of $ROUNDS"
  budget_percent "$BUDGET_RESP_PERCENT"
  for setting in "50 64 $RBB_P64" "50 1 $RBB_P1"; do
    read -r c p n <<<"$setting"
    for server in "${order[@]}"; do
      [[ $server == seqd || $server == redis ]] || continue
      server_vars "$server"
      budget_on "$pid" "$quota_log"
      redis_benchmark budget-resp resp-budget "$server" "$c" "$p" "$n"
      budget_off "$pid" "$quota_log"
    done
  done
  budget_percent "$BUDGET_PERCENT"
  BUDGETED=0
done

log "PostgreSQL nextval via pgbench (-M prepared, one-line script)"
echo "SELECT nextval('bench_seq');" >"$OUT/pgbench/nextval.sql"
for c in 1 50; do
  step "pgbench-nextval-c$c" "$PG_PID" postgres "$OUT/pgbench/nextval-c$c.txt" -- \
    pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -f "$OUT/pgbench/nextval.sql" \
    -c "$c" -j $((c < CLIENT_THREADS ? c : CLIENT_THREADS)) -T "$PG_SECONDS" postgres
done

log "open loop at fixed rates ($OPEN_RATES req/s; full core, no quota; 50 connections, up to 64 in flight each)"
for rate in $OPEN_RATES; do
  for server in seqd redis; do
    server_vars "$server"
    loadgen_run "open-$server-$rate" "$pid" "$server" "open/$server-$rate" "$name open loop at $rate/s" \
      --target "$target" --addr "$addr" -c 50 -P 64 --rate "$rate" --send-granularity "$GRANULARITY" -d "$DURATION"
  done
done

log "capacity search: the highest rate with p99 <= 1 ms (50 connections, up to 64 in flight each)"
OK_STATUSES="0 5" # 5: no rate met the objective, a result, not a broken step
for server in seqd redis; do
  server_vars "$server"
  loadgen_run "capacity-$server" "$pid" "$server" "capacity/$server-p99-1ms" "$name capacity p99<=1ms" \
    --target "$target" --addr "$addr" -c 50 -P 64 --slo 'p99<=1ms' --probe-duration "$PROBE" \
    --send-granularity "$GRANULARITY" \
    --max-probes "$PROBES" -d "$CONFIRM"
done
OK_STATUSES="0"

log "servers of the matrix stopped"
stop "$SEQD_PID"
stop "$BASE_PID"
stop "$ZERO_PID"
stop "$REDIS_PID"
kill -INT "$PG_PID" 2>/dev/null || true # PostgreSQL's fast shutdown
wait "$PG_PID" 2>/dev/null || true
forget "$PG_PID"

# RSS of a process in KiB, once it stopped changing (connections still being accepted).
steady_rss() {
  local pid=$1 last=-1 now same=0
  for _ in $(seq 100); do
    now=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    if [[ $now == "$last" ]]; then
      same=$((same + 1))
      ((same >= 3)) && break
    else
      same=0
    fi
    last=$now
    sleep 0.1
  done
  echo "$now"
}

wait_line() { # file pattern pid
  for _ in $(seq 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

log "$IDLE_CONNECTIONS idle connections: server RSS per connection; 50 active connections beside them, then alone"
for server in seqd redis; do
  case $server in
    seqd)
      start_seqd seqd-idle --max-connections $((IDLE_CONNECTIONS + 2000))
      pid=$SEQD_PID addr=$SEQD_ADDR target=binary name="seqd binary" cmd=$SEQD_CMD ;;
    redis)
      start_redis redis-idle
      pid=$REDIS_PID addr=$REDIS_ADDR target=redis name="Redis INCR" cmd=$REDIS_CMD ;;
  esac
  # Memory first, on the fresh server: a server that has already served a load has freed
  # memory that new connections could fill without growing its RSS.
  rss0=$(steady_rss "$pid")
  prio_exec PRIO taskset -c "$CLIENT_CPU" "$LOADGEN" hold --target "$target" --addr "$addr" -c "$IDLE_CONNECTIONS" \
    >"$OUT/idle/$server-hold.txt" 2>&1 &
  hold_pid=$!
  PIDS+=("$hold_pid")
  rss1="" rss2=""
  if wait_line "$OUT/idle/$server-hold.txt" '^connected' "$hold_pid"; then
    rss1=$(steady_rss "$pid")
    kill -USR1 "$hold_pid"
    if wait_line "$OUT/idle/$server-hold.txt" '^answered' "$hold_pid"; then
      rss2=$(steady_rss "$pid")
      loadgen_run "idle-$server-active-held" "$pid" "$server" "idle/$server-active-held" \
        "$name 50x64 beside $IDLE_CONNECTIONS idle connections" --target "$target" --addr "$addr" \
        -c 50 -P 64 -d "$DURATION"
    fi
  fi
  stop "$hold_pid"
  loadgen_run "idle-$server-active-alone" "$pid" "$server" "idle/$server-active-alone" \
    "$name 50x64, the idle connections closed" --target "$target" --addr "$addr" -c 50 -P 64 -d "$DURATION"
  if [[ -z $rss2 ]]; then
    FAILED+=("idle $server: the $IDLE_CONNECTIONS connections were not all opened and served (see idle/$server-hold.txt)")
  fi
  python3 - "$OUT/idle/$server-memory.json" "$server" "$IDLE_CONNECTIONS" "$rss0" "${rss1:-0}" "${rss2:-0}" "$cmd" \
    "loadgen hold --target $target --addr ADDR -c $IDLE_CONNECTIONS" <<'PY'
import json, sys
path, server, n, rss0, rss1, rss2, cmd, hold = sys.argv[1:]
n, rss0, rss1, rss2 = int(n), int(rss0), int(rss1), int(rss2)
json.dump({"server": server, "connections": n, "rss_kib_before": rss0,
           "rss_kib_connected": rss1 or None, "rss_kib_after_one_request": rss2 or None,
           "kib_per_connection_connected": (rss1 - rss0) / n if rss1 else None,
           "kib_per_connection_after_one_request": (rss2 - rss0) / n if rss2 else None,
           "server_command": cmd, "client_command": hold,
           "method": "VmRSS from /proc/PID/status once steady, before opening the connections, "
                     "after opening them (nothing sent), and after one request and reply on each"},
          open(path, "w"), indent=2)
PY
  stop "$pid"
done

log "durability: persistence on vs --in-memory (seqd binary 50x64, fresh server per run, alternating$([[ -n $BUDGET_KIND ]] && echo ", under the CPU budget"))"
if ((SEQD_DURABLE)); then
  for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then modes=(in-memory durable); else modes=(durable in-memory); fi
    for mode in "${modes[@]}"; do
      if [[ $mode == in-memory ]]; then start_seqd "seqd-$mode-r$round" --in-memory; else start_seqd "seqd-$mode-r$round"; fi
      echo "$SEQD_CMD" >"$OUT/durability/$mode-r$round.server"
      # Under the budget, like the throughput goals: at full core the client saturates first.
      if [[ -n $BUDGET_KIND ]]; then BUDGETED=1; budget_on "$SEQD_PID" "$OUT/logs/seqd-$mode-r$round.log"; fi
      loadgen_run "durability-$mode-r$round" "$SEQD_PID" seqd "durability/$mode-r$round" "seqd $mode 50x64" \
        --target binary --addr "$SEQD_ADDR" -c 50 -P 64 -d "$DURATION"
      BUDGETED=0
      budget_off "$SEQD_PID"
      stop "$SEQD_PID"
    done
  done
else
  echo "  skipped: this seqd build has no --in-memory flag (durability, issue 3, is not in this build)" >&2
  echo "seqd --help lists no --in-memory (durability is not in this build)" >"$OUT/durability/SKIPPED"
fi

log "plots"
# plot_closed DIR TITLE CONFIG...: latency by percentile of the closed-loop servers, last round.
plot_closed() {
  local dir=$1 title=$2 config c p last=r$ROUNDS; shift 2
  for config in "$@"; do
    read -r c p <<<"$config"
    "$LOADGEN" plot -o "$OUT/$dir-${c}x$p.svg" --log-y \
      --title "Closed loop ${c}x$p$title: latency by percentile (round $ROUNDS)" \
      "$OUT/$dir/seqd-${c}x$p-$last.json" "$OUT/$dir/baseline-${c}x$p-$last.json" \
      "$OUT/$dir/zerowork-${c}x$p-$last.json" "$OUT/$dir/redis-${c}x$p-$last.json" \
      2>/dev/null || FAILED+=("plot $dir ${c}x$p")
  done
}
plot_closed closed "" "${CONFIGS[@]}"
[[ -z $BUDGET_KIND ]] || plot_closed closed-budget ", each server at $BUDGET_PERCENT% of a CPU" "${BUDGET_CONFIGS[@]}"
for rate in $OPEN_RATES; do
  if [[ -f $OUT/open/seqd-$rate.json && -f $OUT/open/redis-$rate.json ]]; then
    "$LOADGEN" plot -o "$OUT/open-$rate.svg" --log-y \
      --title "Open loop at $rate req/s (coordinated-omission corrected)" \
      "$OUT/open/seqd-$rate.json" "$OUT/open/redis-$rate.json" 2>/dev/null || FAILED+=("plot open $rate/s")
  fi
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
log "summary"
printf '%s\n' "${FAILED[@]+"${FAILED[@]}"}" >"$WORK/failed.txt"
M_STARTED=$STARTED M_MODE=$( ((QUICK)) && echo quick || echo full) M_ROUNDS=$ROUNDS M_HOST=$HOST \
M_CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) M_NPROC=$NPROC \
M_KERNEL=$(uname -r) M_LOAD_BEFORE=$LOAD_BEFORE M_LOAD_AFTER=$LOAD_AFTER \
M_SERVER_CPU=$SERVER_CPU M_CLIENT_CPU=$CLIENT_CPU M_CLIENT_THREADS=$CLIENT_THREADS M_FD_LIMIT=$FD_LIMIT \
M_DURATION=$DURATION M_WARMUP=$WARMUP M_PROBE=$PROBE M_PROBES=$PROBES M_CONFIRM=$CONFIRM \
M_PG_SECONDS=$PG_SECONDS M_INPROCESS=$INPROCESS M_RB="$RB_P1 $RB_P16 $RB_P64 $RB_C1" \
M_COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src loadgen Cargo.toml Cargo.lock || echo ' + uncommitted changes')" \
M_V_SEQD=$("$SEQD" --version) M_V_LOADGEN=$("$LOADGEN" --version) \
M_V_RUSTC=$(rustc --version 2>/dev/null || echo unknown) \
M_V_REDIS=$(redis-server --version | head -1) \
M_V_REDIS_BENCHMARK=$(redis-benchmark --version 2>/dev/null | head -1 || echo unknown) \
M_V_POSTGRES=$("$PG_BIN/postgres" --version) M_V_PGBENCH=$(pgbench --version) \
M_DURABLE=$SEQD_DURABLE M_S_SEQD=$MAIN_SEQD_CMD M_S_BASELINE=$BASE_CMD M_S_REDIS=$REDIS_CMD \
M_S_POSTGRES=$PG_CMD M_IDLE=$IDLE_CONNECTIONS M_REALTIME=$REALTIME M_SEQD_BINARY=${SEQD#"$ROOT"/} \
M_S_ZEROWORK=$ZERO_CMD M_RBB="$RBB_P64 $RBB_P1" M_OPEN_RATES=$OPEN_RATES M_PRIO="$PRIO_DESC" \
M_B_KIND=$BUDGET_KIND M_B_DIR=$BUDGET_DIR M_B_WHY=$BUDGET_WHY M_B_PERCENT=$BUDGET_PERCENT M_B_RESP_PERCENT=$BUDGET_RESP_PERCENT M_B_PERIOD=$BUDGET_PERIOD_US \
python3 - "$OUT/meta.json" "$WORK/failed.txt" <<'PY'
import json, os, sys
e = os.environ
rb = [int(x) for x in e["M_RB"].split()]
meta = {
    "started": e["M_STARTED"], "mode": e["M_MODE"], "rounds": int(e["M_ROUNDS"]),
    "host": e["M_HOST"], "cpu_model": e["M_CPU_MODEL"], "nproc": int(e["M_NPROC"]),
    "kernel": e["M_KERNEL"], "load_before": e["M_LOAD_BEFORE"], "load_after": e["M_LOAD_AFTER"],
    "server_cpu": int(e["M_SERVER_CPU"]), "client_cpu": e["M_CLIENT_CPU"],
    "client_threads": int(e["M_CLIENT_THREADS"]),
    "fd_limit": e["M_FD_LIMIT"], "idle_connections": int(e["M_IDLE"]),
    "durations": {"run": e["M_DURATION"], "warmup": e["M_WARMUP"], "probe": e["M_PROBE"],
                  "max_probes": int(e["M_PROBES"]), "confirm": e["M_CONFIRM"],
                  "pgbench_s": int(e["M_PG_SECONDS"]), "in_process": e["M_INPROCESS"],
                  "redis_benchmark_requests": dict(zip(["c50 P1", "c50 P16", "c50 P64", "c1 P1"], rb))},
    "commit": e["M_COMMIT"],
    "versions": {k: e["M_V_" + k.upper()] for k in
                 ["seqd", "loadgen", "rustc", "redis", "redis_benchmark", "postgres", "pgbench"]},
    "seqd_durability_in_build": e["M_DURABLE"] == "1",
    "realtime": e["M_REALTIME"] == "1",
    "seqd_binary": e["M_SEQD_BINARY"],
    "servers": {"seqd": e["M_S_SEQD"], "baseline": e["M_S_BASELINE"], "zerowork": e["M_S_ZEROWORK"],
                "redis": e["M_S_REDIS"], "postgres": e["M_S_POSTGRES"]},
    "priority": e["M_PRIO"] or "normal",
    "open_rates": [int(x) for x in e["M_OPEN_RATES"].split()],
    "budget": {"kind": e["M_B_KIND"] or None, "cgroup": e["M_B_DIR"] or None,
               "unusable_because": e["M_B_WHY"] or None, "percent": int(e["M_B_PERCENT"]),
               "period_us": int(e["M_B_PERIOD"]),
               "quota_us": int(e["M_B_PERIOD"]) * int(e["M_B_PERCENT"]) // 100,
               "resp_percent": int(e["M_B_RESP_PERCENT"]),
               "resp_quota_us": int(e["M_B_PERIOD"]) * int(e["M_B_RESP_PERCENT"]) // 100,
               "redis_benchmark_requests": dict(zip(["c50 P64", "c50 P1"], [int(x) for x in e["M_RBB"].split()]))},
    "failed_steps": [l for l in open(sys.argv[2]).read().splitlines() if l],
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
PY
SUMMARY_ARGS=("$OUT")
((QUICK)) || [[ $OUT != "$ROOT/results/$DATE-$HOST" ]] || SUMMARY_ARGS+=(--index results/README.md)
python3 bench/lib/summarize.py "${SUMMARY_ARGS[@]}" || FAILED+=("summary (bench/lib/summarize.py)")

if ((${#FAILED[@]})); then
  echo >&2
  echo "suite.sh: FAILED steps (the suite is broken, not merely slow):" >&2
  printf '  - %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "suite.sh: done; results in ${OUT#"$ROOT"/}" >&2

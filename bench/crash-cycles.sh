#!/usr/bin/env bash
# The long crash run: CYCLES kill -9 cycles of a release seqd under pipelined load, checking
# that no number is ever issued twice across all the restarts.
#
#   bench/crash-cycles.sh [CYCLES]          # default 100; results/crash-cycles/ records 1000
#   CONNECTIONS=4 PIPELINE=32 bench/crash-cycles.sh 20
#
# Each cycle starts seqd on loopback (one or two event loops, --max-crash-gap alternating
# between the values in MAX_CRASH_GAPS) on the same data directory, checks that a restart
# after a kill logs its recovery, then runs:
#   - loadgen, binary protocol: CONNECTIONS connections x PIPELINE pipelined GETSEQ;
#   - loadgen, RESP: 2 connections x 16 pipelined GETSEQ_BATCH 10;
#   - (every LEASE_EVERY-th cycle) bench/crash_lease_client.py: leases with ids, one at a
#     time, each acknowledged; after the restart it retries the request the kill interrupted,
#     which must be answered with the range granted before the kill, if one was;
# all on the default sequence, every number received appended to verify files. After a random
# time in [KILL_MIN_MS, KILL_MAX_MS] seqd gets SIGKILL. At the end `loadgen verify` checks all
# the files together: every number unique across connections, runs and restarts.
#
# Printed at the end: cycles, numbers checked, duplicates, retries checked, the largest gap
# observed (where the restart resumes, from its log, minus the highest number received
# before the kill, minus one; numbers issued whose replies the kill lost count in it, so it
# bounds the skip from above) for each --max-crash-gap of the killed run. Exits non-zero on a duplicate, a mismatched retry, a gap
# above --max-crash-gap or a server that did not start.
#
# Needs: a Rust toolchain, python3. Everything runs on 127.0.0.1:$PORT; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${1:-${CYCLES:-100}}
CONNECTIONS=${CONNECTIONS:-4}
PIPELINE=${PIPELINE:-32}
MAX_CRASH_GAPS=${MAX_CRASH_GAPS:-"2000 1000000"}
KILL_MIN_MS=${KILL_MIN_MS:-150}
KILL_MAX_MS=${KILL_MAX_MS:-900}
LEASE_EVERY=${LEASE_EVERY:-2}
PORT=${PORT:-10391}
KEEP=${KEEP:-} # set to keep the work directory (verify files, logs)

command -v python3 >/dev/null || { echo "crash-cycles: python3 is not installed" >&2; exit 1; }
cargo build --release --locked --quiet -p seqd -p loadgen
SEQD=$PWD/target/release/seqd
LOADGEN=$PWD/target/release/loadgen
LEASE_CLIENT=$PWD/bench/crash_lease_client.py
WORK=$(mktemp -d /tmp/crash-cycles.XXXXXX)
SEQD_PID=
cleanup() {
  [ -n "$SEQD_PID" ] && kill -9 "$SEQD_PID" 2>/dev/null || true
  if [ -n "$KEEP" ]; then echo "crash-cycles: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
DATA=$WORK/data
mkdir -p "$WORK/vfy" "$WORK/log"
read -r -a gaps <<<"$MAX_CRASH_GAPS"

# Waits (bounded) until process $1 exits; kills it if it overstays. Returns its status.
wait_bounded() {
  local pid=$1 limit=$2 waited=0
  while kill -0 "$pid" 2>/dev/null && ((waited < limit * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "crash-cycles: process $pid still running after ${limit}s; killed" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  local status=0
  wait "$pid" || status=$?
  return "$status"
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
failures=0
: >"$WORK/cycles.tsv" # cycle, max-crash-gap, resumes-at (from the log), loadgen statuses
for ((cycle = 0; cycle < CYCLES; cycle++)); do
  gap=${gaps[$((cycle % ${#gaps[@]}))]}
  loops=$(((cycle / ${#gaps[@]}) % 2 + 1))
  log=$WORK/log/seqd-$cycle.log
  # The port can be briefly taken (another process, or the kernel still releasing the
  # killed server's sockets): a few bounded retries before giving up.
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    "$SEQD" --host 127.0.0.1 --port "$PORT" --threads "$loops" --data-dir "$DATA" \
      --max-crash-gap "$gap" 2>"$log" &
    SEQD_PID=$!
    for _ in $(seq 1 200); do
      grep -qs "seqd listening" "$log" && break
      kill -0 "$SEQD_PID" 2>/dev/null || break
      sleep 0.05
    done
    grep -qs "seqd listening" "$log" || ! grep -qs "Address already in use" "$log" && break
    wait "$SEQD_PID" 2>/dev/null || true
    SEQD_PID=
    cp "$log" "$log.in-use-$attempt"
    sleep 0.5
  done
  if ! grep -q "seqd listening" "$log"; then
    echo "crash-cycles: cycle $cycle: seqd did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  # The first start after the kill is the one that recovered from it.
  recovery_log=$log
  [ -e "$log.in-use-1" ] && recovery_log=$log.in-use-1
  if ((cycle > 0)) && ! grep -q "did not shut down cleanly" "$recovery_log"; then
    echo "crash-cycles: cycle $cycle: the restart after kill -9 logged no recovery:" >&2
    cat "$recovery_log" >&2
    failures=$((failures + 1))
  fi
  resumes=$(sed -nE 's/.*sequence "default" \(id 0\) resumes at ([0-9]+).*/\1/p' \
    "$recovery_log" | head -1)

  "$LOADGEN" run --target binary --addr "127.0.0.1:$PORT" -c "$CONNECTIONS" -P "$PIPELINE" \
    -d 60s --warmup 0s --no-pin --drain-timeout 1s --reply-timeout 5s \
    --verify-file "$WORK/vfy/binary-$cycle.vfy" >"$WORK/log/binary-$cycle.log" 2>&1 &
  binary_pid=$!
  "$LOADGEN" run --target resp --batch 10 --addr "127.0.0.1:$PORT" -c 2 -P 16 \
    -d 60s --warmup 0s --no-pin --drain-timeout 1s --reply-timeout 5s \
    --verify-file "$WORK/vfy/resp-$cycle.vfy" >"$WORK/log/resp-$cycle.log" 2>&1 &
  resp_pid=$!
  lease_pid=
  if ((LEASE_EVERY > 0 && cycle % LEASE_EVERY == 0)); then
    python3 "$LEASE_CLIENT" --addr "127.0.0.1:$PORT" --state "$WORK/lease-state.json" \
      --verify-file "$WORK/vfy/leases.vfy" --cycle "$cycle" >"$WORK/log/lease-$cycle.log" 2>&1 &
    lease_pid=$!
    # Python starts slowly on a loaded machine: the kill time counts from its connection.
    for _ in $(seq 1 100); do
      grep -qs "^connected" "$WORK/log/lease-$cycle.log" && break
      kill -0 "$lease_pid" 2>/dev/null || break
      sleep 0.05
    done
  fi

  delay_ms=$((KILL_MIN_MS + RANDOM % (KILL_MAX_MS - KILL_MIN_MS + 1)))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  kill -9 "$SEQD_PID"
  wait "$SEQD_PID" 2>/dev/null || true
  SEQD_PID=

  # loadgen ends once every connection is closed: 3 (errors: closed by server) is expected,
  # 4 is a duplicate within the run, anything else a run that could not be made.
  statuses=""
  for pid in "$binary_pid" "$resp_pid"; do
    status=0
    wait_bounded "$pid" 20 || status=$?
    statuses+="$status "
    if ((status != 0 && status != 3)); then
      echo "crash-cycles: cycle $cycle: loadgen exited $status (see below)" >&2
      cat "$WORK/log/binary-$cycle.log" "$WORK/log/resp-$cycle.log" >&2
      failures=$((failures + 1))
    fi
  done
  if [ -n "$lease_pid" ]; then
    status=0
    wait_bounded "$lease_pid" 20 || status=$?
    statuses+="lease=$status"
    if ((status != 0)); then
      echo "crash-cycles: cycle $cycle: the lease client failed:" >&2
      cat "$WORK/log/lease-$cycle.log" >&2
      failures=$((failures + 1))
    fi
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$cycle" "$gap" "${resumes:--}" "$delay_ms" "$statuses" \
    >>"$WORK/cycles.tsv"
  if ((cycle % 50 == 0)); then echo "crash-cycles: cycle $cycle of $CYCLES" >&2; fi
done

verify_output=$("$LOADGEN" verify "$WORK"/vfy/*.vfy) || failures=$((failures + 1))
python3 - "$WORK" "$started" "$verify_output" "$failures" <<'PY' || exit 1
import glob, os, struct, sys

work, started, verify_output, failures = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def highest(path):
    """Highest number in a verify file (None if it holds none)."""
    with open(path, "rb") as f:
        body = f.read()[16:]
    top = None
    for off in range(0, len(body) - len(body) % 24, 24):
        _, first, count = struct.unpack_from("<QQQ", body, off)
        if count:
            top = max(top or 0, first + count - 1)
    return top

# Lease ranges carry their cycle in the stream id.
lease_top = {}
lease_file = os.path.join(work, "vfy", "leases.vfy")
if os.path.exists(lease_file):
    with open(lease_file, "rb") as f:
        body = f.read()[16:]
    for off in range(0, len(body) - len(body) % 24, 24):
        stream, first, count = struct.unpack_from("<QQQ", body, off)
        cycle = stream & 0xFFFFFFFF
        lease_top[cycle] = max(lease_top.get(cycle, 0), first + count - 1)

rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(work, "cycles.tsv"))]
# The ceiling on disk at a kill was raised under the killed run's --max-crash-gap: that is
# the bound on the gap its restart shows.
largest = {}  # the killed run's --max-crash-gap -> (largest observed gap, cycle)
over = 0
received_before = None
for cycle, gap, resumes, _delay, _statuses in rows:
    cycle, gap = int(cycle), int(gap)
    if received_before is not None and resumes != "-":
        observed = int(resumes) - received_before - 1
        if observed > largest.get(previous_gap, (-1, 0))[0]:
            largest[previous_gap] = (observed, cycle)
        if observed > previous_gap:
            print(f"cycle {cycle}: resumed {observed} above the highest number received "
                  f"before the kill, more than the killed run's --max-crash-gap {previous_gap}",
                  file=sys.stderr)
            over += 1
    tops = [t for t in (highest(os.path.join(work, "vfy", f"{kind}-{cycle}.vfy"))
                        for kind in ("binary", "resp")) if t is not None]
    if cycle in lease_top:
        tops.append(lease_top[cycle])
    if tops:
        received_before = max(tops + [received_before or 0])
    previous_gap = gap

retries = leases = 0
for path in glob.glob(os.path.join(work, "log", "lease-*.log")):
    lines = [l for l in open(path) if l.startswith("{")]
    if lines:
        import json
        last = json.loads(lines[-1])
        retries = max(retries, last["retries_checked"])
        leases = max(leases, last["leases"])

print(f"started {started}, finished "
      f"{__import__('datetime').datetime.now(__import__('datetime').timezone.utc):%Y-%m-%dT%H:%M:%SZ}")
print(f"cycles: {len(rows)}")
print(f"loadgen {verify_output}")
print(f"leases granted (20 numbers each, in the numbers above): {leases}; retries after a "
      f"kill answered with the range granted before it: {retries}")
for gap in sorted(largest):
    observed, cycle = largest[gap]
    print(f"largest gap observed after killing a run with --max-crash-gap {gap}: {observed} "
          f"(restart of cycle {cycle})")
print(f"gaps above --max-crash-gap: {over}; other failures: {failures}")
sys.exit(1 if over or failures else 0)
PY

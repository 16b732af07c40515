#!/usr/bin/env bash
# What a lease write costs with 10,000 leases outstanding, before and after the journal
# (issue 20 item 6): two revisions built side by side, measured alternately round by round on
# fresh data directories. Each round fills a server with FILL leases (64-byte client ids and
# 63-byte request ids, the longest allowed: 164-byte records, so 10,000 make the 1.64 MB
# state file of issue 20; outstanding for an hour), then takes one lease at a time for SECONDS (each answered
# only once durable: one persister write each) and records the server's /proc/PID/io deltas.
# Writes results/lease-journal/README.md (never edit that file by hand: rerun this script).
#
#   bench/lease-journal.sh                      # main's merge base vs HEAD, 3 rounds of 10 s
#   ROUNDS=5 SECONDS_PER_ROUND=10 bench/lease-journal.sh REV_A REV_B
#
# MODE=flood measures instead what a table filled one lease at a time costs (issue 20 item 6,
# "make lease writes incremental": a write's CPU should follow what changed, not the table):
# for each N in FLOOD_SIZES, a fresh server (durable, --threads 1, --max-leases-per-peer 0)
# answers N leases asked one after another on one connection, each with a new client id (so
# each is one persister write); wall-clock seconds and the server's CPU seconds (utime + stime
# of every thread, /proc/PID/stat) per N. Writes results/lease-journal/flood.md.
#
#   MODE=flood ROUNDS=2 FLOOD_SIZES="2500 5000 10000" bench/lease-journal.sh REV_A REV_B
#
# Needs: git, a Rust toolchain, taskset, python3, 2+ CPUs. The server (one event loop) runs
# pinned to CPU 0, the client on CPU 1, both at nice -20 when run as root. The data
# directories are made under $TMPDIR (or /tmp): it must be a real disk for fsync to cost
# what it costs (tmpfs makes every fsync free).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV_A=${1:-$(git merge-base HEAD main)}
REV_B=${2:-HEAD}
ROUNDS=${ROUNDS:-3}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
FILL=${FILL:-10000}
PORT=${PORT:-10491}
MODE=${MODE:-writes}
FLOOD_SIZES=${FLOOD_SIZES:-2500 5000 10000}
OUT=results/lease-journal
for tool in git cargo taskset python3; do
  command -v "$tool" >/dev/null || { echo "lease-journal.sh: $tool is not installed" >&2; exit 1; }
done
SHA_A=$(git rev-parse --short "$REV_A^{commit}")
SHA_B=$(git rev-parse --short "$REV_B^{commit}")
WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null
  git worktree remove --force "$WORK/tree" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fs_type=$(stat -f -c %T "$WORK")
[[ $fs_type != tmpfs ]] || { echo "lease-journal.sh: $WORK is on tmpfs; set TMPDIR to a disk" >&2; exit 1; }
NICE=()
[[ $(id -u) -eq 0 ]] && NICE=(nice -n -20)

# Both revisions build in one target directory (as bench/ab.sh), dependencies once; a
# revision's binary is kept in target/ab/bin/ and reused by later runs.
# shellcheck source=lib/build_rev.sh
source "$ROOT/bench/lib/build_rev.sh"
echo "building $SHA_A and $SHA_B (target/ab)" >&2
build "$SHA_A"
build "$SHA_B"

if [[ $MODE == flood ]]; then
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ROWS=$WORK/rows.jsonl
  : >"$ROWS"
  flood() { # rev round n
    local rev=$1 round=$2 n=$3 log=$WORK/seqd.log data=$WORK/data-$1-$2-$3
    taskset -c 0 "${NICE[@]}" "$WORK/seqd-$rev" --host 127.0.0.1 --port "$PORT" --threads 1 \
      --data-dir "$data" --max-leases 1000000 --max-leases-per-peer 0 --lease-timeout 1h 2>"$log" &
    SERVER=$!
    for _ in $(seq 1 400); do
      grep -qs "seqd listening" "$log" && break
      sleep 0.05
    done
    grep -q "seqd listening" "$log" || { cat "$log" >&2; exit 1; }
    local row
    row=$(taskset -c 1 "${NICE[@]}" python3 - 127.0.0.1 "$PORT" "$SERVER" "$n" <<'PY'
import json, os, socket, sys, time
host, port, pid, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def cpu():  # utime + stime of every thread of the process, in seconds
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
replies = sock.makefile("rb")
cpu_before, started = cpu(), time.monotonic()
for i in range(n):
    sock.sendall(b"GET_SEQUENCE_RANGE 1 flood-%d r\r\n" % i)
    line = replies.readline().decode().strip()
    first, _, last = line.partition(",")
    if not (first.isdigit() and last.isdigit()):
        sys.exit(f"lease {i}: not a range: {line!r}")
print(json.dumps({"leases": n, "seconds": round(time.monotonic() - started, 3),
                  "server_cpu_seconds": round(cpu() - cpu_before, 2)}))
PY
)
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=""
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(rev=sys.argv[2], round=int(sys.argv[3])); print(json.dumps(r))' \
      "$row" "$rev" "$round" >>"$ROWS"
    tail -1 "$ROWS" >&2
    rm -rf "$data"
  }
  for round in $(seq 1 "$ROUNDS"); do
    for n in $FLOOD_SIZES; do
      if ((round % 2)); then
        flood "$SHA_A" "$round" "$n"
        flood "$SHA_B" "$round" "$n"
      else
        flood "$SHA_B" "$round" "$n"
        flood "$SHA_A" "$round" "$n"
      fi
    done
  done
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  mkdir -p "$OUT"
  python3 - "$ROWS" "$OUT/flood.md" "$SHA_A" "$SHA_B" "$started" "$load_before" "$load_after" \
    "$ROUNDS" "$FLOOD_SIZES" "$fs_type" <<'PY'
import json, os, platform, statistics, sys
rows_path, out, a, b, started, load_before, load_after, rounds, sizes, fs = sys.argv[1:11]
rows = [json.loads(l) for l in open(rows_path)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = ["# Filling the lease table one lease at a time: before and after incremental writes\n"]
lines.append("Written by [`bench/lease-journal.sh`](../../bench/lease-journal.sh) (`MODE=flood`); never edited by hand.")
lines.append(f"Before: `{a}` (each write builds every lease record and diffs the whole table). After: `{b}`")
lines.append("(each write takes only the records changed since the last one).\n")
lines.append(f"- Date: {started}; {rounds} rounds, the two revisions alternated per size, each on a fresh data directory ({fs})")
lines.append(f"- Machine: `nproc` {os.cpu_count()}, kernel `{platform.release()}`, CPU \"{cpu}\"; **shared** with other work (load average {load_before} before, {load_after} after): wall-clock times are indicative, compare within a round")
lines.append("- Each run: seqd (`--threads 1 --max-leases 1000000 --max-leases-per-peer 0 --lease-timeout 1h`, pinned to CPU 0), one client (CPU 1) asks `GET_SEQUENCE_RANGE 1 flood-I r` N times one after another, each answered only once durable (one persister write each). Server CPU: utime + stime of all its threads over the N leases")
lines.append(f"- Command: `MODE=flood ROUNDS={rounds} FLOOD_SIZES=\"{sizes}\" bench/lease-journal.sh {a} {b}`\n")
lines.append("| round | N | rev | seconds | server CPU s | server CPU µs per lease |")
lines.append("|---:|---:|---|---:|---:|---:|")
for r in rows:
    lines.append(f"| {r['round']} | {r['leases']} | `{r['rev']}` | {r['seconds']} | {r['server_cpu_seconds']} | {1e6 * r['server_cpu_seconds'] / r['leases']:.0f} |")
lines.append("\n## Median per N (before / after)\n")
lines.append("| N | seconds before | seconds after | server CPU s before | server CPU s after | CPU ratio |")
lines.append("|---:|---:|---:|---:|---:|---:|")
for n in sizes.split():
    pick = lambda rev, k: statistics.median(r[k] for r in rows if r["rev"] == rev and r["leases"] == int(n))
    ca, cb = pick(a, "server_cpu_seconds"), pick(b, "server_cpu_seconds")
    lines.append(f"| {n} | {pick(a, 'seconds'):.2f} | {pick(b, 'seconds'):.2f} | {ca:.2f} | {cb:.2f} | {ca / max(cb, 0.01):.1f}x |")
open(out, "w").write("\n".join(lines) + "\n")
PY
  echo "wrote $OUT/flood.md" >&2
  exit 0
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ROWS=$WORK/rows.jsonl
: >"$ROWS"
measure() { # rev round
  local rev=$1 round=$2 log=$WORK/seqd.log data=$WORK/data-$1-$2
  taskset -c 0 "${NICE[@]}" "$WORK/seqd-$rev" --host 127.0.0.1 --port "$PORT" --threads 1 \
    --data-dir "$data" --max-leases 1000000 --max-leases-per-client 1000000 \
    --lease-timeout 1h 2>"$log" &
  SERVER=$!
  for _ in $(seq 1 400); do
    grep -q "seqd listening" "$log" && break
    sleep 0.05
  done
  grep -q "seqd listening" "$log" || { cat "$log" >&2; exit 1; }
  taskset -c 1 "${NICE[@]}" python3 bench/lib/lease_writes.py fill 127.0.0.1 "$PORT" "$FILL"
  sleep 1 # let the fill's last write and any ceiling raise settle
  local state_bytes
  state_bytes=$(stat -c %s "$data/state")
  local row
  row=$(taskset -c 1 "${NICE[@]}" python3 bench/lib/lease_writes.py measure 127.0.0.1 "$PORT" \
    "$SERVER" "$SECONDS_PER_ROUND")
  local journal_bytes=0
  [[ -f $data/journal ]] && journal_bytes=$(stat -c %s "$data/journal")
  kill -TERM "$SERVER"
  wait "$SERVER" || true
  SERVER=""
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(rev=sys.argv[2], round=int(sys.argv[3]), state_bytes_after_fill=int(sys.argv[4]), journal_bytes_after_round=int(sys.argv[5])); print(json.dumps(r))' \
    "$row" "$rev" "$round" "$state_bytes" "$journal_bytes" >>"$ROWS"
  tail -1 "$ROWS" >&2
  rm -rf "$data"
}
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then
    measure "$SHA_A" "$round"
    measure "$SHA_B" "$round"
  else
    measure "$SHA_B" "$round"
    measure "$SHA_A" "$round"
  fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$OUT"
python3 - "$ROWS" "$OUT/README.md" "$SHA_A" "$SHA_B" "$started" "$load_before" "$load_after" \
  "$ROUNDS" "$SECONDS_PER_ROUND" "$FILL" "$fs_type" <<'PY'
import json, os, platform, statistics, sys
rows_path, out, a, b, started, load_before, load_after, rounds, seconds, fill, fs = sys.argv[1:12]
rows = [json.loads(l) for l in open(rows_path)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def per(r):
    n = max(r["leases"], 1)
    return {
        "rate": r["leases"] / r["seconds"],
        "wchar": r["wchar"] / n,
        "write_bytes": r["write_bytes"] / n,
        "syscw": r["syscw"] / n,
    }
by_round = {}
for r in rows:
    by_round.setdefault(r["round"], {})[r["rev"]] = r
lines = []
lines.append("# Lease write cost with 10,000 leases outstanding: before and after the journal\n")
lines.append("Written by [`bench/lease-journal.sh`](../../bench/lease-journal.sh); never edited by hand.")
lines.append(f"Before: `{a}` (every lease write rewrites the whole state file). After: `{b}` (a")
lines.append("lease write appends one journal entry; the state file is rewritten only at compactions).\n")
lines.append(f"- Date: {started}; {rounds} rounds, the two revisions alternated (A B, B A, ...), each on a fresh data directory ({fs})")
lines.append(f"- Machine: `nproc` {os.cpu_count()}, kernel `{platform.release()}`, CPU \"{cpu}\"; **shared** with other builds (load average {load_before} before, {load_after} after): the rates are indicative, the bytes are not affected")
lines.append(f"- Each round: seqd (`--threads 1 --max-leases 1000000 --max-leases-per-client 1000000 --lease-timeout 1h`, pinned to CPU 0) is filled with {fill} leases with client and request ids (`GET_SEQUENCE_RANGE 1 CLIENT REQUEST` with a 64-byte client id, one per 10 leases, and a 63-byte request id: 164-byte lease records; pipelined over 50 connections), then one client (CPU 1) takes one lease at a time for {seconds} s, each answered only once it is durable (so one persister write per lease). Bytes from the seqd process's `/proc/PID/io` over those {seconds} s, divided by the leases taken: `wchar` is what seqd passed to write calls (the few bytes of each reply included if the socket write is counted there), `write_bytes` the page cache it dirtied (what goes to the disk, in 4 KiB pages)")
lines.append(f"- Command: `bench/lease-journal.sh {a} {b}` (ROUNDS={rounds} SECONDS_PER_ROUND={seconds} FILL={fill})\n")
lines.append("| round | rev | leases | lease writes/s | bytes written per lease write (wchar) | bytes to disk per lease write (write_bytes) | write calls per lease | state file after the fill |")
lines.append("|---:|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    p = per(r)
    lines.append(f"| {r['round']} | `{r['rev']}` | {r['leases']} | {p['rate']:.0f} | {p['wchar']:,.0f} | {p['write_bytes']:,.0f} | {p['syscw']:.2f} | {r['state_bytes_after_fill']:,} |")
ratios = {"rate": [], "wchar": [], "write_bytes": []}
for rnd, revs in sorted(by_round.items()):
    if a in revs and b in revs:
        pa, pb = per(revs[a]), per(revs[b])
        ratios["rate"].append(pb["rate"] / pa["rate"])
        ratios["wchar"].append(pa["wchar"] / max(pb["wchar"], 1))
        ratios["write_bytes"].append(pa["write_bytes"] / max(pb["write_bytes"], 1))
med = {k: statistics.median(v) for k, v in ratios.items() if v}
lines.append("")
lines.append("## Per-round ratios (median over rounds)\n")
lines.append(f"- lease writes per second, after / before: **{med['rate']:.1f}x** (rounds: {', '.join(f'{x:.1f}' for x in ratios['rate'])})")
lines.append(f"- bytes written per lease write, before / after: **{med['wchar']:,.0f}x** (rounds: {', '.join(f'{x:,.0f}' for x in ratios['wchar'])})")
lines.append(f"- bytes sent to disk per lease write, before / after: **{med['write_bytes']:,.0f}x** (rounds: {', '.join(f'{x:,.0f}' for x in ratios['write_bytes'])})")
lines.append("")
lines.append("Compactions: after the change, a compaction (a whole state file and an empty journal) comes")
lines.append("once the journal would pass the larger of 1 MiB and the last state file's size, so with a")
lines.append("state file of this size it follows thousands of lease writes. The journal's size after each")
lines.append("round (below; 0 before the change, which has none) against the bytes the round wrote shows")
lines.append("whether one fell inside it. Amortised over the appends, compaction adds at most about the")
lines.append("appended bytes again.\n")
lines.append("| round | rev | journal after the round (bytes) | bytes the round wrote (wchar) |")
lines.append("|---:|---|---:|---:|")
for r in rows:
    lines.append(f"| {r['round']} | `{r['rev']}` | {r['journal_bytes_after_round']:,} | {r['wchar']:,} |")
open(out, "w").write("\n".join(lines) + "\n")
PY
echo "wrote $OUT/README.md" >&2

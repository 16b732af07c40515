#!/usr/bin/env bash
# Failover harness (issue 13): a 3-member etcd and 3 seqd nodes (release build) on loopback,
# `loadgen failover` with every endpoint, then KILLS leader kills (kill -9) and HANDOVERS
# graceful handovers (SIGTERM), each node restarted by a supervisor loop as a real one would.
# Beside it, `loadgen run --addr a,b,c` (non-blocking connections following the leader, open
# loop at RUN_RATE requests/s, --verify) checks that pipelined clients see no number twice.
# Writes OUT/report.json (loadgen failover's), OUT/run.json (loadgen run's), OUT/events.txt
# (what was done when) and OUT/summary.json (per-failover outage p50/p99/max, duplicates).
#
#   bench/failover.sh [KILLS] [HANDOVERS] [OUT]      (defaults: 20 20 results/failover)
#   CLIENTS=4 TTL=1s HEARTBEAT=50 ELECTION=500 bench/failover.sh 100 100   (the defaults)
#
# The outage of a failover is the longest pause in the replies (all clients together) that
# ends between the kill or SIGTERM and the next event.
set -euo pipefail

KILLS=${1:-20}
HANDOVERS=${2:-20}
OUT=${3:-results/failover}
CLIENTS=${CLIENTS:-4}
TTL=${TTL:-1s}
# etcd's timing (ms): docs/HA.md's recommendation, with which etcd grants a 1 s lease TTL
# (its minimum is 1.5 x the election timeout, rounded up to whole seconds).
HEARTBEAT=${HEARTBEAT:-50}
ELECTION=${ELECTION:-500}
SETTLE=${SETTLE:-1.5}
RUN_RATE=${RUN_RATE:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SEQD=${SEQD:-$ROOT/target/release/seqd}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
for bin in "$SEQD" "$LOADGEN"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p seqd -p loadgen --features seqd/cluster" >&2; exit 1; }
done
command -v etcd >/dev/null || { echo "etcd not found (apt-get install etcd-server)" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli not found (apt-get install redis-tools)" >&2; exit 1; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/seqd-failover.XXXXXX)
BASE=${BASE:-$((20000 + RANDOM % 20000))}
pids=()
cleanup() {
  touch "$WORK/stop"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for i in 1 2 3; do
    [ -f "$WORK/seqd$i.pid" ] && kill -9 "$(cat "$WORK/seqd$i.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# etcd: 3 members, heartbeat HEARTBEAT ms, election timeout ELECTION ms.
cluster=""
for i in 0 1 2; do cluster+="m$i=http://127.0.0.1:$((BASE + 10 + i)),"; done
cluster=${cluster%,}
endpoints=""
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((BASE + i))" \
    --advertise-client-urls "http://127.0.0.1:$((BASE + i))" \
    --listen-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
    --initial-cluster "$cluster" --initial-cluster-token "failover-$BASE" \
    --initial-cluster-state new --logger zap --log-outputs stderr \
    --heartbeat-interval "$HEARTBEAT" --election-timeout "$ELECTION" \
    >"$WORK/etcd$i.log" 2>&1 &
  pids+=($!)
  endpoints+="http://127.0.0.1:$((BASE + i)),"
done
endpoints=${endpoints%,}
until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; do sleep 0.2; done

# seqd: each node under a supervisor loop (a deposed or killed node comes back as a standby).
addrs=()
for i in 1 2 3; do
  port=$((BASE + 100 + i))
  addrs+=("127.0.0.1:$port")
  (
    while [ ! -e "$WORK/stop" ]; do
      "$SEQD" --host 127.0.0.1 --port "$port" --threads 1 --etcd "$endpoints" --node-id "$i" \
        --advertise "127.0.0.1:$port" --etcd-prefix "/failover-$BASE" --leader-ttl "$TTL" \
        >>"$WORK/seqd$i.log" 2>&1 &
      echo $! >"$WORK/seqd$i.pid"
      wait $! || true
      sleep 0.1
    done
  ) &
  pids+=($!)
done

leader() {
  for i in 1 2 3; do
    if redis-cli -p $((BASE + 100 + i)) INFO seqd 2>/dev/null | grep -q '^role:leader'; then
      echo "$i"; return 0
    fi
  done
  return 1
}
wait_for_leader() {
  local tries=0
  until leader >/dev/null; do
    sleep 0.05; tries=$((tries + 1))
    [ $tries -lt 400 ] || { echo "no leader after 20 s" >&2; tail -n 20 "$WORK"/seqd*.log >&2; exit 1; }
  done
}
wait_for_leader

addr_list=$(IFS=,; echo "${addrs[*]}")
"$LOADGEN" failover --addr "$addr_list" -c "$CLIENTS" -o "$OUT/report.json" 2>"$OUT/loadgen.log" &
loadgen_pid=$!
pids+=("$loadgen_pid")
"$LOADGEN" run --addr "$addr_list" --rate "$RUN_RATE" -c 8 -P 16 -d 1440m --warmup 0s --verify \
  --no-pin --json >"$OUT/run.json" 2>"$OUT/run.log" &
run_pid=$!
pids+=("$run_pid")
sleep 2

: >"$OUT/events.txt"
now_ms() { date +%s%3N; }
cycle() { # $1: kill|term
  wait_for_leader
  local l; l=$(leader)
  local pid; pid=$(cat "$WORK/seqd$l.pid")
  echo "$(now_ms) $1 node$l" >>"$OUT/events.txt"
  if [ "$1" = kill ]; then kill -9 "$pid"; else kill -TERM "$pid"; fi
  # The next leader must be another process, serving (the restarted one may win again).
  local tries=0
  while true; do
    local n; n=$(leader || true)
    if [ -n "$n" ] && { [ "$n" != "$l" ] || [ "$(cat "$WORK/seqd$n.pid")" != "$pid" ]; }; then break; fi
    sleep 0.05; tries=$((tries + 1))
    [ $tries -lt 400 ] || { echo "no new leader after 20 s" >&2; exit 1; }
  done
  sleep "$SETTLE"
}
for ((k = 0; k < KILLS; k++)); do cycle kill; done
for ((h = 0; h < HANDOVERS; h++)); do cycle term; done
echo "$(now_ms) end" >>"$OUT/events.txt"
sleep 1
kill -TERM "$loadgen_pid" 2>/dev/null || true
kill -INT "$run_pid" 2>/dev/null || true
status=0
wait "$loadgen_pid" || status=$?
wait "$run_pid" || true
cat "$OUT/loadgen.log"

STARTED=$started LOAD_BEFORE=$load_before LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg) \
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) NPROC=$(nproc) \
KERNEL=$(uname -r) ETCD_VERSION=$(etcd --version | head -1) \
COMMAND="CLIENTS=$CLIENTS TTL=$TTL HEARTBEAT=$HEARTBEAT ELECTION=$ELECTION RUN_RATE=$RUN_RATE bench/failover.sh $KILLS $HANDOVERS ${3:-}" \
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
report = json.load(open(f"{out}/report.json"))
events = [l.split() for l in open(f"{out}/events.txt")]
gaps = [(g["start_unix_ms"], g["start_unix_ms"] + g["ms"], g["ms"]) for g in report["gaps"]]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None
outages = {"kill": [], "term": []}
for (t, kind, *_), nxt in zip(events, events[1:]):
    t, end = int(t), int(nxt[0])
    # The pause that ends in this event's window (it began before or at the event).
    overlapping = [ms for (s, e, ms) in gaps if t <= e <= end]
    outages[kind].append(max(overlapping) if overlapping else 0.0)
summary = {
    "numbers": report["numbers"], "duplicates": report["duplicates"],
    "out_of_order": report["out_of_order"], "redirects": report["redirects"],
    "reconnects": report["reconnects"], "failed_requests": report["failed"],
    "clients": report["clients"],
}
run = json.load(open(f"{out}/run.json"))
summary["loadgen_run"] = {
    "numbers": run["totals"]["numbers"], "duplicates": run["verify"]["duplicates"],
    "out_of_order": run["verify"]["non_increasing"], "redirects": run["errors"]["redirects"],
    "reconnects": run["errors"]["reconnects"], "lost_in_flight": run["errors"]["lost"],
    "closed_by_server": run["errors"]["closed_by_server"], "errors_total": run["errors"]["total"],
}
for kind, xs in outages.items():
    summary[kind] = {"count": len(xs), "p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99),
                     "max_ms": max(xs) if xs else None, "all_ms": [round(x, 1) for x in xs]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
e = os.environ
r = summary["loadgen_run"]
def row(name, kind):
    k = summary[kind]
    return f"| {name} | {k['count']} | {k['p50_ms']:.1f} ms | {k['p99_ms']:.1f} ms | {k['max_ms']:.1f} ms |"
readme = [
    "# Failover: outage per leader kill and per graceful handover (issue 13)", "",
    "Generated by `bench/failover.sh`; do not edit by hand.", "",
    f"- command: `{e['COMMAND']}` (release build: `cargo build --release -p seqd -p loadgen --features seqd/cluster`)",
    f"- date: {e['STARTED']}; machine: {e['NPROC']} CPUs, {e['CPU_MODEL']}, kernel {e['KERNEL']}; {e['ETCD_VERSION']}",
    f"- load average before: {e['LOAD_BEFORE']}; after: {e['LOAD_AFTER']}. "
    # A 1-minute load average of 2 or more before the run: something else had the CPUs.
    + ("The machine was shared with other work (load average above 2 before the run): the "
       "figures are indicative." if float(e["LOAD_BEFORE"].split()[0]) >= 2 else
       "The machine was otherwise idle before the run (the load after is the run's own)."),
    "- 3-member etcd and three seqd nodes (`--threads 1`, each under a restart loop) on loopback; "
    f"`loadgen failover` ({summary['clients']} blocking `LeaderClient`s) measures the outage: the longest pause "
    "in the replies of all clients together that ends between the event and the next one; "
    "`loadgen run --addr a,b,c` (8 pipelined connections following the leader, open loop) runs beside it.",
    "", "| failover | count | p50 | p99 | max |", "|---|---|---|---|---|",
    row("kill -9 of the leader", "kill"), row("SIGTERM handover", "term"), "",
    f"`loadgen failover`: {summary['numbers']:,} numbers, **duplicates {summary['duplicates']}**, "
    f"out of order (per client) {summary['out_of_order']}, failed requests {summary['failed_requests']}; "
    f"{summary['redirects']:,} `NOTLEADER` redirects and {summary['reconnects']:,} reconnects, all by the client.", "",
    f"`loadgen run --addr a,b,c --verify`: {r['numbers']:,} numbers, **duplicates {r['duplicates']}**, "
    f"out of order (per connection) {r['out_of_order']}; {r['redirects']:,} requests redirected, "
    f"{r['reconnects']:,} reconnects; {r['lost_in_flight']:,} requests lost in flight on "
    f"{r['closed_by_server']:,} connections the killed or stopping leaders closed (never answered, so "
    "no number counted).", "",
    "Files: `summary.json` (every outage in `all_ms`), `report.json` (loadgen failover's report, every "
    "pause >= 2 ms), `run.json` (loadgen run's report), `events.txt` (what was done when, Unix ms), "
    "`loadgen.log`, `run.log`.",
]
open(f"{out}/README.md", "w").write("\n".join(readme) + "\n")
print(json.dumps({k: v if not isinstance(v, dict) else {a: b for a, b in v.items() if a != "all_ms"}
                  for k, v in summary.items()}, indent=2))
EOF
exit $status

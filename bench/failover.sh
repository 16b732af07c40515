#!/usr/bin/env bash
# Failover harness (issue 13): a 3-member etcd and 3 seqd nodes (release build) on loopback,
# `loadgen failover` with every endpoint, then KILLS leader kills (kill -9) and HANDOVERS
# graceful handovers (SIGTERM), each node restarted by a supervisor loop as a real one would.
# Writes OUT/report.json (loadgen's), OUT/events.txt (what was done when) and OUT/summary.json
# (per-failover outage p50/p99/max, duplicates).
#
#   bench/failover.sh [KILLS] [HANDOVERS] [OUT]      (defaults: 20 20 results/failover)
#   CLIENTS=4 TTL=2s bench/failover.sh 100 100
#
# The outage of a failover is the longest pause in the replies (all clients together) that
# ends between the kill or SIGTERM and the next event.
set -euo pipefail

KILLS=${1:-20}
HANDOVERS=${2:-20}
OUT=${3:-results/failover}
CLIENTS=${CLIENTS:-4}
TTL=${TTL:-2s}
SETTLE=${SETTLE:-1.5}
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

# etcd: 3 members, default timing (heartbeat 100 ms, election 1 s).
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
status=0
wait "$loadgen_pid" || status=$?
cat "$OUT/loadgen.log"

python3 - "$OUT" <<'EOF'
import json, sys
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
for kind, xs in outages.items():
    summary[kind] = {"count": len(xs), "p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99),
                     "max_ms": max(xs) if xs else None, "all_ms": [round(x, 1) for x in xs]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps({k: v if not isinstance(v, dict) else {a: b for a, b in v.items() if a != "all_ms"}
                  for k, v in summary.items()}, indent=2))
EOF
exit $status

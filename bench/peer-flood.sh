#!/usr/bin/env bash
# Issue 20 item 6, "bound what one peer can hold": the lease and stream table floods from one
# client address, before and after --max-leases-per-peer / --max-streams-per-peer, and what a
# second address gets afterwards. Two revisions built side by side (as bench/ab.sh), each run
# ROUNDS times on a fresh durable data directory with default flags (one event loop) but
# --lease-timeout 10m (so that a flood slower than the default 30 s, as on a loaded machine, is
# still outstanding when the bystander asks), the revisions alternated. Counts, not timings: how many leases and streams one address got,
# the refusals it was answered, and whether the bystander (127.0.0.2) was served.
# Writes results/peer-flood/README.md (never edit that file by hand: rerun this script).
#
#   bench/peer-flood.sh                    # main's merge base vs HEAD, 2 rounds
#   ROUNDS=3 LEASES=10000 STREAMS=3000 bench/peer-flood.sh REV_A REV_B
#
# Needs: git, a Rust toolchain, python3; 127.0.0.2 on loopback (Linux: all of 127.0.0.0/8).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV_A=${1:-$(git merge-base HEAD main)}
REV_B=${2:-HEAD}
ROUNDS=${ROUNDS:-2}
LEASES=${LEASES:-10000}
STREAMS=${STREAMS:-3000}
PORT=${PORT:-10493}
STREAM_PORT=${STREAM_PORT:-10494}
OUT=results/peer-flood
for tool in git cargo python3; do
  command -v "$tool" >/dev/null || { echo "peer-flood.sh: $tool is not installed" >&2; exit 1; }
done
SHA_A=$(git rev-parse --short "$REV_A^{commit}")
SHA_B=$(git rev-parse --short "$REV_B^{commit}")
dirty=""
[[ -z $(git status --porcelain -- . ':!results') ]] || dirty=" (with uncommitted changes)"
WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null
  git worktree remove --force "$WORK/tree" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=lib/build_rev.sh
source "$ROOT/bench/lib/build_rev.sh"
echo "building $SHA_A and $SHA_B (target/ab)" >&2
build "$SHA_A"
build "$SHA_B"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ROWS=$WORK/rows.jsonl
: >"$ROWS"
measure() { # rev round
  local rev=$1 round=$2 log=$WORK/seqd.log data=$WORK/data-$1-$2
  "$WORK/seqd-$rev" --host 127.0.0.1 --port "$PORT" --stream-port "$STREAM_PORT" --threads 1 \
    --data-dir "$data" --lease-timeout 10m 2>"$log" &
  SERVER=$!
  for _ in $(seq 1 400); do
    grep -qs "seqd listening" "$log" && break
    sleep 0.05
  done
  grep -q "seqd listening" "$log" || { cat "$log" >&2; exit 1; }
  local row
  row=$(python3 bench/lib/peer_flood.py 127.0.0.1 "$PORT" "$STREAM_PORT" "$LEASES" "$STREAMS")
  kill -TERM "$SERVER"
  wait "$SERVER" || true
  SERVER=""
  local warnings
  warnings=$(grep -c "stream CON refused" "$log" || true)
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(rev=sys.argv[2], round=int(sys.argv[3]), stream_refusal_log_lines=int(sys.argv[4])); print(json.dumps(r))' \
    "$row" "$rev" "$round" "$warnings" >>"$ROWS"
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
python3 - "$ROWS" "$OUT/README.md" "$SHA_A" "$SHA_B$dirty" "$started" "$load_before" "$load_after" \
  "$ROUNDS" "$LEASES" "$STREAMS" <<'PY'
import json, os, platform, sys
rows_path, out, a, b, started, load_before, load_after, rounds, leases, streams = sys.argv[1:11]
rows = [json.loads(l) for l in open(rows_path)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = []
lines.append("# One address floods the lease and stream tables: before and after the per-peer bounds\n")
lines.append("Written by [`bench/peer-flood.sh`](../../bench/peer-flood.sh); never edited by hand.")
lines.append(f"Before: `{a}` (no per-peer bound). After: `{b}` (`--max-leases-per-peer` and")
lines.append("`--max-streams-per-peer`, default a quarter of `--max-leases` and `--max-streams`).\n")
lines.append(f"- Date: {started}; {rounds} rounds, the two revisions alternated, each on a fresh durable data directory, default flags but `--lease-timeout 10m` (`--threads 1 --stream-port P --lease-timeout 10m`: the flood must still be outstanding when the bystander asks, also on a loaded machine where it takes longer than the default 30 s)")
lines.append(f"- Machine: `nproc` {os.cpu_count()}, kernel `{platform.release()}`, CPU \"{cpu}\"; load average {load_before} before, {load_after} after")
lines.append(f"- The attacker, from 127.0.0.1: {leases} `GET_SEQUENCE_RANGE 1 flood-I r` pipelined on one connection (a new client id each), then {streams} stream connections one after another, each `CON 1 flood-I` (closed once answered: the stream waits for a resume until `--stream-ttl`, 10 min). The bystander, from 127.0.0.2, after each flood: one lease, one stream")
lines.append(f"- Command: `bench/peer-flood.sh {a} {b.split(' ')[0]}` (ROUNDS={rounds} LEASES={leases} STREAMS={streams}); the flood's wall-clock seconds are informative only\n")
lines.append("| round | rev | leases granted to the attacker | its refusals | bystander's lease | streams served to the attacker | bystander's stream | `stream CON refused` log lines | lease flood s | stream flood s |")
lines.append("|---:|---|---:|---|---|---:|---|---:|---:|---:|")
for r in rows:
    refusals = "; ".join(f"{n} × `{text}`" for text, n in r["lease_refusals"].items()) or "none"
    stream = "served" if r["bystander_stream_served"] else "**refused**"
    lines.append(
        f"| {r['round']} | `{r['rev']}` | {r['leases_granted']} of {r['leases_asked']} | {refusals} | `{r['bystander_lease']}` | "
        f"{r['streams_served']} of {r['streams_asked']} | {stream} | {r['stream_refusal_log_lines']} | {r['lease_flood_seconds']} | {r['stream_flood_seconds']} |"
    )
open(out, "w").write("\n".join(lines) + "\n")
PY
echo "wrote $OUT/README.md" >&2

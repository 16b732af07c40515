#!/usr/bin/env bash
# The Rust clients against one release-build seqd, and IdSource, in one sitting; writes
# results/async-client/README.md (or OUT).
#
#   bench/async-client.sh            # ROUNDS=5 TASKS=64 DURATION=3 (seconds) IDS=500000000 [SEQD=path]
#
# Per round, in alternating order: the async client (one connection, TASKS tasks, one
# runtime thread), the blocking client behind a mutex (one connection, TASKS threads) and
# TASKS blocking clients (one per thread). Each task or thread takes one number per call
# (GETSEQ) and waits for it. Reported: numbers/s and p99 per call, and per round the ratio
# async / blocking, the median of those ratios. Then IdSource::next_id on one thread: ids/s
# and the fraction of calls that waited for the network.
#
# seqd --in-memory --threads 1 pinned to CPU 0, the client pinned to CPU 1, both at nice -20
# (run as root; without root they run at normal priority and the README says so).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
TASKS=${TASKS:-64}
SECONDS_PER_RUN=${DURATION:-3}
IDS=${IDS:-500000000}
PORT=${PORT:-10394}
OUT=${OUT:-results/async-client/README.md}
WORK=$(mktemp -d)
SERVER=""
cleanup() { [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

NICE=()
if [[ $(id -u) -eq 0 ]]; then NICE=(nice -n -20); fi

# The server: the release build, copied away, since building the bench (which builds the
# package's binaries too, into the same directory) would replace it.
# SEQD=path uses a release build made before instead.
if [[ -z ${SEQD:-} ]]; then
  cargo build --release --locked --quiet -p seqd --bin seqd
  cp target/release/seqd "$WORK/seqd"
  SEQD=$WORK/seqd
fi
# The client program: optimized, without the release profile's fat LTO (minutes of linking on
# a shared machine; it is the client, not the server under test).
export CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
BENCH=$(cargo bench --locked --features tokio --bench async_client --no-run --message-format=json |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "async_client" and m.get("executable"):
        print(m["executable"])')
[[ -x $BENCH ]] || { echo "the bench program was not built" >&2; exit 1; }

"${NICE[@]}" taskset -c 0 "$SEQD" --in-memory --host 127.0.0.1 --port "$PORT" --threads 1 2>"$WORK/seqd.log" &
SERVER=$!
for _ in $(seq 1 200); do grep -q "seqd listening" "$WORK/seqd.log" && break; sleep 0.05; done
grep -q "seqd listening" "$WORK/seqd.log" || { cat "$WORK/seqd.log" >&2; exit 1; }
ADDR=127.0.0.1:$PORT

ROWS=$WORK/rows.tsv
: >"$ROWS"
run() { "${NICE[@]}" taskset -c 1 "$BENCH" "$@"; }
for round in $(seq "$ROUNDS"); do
  if ((round % 2)); then order=(async shared per-thread); else order=(per-thread shared async); fi
  for mode in "${order[@]}"; do
    row=$(run "$mode" "$ADDR" "$TASKS" "$SECONDS_PER_RUN")
    printf '%s\t%s\n' "$round" "$row" | tee -a "$ROWS"
  done
done
IDROWS=$WORK/ids.tsv
: >"$IDROWS"
for round in $(seq 3); do
  printf '%s\t%s\n' "$round" "$(run idsource "$ADDR" "$IDS")" | tee -a "$IDROWS"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$ROWS" "$IDROWS" "$OUT" "$ROUNDS" "$TASKS" "$SECONDS_PER_RUN" "$IDS" "${#NICE[@]}" <<'PY'
import statistics, subprocess, sys, datetime
rows_path, ids_path, out, rounds, tasks, seconds, ids, niced = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(rows_path) if l.strip()]
by = {}
for rnd, mode, t, rate, p50, p99, conns in rows:
    by.setdefault(mode, {})[rnd] = (float(rate), float(p50), float(p99), int(conns))
def med(mode, i):
    return statistics.median(v[i] for v in by[mode].values())
def ratio(a, b, i):
    return statistics.median(by[a][r][i] / by[b][r][i] for r in by[a] if r in by[b] and by[b][r][i] > 0)
idrows = [l.rstrip("\n").split("\t") for l in open(ids_path) if l.strip()]
id_rates = [float(r[2]) for r in idrows]
calls = sum(int(r[3]) for r in idrows)
waited = sum(int(r[4]) for r in idrows)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
sh = lambda *c: subprocess.run(c, capture_output=True, text=True).stdout.strip()
names = {"async": "async client, 1 connection", "shared": "blocking client behind a mutex, 1 connection",
         "per-thread": f"blocking client per thread, {tasks} connections"}
lines = [
    "# Rust clients: the async client and IdSource",
    "",
    f"Written by `bench/async-client.sh` (ROUNDS={rounds} TASKS={tasks} DURATION={seconds} IDS={ids}) "
    f"on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
    f"Machine: `nproc`={sh('nproc')}, `uname -r`={sh('uname', '-r')}, CPU {cpu}. "
    "**Shared machine** (other builds ran meanwhile): the figures are indicative; the ratios "
    "compare runs alternated round by round in one sitting.",
    f"seqd `--in-memory --threads 1` pinned to CPU 0, the client pinned to CPU 1"
    + (", both at `nice -n -20`." if niced != "0" else " (not root: normal priority)."),
    "",
    f"## {tasks} tasks taking one number per call (GETSEQ), each waiting for its reply",
    "",
    "| client | numbers/s (median) | p50 µs | p99 µs | connections |",
    "|---|---|---|---|---|",
]
for mode in ("async", "shared", "per-thread"):
    if mode in by:
        lines.append(f"| {names[mode]} | {med(mode, 0):,.0f} | {med(mode, 1):.1f} | {med(mode, 2):.1f} | {med(mode, 3)} |")
lines += ["", "Median of the per-round ratios:", ""]
for other in ("shared", "per-thread"):
    if "async" in by and other in by:
        lines.append(f"- async / {names[other]}: throughput **{ratio('async', other, 0):.2f}x**, "
                     f"p99 {ratio('async', other, 2):.2f}x")
lines += [
    "",
    "## IdSource::next_id on one thread (default options: ranges up to 1 000 000, refill at 20 %)",
    "",
    "| run | ids/s | calls | calls that waited | ranges |",
    "|---|---|---|---|---|",
]
for r in idrows:
    lines.append(f"| {r[0]} | {float(r[2]):,.0f} | {int(r[3]):,} | {r[4]} | {r[5]} |")
lines += [
    "",
    f"Median **{statistics.median(id_rates) / 1e6:,.0f} M ids/s** (goal ≥ 100 M); calls that waited "
    f"for the network: {waited} of {calls:,} = **{waited / max(1, calls) * 100:.6f} %** (goal < 0.01 %). "
    "The one wait for the first range, before the timing starts, is not counted.",
    "",
    "Rows (round, mode, tasks, numbers/s, p50 µs, p99 µs, connections):",
    "",
    "```",
] + ["\t".join(r) for r in rows] + ["```", ""]
open(out, "w").write("\n".join(lines))
print(f"wrote {out}")
PY

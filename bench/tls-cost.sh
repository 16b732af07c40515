#!/usr/bin/env bash
# The cost of TLS: seqd's throughput over --tls-port against its plaintext port, at the same
# loads in one sitting, alternating plaintext and TLS run by run on fresh servers (each
# serving both ports, so only the port differs), and writes results/tls-cost/README.md
# (never edit that file by hand: rerun this script).
#
#   bench/tls-cost.sh
#   ROUNDS=7 CONFIGS="50x64 50x1" DURATION=3s bench/tls-cost.sh
#
# Needs: a Rust toolchain, openssl (makes a throwaway CA and server certificate), taskset,
# python3, 2+ CPUs, root for nice -n -20. Each server: seqd --in-memory --threads 1 at
# nice -20 pinned to CPU 0; the client: loadgen --target binary at nice -20 pinned to CPU 1, with
# --tls --tls-ca-cert-file for the TLS runs (connections and handshakes are made before the
# measured part, so this is the cost of encrypting the traffic, not of handshakes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-5}
# Read before the run writes its results: only source changes make the build uncommitted.
DIRTY=$(git status --porcelain --untracked-files=no -- . ':!results' | grep -q . && echo " (with uncommitted changes)" || true)
CONFIGS=${CONFIGS:-"50x64 50x1"}
DURATION=${DURATION:-3s}
PORT=${PORT:-10393}
TLS_PORT=${TLS_PORT:-10394}
OUT=results/tls-cost

for tool in cargo openssl taskset python3; do
  command -v "$tool" >/dev/null || { echo "tls-cost.sh: $tool is not installed" >&2; exit 1; }
done
((ROUNDS >= 1)) || { echo "tls-cost.sh: ROUNDS must be at least 1" >&2; exit 2; }
NICE=(nice -n -20)
if [[ $(id -u) -ne 0 ]]; then
  echo "tls-cost.sh: not root: server and client run at the default priority" >&2
  NICE=()
fi

WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# A CA and a server certificate for localhost and 127.0.0.1 (ECDSA P-256), valid a day.
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" -days 1 \
  -subj /CN=seqd-tls-cost-CA 2>/dev/null
openssl req "${ec[@]}" -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  >"$WORK/server.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
  -out "$WORK/server.crt" -days 1 -extfile "$WORK/server.ext" 2>/dev/null

cargo build --release --locked --quiet -p seqd -p loadgen
SEQD=$ROOT/target/release/seqd
LOADGEN=$ROOT/target/release/loadgen

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ROWS=$WORK/rows.tsv
: >"$ROWS"

# One measurement: a fresh server with both ports, loadgen at $2 (CxP) on port $1's kind.
measure() {
  local kind=$1 config=$2 round=$3 log=$WORK/seqd.log c p
  c=${config%x*} p=${config#*x}
  # Emptied here, not by the server's redirection: that may happen after the wait below has
  # read the previous server's log.
  : >"$log"
  "${NICE[@]}" taskset -c 0 "$SEQD" --in-memory --host 127.0.0.1 --port "$PORT" --threads 1 \
    --tls-port "$TLS_PORT" --tls-cert-file "$WORK/server.crt" --tls-key-file "$WORK/server.key" \
    2>"$log" &
  SERVER=$!
  for _ in $(seq 1 200); do
    grep -q "seqd listening" "$log" && break
    sleep 0.05
  done
  grep -q "seqd listening" "$log" || { cat "$log" >&2; exit 1; }
  local target=(--addr "127.0.0.1:$PORT")
  if [[ $kind == tls ]]; then
    target=(--addr "127.0.0.1:$TLS_PORT" --tls --tls-ca-cert-file "$WORK/ca.crt")
  fi
  "${NICE[@]}" taskset -c 1 "$LOADGEN" run "${target[@]}" -c "$c" -P "$p" -d "$DURATION" --warmup 0s \
    --cpus 1 -o "$WORK/run" >"$WORK/loadgen.txt" 2>&1 || { cat "$WORK/loadgen.txt" >&2; exit 1; }
  kill "$SERVER"
  wait "$SERVER" || true
  SERVER=""
  python3 - "$WORK/run.json" "$kind" "$config" "$round" >>"$ROWS" <<'PY'
import json, sys
run, kind, config, rnd = sys.argv[1:]
result = json.load(open(run))
totals = result["totals"]
errors = sum(v for v in result["errors"].values() if isinstance(v, int))
print(f"{kind}\t{config}\t{rnd}\t{totals['throughput_rps']:.0f}\t{errors}")
PY
  tail -1 "$ROWS" >&2
}

for round in $(seq "$ROUNDS"); do
  for config in $CONFIGS; do
    if ((round % 2)); then order=(plain tls); else order=(tls plain); fi
    for kind in "${order[@]}"; do
      measure "$kind" "$config" "$round"
    done
  done
done

mkdir -p "$OUT"
cp "$ROWS" "$OUT/rows.tsv"
STARTED=$started LOAD_BEFORE=$load_before LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg) \
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) NPROC=$(nproc) \
KERNEL=$(uname -r) RUSTC=$(rustc --version) COMMIT=$(git rev-parse --short HEAD) \
DIRTY=$DIRTY \
ENV_LINE="ROUNDS=$ROUNDS CONFIGS=\"$CONFIGS\" DURATION=$DURATION" \
python3 - "$OUT/rows.tsv" "$OUT/README.md" <<'PY'
import os, statistics, sys
e = os.environ
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
configs = list(dict.fromkeys(r[1] for r in rows))
def rps(x):
    return f"{x / 1e6:.2f} M/s" if x >= 1e6 else f"{x / 1e3:.1f} k/s"
def runs(kind, config):
    return {int(r[2]): r for r in rows if r[0] == kind and r[1] == config}
out = ["# The cost of TLS: seqd over --tls-port / over the plaintext port", "",
       "Generated by `bench/tls-cost.sh`; do not edit by hand.", "",
       # A 1-minute load average of 2 or more before the run: something else had the CPUs.
       ("**Indicative**: measured on a shared machine (load average above 2 before the run); "
        if float(e["LOAD_BEFORE"].split()[0]) >= 2 else
        "Measured with the machine otherwise idle (load average below 2 before the run); ") +
       "plaintext and TLS alternate run by run so drift hits both alike, and the figure is the "
       "median of the rounds' ratios.", "",
       f"- command: `{e['ENV_LINE']} bench/tls-cost.sh` at `{e['COMMIT']}`{e['DIRTY']}",
       f"- date: {e['STARTED']}; machine: {e['NPROC']} CPUs, {e['CPU_MODEL']}, kernel {e['KERNEL']}; {e['RUSTC']}",
       f"- load average before: {e['LOAD_BEFORE']}; after: {e['LOAD_AFTER']}",
       "- each run: a fresh `seqd --in-memory --threads 1 --port P --tls-port T ...` at `nice -n -20`, "
       "pinned to CPU 0 (`taskset -c 0`); `loadgen run --target binary -c C -P P --cpus 1` at `nice -n -20`, "
       "pinned to CPU 1 (`taskset -c 1`), with `--tls --tls-ca-cert-file` for TLS; plaintext first in odd rounds",
       "- TLS: rustls (ring) on both ends with its defaults (TLS 1.3), an ECDSA P-256 certificate; "
       "connections are opened and their handshakes done before the measured part",
       "",
       "| connections x pipeline | plaintext (median) | TLS (median) | TLS / plaintext (median of rounds) |",
       "|---|---|---|---|"]
for config in configs:
    plain, tls = runs("plain", config), runs("tls", config)
    both = sorted(set(plain) & set(tls))
    ratios = [float(tls[r][3]) / float(plain[r][3]) for r in both if float(plain[r][3]) > 0]
    out.append(f"| {config} | {rps(statistics.median(float(plain[r][3]) for r in both))} | "
               f"{rps(statistics.median(float(tls[r][3]) for r in both))} | {statistics.median(ratios):.2f}x |")
out += ["", "Every run (req/s; errors counted by loadgen):", "",
        "| round | connections x pipeline | plaintext | TLS | TLS / plaintext |", "|---|---|---|---|---|"]
for config in configs:
    plain, tls = runs("plain", config), runs("tls", config)
    for r in sorted(set(plain) & set(tls)):
        p, t = plain[r], tls[r]
        out.append(f"| {r} | {config} | {float(p[3]):,.0f} ({p[4]}) | {float(t[3]):,.0f} ({t[4]}) | "
                   f"{float(t[3]) / float(p[3]):.2f}x |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
echo "tls-cost.sh: wrote $OUT/README.md" >&2

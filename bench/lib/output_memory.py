#!/usr/bin/env python3
"""The attack of issue 20 item 4 against two seqd binaries, for bench/output-memory.sh:

    output_memory.py --out DIR --label-a A --seqd-a BIN --label-b B --seqd-b BIN \\
        --clients 50,300 --rounds 2 --command CMD

Per binary, per client count N, per round (A and B alternating): a fresh seqd (--in-memory,
one event loop, default limits, CPU 0); N clients that pipeline GETSEQ and never read, each
until seqd closes it or stops reading it (a write stalls 2 s); meanwhile a fresh client every
200 ms connects and times one GETSEQ. Measured: seqd's RSS before, at its peak (sampled every
100 ms), with the attackers connected at the end, and 5 s after they all closed; how many
attackers seqd closed; the fresh clients' GETSEQ times. DIR/README.md gets the table.
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start(seqd):
    cmd = ["nice", "-n", "-5", "taskset", "-c", "0", seqd, "--host", "127.0.0.1", "--port", "0",
           "--threads", "1", "--in-memory", "--log-level", "warn,seqd=info"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        m = re.search(r"listening on [^ ]*:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit(f"output-memory: {seqd} did not start")


def flood(port, result, index):
    chunk = b"GETSEQ\r\n" * 8192
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(2)
    try:
        while True:
            sock.sendall(chunk)
    except socket.timeout:
        result[index] = ("stalled", sock)
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
        result[index] = ("closed", None)
        sock.close()


def getseq_ms(port):
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GETSEQ\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("closed")
            reply += chunk
    if not reply.startswith(b":"):
        raise ValueError(reply)
    return (time.perf_counter() - start) * 1e3


def one_run(seqd, clients):
    proc, port = start(seqd)
    try:
        getseq_ms(port)
        before = rss_kib(proc.pid)
        result = [None] * clients
        threads = [threading.Thread(target=flood, args=(port, result, i)) for i in range(clients)]
        peak, probes, stop = [before], [], threading.Event()

        def sample():
            while not stop.wait(0.1):
                peak.append(rss_kib(proc.pid))

        def probe():
            while not stop.wait(0.2):
                try:
                    probes.append(getseq_ms(port))
                except (OSError, ValueError) as e:
                    probes.append(float("inf"))
                    print(f"output-memory: a fresh client's GETSEQ failed: {e!r}", file=sys.stderr)

        watchers = [threading.Thread(target=sample), threading.Thread(target=probe)]
        for t in watchers + threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        during = rss_kib(proc.pid)
        stop.set()
        for t in watchers:
            t.join()
        closed = sum(1 for r in result if r and r[0] == "closed")
        for r in result:
            if r and r[1] is not None:
                r[1].close()
        time.sleep(5)
        after = rss_kib(proc.pid)
        getseq_ms(port)
        return dict(before_kib=before, peak_kib=max(peak), during_kib=during, after_kib=after,
                    closed=closed, probes=len(probes),
                    probe_p50_ms=statistics.median(probes) if probes else 0,
                    probe_max_ms=max(probes) if probes else 0)
    finally:
        proc.kill()
        proc.wait()


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return dict(nproc=os.cpu_count(), kernel=platform.release(), cpu=model,
                loadavg=" ".join(open("/proc/loadavg").read().split()[:3]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--label-a", required=True)
    ap.add_argument("--seqd-a", required=True)
    ap.add_argument("--label-b", required=True)
    ap.add_argument("--seqd-b", required=True)
    ap.add_argument("--clients", default="50,300")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--command", default="bench/output-memory.sh")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    box = machine()
    counts = [int(n) for n in args.clients.split(",")]
    runs = {}
    for n in counts:
        for rnd in range(args.rounds):
            for label, seqd in ((args.label_a, args.seqd_a), (args.label_b, args.seqd_b)):
                r = one_run(seqd, n)
                runs.setdefault((label, n), []).append(r)
                print(f"{label} {n} clients round {rnd + 1}: {json.dumps(r)}", file=sys.stderr)
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump([dict(label=k[0], clients=k[1], runs=v) for k, v in runs.items()], f, indent=1)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    lines = [
        "# Clients that pipeline without reading: seqd's memory before and after the output limits",
        "",
        f"Written by `{args.command}` (bench/lib/output_memory.py), {started} – {finished}, on a "
        f"SHARED machine (other builds and benchmarks ran beside it; load average at the end "
        f"{box['loadavg']}): `nproc` {box['nproc']}, kernel {box['kernel']}, {box['cpu']}. "
        f"{args.rounds} rounds per row, A and B alternating, fresh servers; medians shown.",
        "",
        f"- A = `{args.label_a}`, B = `{args.label_b}`.",
        "- Each server: `seqd --host 127.0.0.1 --port 0 --threads 1 --in-memory` with its default "
        "limits, `nice -n -5`, pinned to CPU 0 (B's defaults: `--client-output-limit 4mb`, "
        "`--maxmemory-clients 256mb`).",
        "- The attack (issue 20 item 4): N clients each pipeline `GETSEQ\\r\\n` in 64 KiB writes "
        "and never read, until seqd closes the connection or a write stalls for 2 s (seqd "
        "stopped reading it); the stalled ones stay connected until all are done. Meanwhile a "
        "fresh client every 200 ms connects and times one `GETSEQ`.",
        "- RSS: before the attack; its peak (sampled every 100 ms); with the attackers still "
        "connected at the end; 5 s after they all closed.",
        "",
        "| clients | server | RSS before | peak | attackers connected | 5 s after they left | "
        "attackers closed by seqd | fresh GETSEQ p50 / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        for label in (args.label_a, args.label_b):
            rows = runs[(label, n)]
            lines.append(
                f"| {n} | {label} | {med(rows, 'before_kib') / 1024:.1f} MiB | "
                f"{med(rows, 'peak_kib') / 1024:.1f} MiB | {med(rows, 'during_kib') / 1024:.1f} MiB | "
                f"{med(rows, 'after_kib') / 1024:.1f} MiB | {med(rows, 'closed'):.0f} of {n} | "
                f"{med(rows, 'probe_p50_ms'):.2f} / {med(rows, 'probe_max_ms'):.1f} ms |")
    lines += ["", "Ratios B / A (medians of the per-round figures):", ""]
    for n in counts:
        a, b = runs[(args.label_a, n)], runs[(args.label_b, n)]
        grown = lambda rows, key: max(0, med(rows, key) - med(rows, "before_kib"))  # noqa: E731
        lines.append(
            f"- {n} clients: peak growth {grown(b, 'peak_kib') / max(1, grown(a, 'peak_kib')):.2f}x; "
            f"kept after they left {grown(b, 'after_kib') / max(1, grown(a, 'after_kib')):.2f}x.")
    lines += ["", "Every run's figures are in `runs.json`."]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The soak of bench/soak.sh: seqd under ~80% of its capacity with connection churn for a
long time, sampled every 10 s. Run by bench/soak.sh (which builds the binaries); see there.

    soak.py --seqd BIN --loadgen BIN --minutes N --out DIR [--load 0.8] [--port P]

1. Starts seqd (durable, one event loop, pinned to CPU 0, --metrics-addr) and measures its
   capacity with loadgen closed loop (50 connections x 64 pipelined GETSEQ, binary, 10 s).
2. Runs loadgen open loop at LOAD x that rate for the whole soak (same shape), and beside
   it, from this process (CPU 1, as loadgen):
   - churners: connect, pipeline 1-256 GETSEQ (inline or RESP), read every reply, check
     they increase, close;
   - vanishers: connect, send a pipeline and half a request, close at once without reading
     (every other one with a reset instead of a FIN);
   - a never-reader every 20 s: pipelines GETSEQ without reading until seqd closes it (its
     --client-output-limit), or 30 s pass (then it counts as an error);
   - a probe: one connection, one GETSEQ every 100 ms, its round trip timed.
3. Every 10 s: seqd's RSS and open fds (/proc), connections and error replies (its metrics
   endpoint), the probe's latency over the window, the churn's counts: DIR/samples.tsv.
4. At the end: DIR/soak.svg (RSS, fds, probe latency over time), DIR/loadgen.json, and
   DIR/README.md with the command, the machine, and the verdict (RSS and fds flat, no
   errors). Exit status 1 when the verdict fails.
"""

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

SAMPLE_S = 10
# Capacity: what seqd answers flat out (loadgen closed loop) for this long. (loadgen's
# capacity search by a latency objective is no use on a shared machine: other work's
# preemptions alone miss any objective tight enough to mean something.)
CAPACITY_S = 10
CONNECTIONS, PIPELINE = 50, 64


class Counts:
    """What the clients of this process did, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = dict(
            churn_connections=0, churn_requests=0, vanished=0, never_readers=0,
            never_readers_paused=0, never_readers_closed=0, probe_requests=0, errors=0,
        )
        self.first_errors = []
        self.latencies = []  # probe round trips (s) since the last sample

    def add(self, key, n=1):
        with self.lock:
            self.values[key] += n

    def error(self, what):
        with self.lock:
            self.values["errors"] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{time.strftime('%H:%M:%S')} {what}")

    def take_latencies(self):
        with self.lock:
            taken, self.latencies = self.latencies, []
            return taken, dict(self.values)


def read_replies(sock, count, buf=b""):
    """`count` integer replies (`:N\\r\\n`); returns them and what was left over."""
    numbers = []
    while len(numbers) < count:
        end = buf.find(b"\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(numbers)} of {count} replies")
            buf += chunk
            continue
        line, buf = buf[:end], buf[end + 2:]
        if not line.startswith(b":"):
            raise ValueError(f"unexpected reply {line[:80]!r}")
        numbers.append(int(line[1:]))
    return numbers, buf


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def churner(port, counts, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with connect(port) as sock:
                for _ in range(rng.randint(1, 5)):
                    n = rng.randint(1, 256)
                    request = b"GETSEQ\r\n" if rng.random() < 0.5 else b"*1\r\n$6\r\nGETSEQ\r\n"
                    sock.sendall(request * n)
                    numbers, _ = read_replies(sock, n)
                    if any(b <= a for a, b in zip(numbers, numbers[1:])):
                        counts.error(f"numbers did not increase: {numbers[:5]}...")
                    counts.add("churn_requests", n)
            counts.add("churn_connections")
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            counts.error(f"churner: {e!r}")
            time.sleep(0.1)
        time.sleep(rng.random() * 0.02)


def vanisher(port, counts, stop):
    reset = False
    while not stop.is_set():
        try:
            sock = connect(port)
            sock.sendall(b"GETSEQ\r\n" * 100 + b"*2\r\n$6\r\nGETSEQ\r\n$3\r\nab")
            if reset:
                # SO_LINGER 0: the close sends a reset, as a client that crashed would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
            reset = not reset
            counts.add("vanished")
        except Exception as e:  # noqa: BLE001
            counts.error(f"vanisher: {e!r}")
        stop.wait(0.5)


def never_reader(port, counts, stop):
    """Pipelines without ever reading. seqd pauses such a client (stops reading its input once
    128 KiB of replies wait) or, past --client-output-limit, closes it; either bounds what it
    holds. The failure is a server that keeps taking its requests for 30 s."""
    chunk = b"GETSEQ\r\n" * 8192
    while not stop.wait(20):
        counts.add("never_readers")
        deadline = time.monotonic() + 30
        try:
            with connect(port) as sock:
                # Two seconds without room for one byte more: the kernel's buffers are full
                # and seqd is not reading.
                sock.settimeout(2)
                paused = False
                while time.monotonic() < deadline and not stop.is_set():
                    try:
                        sock.send(chunk)
                    except socket.timeout:
                        paused = True
                        break
                if paused:
                    counts.add("never_readers_paused")
                    # Held paused for the rest of its 30 s, then closed with its input unread.
                    stop.wait(max(0.0, deadline - time.monotonic()))
                elif not stop.is_set():
                    counts.error("a never-reading client was neither paused nor closed within "
                                 "30 s: seqd kept reading its requests")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            counts.add("never_readers_closed")
        except Exception as e:  # noqa: BLE001
            counts.error(f"never-reader: {e!r}")


def probe(port, counts, stop):
    sock, last = None, None
    while not stop.wait(0.1):
        try:
            if sock is None:
                sock = connect(port)
            start = time.perf_counter()
            sock.sendall(b"GETSEQ\r\n")
            (number,), _ = read_replies(sock, 1)
            elapsed = time.perf_counter() - start
            if last is not None and number <= last:
                counts.error(f"probe: {number} after {last}")
            last = number
            with counts.lock:
                counts.latencies.append(elapsed)
                counts.values["probe_requests"] += 1
        except Exception as e:  # noqa: BLE001
            counts.error(f"probe: {e!r}")
            sock, last = None, None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def scrape(metrics_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, log):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"soak: seqd exited at start-up; log {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("soak: seqd did not listen within 30 s")


def loadgen_run(loadgen, port, out, extra):
    cmd = ["nice", "-n", "-5", loadgen, "run", "--target", "binary", "--addr", f"127.0.0.1:{port}",
           "-c", str(CONNECTIONS), "-P", str(PIPELINE), "--cpus", "1", "-o", out] + extra
    return cmd


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def svg_plot(samples, path, title):
    """Three stacked panels over time: RSS (MiB), open fds, probe latency p99/max (ms)."""
    width, panel_h, left, top = 900, 170, 70, 40
    panels = [
        ("RSS (MiB)", [("rss", "#1f77b4")], lambda s, k: s["rss_kib"] / 1024),
        ("open fds", [("fds", "#2ca02c")], lambda s, k: s["fds"]),
        ("probe GETSEQ round trip (ms)", [("p99", "#d62728"), ("max", "#ff9896"), ("p50", "#9467bd")],
         lambda s, k: s[f"probe_{k}_ms"]),
    ]
    height = top + len(panels) * (panel_h + 40) + 20
    t_max = max(s["t_s"] for s in samples) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15">{title}</text>']
    for i, (label, series, value) in enumerate(panels):
        y0 = top + i * (panel_h + 40)
        w = width - left - 20
        values = [value(s, key) for s in samples for key, _ in series]
        v_max = max(values) * 1.15 or 1
        out.append(f'<rect x="{left}" y="{y0}" width="{w}" height="{panel_h}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{left}" y="{y0 - 6}">{label}</text>')
        for frac in (0, 0.5, 1):
            y = y0 + panel_h - frac * panel_h
            out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{v_max * frac:.3g}</text>')
        for j, (key, colour) in enumerate(series):
            points = " ".join(
                f"{left + s['t_s'] / t_max * w:.1f},{y0 + panel_h - value(s, key) / v_max * panel_h:.1f}"
                for s in samples)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
            if len(series) > 1:
                out.append(f'<text x="{left + w - 60 * (j + 1)}" y="{y0 - 6}" fill="{colour}">{key}</text>')
        out.append(f'<text x="{left + w}" y="{y0 + panel_h + 16}" text-anchor="end">{t_max / 60:.1f} min</text>')
        out.append(f'<text x="{left}" y="{y0 + panel_h + 16}">0</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = open("/proc/loadavg").read().split()[:3]
    return dict(nproc=os.cpu_count(), kernel=platform.release(), cpu=model, loadavg=" ".join(load))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqd", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--out", required=True)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--command", default="bench/soak.sh")
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = subprocess.check_output(["mktemp", "-d", "/tmp/soak.XXXXXX"], text=True).strip()
    port = args.port or free_port()
    metrics_port = free_port()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    box = machine()
    seqd_log = os.path.join(work, "seqd.log")
    seqd_cmd = ["nice", "-n", "-5", "taskset", "-c", "0", args.seqd, "--host", "127.0.0.1",
                "--port", str(port), "--threads", "1", "--data-dir", os.path.join(work, "data"),
                "--metrics-addr", f"127.0.0.1:{metrics_port}", "--log-level", "warn"]
    with open(seqd_log, "w") as log:
        seqd = subprocess.Popen(seqd_cmd, stderr=log, stdout=log)
    procs = [seqd]
    try:
        wait_listening(port, seqd, seqd_log)
        pid = seqd.pid
        # nice and taskset exec, so the pid is seqd's own.
        # The churn runs from before the capacity is measured, so the steady load is 80% of
        # what seqd has left beside it.
        os.sched_setaffinity(0, {1})
        counts, stop = Counts(), threading.Event()
        workers = [threading.Thread(target=churner, args=(port, counts, stop, i), daemon=True)
                   for i in range(4)]
        workers += [threading.Thread(target=f, args=(port, counts, stop), daemon=True)
                    for f in (vanisher, never_reader, probe)]
        for w in workers:
            w.start()
        time.sleep(5)
        capacity_out = os.path.join(work, "capacity")
        subprocess.run(loadgen_run(args.loadgen, port, capacity_out, ["-d", f"{CAPACITY_S}s"]),
                       check=True, stdout=subprocess.DEVNULL)
        with open(capacity_out + ".json") as f:
            capacity = json.load(f)["totals"]["throughput_rps"]
        rate = capacity * args.load
        duration_s = int(args.minutes * 60)
        steady_out = os.path.join(work, "steady")
        steady = subprocess.Popen(
            loadgen_run(args.loadgen, port, steady_out,
                        ["--rate", f"{rate:.0f}", "--send-granularity", "1ms", "-d", f"{duration_s}s",
                         "--warmup", "1s"]),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "loadgen.log"), "w"))
        procs.append(steady)

        counts.take_latencies()
        samples = []
        t0 = time.monotonic()
        with open(os.path.join(args.out, "samples.tsv"), "w") as tsv:
            columns = ["t_s", "rss_kib", "fds", "connections", "client_output_bytes", "error_replies",
                       "output_limit_disconnections", "probe_p50_ms", "probe_p99_ms", "probe_max_ms",
                       "churn_connections", "churn_requests", "vanished", "never_readers",
                       "never_readers_paused", "never_readers_closed", "client_errors"]
            tsv.write("\t".join(columns) + "\n")
            while time.monotonic() - t0 < duration_s:
                time.sleep(SAMPLE_S - (time.monotonic() - t0) % SAMPLE_S)
                latencies, values = counts.take_latencies()
                m = scrape(metrics_port)
                sample = dict(
                    t_s=round(time.monotonic() - t0, 1), rss_kib=rss_kib(pid),
                    fds=len(os.listdir(f"/proc/{pid}/fd")),
                    connections=int(m.get("seqd_connections", 0)),
                    client_output_bytes=int(m.get("seqd_client_output_bytes", 0)),
                    error_replies=int(sum(v for k, v in m.items() if k.startswith("seqd_errors_total"))),
                    output_limit_disconnections=int(m.get("seqd_client_output_limit_disconnections_total", 0)),
                    probe_p50_ms=round(percentile(latencies, 50) * 1e3, 3),
                    probe_p99_ms=round(percentile(latencies, 99) * 1e3, 3),
                    probe_max_ms=round(max(latencies, default=0) * 1e3, 3),
                    client_errors=values["errors"],
                    **{k: values[k] for k in columns[10:-1]},
                )
                samples.append(sample)
                tsv.write("\t".join(str(sample[c]) for c in columns) + "\n")
                tsv.flush()
        stop.set()
        status = steady.wait(timeout=120)
        with open(steady_out + ".json") as f:
            steady_report = json.load(f)
        with open(os.path.join(args.out, "loadgen.json"), "w") as f:
            json.dump(steady_report, f, indent=1)
        seqd_alive = seqd.poll() is None
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        svg_plot(samples, os.path.join(args.out, "soak.svg"),
                 f"seqd soak, {args.minutes:g} min at {args.load:.0%} of capacity with churn ({started})")
        verdict = report(args, samples, counts, capacity, rate, steady_report, status, seqd_alive,
                         started, finished, box, seqd_cmd)
        return 0 if verdict else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", work])


def report(args, samples, counts, capacity, rate, steady, loadgen_status, seqd_alive, started,
           finished, box, seqd_cmd):
    # Flatness: the last minute against the first minute after the first two (warm-up).
    per_min = max(1, 60 // SAMPLE_S)
    early = samples[2 * per_min:3 * per_min] if len(samples) >= 4 * per_min else samples[1:2]
    late = samples[-per_min:]

    def mean(rows, key):
        return statistics.mean(r[key] for r in rows) if rows else 0

    rss_early, rss_late = mean(early, "rss_kib") / 1024, mean(late, "rss_kib") / 1024
    fds_early, fds_late = mean(early, "fds"), mean(late, "fds")
    rss_peak = max(s["rss_kib"] for s in samples) / 1024
    errors = steady["errors"]["total"]
    error_replies = samples[-1]["error_replies"]
    client_errors = counts.values["errors"]
    rss_flat = rss_late <= rss_early * 1.10 + 8
    fds_flat = fds_late <= fds_early + 10
    ok = (rss_flat and fds_flat and errors == 0 and error_replies == 0 and client_errors == 0
          and loadgen_status == 0 and seqd_alive)
    lat = steady["latency_us"]
    v = counts.values
    lines = [
        f"# Soak: {args.minutes:g} minutes at {args.load:.0%} of capacity with connection churn",
        "",
        f"Written by `{args.command}` (bench/lib/soak.py) at commit {args.commit}, "
        f"{started} – {finished}, on a SHARED machine (other builds and tests ran beside it: "
        f"load average at the end {box['loadavg']}): `nproc` {box['nproc']}, kernel "
        f"{box['kernel']}, {box['cpu']}. seqd and this run's clients were started with "
        f"`nice -n -5`; seqd pinned to CPU 0, the clients to CPU 1.",
        "",
        f"**Verdict: {'PASS' if ok else 'FAIL'}** — RSS {'flat' if rss_flat else 'NOT flat'}, "
        f"fds {'flat' if fds_flat else 'NOT flat'}, {errors} loadgen errors, {error_replies} error "
        f"replies from seqd, {client_errors} churn-client errors, seqd "
        f"{'still running' if seqd_alive else 'DIED'}.",
        "",
        "![RSS, fds and probe latency over time](soak.svg)",
        "",
        "## What ran",
        "",
        f"- seqd: `{' '.join(['nice -n -5 taskset -c 0 seqd'] + seqd_cmd[7:])}` "
        f"(durable, default limits: --client-output-limit 4mb, --maxmemory-clients 256mb).",
        f"- Capacity, measured first with the churn below already running: loadgen closed "
        f"loop, binary, {CONNECTIONS} connections x {PIPELINE} pipelined GETSEQ, {CAPACITY_S} s, "
        f"what seqd answered flat out: **{capacity:,.0f} requests/s**.",
        f"- Steady load for the whole soak: loadgen open loop at {args.load:.0%} of that, "
        f"**{rate:,.0f} requests/s** planned ({CONNECTIONS} x {PIPELINE}, binary); achieved "
        f"{steady['totals']['throughput_rps']:,.0f}/s ({steady['totals']['requests']:,} requests), "
        f"latency from the planned send p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs, "
        f"p99.9 {lat['p99_9']:.0f} µs, max {lat['max']:.0f} µs; "
        f"errors {errors}; exit status {loadgen_status}.",
        f"- Churn beside it: {v['churn_connections']:,} connections that each pipelined 1–256 "
        f"GETSEQ (inline or RESP) up to 5 times, read every reply (checked increasing) and "
        f"closed ({v['churn_requests']:,} requests); {v['vanished']:,} connections that sent "
        f"100 GETSEQ and half a RESP request and vanished without reading (every other one with "
        f"a reset); {v['never_readers']} never-reading clients (one every 20 s), of which "
        f"{v['never_readers_paused']} were paused (seqd stopped reading them) and "
        f"{v['never_readers_closed']} closed by --client-output-limit, as they should be; "
        f"a probe connection timing one GETSEQ every 100 ms ({v['probe_requests']:,} requests).",
        "",
        "## Result",
        "",
        "| | first minute after warm-up | last minute | peak |",
        "|---|---|---|---|",
        f"| RSS | {rss_early:.1f} MiB | {rss_late:.1f} MiB | {rss_peak:.1f} MiB |",
        f"| open fds | {fds_early:.0f} | {fds_late:.0f} | {max(s['fds'] for s in samples)} |",
        f"| probe p99 (per 10 s window, median of windows) | "
        f"{statistics.median(s['probe_p99_ms'] for s in early) if early else 0:.3f} ms | "
        f"{statistics.median(s['probe_p99_ms'] for s in late):.3f} ms | "
        f"{max(s['probe_max_ms'] for s in samples):.3f} ms (max) |",
        "",
        "Flat means: RSS in the last minute at most 10% + 8 MiB above the first minute after "
        "warm-up; fds at most 10 above. Every 10 s sample is in `samples.tsv`; loadgen's full "
        "report in `loadgen.json`.",
    ]
    if counts.first_errors:
        lines += ["", "First client errors:", "", *[f"- {e}" for e in counts.first_errors]]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    return ok


if __name__ == "__main__":
    sys.exit(main())

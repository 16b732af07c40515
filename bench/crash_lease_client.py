#!/usr/bin/env python3
"""One cycle of bench/crash-cycles.sh's lease client.

Takes leases with ids (`GET_SEQUENCE_RANGE 20 client-C req-M`) and acknowledges each, one
at a time, until the server dies. Its state (the next request id, the last request sent and
the range granted to it, if any) is kept in a JSON file between cycles, so after the restart
it first retries what it had in flight when the kill landed:
  - a request that was answered before the kill must be answered with the same range;
  - a request whose reply was lost gets a range (granted before the kill or now), recorded once.
Every distinct range granted is appended to a loadgen verify file (stream id = cycle), so
`loadgen verify` checks the leases against every number loadgen received.

Exit status: 0 the server died (or the run ended) with every retry answered as promised;
1 a retry got another range, or a reply was malformed or an error.
"""

import argparse
import json
import os
import socket
import struct
import sys

MAGIC = b"SEQDVFY1"
SIZE = 20
LEASE_STREAM_BASE = 0xFFFF << 48  # far from loadgen's (run_millis << 24 | connection) ids


class Died(Exception):
    """The connection ended: the kill landed."""


def read_line(conn, buf):
    while b"\n" not in buf:
        try:
            chunk = conn.recv(4096)
        except OSError as error:
            raise Died() from error
        if not chunk:
            raise Died()
        buf.extend(chunk)
    end = buf.index(b"\n") + 1
    line = bytes(buf[:end])
    del buf[:end]
    return line.rstrip(b"\r\n").decode()


def command(conn, buf, line):
    try:
        conn.sendall(line.encode() + b"\r\n")
    except OSError as error:
        raise Died() from error
    return read_line(conn, buf)


def parse_range(reply, request):
    first, sep, last = reply.partition(",")
    if not sep or not first.isdigit() or not last.isdigit():
        raise ValueError(f"{request!r} answered {reply!r}, not first,last")
    first, last = int(first), int(last)
    if last - first + 1 != SIZE:
        raise ValueError(f"{request!r} answered {reply!r}: not {SIZE} numbers")
    return first, last


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True, help="host:port")
    p.add_argument("--state", required=True, help="JSON state kept between cycles")
    p.add_argument("--verify-file", required=True)
    p.add_argument("--cycle", type=int, required=True)
    p.add_argument("--client", default="client-1")
    args = p.parse_args()

    state = {"next": 1, "pending": None, "granted": None, "leases": 0, "retries_checked": 0}
    if os.path.exists(args.state):
        with open(args.state) as f:
            state = json.load(f)
    new_file = not os.path.exists(args.verify_file) or os.path.getsize(args.verify_file) == 0
    out = open(args.verify_file, "ab")
    if new_file:
        out.write(MAGIC + bytes(8))
    stream = LEASE_STREAM_BASE | args.cycle

    def record(first, last):
        out.write(struct.pack("<QQQ", stream, first, last - first + 1))
        state["leases"] += 1

    def save():
        out.flush()
        tmp = args.state + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, args.state)

    host, port = args.addr.rsplit(":", 1)
    status = 0
    conn = socket.create_connection((host, int(port)), timeout=10)
    # The script waits for this line before it picks the moment of the kill.
    print("connected", flush=True)
    buf = bytearray()
    try:
        # The request in flight at the kill, retried with its ids.
        if state["pending"] is not None:
            request = state["pending"]
            got = parse_range(command(conn, buf, request), request)
            if state["granted"] is not None:
                state["retries_checked"] += 1
                if list(got) != state["granted"]:
                    print(f"lease client: retry of {request!r} got {got}, "
                          f"not {tuple(state['granted'])} granted before the kill",
                          file=sys.stderr)
                    status = 1
            else:
                record(*got)
            state["granted"] = list(got)
        while status == 0:
            # Acknowledge what is held (durable; a repeat after a restart is answered +OK or
            # refused as already acknowledged: both are fine, the range stays used).
            if state["granted"] is not None:
                first, last = state["granted"]
                command(conn, buf, f"ACK {first},{last}")
            request = f"GET_SEQUENCE_RANGE {SIZE} {args.client} req-{state['next']}"
            state["next"] += 1
            state["pending"], state["granted"] = request, None
            save()
            got = parse_range(command(conn, buf, request), request)
            state["granted"] = list(got)
            record(*got)
            save()
    except Died:
        pass
    except (ValueError, OSError) as error:
        print(f"lease client: {error}", file=sys.stderr)
        status = 1
    save()
    print(json.dumps({"leases": state["leases"], "retries_checked": state["retries_checked"]}))
    return status


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Issue 20 item 6's table floods from one address, and what a second address gets after
them, against a running seqd; for bench/peer-flood.sh. Prints one JSON line.

  peer_flood.py HOST PORT STREAM_PORT LEASES STREAMS

- Lease flood: one connection from 127.0.0.1 pipelines LEASES `GET_SEQUENCE_RANGE 1
  flood-I r` (a new client id each), and counts the replies: ranges granted, and each
  refusal's text with its count.
- Then a bystander from 127.0.0.2 asks `GET_SEQUENCE_RANGE 1 bystander r`: its reply.
- Stream flood: STREAMS connections from 127.0.0.1 one after another, each sending `CON 1
  flood-I` and waiting for a `NUM` (served) or the close (refused), then closing (a stream
  outlives its connection: it waits for a resume until --stream-ttl).
- Then a bystander stream from 127.0.0.2: served or refused.
Wall-clock seconds of each flood are printed too (informative only).
"""
import json
import socket
import struct
import sys
import time

ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"


def connect(source, host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(10)
    return sock


def lease_flood(host, port, n):
    sock = connect(ATTACKER, host, port)
    reader = sock.makefile("rb")
    started = time.monotonic()
    sock.sendall(b"".join(b"GET_SEQUENCE_RANGE 1 flood-%d r\r\n" % i for i in range(n)))
    granted, refusals = 0, {}
    for _ in range(n):
        line = reader.readline().decode().strip()
        if line[:1].isdigit():
            granted += 1
        else:
            refusals[line] = refusals.get(line, 0) + 1
    seconds = time.monotonic() - started
    sock.close()
    return granted, refusals, seconds


def bystander_lease(host, port):
    sock = connect(BYSTANDER, host, port)
    sock.sendall(b"GET_SEQUENCE_RANGE 1 bystander r\r\n")
    reply = sock.makefile("rb").readline().decode().strip()
    sock.close()
    return reply


def con(client_id):
    # The stream protocol's CON: "CON", n and the id's length (u32 big-endian each), the id.
    return b"CON" + struct.pack(">II", 1, len(client_id)) + client_id


def stream_served(source, host, port, client_id):
    sock = connect(source, host, port)
    try:
        sock.sendall(con(client_id))
        data = sock.recv(3)
        return data == b"NUM"
    except OSError:
        return False
    finally:
        sock.close()


def main():
    host, port, stream_port, leases, streams = sys.argv[1:6]
    port, stream_port, leases, streams = int(port), int(stream_port), int(leases), int(streams)
    granted, refusals, lease_seconds = lease_flood(host, port, leases)
    lease_reply = bystander_lease(host, port)
    started = time.monotonic()
    served = sum(
        stream_served(ATTACKER, host, stream_port, b"flood-%d" % i) for i in range(streams)
    )
    stream_seconds = time.monotonic() - started
    bystander_stream = stream_served(BYSTANDER, host, stream_port, b"bystander")
    print(
        json.dumps(
            {
                "leases_asked": leases,
                "leases_granted": granted,
                "lease_refusals": refusals,
                "lease_flood_seconds": round(lease_seconds, 3),
                "bystander_lease": lease_reply,
                "streams_asked": streams,
                "streams_served": served,
                "stream_flood_seconds": round(stream_seconds, 3),
                "bystander_stream_served": bystander_stream,
            }
        )
    )


if __name__ == "__main__":
    main()

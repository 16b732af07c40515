#!/usr/bin/env python3
"""A stream client written from seed 003's message format alone, not from seqd's code.

It checks that a client built the way the seed describes works against seqd unmodified:

  CON  Byte3('CON') Int32 n  Int32 len  String client-id
  NUM  Byte3('NUM') Int32 sequence  Int32 number
  ACK  Byte3('ACK') Int32 sequence
  CHK  Byte3('CHK') Int32 sequence  Int32 len  String checksum
  (all numbers big-endian; sequences 0..n-1 carry numbers, the checksum carries n;
   the checksum is SHA-1 over the n numbers as 4 big-endian bytes each, in order)

Usage: seed003_client.py HOST PORT N CLIENT_ID [DROP_AFTER]

With DROP_AFTER, the first connection acknowledges only the even positions of the first
DROP_AFTER numbers it receives and then disconnects; the second connection (same client id)
resumes, acknowledges everything twice, and finishes. Prints "OK <checksum hex>" and exits 0
when the checksum matches; exits 1 otherwise.
"""

import hashlib
import socket
import struct
import sys

TIMEOUT = 20.0


def recv_messages(sock, buf):
    """Reads more bytes; returns (messages, rest). Messages: ('NUM', seq, number) or
    ('CHK', seq, checksum bytes)."""
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("server closed the connection")
    buf += data
    messages = []
    while len(buf) >= 3:
        tag = buf[:3]
        if tag == b"NUM":
            if len(buf) < 11:
                break
            seq, number = struct.unpack(">II", buf[3:11])
            messages.append(("NUM", seq, number))
            buf = buf[11:]
        elif tag == b"CHK":
            if len(buf) < 11:
                break
            seq, length = struct.unpack(">II", buf[3:11])
            if len(buf) < 11 + length:
                break
            messages.append(("CHK", seq, buf[11 : 11 + length]))
            buf = buf[11 + length :]
        else:
            raise ValueError("unexpected message tag %r" % tag)
    return messages, buf


def connect(host, port, n, client_id):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    ident = client_id.encode()
    sock.sendall(b"CON" + struct.pack(">II", n, len(ident)) + ident)
    return sock


def ack(sock, seq, times=1):
    sock.sendall((b"ACK" + struct.pack(">I", seq)) * times)


def main():
    host, port, n, client_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    drop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
    numbers = [None] * n

    if drop_after is not None:
        sock = connect(host, port, n, client_id)
        received, buf = 0, b""
        while received < drop_after:
            messages, buf = recv_messages(sock, buf)
            for kind, seq, value in messages:
                if kind == "NUM" and seq < n:
                    numbers[seq] = value
                    received += 1
                    if seq % 2 == 0:
                        ack(sock, seq)
        sock.close()

    sock = connect(host, port, n, client_id)
    buf = b""
    while True:
        messages, buf = recv_messages(sock, buf)
        for kind, seq, value in messages:
            if kind == "NUM":
                if seq >= n:
                    print("FAIL number for position %d of %d" % (seq, n))
                    return 1
                if numbers[seq] is not None and numbers[seq] != value:
                    print("FAIL position %d was %d, now %d" % (seq, numbers[seq], value))
                    return 1
                numbers[seq] = value
                ack(sock, seq, times=2)  # duplicates must be harmless
            elif kind == "CHK":
                if seq != n or any(v is None for v in numbers):
                    print("FAIL checksum at %d with numbers missing" % seq)
                    return 1
                digest = hashlib.sha1(b"".join(struct.pack(">I", v) for v in numbers)).digest()
                ack(sock, seq)
                sock.close()
                if digest != value:
                    print("FAIL checksum mismatch: %s != %s" % (digest.hex(), value.hex()))
                    return 1
                if len(set(numbers)) != n:
                    print("FAIL numbers repeat")
                    return 1
                print("OK %s" % value.hex())
                return 0


if __name__ == "__main__":
    sys.exit(main())

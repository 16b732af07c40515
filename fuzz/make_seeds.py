#!/usr/bin/env python3
"""Writes fuzz/seeds/TARGET/* from the examples in docs/PROTOCOL.md and docs/STATE.md.

The seeds are committed; rerun this after changing the documented examples. libFuzzer's
generated corpus (fuzz/corpus/) is not committed.
"""
import os
import re
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def hex_bytes(text):
    return bytes(int(b, 16) for b in text.split())


protocol = open(os.path.join(ROOT, "docs", "PROTOCOL.md")).read()
state_doc = open(os.path.join(ROOT, "docs", "STATE.md")).read()

# Binary: every `request  9e 01 ...` / `reply  9e 01 ...` line.
requests, replies = [], []
for kind, hexes in re.findall(r"^(request|reply)\s+((?:[0-9a-f]{2}\s+)*[0-9a-f]{2})\s*$",
                              protocol, re.M):
    (requests if kind == "request" else replies).append(hex_bytes(hexes))
for i, frame in enumerate(requests):
    write("binary_decoder", f"doc-request-{i}", frame)
for i, frame in enumerate(replies):
    write("binary_decoder", f"doc-reply-{i}", frame)
pipelined = b"".join(requests)
write("binary_decoder", "doc-requests-pipelined", pipelined)

# Text: the transcripts' `> request\r\n` lines, inline and as RESP arrays.
lines = [l.replace("\\r\\n", "\r\n").encode()
         for l in re.findall(r"^> (.*?\\r\\n)", protocol, re.M)]
lines += [b"GETSEQ_BATCH 3 orders\r\n", b"GET_SEQUENCE_RANGE 20 scanner-7 42\r\n",
          b"ACK 1001,1020\r\n", b"LEASES\r\n", b"PING hello\r\n", b"CONFIG GET save\r\n",
          b"QUIT\r\n", b"GETSEQ\r\0\r\n"]


def resp(line):
    args = line.strip().split()
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


for i, line in enumerate(lines):
    write("text_decoder", f"inline-{i}", line)
    write("text_decoder", f"resp-{i}", resp(line))
write("text_decoder", "reply-lines", b":1\r\n*2\r\n:1\r\n:3\r\n+OK\r\n-ERR unknown\r\n")
inline_session = b"".join(lines[:-2])
write("session", "text-inline", b"\x00" + inline_session)
write("session", "text-resp", b"\x00" + b"".join(resp(l) for l in lines[:-2]))
write("session", "text-split", b"\x02\x05\x00\x21\x00" + inline_session)
write("session", "binary", b"\x00" + pipelined)
write("session", "binary-split", b"\x03\x07\x00\x10\x00\x33\x00" + pipelined)

# Stream protocol (seed 003): one message of each kind.
stream = (b"CON" + (10).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"abc",
          b"NUM" + (0).to_bytes(4, "big") + (5).to_bytes(4, "big"),
          b"ACK" + (0).to_bytes(4, "big"),
          b"CHK" + (10).to_bytes(4, "big") + (20).to_bytes(4, "big") + bytes(range(20)))
for i, message in enumerate(stream):
    write("stream_decoder", f"message-{i}", message)
write("stream_decoder", "all", b"".join(stream))

# State files: the documented file, and one with the documented ledger records added (its
# header counts and CRC recomputed). The first byte is the target's mode: 0 as is, 1 repair.
blocks = re.findall(r"```\n(.*?)```", state_doc, re.S)
def block_bytes(block):
    out = b""
    for line in block.splitlines():
        m = re.match(r"((?:[0-9a-f]{2} +)*[0-9a-f]{2})(?:  |$)", line)
        if m:
            out += hex_bytes(m.group(1))
    return out
files = [block_bytes(b) for b in blocks if b.startswith("53 45 51 44 53 54 41 54")]
ledgers = [block_bytes(b) for b in blocks if b.startswith("00 02  00 00 00 2a")]
for i, f in enumerate(files):
    write("state_decoder", f"doc-file-{i}", b"\x00" + f)
    for j, ledger in enumerate(ledgers):
        body = bytearray(f[:-4] + ledger)
        body[28:32] = (int.from_bytes(f[28:32], "big") + 4).to_bytes(4, "big")
        body[32:36] = (len(body) - 36).to_bytes(4, "big")
        whole = bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "big")
        write("state_decoder", f"doc-file-{i}-ledger-{j}", b"\x00" + whole)

# Journals: the documented one as it is (mode 0), cut inside its entry (a torn append), and
# as the target's framed input (mode 1: base generation, then each entry payload behind a
# 2-byte length).
journals = [block_bytes(b) for b in blocks if b.startswith("53 45 51 44 4a 52 4e 4c")]
for i, j in enumerate(journals):
    write("journal_decoder", f"doc-journal-{i}", b"\x00" + j)
    write("journal_decoder", f"doc-journal-{i}-torn", b"\x00" + j[:-5])
    payload = j[22 + 8:]
    framed = j[10:18] + len(payload).to_bytes(2, "big") + payload
    write("journal_decoder", f"doc-journal-{i}-framed", b"\x01" + framed + framed[8:])

#!/usr/bin/env python3
"""CPU sampler for results/bench.sh: who saturated, the server or the client?

    sample.py watch OUT INTERVAL_S LABEL=PID[+] ...   # until SIGTERM or every PID is gone
    sample.py window OUT SKIP_S                       # JSON: per label, over the window

`watch` appends one line per sample and process: `time_ns label cpu_ns wait_ns threads`, the
sums over the process's live threads of /proc/PID/task/TID/schedstat (time on a CPU, time
runnable but waiting for one). `PID+` also adds the process's children (PostgreSQL's backends).

`window` takes the samples from SKIP_S seconds after the first (the warm-up) to the last, and
prints per label `cpu_percent` (on a CPU) and `runnable_percent` (on a CPU or waiting for one,
at most 100), both in percent of one core. On a shared machine the second is the one that says whether a
process saturated: a server runnable 95% of the time but on its CPU only 60% was CPU-bound,
with other work taking the rest of its core. Threads that exit between two samples take their
last interval with them; the sampling interval bounds that loss.
"""

import json
import os
import signal
import sys
import time


def schedstat(pid):
    cpu = wait = threads = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            cpu += int(fields[0])
            wait += int(fields[1])
            threads += 1
        except (OSError, ValueError, IndexError):
            continue
    return cpu, wait, threads


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def watch(out, interval, specs):
    targets = []
    for spec in specs:
        label, _, pid = spec.partition("=")
        with_children = pid.endswith("+")
        targets.append((label, int(pid.rstrip("+")), with_children))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(out, "a") as f:
        while not stop:
            now = time.monotonic_ns()
            alive = 0
            for label, pid, with_children in targets:
                pids = [pid] + (children(pid) if with_children else [])
                cpu = wait = threads = 0
                for p in pids:
                    s = schedstat(p)
                    if s is None:
                        continue
                    if p == pid:
                        alive += 1
                    cpu, wait, threads = cpu + s[0], wait + s[1], threads + s[2]
                if threads:
                    f.write(f"{now} {label} {cpu} {wait} {threads}\n")
            f.flush()
            if not alive:
                break
            time.sleep(interval)


def window(out, skip):
    samples = {}
    try:
        lines = open(out).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) != 5:
            continue
        t, label, cpu, wait, _ = int(parts[0]), parts[1], int(parts[2]), int(parts[3]), parts[4]
        samples.setdefault(label, []).append((t, cpu, wait))
    result = {}
    for label, rows in samples.items():
        start = rows[0][0] + int(skip * 1e9)
        inside = [r for r in rows if r[0] >= start] or rows
        first, last = inside[0], rows[-1]
        if last[0] <= first[0]:
            first = rows[0]
        span = last[0] - first[0]
        if span <= 0:
            result[label] = {"cpu_percent": None, "runnable_percent": None, "window_s": 0}
            continue
        cpu = max(0, last[1] - first[1])
        wait = max(0, last[2] - first[2])
        result[label] = {"cpu_percent": round(100.0 * cpu / span, 1),
                         # Capped: for a process with many threads (the naive baseline,
                         # PostgreSQL's backends) the waits of its threads overlap; any of
                         # them waiting means its core was busy all the while.
                         "runnable_percent": round(min(100.0, 100.0 * (cpu + wait) / span), 1),
                         "window_s": round(span / 1e9, 3)}
    print(json.dumps(result))


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "watch":
        watch(sys.argv[2], float(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 4 and sys.argv[1] == "window":
        window(sys.argv[2], float(sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

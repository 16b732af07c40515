#!/usr/bin/env python3
"""CPU sampler for bench/suite.sh: who saturated, the server or the client?

    sample.py watch OUT INTERVAL_S LABEL=PID[+] ...   # until SIGTERM or every PID is gone
    sample.py window OUT SKIP_S                       # JSON: per label, over the window

`watch` appends one line per sample and thread: `time_ns label tid cpu_ns wait_ns`, from
/proc/PID/task/TID/schedstat (time on a CPU, time runnable but waiting for one), and once per
label `cpus label N`, the number of CPUs the process may run on (its affinity). `PID+` also
samples the process's children (PostgreSQL's backends).

`window` takes the samples from SKIP_S seconds after the first (the warm-up) to the last, and
prints per label `cpu_percent` (on a CPU, in percent of one core: a client with threads on
three CPUs can reach 300) and `runnable_percent` (on a CPU or waiting for one, in percent of
the CPUs it may run on, at most 100), and `cpus`. On a shared machine the second is the one that
says whether a process saturated: a server runnable 95% of the time but on its CPU only 60% was
CPU-bound, with other work taking the rest of its core. Threads that exit between two samples take their
last interval with them; the sampling interval bounds that loss.
"""

import json
import os
import signal
import sys
import time


def schedstat(pid):
    """(tid, cpu_ns, wait_ns) of every live thread of `pid`; None if it is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    found = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            found.append((int(tid), int(fields[0]), int(fields[1])))
        except (OSError, ValueError, IndexError):
            continue
    return found


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
        for label, pid, _ in targets:
            try:
                f.write(f"cpus {label} {len(os.sched_getaffinity(pid))}\n")
            except OSError:
                pass
        while not stop:
            now = time.monotonic_ns()
            alive = 0
            for label, pid, with_children in targets:
                pids = [pid] + (children(pid) if with_children else [])
                for p in pids:
                    threads = schedstat(p)
                    if threads is None:
                        continue
                    if p == pid:
                        alive += 1
                    for tid, cpu, wait in threads:
                        f.write(f"{now} {label} {tid} {cpu} {wait}\n")
            f.flush()
            if not alive:
                break
            time.sleep(interval)


def window(out, skip):
    print(json.dumps(window_figures(out, skip)))


def window_figures(out, skip):
    """The figures `window` prints, as a dict (bench/suite.sh's step calls it in-process)."""
    # label -> tid -> [(time, cpu, wait), ...]; label -> sample times
    threads, times, cpus = {}, {}, {}
    try:
        lines = open(out).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "cpus":
            cpus[parts[1]] = max(1, int(parts[2]))
            continue
        if len(parts) != 5:
            continue
        t, label, tid, cpu, wait = int(parts[0]), parts[1], parts[2], int(parts[3]), int(parts[4])
        threads.setdefault(label, {}).setdefault(tid, []).append((t, cpu, wait))
        times.setdefault(label, set()).add(t)
    result = {}
    for label, by_tid in threads.items():
        ordered = sorted(times[label])
        start = next((t for t in ordered if t >= ordered[0] + int(skip * 1e9)), ordered[0])
        end = ordered[-1]
        if end <= start:
            start = ordered[0]
        span = end - start
        if span <= 0:
            result[label] = {"cpu_percent": None, "runnable_percent": None, "window_s": 0,
                             "cpus": cpus.get(label, 1)}
            continue
        cpu = wait = 0
        for rows in by_tid.values():
            inside = [r for r in rows if start <= r[0] <= end]
            if not inside:
                continue
            # A thread born inside the window counts from zero; one that ended inside it, to
            # its last sample.
            first = inside[0] if rows[0][0] < inside[0][0] or inside[0][0] == start else (0, 0, 0)
            cpu += inside[-1][1] - first[1]
            wait += inside[-1][2] - first[2]
        n = cpus.get(label, 1)
        result[label] = {"cpu_percent": round(100.0 * cpu / span, 1),
                         # Capped: for a process with more threads than CPUs (the naive
                         # baseline, PostgreSQL's backends) the waits of its threads overlap;
                         # any of them waiting means its CPUs were busy all the while.
                         "runnable_percent": round(min(100.0, 100.0 * (cpu + wait) / span / n), 1),
                         "window_s": round(span / 1e9, 3), "cpus": n}
    return result


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

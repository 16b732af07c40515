#!/usr/bin/env python3
"""Summarises one run of bench/suite.sh: reads the files the run wrote, judges the goals of
issues 6 and 16, writes summary.json and README.md into the run's folder and, with --index, regenerates
the summary table in results/README.md.

    bench/lib/summarize.py results/2026-11-22-vm [--index results/README.md]
    bench/lib/summarize.py --self-test

Every figure comes from the run's own files; nothing here is typed in by hand.
"""

import argparse
import csv
import json
import pathlib
import re
import statistics
import sys
import tempfile

# A side runnable (on a CPU or waiting for one) this share of the time saturated its core
# (the threshold of loadgen's own CPU-bound warning).
SATURATED = 90.0
# In a budgeted row the client must keep headroom: busy more than this share of its CPUs, the
# row may measure the client (issue 16).
CLIENT_HEADROOM = 75.0
CONFIGS = ["1x1", "50x1", "50x16", "50x64", "1x4096"]
BUDGET_CONFIGS = ["50x1", "50x16", "50x64"]
BUDGET_RESP = [("c50", "P64"), ("c50", "P1")]
CLOSED_SERVERS = ("seqd", "baseline", "zerowork", "redis")
RESP = [("c50", "P1"), ("c50", "P16"), ("c50", "P64"), ("c1", "P1")]
BOTH = "server and client"
SERVER_NAMES = {"seqd": "seqd", "baseline": "naive baseline", "zerowork": "zero-work io_uring",
                "redis": "Redis INCR", "postgres": "PostgreSQL nextval"}


def round_of(path):
    """The round number in a file name like `seqd-50x64-r2.json` (None without one)."""
    found = re.search(r"-r(\d+)$", pathlib.Path(path).stem)
    return int(found.group(1)) if found else None


def per_round_ratio(a, b):
    """The median of a.rps / b.rps per round, pairing the rounds by number: the machine's speed
    drifts between rounds, so a ratio within a round is the figure to trust. Rows without round
    numbers fall back to the ratio of their medians."""
    if a is None or b is None:
        return None
    ours = {r.get("round"): r.get("throughput_rps") for r in a.rounds}
    theirs = {r.get("round"): r.get("throughput_rps") for r in b.rounds}
    ratios = [ours[k] / theirs[k] for k in ours
              if k is not None and k in theirs and ours[k] and theirs[k]]
    if ratios:
        return statistics.median(ratios)
    return a.rps / b.rps if a.rps and b.rps else None


def load_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Row:
    """One measured configuration of one server, the median over its rounds. CPU figures are
    over the measured part: `cpu` on a CPU in percent of one core, `runnable` on a CPU or
    waiting for one in percent of the CPUs the side was pinned to (bench/lib/sample.py)."""

    def __init__(self, server, rps, rounds, extra=None, client_cpus=1, budget_percent=None):
        self.server = server
        self.rps = rps
        self.rounds = rounds
        self.extra = extra or {}
        self.budget_percent = budget_percent
        self.client_cpu = median([r.get("client_cpu_percent") for r in rounds])
        self.client_runnable = median([r.get("client_runnable_percent") for r in rounds])
        self.server_cpu = median([r.get("server_cpu_percent") for r in rounds])
        self.server_runnable = median([r.get("server_runnable_percent") for r in rounds])
        # Server CPU time per request: what throughput would cost a server that had its core
        # to itself. Robust to other work on a shared machine, unlike throughput.
        self.server_ns = median([r["server_cpu_percent"] / 100 * 1e9 / r["throughput_rps"]
                                 for r in rounds
                                 if r.get("server_cpu_percent") and r.get("throughput_rps")])
        # The client's busy share: on a CPU, in percent of the CPUs it had (the highest round,
        # so that one round over the line marks the row).
        busy = [r["client_cpu_percent"] / max(1, client_cpus) for r in rounds
                if r.get("client_cpu_percent") is not None]
        self.client_busy = max(busy) if busy else None

    @property
    def client_over_headroom(self):
        return self.client_busy is not None and self.client_busy > CLIENT_HEADROOM

    @property
    def budget_used(self):
        """A budgeted row's server CPU in percent of its budget (None at full core)."""
        if not self.budget_percent or self.server_cpu is None:
            return None
        return 100.0 * self.server_cpu / self.budget_percent

    @property
    def bound(self):
        """Which side saturated: 'server', 'client', 'server and client', or 'neither' (round
        trips, waiting). When both did, CPU cannot tell which one set the pace (a busy-polling
        server is runnable all the time it has traffic), so the figure may be the client's."""
        server = self.server_runnable is not None and self.server_runnable >= SATURATED
        client = self.client_runnable is not None and self.client_runnable >= SATURATED
        return {(True, True): BOTH, (True, False): "server", (False, True): "client"}.get((server, client), "neither")

    @property
    def client_saturated(self):
        # Under a budget the client must keep headroom; at full core it saturated when it was
        # runnable (nearly) all the time.
        if self.budget_percent:
            return self.client_over_headroom
        return self.bound in ("client", BOTH)

    def to_json(self):
        return {"server": self.server, "throughput_rps": self.rps,
                "client_cpu_percent": self.client_cpu, "client_runnable_percent": self.client_runnable,
                "server_cpu_percent": self.server_cpu, "server_runnable_percent": self.server_runnable,
                "server_ns_per_request": self.server_ns, "bound": self.bound,
                "client_busy_percent": self.client_busy, "client_over_headroom": self.client_over_headroom,
                "budget_percent": self.budget_percent, "budget_used_percent": self.budget_used,
                "rounds": self.rounds, **self.extra}


def judge_ratio(seqd, rival, threshold):
    """A ratio goal (the median of per-round ratios): met, missed, or inconclusive when a
    client-bound side decides it."""
    if seqd is None or rival is None or not seqd.rps or not rival.rps:
        return {"verdict": "not measured", "ratio": None}
    ratio = per_round_ratio(seqd, rival)
    met = ratio >= threshold
    seqd_cb, rival_cb = seqd.client_saturated, rival.client_saturated
    if seqd_cb and rival_cb:
        verdict, why = "inconclusive", ("the client exceeded 75% busy on both sides" if seqd.budget_percent else
                                        "the client saturated on both sides: the ratio compares the client with itself")
    elif met and rival_cb:
        verdict, why = "inconclusive", "the client saturated against the rival, whose figure is only a lower bound"
    elif not met and seqd_cb:
        verdict, why = "inconclusive", "the client saturated against seqd, whose figure is only a lower bound"
    else:
        verdict, why = ("met" if met else "missed"), ""
    return {"verdict": verdict, "ratio": ratio, "why": why}


def judge_at_least(value, threshold, client_bound=False, note=""):
    if value is None:
        return {"verdict": "not measured", "value": None}
    met = value >= threshold
    if not met and client_bound:
        return {"verdict": "inconclusive", "value": value,
                "why": "the client saturated; the figure is only a lower bound"}
    return {"verdict": "met" if met else "missed", "value": value, "why": note}


def judge_at_most(value, threshold, client_bound=False):
    if value is None:
        return {"verdict": "not measured", "value": None}
    met = value <= threshold
    if not met and client_bound:
        return {"verdict": "inconclusive", "value": value,
                "why": "the client saturated or fell behind its schedule; its lag is in the figure"}
    return {"verdict": "met" if met else "missed", "value": value, "why": ""}


class Run:
    def __init__(self, folder):
        self.folder = folder
        self.meta = load_json(folder / "meta.json") or {}
        self.measurements = {}
        path = folder / "measurements.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    m = json.loads(line)
                    self.measurements[m["id"]] = m

    def cpu(self, step_id):
        """The sampled CPU of the server and client of a step, as round fields."""
        m = self.measurements.get(step_id) or {}
        out = {}
        for side in ("server", "client"):
            figures = m.get(f"{side}_cpu") or {}
            out[f"{side}_cpu_percent"] = figures.get("cpu_percent")
            out[f"{side}_runnable_percent"] = figures.get("runnable_percent")
        return out

    def command(self, step_id):
        m = self.measurements.get(step_id)
        return m["command"] if m else None

    @property
    def client_cpus(self):
        return max(1, int(self.meta.get("client_threads") or 1))

    @property
    def budget_percent(self):
        """The CPU budget of the budgeted rows in percent of one CPU; None when none ran."""
        budget = self.meta.get("budget") or {}
        return budget.get("percent") if budget.get("kind") else None

    @property
    def resp_budget_percent(self):
        """The budget of the redis-benchmark rows (runs before it had one: the same as the rest)."""
        budget = self.meta.get("budget") or {}
        return budget.get("resp_percent", self.budget_percent) if budget.get("kind") else None

    def row(self, server, rounds, budget_percent=None):
        return Row(server, median([r["throughput_rps"] for r in rounds]), rounds,
                   client_cpus=self.client_cpus, budget_percent=budget_percent)

    # -- loadgen results
    def loadgen_row(self, server, ids_and_files, budgeted=False):
        rounds = []
        for step_id, path in ids_and_files:
            data = load_json(path)
            if not data or data.get("kind") != "run":
                continue
            threads = data["client_cpu"]["threads"]
            rounds.append({"throughput_rps": data["totals"]["throughput_rps"],
                           "loadgen_busy_percent": max((t["busy_percent"] for t in threads), default=None),
                           **self.cpu(step_id),
                           "p50_us": data["latency_us"]["p50"], "p99_us": data["latency_us"]["p99"],
                           "p99_9_us": data["latency_us"]["p99_9"], "max_us": data["latency_us"]["max"],
                           "errors": data["errors"]["total"], "file": str(path.relative_to(self.folder)),
                           "round": round_of(path), "budget": self.budget(step_id),
                           "command": self.command(step_id)})
        if not rounds:
            return None
        return self.row(server, rounds, self.budget_percent if budgeted else None)

    def budget(self, step_id):
        """The budget cgroup's throttling over a budgeted step (None at full core)."""
        return (self.measurements.get(step_id) or {}).get("budget")

    def closed(self, server, config, budgeted=False):
        folder, prefix = ("closed-budget", "budget-closed-") if budgeted else ("closed", "closed-")
        files = sorted((self.folder / folder).glob(f"{server}-{config}-r*.json"))
        pairs = [(f"{prefix}{f.stem}", f) for f in files]
        return self.loadgen_row(server, pairs, budgeted)

    def resp(self, server, c, p, budgeted=False):
        folder, prefix = ("resp-budget", "budget-resp-") if budgeted else ("resp", "resp-")
        rounds = []
        for path in sorted((self.folder / folder).glob(f"{server}-{c}-{p}-r*.csv")):
            step_id = f"{prefix}{path.stem}"
            value = parse_redis_benchmark(path)
            if value is None:
                continue
            rounds.append({"throughput_rps": value["rps"], **value, **self.cpu(step_id),
                           "round": round_of(path), "budget": self.budget(step_id),
                           "file": str(path.relative_to(self.folder)), "command": self.command(step_id)})
        if not rounds:
            return None
        return self.row(server, rounds, self.resp_budget_percent if budgeted else None)

    def pgbench(self, c):
        path = self.folder / "pgbench" / f"nextval-c{c}.txt"
        step_id = f"pgbench-nextval-c{c}"
        tps = parse_pgbench(path)
        if tps is None:
            return None
        return Row("postgres", tps, [{"throughput_rps": tps, **self.cpu(step_id),
                                      "file": str(path.relative_to(self.folder)),
                                      "command": self.command(step_id)}])

    def open_loop(self, server, rate):
        path = self.folder / "open" / f"{server}-{rate}.json"
        data = load_json(path)
        if not data:
            return None
        cpu = self.cpu(f"open-{server}-{rate}")
        client = cpu["client_runnable_percent"]
        lag = data.get("send_lag_us") or {}
        return {"server": server, "rate": data["config"]["rate"],
                "throughput_rps": data["totals"]["throughput_rps"],
                "achieved_ratio": data["totals"]["achieved_ratio"],
                "latency_us": data["latency_us"], "service_time_us": data["service_time_us"],
                "send_lag_p99_us": lag.get("p99"), **cpu,
                "held_by_pipeline": data["totals"]["held_by_pipeline"],
                # Late sends with requests held for lack of pipeline room are the server's
                # doing (its replies came late); late sends without are the client's.
                "client_fell_behind": bool((client or 0) >= SATURATED
                                           or ((lag.get("p99") or 0) > 1000
                                               and not data["totals"]["held_by_pipeline"])),
                "held": (data["totals"].get("achieved_ratio") or 0) >= 0.99,
                "bound": open_loop_bound(data, cpu),
                "file": str(path.relative_to(self.folder)), "command": self.command(f"open-{server}-{rate}")}

    def capacity(self, server):
        path = self.folder / "capacity" / f"{server}-p99-1ms.json"
        data = load_json(path)
        if not data:
            return None
        confirmation = data.get("confirmation") or {}
        threads = (confirmation.get("client_cpu") or {}).get("threads") or []
        steps = data.get("steps") or []
        # loadgen reports a probe's process CPU in percent of one core; per client CPU here.
        per_cpu = 1 / max(1, int(self.meta.get("client_threads") or 1))
        capacity = data.get("capacity_rps")
        # The probe that failed just above the capacity found: if the client saturated there,
        # the limit found may be the client's.
        failed_above = sorted((st for st in steps if st["kind"] == "probe" and not st.get("passed")
                               and st.get("rate") and (capacity is None or st["rate"] > capacity)),
                              key=lambda st: st["rate"])
        boundary = failed_above[0] if failed_above else None
        boundary_busy = (boundary.get("client_cpu_percent") * per_cpu
                         if boundary and boundary.get("client_cpu_percent") is not None else None)
        if boundary is None:
            bound = "the probes' limit (no failing probe above the capacity)"
        elif (boundary_busy or 0) >= SATURATED:
            bound = "client (saturated in the failing probe above)"
        else:
            bound = (f"not the client (p99 over 1 ms with the client {fmt_pct(boundary_busy)} busy): the "
                     "server, or on a busy machine the wait for a CPU")
        return {"server": server, "capacity_rps": capacity, "method": data.get("method"), "bound": bound,
                "boundary_probe_rate": boundary["rate"] if boundary else None,
                "boundary_client_busy_percent": boundary.get("client_cpu_percent") * per_cpu
                if boundary and boundary.get("client_cpu_percent") is not None else None,
                "client_bound": bool(boundary and (boundary.get("client_cpu_percent") or 0) * per_cpu >= SATURATED),
                # With nothing found: whether the client saturated in every run that failed.
                "failures_client_bound": all((st.get("client_cpu_percent") or 0) * per_cpu >= SATURATED
                                             for st in steps if st.get("passed") is False),
                "closed_loop_max_rps": next((s["throughput_rps"] for s in steps if s["kind"] == "closed-loop"), None),
                "probes": len([s for s in steps if s["kind"] == "probe"]),
                "confirmation_loadgen_busy_percent": max((t["busy_percent"] for t in threads), default=None),
                "lowest_probe_client_busy_percent": min((s["client_cpu_percent"] * per_cpu for s in steps
                                                         if s["kind"] == "probe"), default=None),
                "file": str(path.relative_to(self.folder)), "command": self.command(f"capacity-{server}")}

    def idle(self, server):
        memory = load_json(self.folder / "idle" / f"{server}-memory.json")
        if not memory:
            return None
        before = self.loadgen_row(server, [(f"idle-{server}-active-alone",
                                            self.folder / "idle" / f"{server}-active-alone.json")])
        held = self.loadgen_row(server, [(f"idle-{server}-active-held",
                                          self.folder / "idle" / f"{server}-active-held.json")])
        return {**memory, "active_alone": before.to_json() if before else None,
                "active_held": held.to_json() if held else None,
                "held_over_before": (held.rps / before.rps) if held and before and before.rps else None}

    def durability(self):
        if (self.folder / "durability" / "SKIPPED").exists():
            reason = (self.folder / "durability" / "SKIPPED").read_text().strip()
            return {"skipped": reason.removeprefix("skipped: ")}
        rows = {}
        for mode in ("durable", "in-memory"):
            files = sorted((self.folder / "durability").glob(f"{mode}-r*.json"))
            rows[mode] = self.loadgen_row("seqd", [(f"durability-{f.stem}", f) for f in files],
                                          budgeted=bool(self.budget(f"durability-{mode}-r1")))
        if not rows["durable"] or not rows["in-memory"]:
            return None
        return {"durable": rows["durable"].to_json(), "in_memory": rows["in-memory"].to_json(),
                "ratio": per_round_ratio(rows["durable"], rows["in-memory"]),
                "durable_row": rows["durable"], "in_memory_row": rows["in-memory"]}

    def in_process(self, name):
        data = load_json(self.folder / "inprocess" / f"{name}.json")
        if not data:
            return None
        return {"reservations_per_s": data["reservations_per_s"], "numbers_per_s": data["numbers_per_s"],
                "batch": data["batch"], "ns_per_reservation": data["ns_per_reservation"],
                "command": self.command(f"inprocess-{name}")}


def open_loop_bound(data, cpu):
    """What bounded an open-loop row's latency: the client (saturated, or late with its sends
    while the pipeline had room), the server (saturated, or holding back replies so that
    requests waited for pipeline room), or neither (the figures are the round trips)."""
    totals = data["totals"]
    lag = (data.get("send_lag_us") or {}).get("p99") or 0
    if (cpu.get("client_runnable_percent") or 0) >= SATURATED or (lag > 1000 and not totals["held_by_pipeline"]):
        return "client"
    # Not the server's runnable share: a busy-polling server is runnable all the time.
    if totals["held_by_pipeline"] or (totals.get("achieved_ratio") or 0) < 0.99:
        return "server"
    return "neither (round trips)"


def parse_redis_benchmark(path):
    try:
        text = path.read_text()
    except OSError:
        return None
    lines = [line for line in text.splitlines() if line.startswith('"')]
    for row in csv.reader(lines):
        if row and row[0] != "test" and len(row) >= 8:
            try:
                return {"rps": float(row[1]), "p50_ms": float(row[4]), "p99_ms": float(row[6]),
                        "max_ms": float(row[7])}
            except ValueError:
                return None
    return None


def parse_pgbench(path):
    try:
        match = re.search(r"^tps = ([0-9.]+)", path.read_text(), re.M)
    except OSError:
        return None
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------- the goals

def evaluate(run):
    closed = {(s, c): run.closed(s, c) for s in CLOSED_SERVERS for c in CONFIGS}
    resp = {(s, c, p): run.resp(s, c, p) for s in ("seqd", "redis") for c, p in RESP}
    bclosed = {(s, c): run.closed(s, c, budgeted=True) for s in CLOSED_SERVERS for c in BUDGET_CONFIGS}
    bresp = {(s, c, p): run.resp(s, c, p, budgeted=True) for s in ("seqd", "redis") for c, p in BUDGET_RESP}
    budget = run.budget_percent
    pg = {c: run.pgbench(c) for c in (1, 50)}
    rates = run.meta.get("open_rates") or []
    opened = {(s, r): run.open_loop(s, r) for s in ("seqd", "redis") for r in rates}
    capacity = {s: run.capacity(s) for s in ("seqd", "redis")}
    idle = {s: run.idle(s) for s in ("seqd", "redis")}
    durability = run.durability()
    inproc = {n: run.in_process(n) for n in ("getseq", "batch1000")}

    goals = []

    def ratio_goal(name, seqd, rival, threshold, rival_name):
        result = judge_ratio(seqd, rival, threshold)
        if result["ratio"] is None:
            figure = "-"
        elif seqd.budget_percent:
            figure = (f"{fmt_ratio(result['ratio'])} (median of per-round ratios; medians {fmt_rps(seqd.rps)} vs "
                      f"{rival_name} {fmt_rps(rival.rps)}; client busy {fmt_pct(seqd.client_busy)} vs "
                      f"{fmt_pct(rival.client_busy)}; server CPU {fmt_pct(seqd.server_cpu)} vs "
                      f"{fmt_pct(rival.server_cpu)} of a core)")
        else:
            figure = (f"{fmt_ratio(result['ratio'])} (median of per-round ratios; medians {fmt_rps(seqd.rps)} vs "
                      f"{rival_name} {fmt_rps(rival.rps)}; bound: seqd {seqd.bound}, {rival_name} {rival.bound}; "
                      f"server CPU per request {fmt_ns(seqd.server_ns)} vs {fmt_ns(rival.server_ns)})")
        result.update(goal=name, threshold=f">= {threshold:g}x", kind="ratio", figure=figure,
                      budgeted=bool(seqd and seqd.budget_percent))
        goals.append(result)

    # Issue 16's throughput goals, under the equal CPU budget; without one (no usable cgroup, or
    # --realtime) on the full-core rows, where client-bound rows stay inconclusive.
    where = f" at {budget}% of a CPU each" if budget else " (full core: no CPU budget in this run)"
    tp_closed = bclosed if budget else closed
    tp_resp = bresp if budget else resp
    for config, rival, threshold in [("50x64", "redis", 7.0), ("50x64", "baseline", 2.0),
                                     ("50x64", "zerowork", 1.0),
                                     ("50x16", "baseline", 2.0), ("50x16", "zerowork", 1.0),
                                     ("50x1", "baseline", 2.0), ("50x1", "zerowork", 1.0),
                                     ("50x1", "redis", 1.5)]:
        ratio_goal(f"binary {config}{where}: seqd / {SERVER_NAMES[rival]}", tp_closed[("seqd", config)],
                   tp_closed[(rival, config)], threshold, SERVER_NAMES[rival])
    where_resp = f" at {run.resp_budget_percent}% of a CPU each" if budget else where
    for p, threshold in [("P64", 3.0), ("P1", 1.2)]:
        ratio_goal(f"RESP (redis-benchmark -c 50 -{p[0]} {p[1:]}){where_resp}: seqd GETSEQ / Redis INCR",
                   tp_resp[("seqd", "c50", p)], tp_resp[("redis", "c50", p)], threshold, "Redis INCR")
    # Issue 6's single-connection goals, at full core (decided there: neither side saturates
    # the client at 1x1).
    for config, rival, threshold in [("1x1", "baseline", 1.0), ("1x1", "redis", 1.3),
                                     ("1x4096", "baseline", 1.0)]:
        ratio_goal(f"binary {config} (full core): seqd / {SERVER_NAMES[rival]}", closed[("seqd", config)],
                   closed[(rival, config)], threshold, SERVER_NAMES[rival])

    cs, cr = capacity["seqd"], capacity["redis"]
    name = "capacity at p99 <= 1 ms: seqd / Redis"
    if not cs or not cr:
        goals.append({"goal": name, "kind": "ratio", "threshold": ">= 5x", "verdict": "not measured",
                      "figure": "-"})
    else:
        s, r = cs["capacity_rps"], cr["capacity_rps"]
        figure = (f"seqd {fmt_rps(s) if s else 'none found'}, Redis {fmt_rps(r) if r else 'none found'}; "
                  f"client busy in the failing probe above: seqd {fmt_pct(cs['boundary_client_busy_percent'])}, "
                  f"Redis {fmt_pct(cr['boundary_client_busy_percent'])}")
        if s and r:
            met = s / r >= 5
            figure = f"{fmt_ratio(s / r)} ({figure})"
            if cs["client_bound"] and cr["client_bound"]:
                verdict, why = "inconclusive", "the client saturated at both limits: they are the client's"
            elif not met and cs["client_bound"]:
                verdict, why = "inconclusive", "the client saturated at seqd's limit: seqd's figure is only a lower bound"
            elif met and cr["client_bound"]:
                verdict, why = "inconclusive", "the client saturated at Redis's limit"
            else:
                verdict, why = ("met" if met else "missed"), ""
            goals.append({"goal": name, "kind": "ratio", "threshold": ">= 5x", "verdict": verdict,
                          "ratio": s / r, "figure": figure, "why": why})
        elif s and not r:
            goals.append({"goal": name, "kind": "ratio", "threshold": ">= 5x", "verdict": "met",
                          "figure": figure, "why": "Redis met the objective at no rate tried"})
        elif r and not s and cs["failures_client_bound"]:
            goals.append({"goal": name, "kind": "ratio", "threshold": ">= 5x", "verdict": "inconclusive",
                          "figure": figure, "why": "seqd met the objective at no confirmed rate, but the client "
                          "saturated in every run that failed: the latency measured was the client's"})
        elif r and not s:
            goals.append({"goal": name, "kind": "ratio", "threshold": ">= 5x", "verdict": "missed",
                          "figure": figure, "why": "seqd met the objective at no rate tried"})
        else:
            goals.append({"goal": name, "kind": "ratio", "threshold": ">= 5x", "verdict": "inconclusive",
                          "figure": figure,
                          "why": "neither server met p99 <= 1 ms at any rate tried (a busy machine?)"})

    o, r = opened.get(("seqd", 300000)), opened.get(("redis", 300000))
    result = judge_at_most(o["latency_us"]["p99_9"] if o else None, 1000.0,
                           client_bound=bool(o and o["client_fell_behind"]))
    result.update(goal="open loop at 300 k/s (full core): seqd p99.9", kind="absolute", threshold="<= 1 ms",
                  figure=(f"{fmt_us(o['latency_us']['p99_9'])} (p99 {fmt_us(o['latency_us']['p99'])}, achieved "
                          f"{fmt_rps(o['throughput_rps'])}, client runnable {fmt_pct(o['client_runnable_percent'])}, "
                          f"send lag p99 {fmt_us(o['send_lag_p99_us'])}; bound: {o['bound']})") if o else "-")
    goals.append(result)
    ratio = (o["latency_us"]["p99_9"] / r["latency_us"]["p99_9"]
             if o and r and r["latency_us"]["p99_9"] else None)
    result = judge_at_most(ratio, 0.5, client_bound=bool(o and r and (o["client_fell_behind"] or r["client_fell_behind"])))
    result.update(goal="open loop at 300 k/s (full core): seqd p99.9 / Redis p99.9", kind="ratio",
                  threshold="<= 0.5x",
                  figure=(f"{fmt_ratio(ratio)} (seqd {fmt_us(o['latency_us']['p99_9'])}, Redis "
                          f"{fmt_us(r['latency_us']['p99_9'])}; Redis achieved {fmt_rps(r['throughput_rps'])}, "
                          f"bound: {r['bound']})") if ratio is not None else "-")
    goals.append(result)

    i = idle["seqd"]
    per = i["kib_per_connection_after_one_request"] if i else None
    result = judge_at_most(per, 1.0)
    redis_per = idle["redis"]["kib_per_connection_after_one_request"] if idle["redis"] else None
    result.update(goal=f"memory per idle connection ({run.meta.get('idle_connections', 10000):,} held)",
                  kind="absolute", threshold="<= 1 KiB",
                  figure=(f"{per:.2f} KiB (connected only: {fmt_kib(i['kib_per_connection_connected'])}; "
                          f"Redis {fmt_kib(redis_per)})") if per is not None else "-")
    goals.append(result)

    name = "durability on / --in-memory (binary 50x64)"
    if durability is None:
        goals.append({"goal": name, "kind": "ratio", "threshold": ">= 0.97", "verdict": "not measured",
                      "figure": "-"})
    elif "skipped" in durability:
        goals.append({"goal": name, "kind": "ratio", "threshold": ">= 0.97", "verdict": "skipped",
                      "figure": "-", "why": durability["skipped"]})
    else:
        result = judge_ratio(durability["durable_row"], durability["in_memory_row"], 0.97)
        result.update(goal=name, kind="ratio", threshold=">= 0.97",
                      figure=f"{result['ratio']:.3f} ({fmt_rps(durability['durable_row'].rps)} vs "
                             f"{fmt_rps(durability['in_memory_row'].rps)})")
        goals.append(result)

    g = inproc["getseq"]
    result = judge_at_least(g["reservations_per_s"] if g else None, 100e6)
    result.update(goal="in-process GETSEQ, one thread", kind="absolute", threshold=">= 100 M/s",
                  figure=f"{g['reservations_per_s'] / 1e6:,.0f} M/s ({g['ns_per_reservation']:.2f} ns each)" if g else "-")
    goals.append(result)
    b = inproc["batch1000"]
    result = judge_at_least(b["numbers_per_s"] if b else None, 1e9)
    result.update(goal="in-process numbers with batches of 1000, one thread", kind="absolute",
                  threshold=">= 1 G/s", figure=f"{b['numbers_per_s'] / 1e9:,.1f} G numbers/s" if b else "-")
    goals.append(result)

    if durability and "skipped" not in durability:
        durability = {k: v for k, v in durability.items() if not k.endswith("_row")}
    return {
        "goals": goals,
        "closed": {f"{s} {c}": (r.to_json() if r else None) for (s, c), r in closed.items()},
        "resp": {f"{s} -c {c[1:]} -P {p[1:]}": (r.to_json() if r else None) for (s, c, p), r in resp.items()},
        "budget": run.meta.get("budget"),
        "closed_budgeted": {f"{s} {c}": (r.to_json() if r else None) for (s, c), r in bclosed.items()},
        "resp_budgeted": {f"{s} -c {c[1:]} -P {p[1:]}": (r.to_json() if r else None) for (s, c, p), r in bresp.items()},
        "pgbench": {f"-c {c}": (r.to_json() if r else None) for c, r in pg.items()},
        "open_loop": {f"{s} {r}/s": o for (s, r), o in opened.items()},
        "capacity": capacity,
        "idle": idle,
        "durability": durability,
        "in_process": inproc,
        "_rows": (closed, resp, pg),
        "_budgeted": (bclosed, bresp),
    }


# ---------------------------------------------------------------- formatting

def fmt_rps(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:,.2f} M/s"
    if v >= 1e3:
        return f"{v / 1e3:,.1f} k/s"
    return f"{v:,.0f}/s"


def fmt_ns(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} us" if v >= 1000 else f"{v:.0f} ns"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def fmt_pct(v):
    return "-" if v is None else f"{v:.0f}%"


def fmt_us(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"


def fmt_kib(v):
    return "-" if v is None else f"{v:.2f} KiB"


VERDICT_MARK = {"met": "**met**", "missed": "**MISSED**", "inconclusive": "inconclusive",
                "skipped": "skipped", "not measured": "not measured"}


def goals_table(goals):
    lines = ["| goal | target | figure | verdict |", "|---|---|---|---|"]
    for g in goals:
        verdict = VERDICT_MARK.get(g["verdict"], g["verdict"])
        if g.get("why"):
            verdict += f" ({g['why']})"
        lines.append(f"| {g['goal']} | {g['threshold']} | {g['figure']} | {verdict} |")
    return lines


def machine_lines(meta):
    v = meta.get("versions", {})
    return [
        f"- date: {meta.get('started', '?')} ({meta.get('mode', '?')} mode, {meta.get('rounds', '?')} round(s) "
        f"of the closed-loop, RESP and durability rows; medians reported)",
        f"- machine: {meta.get('nproc', '?')} CPUs, {meta.get('cpu_model', '?')}, kernel {meta.get('kernel', '?')}, "
        f"host {meta.get('host', '?')}",
        f"- load average (1, 5, 15 min) before: {meta.get('load_before', '?')}; after: {meta.get('load_after', '?')}"
        + ((" — the machine was busy (shared with other work), but `--realtime` gave the servers and "
            "clients their CPUs first" if meta.get("realtime") else
            " — **the machine was busy** (shared with other work): figures are noisy, ratios within a round "
            "are the ones to trust") if busy(meta) else ""),
        f"- pinning: every server on CPU {meta.get('server_cpu', '?')}, every client on CPU {meta.get('client_cpu', '?')} (taskset"
        + (f"; {meta['client_threads']} client threads, one per CPU" if (meta.get("client_threads") or 1) > 1 else "")
        + ")"
        + ("; every server and client under SCHED_FIFO (`chrt --fifo 10`, `--realtime`), so other work on "
           "the machine hardly interfered. The kernel pauses a real-time process that keeps its CPU busy "
           "for 50 ms in each second (`kernel.sched_rt_runtime_us`): on rows where a side saturated, "
           "tails near 50 ms are that pause, not the servers" if meta.get("realtime") else
           (f"; every server and client at {meta['priority']} (other work on the machine still competes "
            "for both CPUs: it is shared)" if meta.get("priority", "normal") != "normal" else
            "; normal scheduling (other work on the machine competes for both CPUs)")),
        budget_line(meta),
        f"- seqd commit {meta.get('commit', '?')} ({meta.get('seqd_binary', 'target/release/seqd')}); {v.get('seqd', '?')}, {v.get('loadgen', '?')}, {v.get('rustc', '?')}",
        f"- rivals: {v.get('redis', '?')}; {v.get('redis_benchmark', '?')}; {v.get('postgres', '?')}; {v.get('pgbench', '?')}",
        f"- durability in this seqd build: {'yes (the matrix runs seqd with persistence on, a fresh --data-dir)' if meta.get('seqd_durability_in_build') else 'no (in memory only)'}",
    ]


def seqd_busy_poll_us(folder):
    """seqd's --busy-poll setting in this run, from the start-up line of its log (None: not logged)."""
    try:
        found = re.search(r"busy_poll_us=(\d+)", (folder / "logs" / "seqd.log").read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def busy_poll_lines(run):
    us = seqd_busy_poll_us(run.folder)
    if not us:
        return []
    try:
        quota_seen = "CPU quota in force" in (run.folder / "logs" / "seqd.log").read_text()
    except OSError:
        quota_seen = False
    budgeted = (" Under the budget's quota it did not spin (`--busy-poll auto`, the default, "
                "stops while a CPU quota is in force; its log says so each time the suite moved "
                "it in), nor did the zero-work responder.") if quota_seen else ""
    return [f"- seqd busy-polls (`--busy-poll {us}`): after traffic its event loop watches for more "
            f"for {us} us before it sleeps, so its CPU reads near 100% on every full-core row with steady traffic. For seqd, "
            "*server CPU per request* includes that spinning (an upper bound), and a row where the client "
            "saturated too says *server and client*: such a row decides a goal only when it is met." + budgeted]


def busy(meta):
    try:
        n = int(meta.get("nproc", 2))
        # Only the load before counts: the one after includes the suite's own server and client.
        return float(meta.get("load_before", "0").split()[0]) > n / 2
    except (ValueError, IndexError):
        return False


def cpu_cell(figures, side="client"):
    if isinstance(figures, Row):
        cpu, runnable = getattr(figures, f"{side}_cpu"), getattr(figures, f"{side}_runnable")
    else:
        cpu, runnable = figures.get(f"{side}_cpu_percent"), figures.get(f"{side}_runnable_percent")
    return f"{fmt_pct(cpu)} ({fmt_pct(runnable)})"


def row_cells(row):
    if row is None:
        return ["-", "-", "-"]
    return [fmt_rps(row.rps), f"{cpu_cell(row)} / {cpu_cell(row, 'server')}", row.bound]


def readme(run, result):
    meta = run.meta
    closed, resp, pg = result["_rows"]
    out = []
    w = out.append
    w(f"# Benchmark run {run.folder.name}")
    w("")
    w("Generated by `bench/suite.sh` and `bench/lib/summarize.py`; do not edit by hand.")
    w("")
    out.extend(machine_lines(meta))
    out.extend(busy_poll_lines(run))
    failed = meta.get("failed_steps") or []
    if failed:
        w("- **steps that failed** (their rows are missing or wrong): " + "; ".join(failed))
    w("")
    w("## Goals")
    w("")
    w("Each goal is a ratio between figures of this run, the median of per-round ratios (or an absolute "
      "figure where the goal is one). The throughput goals are judged under the equal CPU budget where the "
      f"run had one: there a row whose client was over {CLIENT_HEADROOM:.0f}% busy counts as client-bound. "
      "At full core, a row where the load generator saturated (client runnable >= 90% of the time; whether "
      "or not the server did too, since CPU alone cannot then tell which set the pace) is client-bound. A "
      "client-bound row decides a goal only where the verdict stands anyway (met by seqd, or missed "
      "against a rival); otherwise it says *inconclusive*.")
    w("")
    out.extend(goals_table(result["goals"]))
    w("")
    out.extend(budget_section(run, result))
    w("## Closed loop at full core, binary protocol (loadgen; Redis driven with INCR by the same tool)")
    w("")
    w("Throughput (median of rounds), then client / server CPU: percent of one core on a CPU, and in "
      "parentheses on a CPU *or waiting for one* (runnable, in percent of the CPUs the side was pinned to), over the measured part (bench/lib/sample.py "
      "reads every thread's schedstat). A side runnable >= 90% of the time saturated; on a shared machine "
      "the gap between the two figures is the share other work took from it.")
    w("")
    w("| connections x pipeline | seqd | CPU c/s | bound | naive baseline | CPU c/s | bound | zero-work | CPU c/s | bound | Redis INCR | CPU c/s | bound | seqd / baseline | seqd / zero-work | seqd / Redis |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in CONFIGS:
        s, b, z, r = (closed[(x, c)] for x in CLOSED_SERVERS)
        cells = [c] + row_cells(s) + row_cells(b) + row_cells(z) + row_cells(r)
        cells += [fmt_ratio(per_round_ratio(s, x)) for x in (b, z, r)]
        w("| " + " | ".join(cells) + " |")
    w("")
    w("Ratios here and below are medians of per-round ratios (each round measures every server "
      "back to back).")
    w("")
    w("Latency (closed loop, from each request's send; the round with the median throughput is not "
      "singled out: these are medians of each percentile over rounds):")
    w("")
    w("| connections x pipeline | seqd p50 / p99 / p99.9 | baseline p50 / p99 / p99.9 | zero-work p50 / p99 / p99.9 | Redis p50 / p99 / p99.9 |")
    w("|---|---|---|---|---|")
    for c in CONFIGS:
        cells = [c]
        for srv in CLOSED_SERVERS:
            row = closed[(srv, c)]
            if row:
                cells.append(" / ".join(fmt_us(median([x[k] for x in row.rounds])) for k in ("p50_us", "p99_us", "p99_9_us")))
            else:
                cells.append("-")
        w("| " + " | ".join(cells) + " |")
    w("")
    w("Server CPU time per request (on-CPU time over the measured part / requests; lower is better). "
      "Unlike throughput it hardly depends on what else the machine runs, so its inverse ratio estimates "
      "how the servers would compare with a core each to themselves, where the server is what saturates:")
    w("")
    w("| connections x pipeline | seqd | naive baseline | zero-work | Redis INCR | baseline / seqd | zero-work / seqd | Redis / seqd |")
    w("|---|---|---|---|---|---|---|---|")
    for c in CONFIGS:
        s_, b, z, r = (closed[(x, c)] for x in CLOSED_SERVERS)
        ns = lambda row: row.server_ns if row else None  # noqa: E731
        per = lambda row: fmt_ratio(ns(row) / ns(s_)) if ns(row) and ns(s_) else "-"  # noqa: E731
        w(f"| {c} | {fmt_ns(ns(s_))} | {fmt_ns(ns(b))} | {fmt_ns(ns(z))} | {fmt_ns(ns(r))} | {per(b)} | {per(z)} | {per(r)} |")
    w("")
    w("Plots (latency by percentile, last round): " + ", ".join(
        f"[{c}](closed-{c}.svg)" for c in CONFIGS if (run.folder / f"closed-{c}.svg").exists()) + ".")
    w("")
    w("## RESP via redis-benchmark (seqd GETSEQ vs Redis INCR)")
    w("")
    w("| redis-benchmark | seqd GETSEQ | CPU c/s | bound | Redis INCR | CPU c/s | bound | ratio | server CPU per request, seqd / Redis |")
    w("|---|---|---|---|---|---|---|---|---|")
    for c, p in RESP:
        s, r = resp[("seqd", c, p)], resp[("redis", c, p)]
        cells = [f"-c {c[1:]} -P {p[1:]}"] + row_cells(s) + row_cells(r)
        cells.append(fmt_ratio(per_round_ratio(s, r)))
        cells.append(f"{fmt_ns(s.server_ns)} / {fmt_ns(r.server_ns)}" if s and r else "-")
        w("| " + " | ".join(cells) + " |")
    w("")
    w("## PostgreSQL nextval (pgbench -M prepared, one-line script)")
    w("")
    w("| clients | nextval/s | CPU c/s | bound | seqd binary at the same connections x 1 | seqd / PostgreSQL |")
    w("|---|---|---|---|---|---|")
    for c in (1, 50):
        row = pg[c]
        s = closed[("seqd", f"{c}x1")]
        cells = [str(c)] + row_cells(row) + [fmt_rps(s.rps) if s else "-",
                                             fmt_ratio(s.rps / row.rps) if s and row and row.rps else "-"]
        w("| " + " | ".join(cells) + " |")
    w("")
    w("## Open loop (50 connections, at most 64 in flight each; latency from the planned send time)")
    w("")
    w("Fixed rates, the same for both servers, at full core (no quota: its throttling would be in the "
      "latency); the client wakes up at most every `--send-granularity` and sends what fell due. *bound* "
      "says what limited the row: the client (saturated, or late with its sends while the pipeline had "
      "room), the server (requests waited for pipeline room, or the rate was not achieved), or neither "
      "(the figures are the round trips).")
    w("")
    w("| server | planned rate | achieved | p50 | p99 | p99.9 | max | service p99.9 | send lag p99 | client / server CPU (runnable) | bound |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    rates = meta.get("open_rates") or []
    for rate in rates:
        for srv in ("seqd", "redis"):
            o = result["open_loop"].get(f"{srv} {rate}/s")
            if not o:
                w(f"| {SERVER_NAMES[srv]} | {fmt_rps(rate)} | - | - | - | - | - | - | - | - | - |")
                continue
            lat, svc = o["latency_us"], o["service_time_us"]
            w(f"| {SERVER_NAMES[srv]} | {fmt_rps(o['rate'])} | {fmt_rps(o['throughput_rps'])} | {fmt_us(lat['p50'])} | "
              f"{fmt_us(lat['p99'])} | {fmt_us(lat['p99_9'])} | {fmt_us(lat['max'])} | {fmt_us(svc['p99_9'])} | "
              f"{fmt_us(o['send_lag_p99_us'])} | {cpu_cell(o)} / {cpu_cell(o, 'server')} | {o['bound']} |")
    w("")
    w("Plots: " + ", ".join(f"[{fmt_rps(r)}](open-{r}.svg)" for r in rates if (run.folder / f"open-{r}.svg").exists()) + ".")
    w("")
    w("## Capacity: highest rate with p99 <= 1 ms (50 connections, at most 64 in flight each)")
    w("")
    w("Full core, with `--send-granularity` so that the client's own wake-ups are not the limit.")
    w("")
    w("| server | capacity | closed-loop maximum (upper bound) | probes | failing probe above it: rate, client busy | bounded by | how |")
    w("|---|---|---|---|---|---|---|")
    for srv in ("seqd", "redis"):
        cap = result["capacity"][srv]
        if not cap:
            w(f"| {SERVER_NAMES[srv]} | - | - | - | - | - | - |")
            continue
        w(f"| {SERVER_NAMES[srv]} | {fmt_rps(cap['capacity_rps']) if cap['capacity_rps'] else 'none found'} | "
          f"{fmt_rps(cap['closed_loop_max_rps'])} | {cap['probes']} | "
          f"{fmt_rps(cap['boundary_probe_rate'])}, {fmt_pct(cap['boundary_client_busy_percent'])} | {cap['bound']} | {cap['method']} |")
    w("")
    w(f"## {meta.get('idle_connections', 10000):,} idle connections")
    w("")
    w("Server RSS (VmRSS, once steady) before, with the connections open and nothing sent, and after one "
      "request and reply on each; then 50 active connections x 64 pipelined on the same server, first "
      "beside the idle ones, then alone once they are closed.")
    w("")
    w("| server | RSS before | per connection, connected | per connection, after one request | 50x64 alone | 50x64 beside idle | beside / alone |")
    w("|---|---|---|---|---|---|---|")
    for srv in ("seqd", "redis"):
        i = result["idle"][srv]
        if not i:
            w(f"| {SERVER_NAMES[srv]} | - | - | - | - | - | - |")
            continue
        before = i["active_alone"]["throughput_rps"] if i["active_alone"] else None
        held = i["active_held"]["throughput_rps"] if i["active_held"] else None
        w(f"| {SERVER_NAMES[srv]} | {i['rss_kib_before']:,} KiB | {fmt_kib(i['kib_per_connection_connected'])} | "
          f"{fmt_kib(i['kib_per_connection_after_one_request'])} | {fmt_rps(before)} | {fmt_rps(held)} | "
          f"{fmt_ratio(i['held_over_before'])} |")
    w("")
    w("## Durability: persistence on vs --in-memory")
    w("")
    d = result["durability"]
    if d is None:
        w("Not measured (a step failed).")
    elif "skipped" in d:
        w(f"Skipped: {d['skipped']}.")
    else:
        w(f"seqd binary 50x64, a fresh server per run, modes alternated: durable {fmt_rps(d['durable']['throughput_rps'])}, "
          f"in-memory {fmt_rps(d['in_memory']['throughput_rps'])} (medians), ratio **{d['ratio']:.3f}**. Per round: "
          + ", ".join(f"{fmt_rps(a['throughput_rps'])} vs {fmt_rps(b['throughput_rps'])}"
                      for a, b in zip(d["durable"]["rounds"], d["in_memory"]["rounds"])) + ".")
    w("")
    w("## In-process allocation (no network; one thread on the client CPU)")
    w("")
    for name, label in (("getseq", "GETSEQ (batch 1)"), ("batch1000", "batches of 1000")):
        i = result["in_process"][name]
        if i:
            w(f"- {label}: {i['reservations_per_s'] / 1e6:,.0f} M reservations/s, "
              f"{i['numbers_per_s'] / 1e6:,.0f} M numbers/s ({i['ns_per_reservation']:.2f} ns per reservation)")
    w("")
    w("## Every command")
    w("")
    w("Servers (all on loopback, ports chosen free at start; `$TMP` is a temporary directory):")
    w("")
    for srv, cmd in (meta.get("servers") or {}).items():
        w(f"- {srv}: `{cmd}`")
    w("")
    w("Clients, in the order run (`$OUT` is this folder); each line: exit status, wall time, and server / "
      "client CPU over the measured part (in parentheses: runnable):")
    w("")
    w("```")
    for m in run.measurements.values():
        w(f"[{m['status']}, exit {m['exit']}, {m['wall_s']:.2f} s, CPU {cpu_cell(run.cpu(m['id']), 'server')} / "
          f"{cpu_cell(run.cpu(m['id']))}] {m['command']}")
    w("```")
    w("")
    w("Files: `closed/`, `open/`, `capacity/`, `idle/`, `durability/`, `inprocess/` hold loadgen's "
      "`.json` (schema in loadgen/SCHEMA.md), `.hgrm` and `.hlog` files and its printed summaries (`.txt`); "
      "`resp/` redis-benchmark's CSV; `pgbench/` pgbench's output and script; `logs/` the servers' logs; "
      "`measurements.jsonl` every step with its command and CPU; `summary.json` everything above.")
    return "\n".join(out) + "\n"


def resp_budget_clause(budget):
    """How the redis-benchmark rows' budget differs from the rest ("" where it does not)."""
    percent = budget.get("resp_percent", budget.get("percent"))
    if percent == budget.get("percent"):
        return ""
    return (f"; {budget['resp_quota_us']} us, {percent}%, for the redis-benchmark rows, so that its one "
            f"client thread keeps headroom")


def budget_line(meta):
    b = meta.get("budget") or {}
    if b.get("kind"):
        return (f"- CPU budget: each server in turn moved into one cgroup ({b['kind']}, "
                f"{'cpu.max' if b['kind'] == 'v2' else 'cpu.cfs_quota_us'}: {b['quota_us']} us per "
                f"{b['period_us']} us, i.e. {b['percent']}% of its CPU{resp_budget_clause(b)}) for the budgeted "
                f"rows; the client on "
                f"its own CPU without a quota; a budgeted row whose client was over {CLIENT_HEADROOM:.0f}% busy "
                f"is marked")
    return f"- CPU budget: **none in this run** ({b.get('unusable_because') or 'not recorded'})"


def budget_section(run, result):
    """The budgeted rows: README lines."""
    bclosed, bresp = result["_budgeted"]
    budget = run.budget_percent
    lines = ["## Closed loop under an equal CPU budget (the throughput goals)", ""]
    if not budget:
        lines += [budget_line(run.meta)[2:] + ".", ""]
        return lines
    resp = run.resp_budget_percent
    lines += [f"Every server at {budget}% of one CPU (CFS quota; {resp}% in the redis-benchmark rows, whose one "
              "client thread would otherwise be the limit), the client on its own CPU without one. "
              if resp != budget else
              f"Every server at {budget}% of one CPU (CFS quota), the client on its own CPU without one. "
              "*client busy* is the load generator's time on a CPU in percent of its CPUs (the highest round); "
              f"over {CLIENT_HEADROOM:.0f}% the row may measure the client and is marked. *server CPU* is in "
              "percent of one core (at most the budget); *throttled* is the share of quota periods that ran "
              "out (warm-up included).", "",
              "| connections x pipeline | seqd | naive baseline | zero-work | Redis INCR | seqd / baseline | seqd / zero-work | seqd / Redis |",
              "|---|---|---|---|---|---|---|---|"]

    def cell(row):
        if row is None:
            return "-"
        mark = " **client over 75%**" if row.client_over_headroom else ""
        throttled = [r["budget"]["throttled_periods"] / r["budget"]["periods"] for r in row.rounds
                     if r.get("budget") and r["budget"].get("periods")]
        t = f", throttled {100 * median(throttled):.0f}%" if throttled else ""
        return (f"{fmt_rps(row.rps)} (client busy {fmt_pct(row.client_busy)}, server CPU "
                f"{fmt_pct(row.server_cpu)}{t}){mark}")
    for c in BUDGET_CONFIGS:
        s, b, z, r = (bclosed[(x, c)] for x in CLOSED_SERVERS)
        lines.append(f"| {c} | {cell(s)} | {cell(b)} | {cell(z)} | {cell(r)} | "
                     + " | ".join(fmt_ratio(per_round_ratio(s, x)) for x in (b, z, r)) + " |")
    lines += ["", f"| redis-benchmark, {run.resp_budget_percent}% of a CPU each | seqd GETSEQ | Redis INCR | "
              "seqd / Redis |", "|---|---|---|---|"]
    for c, p in BUDGET_RESP:
        s, r = bresp[("seqd", c, p)], bresp[("redis", c, p)]
        lines.append(f"| -c {c[1:]} -P {p[1:]} | {cell(s)} | {cell(r)} | {fmt_ratio(per_round_ratio(s, r))} |")
    plots = [f"[{c}](closed-budget-{c}.svg)" for c in BUDGET_CONFIGS
             if (run.folder / f"closed-budget-{c}.svg").exists()]
    if plots:
        lines += ["", "Plots (latency by percentile, last round): " + ", ".join(plots) + "."]
    lines.append("")
    return lines


def index_section(run, result):
    folder = run.folder.name
    lines = ["<!-- generated by bench/lib/summarize.py from the latest full run; do not edit by hand -->",
             "", f"Latest full run: [{folder}]({folder}/README.md)", ""]
    lines.extend(machine_lines(run.meta))
    lines.extend(busy_poll_lines(run))
    lines.append("")
    lines.extend(goals_table(result["goals"]))
    closed, resp, _ = result["_rows"]
    bclosed, _ = result["_budgeted"]
    flag = lambda row: " (client saturated)" if row and row.client_saturated else ""  # noqa: E731
    if run.budget_percent:
        lines.append("")
        lines.append(f"| binary, closed loop, {run.budget_percent}% of a CPU each | seqd | naive baseline | zero-work | "
                     "Redis INCR | seqd / baseline | seqd / zero-work | seqd / Redis |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for c in BUDGET_CONFIGS:
            rows = [bclosed[(x, c)] for x in CLOSED_SERVERS]
            lines.append(f"| {c} | " + " | ".join(f"{fmt_rps(x.rps if x else None)}{flag(x)}" for x in rows) + " | "
                         + " | ".join(fmt_ratio(per_round_ratio(rows[0], x)) for x in rows[1:]) + " |")
    lines.append("")
    lines.append("| binary, closed loop, full core | seqd | naive baseline | zero-work | Redis INCR (loadgen) | seqd / baseline | seqd / zero-work | seqd / Redis |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in CONFIGS:
        rows = [closed[(x, c)] for x in CLOSED_SERVERS]
        lines.append(f"| {c} | " + " | ".join(f"{fmt_rps(x.rps if x else None)}{flag(x)}" for x in rows) + " | "
                     + " | ".join(fmt_ratio(per_round_ratio(rows[0], x)) for x in rows[1:]) + " |")
    lines.append("")
    lines.append("| redis-benchmark | seqd GETSEQ | Redis INCR | ratio |")
    lines.append("|---|---|---|---|")
    for c, p in RESP:
        s, r = resp[("seqd", c, p)], resp[("redis", c, p)]
        lines.append(f"| -c {c[1:]} -P {p[1:]} | {fmt_rps(s.rps if s else None)} | {fmt_rps(r.rps if r else None)} | "
                     f"{fmt_ratio(per_round_ratio(s, r))} |")
    return lines


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_index(path, section):
    text = path.read_text() if path.exists() else ""
    block = BEGIN + "\n" + "\n".join(section) + "\n" + END
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)


def self_test():
    passed = []

    def check(condition, what):
        if not condition:
            raise AssertionError(what)
        passed.append(what)

    def row(bound, rps):
        client = 95.0 if bound == "client" else 50.0
        server = 95.0 if bound == "server" else 50.0
        return Row("x", rps, [{"client_runnable_percent": client, "server_runnable_percent": server}])
    check(judge_ratio(row("server", 200), row("server", 100), 1.3)["verdict"] == "met", 'judge_ratio(row("server", 200), row("server", 100), 1.3)["verdict"] == "met"')
    check(judge_ratio(row("server", 100), row("server", 100), 1.3)["verdict"] == "missed", 'judge_ratio(row("server", 100), row("server", 100), 1.3)["verdict"] == "missed"')
    check(judge_ratio(row("client", 200), row("client", 100), 1.3)["verdict"] == "inconclusive", 'judge_ratio(row("client", 200), row("client", 100), 1.3)["verdict"] == "inconclusive"')
    # seqd client-bound but the goal met anyway: its figure is a lower bound, so met stands.
    check(judge_ratio(row("client", 200), row("server", 100), 1.3)["verdict"] == "met", 'judge_ratio(row("client", 200), row("server", 100), 1.3)["verdict"] == "met"')
    # the rival client-bound and the goal missed: the rival is at least that fast, missed stands.
    check(judge_ratio(row("server", 100), row("client", 100), 1.3)["verdict"] == "missed", 'judge_ratio(row("server", 100), row("client", 100), 1.3)["verdict"] == "missed"')
    check(judge_ratio(row("server", 200), row("client", 100), 1.3)["verdict"] == "inconclusive", 'judge_ratio(row("server", 200), row("client", 100), 1.3)["verdict"] == "inconclusive"')
    check(judge_ratio(row("client", 100), row("server", 100), 1.3)["verdict"] == "inconclusive", 'judge_ratio(row("client", 100), row("server", 100), 1.3)["verdict"] == "inconclusive"')
    check(judge_ratio(None, row("server", 1), 1.0)["verdict"] == "not measured", 'judge_ratio(None, row("server", 1), 1.0)["verdict"] == "not measured"')
    check(judge_at_most(900, 1000)["verdict"] == "met", 'judge_at_most(900, 1000)["verdict"] == "met"')
    check(judge_at_most(1900, 1000, client_bound=True)["verdict"] == "inconclusive", 'judge_at_most(1900, 1000, client_bound=True)["verdict"] == "inconclusive"')
    check(judge_at_least(2e8, 1e8)["verdict"] == "met", 'judge_at_least(2e8, 1e8)["verdict"] == "met"')
    # A capacity probe's client CPU is per client CPU: 120% of one core is saturated for one
    # client thread, not for two.
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / "capacity").mkdir()
        (folder / "capacity" / "seqd-p99-1ms.json").write_text(json.dumps(
            {"capacity_rps": 1000, "confirmation": {},
             "steps": [{"kind": "probe", "rate": 2000, "passed": False, "client_cpu_percent": 120.0}]}))
        for threads, bound in ((1, True), (2, False)):
            (folder / "meta.json").write_text(json.dumps({"client_threads": threads}))
            found = Run(folder).capacity("seqd")
            check(found["client_bound"] is bound, f"capacity: 120% client CPU over {threads} client thread(s) -> client_bound {bound}")
            check(found["failures_client_bound"] is bound, f"capacity: failing runs at 120% over {threads} thread(s) -> failures_client_bound {bound}")
    # Ratios are medians of per-round ratios, not ratios of medians.
    a = Row("a", 100, [{"round": 1, "throughput_rps": 100}, {"round": 2, "throughput_rps": 300},
                       {"round": 3, "throughput_rps": 200}])
    b = Row("b", 100, [{"round": 1, "throughput_rps": 50}, {"round": 2, "throughput_rps": 300},
                       {"round": 3, "throughput_rps": 400}])
    check(per_round_ratio(a, b) == 1.0, "per_round_ratio: median of 2.0, 1.0, 0.5 is 1.0")
    # Under a budget the client must keep 25% headroom (its CPU per client CPU, highest round).
    busy = Row("x", 100, [{"client_cpu_percent": 60.0}, {"client_cpu_percent": 80.0}], budget_percent=50)
    calm = Row("x", 100, [{"client_cpu_percent": 140.0}], client_cpus=2, budget_percent=50)
    check(busy.client_saturated and not calm.client_saturated, "budgeted: client over 75% busy is client-bound")
    check(judge_ratio(busy, calm, 1.5)["verdict"] == "inconclusive", "budgeted: missed against a client-bound seqd row is inconclusive")
    both = Row("x", 100, [{"client_runnable_percent": 95.0, "server_runnable_percent": 95.0}])
    # Both saturated: either may have set the pace, so seqd's figure is only a lower bound.
    check(both.bound == BOTH and both.client_saturated, 'both saturated: server and client')
    check(judge_ratio(both, row("server", 100), 1.3)["verdict"] == "inconclusive", 'missed with both saturated: inconclusive')
    check(judge_ratio(both, row("server", 50), 1.3)["verdict"] == "met", 'met with both saturated: met')
    with tempfile.TemporaryDirectory() as d:
        (pathlib.Path(d) / "logs").mkdir()
        (pathlib.Path(d) / "logs" / "seqd.log").write_text("INFO seqd listening on 127.0.0.1:1 threads=1 busy_poll_us=50\n")
        check(seqd_busy_poll_us(pathlib.Path(d)) == 50, 'busy-poll setting read from the seqd log')
    csv_text = '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"\n"INCR k","23529.41","0.125","0.032","0.119","0.215","0.247","0.399"\n'
    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "x.csv"
        p.write_text("noise\r" + csv_text)
        check(parse_redis_benchmark(p)["rps"] == 23529.41, 'parse_redis_benchmark(p)["rps"] == 23529.41')
        p.write_text("tps = 86123.5 (without initial connection time)\n")
        check(parse_pgbench(p) == 86123.5, 'parse_pgbench(p) == 86123.5')
        idx = pathlib.Path(d) / "README.md"
        idx.write_text("# Results\n\nintro\n")
        update_index(idx, ["table 1"])
        update_index(idx, ["table 2"])
        text = idx.read_text()
        check(text.count(BEGIN) == 1 and "table 2" in text and "table 1" not in text and "intro" in text, 'text.count(BEGIN) == 1 and "table 2" in text and "table 1" not in text and "intro" in text')
    print(f"summarize.py self-test: {len(passed)} passed, 0 failed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=pathlib.Path)
    parser.add_argument("--index", type=pathlib.Path, help="regenerate the summary section of this README")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return 0
    if not args.folder or not (args.folder / "meta.json").exists():
        parser.error("give the folder of a run (with meta.json) written by bench/suite.sh")
    run = Run(args.folder)
    result = evaluate(run)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["meta"] = run.meta
    (args.folder / "summary.json").write_text(json.dumps(public, indent=2, default=lambda o: o.to_json()) + "\n")
    (args.folder / "README.md").write_text(readme(run, result))
    if args.index:
        update_index(args.index, index_section(run, result))
    print("\n".join(goals_table(result["goals"])))
    print(f"\nwrote {args.folder / 'README.md'} and summary.json" + (f"; updated {args.index}" if args.index else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

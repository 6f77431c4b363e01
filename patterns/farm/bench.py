"""Farm throughput with 1, 2 and 4 worker processes: ``python -m zmqkit.patterns.farm.bench``.

For each task kind and worker count, it starts the workers as child processes (each a node on a
private beacon port), waits until the submitter has heard from all of them, then times ``tasks``
submitted at once until the last result is in; the figure is the median of ``runs`` runs.

    trivial   the handler returns its argument
    cpu-1ms   the handler spins for 1 ms of CPU time, then returns its argument

``--journal`` runs each row twice, the second time with the submitter journaled in a file (a
fresh temporary directory), and prints what the journal costs per task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zmqkit import Node

from .async_submitter import AsyncSubmitter
from .submitter import Submitter

WORKER = r"""
import sys, time
import zmqkit
from zmqkit.patterns import farm

port, kind, slots, prefetch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def trivial(x):
    return x

def cpu_1ms(x):
    end = time.process_time() + 0.001
    while time.process_time() < end:
        pass
    return x

with zmqkit.Node("bench-worker", port=port) as node:
    handler = trivial if kind == "trivial" else cpu_1ms
    farm.serve_worker(node, handler, farm="bench", slots=slots, prefetch=prefetch)
    print("ready", flush=True)
    sys.stdin.read()
"""


def free_udp_port() -> int:
    """A UDP port free now on loopback, for the bench's own beacon."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process or of child ``pid``; 0 where /proc is missing."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sync(node: Node, workers: int, tasks: int, runs: int,
             journal: Path | None = None) -> list[float]:
    """Tasks per second of ``runs`` rounds through a ``Submitter``, once ``workers`` are seen."""
    with Submitter(node, "bench", journal=journal) as submitter:
        deadline = time.monotonic() + 10
        while len({w.node for w in submitter.workers()}) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(submitter.workers())} of {workers} workers came")
            time.sleep(0.01)
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            for x in range(tasks):
                submitter.submit(x)
            done = sum(1 for _ in submitter.as_completed(timeout=600))
            rates.append(done / (time.perf_counter() - start))
        return rates


async def run_async(node: Node, workers: int, tasks: int, runs: int,
                    journal: Path | None = None) -> list[float]:
    """Tasks per second of ``runs`` rounds through an ``AsyncSubmitter``, as ``run_sync``."""
    async with AsyncSubmitter(node, "bench", journal=journal) as submitter:
        deadline = time.monotonic() + 10
        while len({w.node for w in submitter.workers()}) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(submitter.workers())} of {workers} workers came")
            await asyncio.sleep(0.01)
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            for x in range(tasks):
                submitter.submit(x)
            done = 0
            async for _ in submitter.as_completed(timeout=600):
                done += 1
            rates.append(done / (time.perf_counter() - start))
        return rates


def measure(kind: str, workers: int, tasks: int, runs: int, slots: int,
            prefetch: int, use_asyncio: bool = False,
            journal: Path | None = None) -> tuple[list[float], float, float]:
    """Tasks per second of each run, with ``workers`` worker processes; and the share of one
    core that the submitter and the workers (together) used, over all runs."""
    port = free_udp_port()
    children = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), kind, str(slots),
                                  str(prefetch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                for _ in range(workers)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().startswith(b"ready")
        with Node("bench-submitter", port=port) as node:
            mine, theirs = cpu_seconds(), sum(cpu_seconds(child.pid) for child in children)
            began = time.perf_counter()
            if use_asyncio:
                rates = asyncio.run(run_async(node, workers, tasks, runs, journal))
            else:
                rates = run_sync(node, workers, tasks, runs, journal)
            wall = time.perf_counter() - began
            mine = (cpu_seconds() - mine) / wall
            theirs = (sum(cpu_seconds(child.pid) for child in children) - theirs) / wall
            return rates, mine, theirs
    finally:
        for child in children:
            child.kill()
            child.wait(5)
            if child.stdin is not None:
                child.stdin.close()
            if child.stdout is not None:
                child.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """Run the bench from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m zmqkit.patterns.farm.bench",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["trivial", "cpu-1ms"],
                        choices=["trivial", "cpu-1ms"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--tasks", type=int, default=0,
                        help="tasks per run (default: 20000 trivial, 4000 cpu-1ms)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--asyncio", action="store_true", help="AsyncSubmitter, not Submitter")
    parser.add_argument("--journal", action="store_true",
                        help="each row also with a journaled submitter, and the cost per task")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zmqkit-farm-bench-") as scratch:
        journals = [None, Path(scratch) / "tasks.db"] if args.journal else [None]
        for kind in args.kinds:
            tasks = args.tasks or (20_000 if kind == "trivial" else 4_000)
            for workers in args.workers:
                medians = []
                for journal in journals:
                    rates, mine, theirs = measure(kind, workers, tasks, args.runs, args.slots,
                                                  args.prefetch, args.asyncio, journal)
                    median = statistics.median(rates)
                    medians.append(median)
                    rows.append({
                        "kind": kind, "workers": workers, "tasks": tasks, "slots": args.slots,
                        "prefetch": args.prefetch, "median": median, "runs": rates,
                        "submitter_cpu": mine, "workers_cpu": theirs,
                        "submitter": "AsyncSubmitter" if args.asyncio else "Submitter",
                        "journal": journal is not None})
                    if not args.json:
                        front = ("async" if args.asyncio else "sync") + ("+j" if journal else "")
                        print(f"{kind:8} {front:7} {workers} worker(s)  {median:9,.0f} tasks/s"
                              f"  (runs: {', '.join(f'{r:,.0f}' for r in rates)}; cpu: "
                              f"submitter {mine:.0%}, workers {theirs:.0%}; slots {args.slots}, "
                              f"prefetch {args.prefetch}, {tasks} tasks)", flush=True)
                if len(medians) == 2 and not args.json:
                    cost = 1e6 / medians[1] - 1e6 / medians[0]
                    print(f"{'':8} the journal costs {cost:,.0f} µs per task here", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

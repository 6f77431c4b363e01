"""What a write costs, with a store and without: ``python -m zmqkit.patterns.state.bench``.

One replica on a node of its own (a private beacon port, so no member shows up) takes ``writes``
``set`` calls of small values from each of ``threads`` threads, over ``keys`` keys; the figure
is the median over ``runs`` runs of the time per write, without a store and then with one (a
fresh file in a temporary directory). With a store, each ``set`` returns once the replica's
thread has written it to the file, and writes from several threads share a transaction.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from zmqkit import Node

from .state import State


def free_udp_port() -> int:
    """A UDP port free now on loopback, for the bench's own beacon."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_writes(replica: State, threads: int, writes: int, keys: int) -> float:
    """Seconds per ``set``, ``writes`` from each of ``threads`` threads at once."""

    def write(offset: int) -> None:
        for n in range(writes):
            replica.set(f"key-{(offset + n) % keys}", {"seq": n, "sym": "ABC", "px": 101.25})

    workers = [threading.Thread(target=write, args=(i * writes,)) for i in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - start) / (threads * writes)


def measure(store: Path | None, threads: int, writes: int, keys: int, runs: int) -> list[float]:
    """Microseconds per write of each run."""
    with Node("bench-state", port=free_udp_port()) as node, \
            State(node, "bench", join_wait=0.05, store=store) as replica:
        replica.wait_synced(timeout=5)
        return [time_writes(replica, threads, writes, keys) * 1e6 for _ in range(runs)]


def main(argv: list[str] | None = None) -> int:
    """Run the bench from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m zmqkit.patterns.state.bench",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--writes", type=int, default=5000, help="per thread and run")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zmqkit-state-bench-") as scratch:
        for threads in args.threads:
            for store in (None, Path(scratch) / f"map-{threads}.db"):
                runs = measure(store, threads, args.writes, args.keys, args.runs)
                median = statistics.median(runs)
                rows.append({"threads": threads, "store": store is not None, "writes": args.writes,
                             "keys": args.keys, "us_per_write": median, "runs": runs})
                if not args.json:
                    what = "with a store" if store is not None else "in memory   "
                    print(f"{threads} thread(s) {what}  {median:8.1f} µs per write  "
                          f"({1e6 / median:9,.0f} writes/s; runs: "
                          f"{', '.join(f'{r:.1f}' for r in runs)} µs)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

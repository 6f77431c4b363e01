"""``zmqkit bench``: each pattern against raw pyzmq doing the same work, in this run.

Long work shows where it is: a progress bar on a terminal, a line per step on stderr in a pipe.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .output import Output
from .parsing import CommandParser, add_command, at_least_one

__all__ = ["register"]

CHOICES = ("rpc", "async-rpc", "pubsub", "pubsub-batched", "large", "fanout", "clients", "latency",
           "discovery", "codec", "all")  # bench.WORKLOADS and more, written out: bench loads late
COLUMNS = ("workload", "raw pyzmq", "zmqkit", "ratio", "unit", "note")


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``bench``."""
    bench = add_command(
        commands,
        "bench",
        summary="measure each pattern against raw pyzmq",
        description="Run each workload with raw pyzmq and with zmqkit, rounds alternating, and "
        "print the medians and their ratio (zmqkit / raw; docs/performance.md explains each).",
        examples=[
            ("zmqkit bench rpc", "one workload, 5 rounds"),
            ("zmqkit bench all --quick --rounds 1", "tiny counts: checks that it works"),
            ("zmqkit bench all --json > figures.json", "a JSON list; progress lines on stderr"),
        ],
    )
    bench.add_argument(
        "workload",
        metavar="WORKLOAD",
        nargs="?",
        default="all",
        choices=CHOICES,
        help=f"what to measure: {', '.join(CHOICES)} (default all)",
    )
    bench.add_argument("--json", action="store_true", help="print a JSON list of results")
    bench.add_argument("--quick", action="store_true", help="tiny counts: checks that it works")
    bench.add_argument(
        "--rounds",
        type=at_least_one,
        default=5,
        metavar="R",
        help="rounds per workload, alternating raw and zmqkit (default 5)",
    )
    bench.set_defaults(run=run_bench)


def _steps(workloads: list[str], rounds: int) -> int:
    """How many progress steps ``bench.run`` reports: one for discovery, two per round else."""
    return sum(1 if workload == "discovery" else 2 * rounds for workload in workloads)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    """A step reporter: a bar on a terminal (stderr), else one line per step on stderr."""
    errors = Console(stderr=True)
    if not errors.is_terminal:
        count = 0

        def line(step: str) -> None:
            nonlocal count
            count += 1
            sys.stderr.write(f"bench: step {count}/{total}: {step}\n")
            sys.stderr.flush()

        yield line
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=total)
        started = False

        def advance(step: str) -> None:
            nonlocal started
            bar.update(task, description=step, advance=1 if started else 0)
            started = True

        yield advance
        bar.update(task, completed=total)


def run_bench(args: argparse.Namespace, out: Output) -> int:
    """Run the workloads; print a table (or JSON) of medians and ratios."""
    from zmqkit import bench as benchmarks

    workloads = list(benchmarks.WORKLOADS) if args.workload == "all" else [args.workload]
    with _progress(_steps(workloads, args.rounds)) as progress:
        results = benchmarks.run(
            workloads, rounds=args.rounds, quick=args.quick, progress=progress
        )
    if args.json:
        out.value(benchmarks.as_json(results), compact=True)
        return 0
    rows = [
        [r.workload, f"{r.raw:,.1f}", f"{r.ours:,.1f}", f"{r.ratio:.2f}", r.unit, r.note]
        for r in results
    ]
    title = f"zmqkit vs raw pyzmq, median of {args.rounds} rounds (ratio = zmqkit / raw)"
    out.table(title, COLUMNS, rows)
    return 0

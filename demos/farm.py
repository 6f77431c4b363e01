"""The farm demo: a ventilator and worker processes (``zmqkit.patterns.farm``), one of them killed.

``zmqkit demo farm --workers 3`` starts three worker processes (each ``zmqkit demo farm
--worker``), hands them tasks, and kills one of them (SIGKILL) a third of the way through: its
tasks go to the others once discovery declares it gone, and every task still completes. It shows
a progress bar of tasks done and the count per worker (a live view on a terminal, timestamped
lines otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from zmqkit.patterns import farm

from zmqkit import Node, Timeout, default_port

from .common import Clock, run_until

FARM = "demo-farm"
TASK_SECONDS = 0.03  # each task "works" this long, so that the workers share the load visibly
EXPIRY = 2.0  # the ventilator declares a killed worker gone this long after its last beacon


def square_slowly(x: int) -> dict[str, Any]:
    """The task: square a number, slowly, and say which worker did it."""
    time.sleep(TASK_SECONDS)
    return {"value": x * x, "worker": f"pid {os.getpid()}"}


def work(node_options: dict[str, Any], *, name: str, duration: float | None = None) -> int:
    """Run one farm worker until ``duration`` passes (or it is stopped)."""
    with Node(name, **node_options) as node:
        farm.serve_worker(node, square_slowly, FARM, slots=2)
        Console().print(
            f"{Clock.now()} {name} (pid {os.getpid()}) works for {FARM!r}", highlight=False
        )
        run_until(duration, lambda: time.sleep(0.1))
    return 0


def spawn_worker(name: str, port: int, duration: float) -> subprocess.Popen[bytes]:
    """Start one worker process (``zmqkit demo farm --worker``)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zmqkit",
            "demo",
            "farm",
            "--worker",
            "--name",
            name,
            "--port",
            str(port),
            "--duration",
            f"{duration:g}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class FarmRun:
    """Submits ``tasks`` tasks and tracks who did what; the show uses it too."""

    def __init__(self, node: Node, tasks: int) -> None:
        self.submitter = farm.Submitter(node, FARM, task_timeout=10.0)
        self.tasks = tasks
        self.ids = [self.submitter.submit(x) for x in range(tasks)]
        self.done: dict[int, int] = {}
        self.per_worker: Counter[str] = Counter()

    def take(self, timeout: float) -> bool:
        """Take the results that have come; False once every task is done."""
        try:
            for result in self.submitter.as_completed(timeout=timeout):
                value = result.unwrap()
                self.done[result.task_id] = value["value"]
                self.per_worker[value["worker"]] += 1
                if len(self.done) == self.tasks:
                    break
        except Timeout:
            pass
        return len(self.done) < self.tasks

    def correct(self) -> bool:
        """Every task done, each with the right square."""
        return all(self.done.get(task) == x * x for x, task in enumerate(self.ids))

    def close(self) -> None:
        self.submitter.close()


def run(
    node_options: dict[str, Any],
    *,
    workers: int = 3,
    tasks: int = 90,
    duration: float | None = None,
) -> int:
    """Farm ``tasks`` tasks out to ``workers`` worker processes, killing one on the way."""
    console = Console(highlight=False)
    port = default_port() if node_options["port"] is None else int(node_options["port"])
    procs = [spawn_worker(f"worker-{i + 1}", port, (duration or 60) + 10) for i in range(workers)]
    killed = ""
    try:
        with Node("ventilator", expiry=EXPIRY, **node_options) as node:
            job = FarmRun(node, tasks)
            bar = Progress(
                TextColumn("tasks"), BarColumn(), TextColumn("{task.completed}/{task.total}")
            )
            progress = bar.add_task("tasks", total=tasks)

            def view() -> Group:
                table = Table(title="tasks done per worker")
                table.add_column("worker")
                table.add_column("tasks", justify="right")
                for worker, count in sorted(job.per_worker.items()):
                    table.add_row(escape(worker), str(count))
                return Group(bar, table, f"[red]{killed}[/]" if killed else "")

            def step() -> bool:
                nonlocal killed
                more = job.take(0.1)
                bar.update(progress, completed=len(job.done))
                if not killed and len(job.done) >= tasks // 3 and workers > 1:
                    procs[0].kill()
                    killed = (
                        f"killed worker-1 (pid {procs[0].pid}) with SIGKILL after "
                        f"{len(job.done)} tasks: its tasks move to the others"
                    )
                    if not console.is_terminal:
                        console.print(f"{Clock.now()} {killed}")
                return more

            try:
                if console.is_terminal:
                    with Live(view(), console=console, refresh_per_second=8) as live:
                        run_until(duration, step, every=lambda: live.update(view()))
                else:
                    run_until(duration, step)
            finally:
                job.close()
            finished = len(job.done) == tasks
            console.print(
                f"{len(job.done)}/{tasks} tasks done"
                + ("" if finished else " (the duration ended first)")
                + f", every result right: {job.correct()}; per worker: {dict(job.per_worker)}; "
                f"duplicates: {job.submitter.duplicates}"
            )
            wrong = [task for task in job.done if job.done[task] != job.ids.index(task) ** 2]
            return 1 if wrong else 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)

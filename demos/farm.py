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
from functools import partial
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from zmqkit.patterns import farm

from zmqkit import Node, Timeout, default_port

from .common import EXIT_INTERRUPTED, line, run_until

FARM = "demo-farm"
TASK_SECONDS = 0.03  # each task "works" this long, so that the workers share the load visibly
EXPIRY = 2.0  # the ventilator declares a killed worker gone this long after its last beacon


def square_slowly(x: int, *, worker: str) -> dict[str, Any]:
    """The task: square a number, slowly, and say which worker did it."""
    time.sleep(TASK_SECONDS)
    return {"value": x * x, "worker": worker}


def work(node_options: dict[str, Any], *, name: str, duration: float | None = None) -> int:
    """Run one farm worker until ``duration`` passes (or it is stopped)."""
    with Node(name, **node_options) as node:
        farm.serve_worker(node, partial(square_slowly, worker=name), FARM, slots=2)
        line(f"{name} (pid {os.getpid()}) works for {FARM!r}")
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
        self.per_worker: Counter[str] = Counter()  # tasks done, each counted once

    def take(self, timeout: float) -> bool:
        """Take the results that have come; False once every task is done."""
        try:
            for result in self.submitter.as_completed(timeout=timeout):
                value = result.unwrap()
                if result.task_id not in self.done:
                    self.per_worker[value["worker"]] += 1
                self.done[result.task_id] = value["value"]
                if len(self.done) == self.tasks:
                    break
        except Timeout:
            pass
        return len(self.done) < self.tasks

    def correct(self) -> bool:
        """Every task done, each with the right square."""
        return all(self.done.get(task) == x * x for x, task in enumerate(self.ids))

    def shares(self) -> str:
        """Tasks done per worker, as text: ``worker-1 14, worker-2 38``."""
        return ", ".join(f"{worker} {count}" for worker, count in sorted(self.per_worker.items()))

    def close(self) -> None:
        self.submitter.close()


def killed_line(victim: str, pid: int, job: FarmRun) -> str:
    """What the farm says when it kills a worker (the count is of all workers' tasks)."""
    return (
        f"killed {victim} (pid {pid}) with SIGKILL when {len(job.done)} of the {job.tasks} "
        "tasks were done: its unfinished tasks move to the others"
    )


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
    names = [f"worker-{i + 1}" for i in range(workers)]
    procs: list[subprocess.Popen[bytes]] = []
    with Node("ventilator", expiry=EXPIRY, **node_options) as node:
        job = FarmRun(node, tasks)  # queued until the workers appear
        try:
            procs += [spawn_worker(name, port, (duration or 60) + 10) for name in names]
            _farm_out(console, job, procs, names, duration)
        except KeyboardInterrupt:
            interrupted = True
        else:
            interrupted = False
        finally:
            job.close()
            _stop(procs)
    shares = f"per worker: {job.shares() or 'none'}"
    if interrupted:
        console.print(
            f"interrupted (Ctrl-C) when {len(job.done)}/{tasks} tasks were done; {shares}; "
            f"the ventilator and the {workers} worker processes are stopped",
            soft_wrap=not console.is_terminal,  # words wrap on a terminal, nothing in a pipe
        )
        return EXIT_INTERRUPTED
    right = job.correct()
    console.print(
        f"{len(job.done)}/{tasks} tasks done"
        + ("" if len(job.done) == tasks else " (the duration ended first)")
        + f"; every result right: {'yes' if right else 'no'}; {shares}; "
        f"duplicates: {job.submitter.duplicates}",
        soft_wrap=not console.is_terminal,  # words wrap on a terminal, nothing in a pipe
    )
    wrong = [task for task in job.done if job.done[task] != job.ids.index(task) ** 2]
    return 1 if wrong else 0


def _farm_out(
    console: Console,
    job: FarmRun,
    procs: list[subprocess.Popen[bytes]],
    names: list[str],
    duration: float | None,
) -> None:
    """Take results until every task is done (or ``duration`` ends), killing the first worker
    a third of the way through; a live view on a terminal, a line per event otherwise."""
    killed = ""
    bar = Progress(TextColumn("tasks"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    progress = bar.add_task("tasks", total=job.tasks)

    def view() -> Group:
        bar.update(progress, completed=len(job.done))
        table = Table(title="tasks done per worker")
        table.add_column("worker")
        table.add_column("tasks", justify="right")
        for worker, count in sorted(job.per_worker.items()):
            gone = " (killed)" if killed and worker == names[0] else ""
            table.add_row(escape(worker + gone), str(count))
        table.add_row("[bold]all[/]", f"[bold]{sum(job.per_worker.values())}[/]")
        return Group(bar, table, f"[red]{escape(killed)}[/]" if killed else "")

    def step() -> bool:
        nonlocal killed
        more = job.take(0.1)
        if not killed and len(job.done) >= job.tasks // 3 and len(procs) > 1:
            procs[0].kill()
            killed = killed_line(names[0], procs[0].pid, job)
            if not console.is_terminal:
                line(killed)
        return more

    if not console.is_terminal:
        run_until(duration, step)
        return
    with Live(view(), console=console, refresh_per_second=8) as live:
        try:
            run_until(duration, step, every=lambda: live.update(view()))
        finally:
            live.update(view())  # the last frame shows the last results


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3)

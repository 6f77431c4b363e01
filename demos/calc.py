"""The calculator node: serves add, mul, div, echo, sleep and a streaming count.

``zmqkit demo calc`` runs one; every call is shown as it arrives, as its caller wrote it
(``add(1, 2) -> 3``, values as JSON, time taken): a live table on a terminal, timestamped lines
otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from zmqkit.patterns import rpc

from zmqkit import Node

from .common import REFRESH, Clock, call_text, line, run_until, value_text

T = TypeVar("T")
Report = Callable[[str, tuple[Any, ...], str, float], None]


class Calculator:
    """The methods a calc node serves; ``report`` hears about every call."""

    def __init__(self, report: Report = lambda method, args, result, seconds: None) -> None:
        self._report = report

    def _done(self, method: str, args: tuple[Any, ...], started: float, result: T) -> T:
        self._report(method, args, value_text(result), time.perf_counter() - started)
        return result

    def add(self, a: float, b: float) -> float:
        """Add two numbers."""
        return self._done("add", (a, b), time.perf_counter(), a + b)

    def mul(self, a: float, b: float) -> float:
        """Multiply two numbers."""
        return self._done("mul", (a, b), time.perf_counter(), a * b)

    def div(self, a: float, b: float) -> float:
        """Divide a by b; dividing by zero raises ZeroDivisionError."""
        started = time.perf_counter()
        if b == 0:
            self._report("div", (a, b), "ZeroDivisionError", time.perf_counter() - started)
            raise ZeroDivisionError(f"cannot divide {a} by zero")
        return self._done("div", (a, b), started, a / b)

    def echo(self, x: Any) -> Any:
        """Return x unchanged."""
        return self._done("echo", (x,), time.perf_counter(), x)

    @rpc.blocking
    def sleep(self, seconds: float) -> float:
        """Sleep for the given seconds (in the worker pool, so other calls go on), return them."""
        started = time.perf_counter()
        time.sleep(max(0.0, min(float(seconds), 60.0)))
        return self._done("sleep", (seconds,), started, seconds)

    def count(self, n: int) -> Iterator[int]:
        """Stream the integers 0 .. n-1, one item each."""
        started = time.perf_counter()
        yield from range(int(n))
        self._report("count", (n,), f"{int(n)} items", time.perf_counter() - started)


def run(node_options: dict[str, Any], *, name: str = "calc", duration: float | None = None) -> int:
    """Serve a calculator as ``name`` until ``duration`` seconds pass (None: until Ctrl-C)."""
    console = Console()
    recent: deque[tuple[str, str, str, str]] = deque(maxlen=15)

    def report(method: str, args: tuple[Any, ...], result: str, seconds: float) -> None:
        call, took = call_text(method, args), f"{seconds * 1000:.2f} ms"
        recent.append((Clock.now(), call, result, took))
        if not console.is_terminal:
            line(f"{call} -> {result} ({took})")

    def table() -> Table:
        view = Table(title=f"calc node [bold]{escape(name)}[/] — calls as they arrive")
        for column in ("time", "call", "result", "took"):
            view.add_column(column, overflow="fold")
        for row in recent:  # callers' values are text, never rich markup
            view.add_row(*(escape(cell) for cell in row))
        return view

    with Node(name, **node_options) as node:
        rpc.serve(node, Calculator(report))
        serving = f"{name} serving at {node.endpoints['rpc']} (beacon port {node.port})"
        if not console.is_terminal:
            print(serving, flush=True)
            run_until(duration, lambda: time.sleep(0.05))
            return 0
        console.print(escape(serving), highlight=False)
        with Live(table(), console=console, refresh_per_second=8) as live:
            run_until(duration, lambda: time.sleep(REFRESH), every=lambda: live.update(table()))
    return 0

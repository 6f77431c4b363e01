"""What every demo node shares: a run loop that ends on time (Ctrl-C ends it with the node closed
and exit 130), timestamps, plain lines for a pipe, and calls written as people write them."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType
from typing import Any

from zmqkit.jsonform import dumps

__all__ = [
    "EXIT_INTERRUPTED",
    "REFRESH",
    "Clock",
    "call_text",
    "line",
    "run_until",
    "stop_on_sigterm",
    "value_text",
]

REFRESH = 0.125  # seconds between screen updates
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C


class Clock:
    @staticmethod
    def now() -> str:
        """Wall-clock time for a log line, to the millisecond."""
        return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def line(text: str) -> None:
    """One timestamped line on standard output, as it happens: what a demo prints in a pipe
    (no markup, no wrapping, no boxes)."""
    sys.stdout.write(f"{Clock.now()} {text}\n")
    sys.stdout.flush()


def value_text(value: Any) -> str:
    """A value as JSON (``"hello"``, ``[1, 2]``), in the ``$`` forms for what JSON cannot hold."""
    try:
        return dumps(value)
    except ValueError:  # not a wire value at all (never sent): say what it is
        return f"<{type(value).__name__}>"


def call_text(method: str, args: Sequence[Any]) -> str:
    """A call as people write it: ``echo("hello")``, ``add(2, 3)``."""
    return f"{method}({', '.join(value_text(arg) for arg in args)})"


def stop_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so that a node stopped by the show closes cleanly (goodbye)."""

    def interrupt(_signal: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_until(
    duration: float | None,
    step: Callable[[], bool | None],
    every: Callable[[], None] | None = None,
) -> None:
    """Call ``step`` until it returns False or ``duration`` seconds pass (None: until Ctrl-C),
    and ``every`` about 8 times a second.

    Ctrl-C (or SIGTERM, after ``stop_on_sigterm``) raises KeyboardInterrupt out of here, so that
    the node's ``with`` closes it cleanly on the way out and the command exits 130.
    """
    ends_at = time.monotonic() + duration if duration is not None else float("inf")
    next_refresh = time.monotonic()
    while time.monotonic() < ends_at:
        if step() is False:
            break
        if every is not None and time.monotonic() >= next_refresh:
            every()
            next_refresh = time.monotonic() + REFRESH

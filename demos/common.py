"""What every demo node shares: a run loop that ends on time or on Ctrl-C, and timestamps."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType

__all__ = ["REFRESH", "Clock", "run_until", "stop_on_sigterm"]

REFRESH = 0.125  # seconds between screen updates


class Clock:
    @staticmethod
    def now() -> str:
        """Wall-clock time for a log line, to the millisecond."""
        return datetime.now().strftime("%H:%M:%S.%f")[:-3]


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
    and ``every`` about 8 times a second. Ctrl-C (or SIGTERM, after ``stop_on_sigterm``) ends
    the loop quietly."""
    ends_at = time.monotonic() + duration if duration is not None else float("inf")
    next_refresh = time.monotonic()
    try:
        while time.monotonic() < ends_at:
            if step() is False:
                break
            if every is not None and time.monotonic() >= next_refresh:
                every()
                next_refresh = time.monotonic() + REFRESH
    except KeyboardInterrupt:
        pass

"""Deadlines: one point on the monotonic clock, shared by every step of an operation.

A call that retries, waits for discovery and then waits for a reply spends one budget, not a
fresh timeout per step. Public APIs take ``timeout`` in seconds and turn it into a Deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["Deadline", "check_timeout"]


MAX_TIMEOUT = 1e7  # seconds (about 115 days): longer is a mistake, not a wait


def check_timeout(seconds: float) -> float:
    """``seconds`` if it is a number of seconds from 0 to ``MAX_TIMEOUT``: every wait is finite.

    The one timeout check: every public ``timeout`` goes through it (or through ``Deadline``).

    Raises:
        ConfigError: negative, NaN, infinite, absurdly long, or not a number.
    """
    # a chained comparison, not math.isfinite(): that raises OverflowError on a huge int
    if not isinstance(seconds, (int, float)) or not 0 <= seconds < MAX_TIMEOUT:
        raise ConfigError(f"a timeout is a finite number of seconds >= 0, not {seconds!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Deadline:
    """The monotonic time ``at`` by which an operation must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float, now: float | None = None) -> Deadline:
        """A deadline ``seconds`` from ``now`` (default: the monotonic clock now).

        Raises:
            ConfigError: ``seconds`` is negative, NaN or infinite: every wait here is finite.
        """
        return cls((time.monotonic() if now is None else now) + check_timeout(seconds))

    def remaining(self, now: float | None = None) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - (time.monotonic() if now is None else now))

    def remaining_ms(self, now: float | None = None) -> int:
        """Milliseconds left, rounded up so that a wait never ends just short of the deadline."""
        return math.ceil(self.remaining(now) * 1000)

    def expired(self, now: float | None = None) -> bool:
        """Whether the deadline has passed."""
        return (time.monotonic() if now is None else now) >= self.at

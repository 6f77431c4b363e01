"""A sliding window of message arrivals: the figures of ``zmqkit hz`` and ``zmqkit bw`` (pure).

Fed the arrival time (monotonic) and size of each message, it gives over its last ``size``
messages what ros2's ``topic hz`` and ``topic bw`` give: the rate, the min, max and standard
deviation of the intervals between messages, and bytes per second.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["Figures", "Window"]


@dataclass(frozen=True)
class Figures:
    """What the window holds now. Intervals in seconds; ``rate`` in messages per second."""

    messages: int  # in the window
    rate: float
    min: float
    max: float
    std: float
    bytes_per_second: float
    mean_size: float
    min_size: int
    max_size: int


class Window:
    """The last ``size`` arrivals (at least 2: one interval needs two messages)."""

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError(f"a window holds 2 messages or more, not {size}")
        self._times: deque[float] = deque(maxlen=size)
        self._sizes: deque[int] = deque(maxlen=size)
        self.total = 0  # messages ever added

    def add(self, now: float, size: int = 0) -> None:
        """One message arrived at ``now`` carrying ``size`` bytes."""
        self._times.append(now)
        self._sizes.append(size)
        self.total += 1

    def figures(self) -> Figures | None:
        """The window's figures, or None before two messages have arrived."""
        times = self._times
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        span = times[-1] - times[0]
        intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
        sizes = list(self._sizes)
        return Figures(
            messages=len(times),
            rate=len(intervals) / span,
            min=min(intervals),
            max=max(intervals),
            std=statistics.pstdev(intervals),
            # the bytes that came after the first arrival, over the time they took to come
            bytes_per_second=sum(sizes[1:]) / span,
            mean_size=statistics.fmean(sizes),
            min_size=min(sizes),
            max_size=max(sizes),
        )

"""Counters a part keeps for introspection: cheap enough for the path of every message.

``Latency`` is a histogram of durations in buckets that grow by a quarter of a power of two (a
bucket's upper edge is at most 19% above any duration in it), so recording one duration is a
``frexp`` and an increment, and a percentile is read from the counts, never from a sorted list of
samples. Pure: no clock, no sockets; the caller measures and hands the duration in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Latency"]

STEPS_PER_DOUBLING = 4
SMALLEST = 1e-6  # durations below a microsecond count as one
BUCKETS = 4 * 40  # up to 2**40 µs (12 days): a longer duration lands in the last bucket


class Latency:
    """Durations, in seconds, for p50/p90/p99 and a count.

        latency = Latency()
        latency.record(0.000_250)
        latency.percentiles()    # {"p50": 0.000267, "p90": ..., "p99": ...}

    ``count`` counts every event; an event that was not timed (a busy path times a sample of
    its events) is counted with ``latency.count += 1``, and the percentiles and mean come from
    the ``samples`` that were. ``record`` may be called from one thread while another reads: a
    reading is then off by the durations recorded meanwhile, never broken.
    """

    __slots__ = ("_buckets", "count", "samples", "total")

    def __init__(self) -> None:
        self.count = 0
        self.samples = 0
        self.total = 0.0
        self._buckets = [0] * BUCKETS

    def record(self, seconds: float) -> None:
        """Count one duration."""
        mantissa, exponent = math.frexp(seconds / SMALLEST if seconds > SMALLEST else 1.0)
        # mantissa in [0.5, 1): split each doubling into STEPS_PER_DOUBLING equal parts
        index = (exponent - 1) * STEPS_PER_DOUBLING + int((mantissa - 0.5) * 2 * STEPS_PER_DOUBLING)
        self._buckets[index if index < BUCKETS else BUCKETS - 1] += 1
        self.count += 1
        self.samples += 1
        self.total += seconds

    @classmethod
    def merged(cls, latencies: Iterable[Latency]) -> Latency:
        """One histogram of every duration in ``latencies`` (a service's, from its methods')."""
        total = cls()
        for latency in latencies:
            total._buckets = [a + b for a, b in zip(total._buckets, latency._buckets, strict=True)]
            total.count += latency.count
            total.samples += latency.samples
            total.total += latency.total
        return total

    def quantile(self, fraction: float) -> float:
        """The upper edge of the bucket holding the ``fraction`` quantile, in seconds (0.0
        before any duration is recorded)."""
        buckets = list(self._buckets)  # one reading, even while another thread records
        wanted = fraction * sum(buckets)
        if wanted <= 0:
            return 0.0
        seen = 0
        for index, count in enumerate(buckets):
            seen += count
            if seen >= wanted:
                return upper_edge(index)
        return upper_edge(BUCKETS - 1)

    def percentiles(self) -> dict[str, float]:
        """p50, p90 and p99 in seconds, and the mean."""
        return {
            "p50": self.quantile(0.50),
            "p90": self.quantile(0.90),
            "p99": self.quantile(0.99),
            "mean": self.total / self.samples if self.samples else 0.0,
        }


def upper_edge(index: int) -> float:
    """Seconds at the top of bucket ``index``."""
    doubling, step = divmod(index, STEPS_PER_DOUBLING)
    return SMALLEST * 2.0 ** doubling * (1 + (step + 1) / STEPS_PER_DOUBLING)

"""Terminal demo nodes: one per terminal (``zmqkit demo NAME``), or the show (``zmqkit demo``).

- ``show``    the self-contained show that ``make demo`` runs: every node below, as processes
- ``calc``    serves add, mul, div, echo, sleep and a streaming count; shows each call
- ``ticker``  publishes made-up market ticks; ``--watch`` shows them as a live table
- ``chat``    a group chat over ``zmqkit.patterns.groups``, typed or scripted
- ``farm``    a ventilator and worker processes over ``zmqkit.patterns.farm``, one of them killed
- ``common``  the run loop and timestamps they share
"""

from __future__ import annotations

__all__: list[str] = []

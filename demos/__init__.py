"""Terminal demo nodes: one per terminal (``zmqkit demo NAME``), or the whole show (``zmqkit demo``).

- ``show``   the self-contained show that ``make demo`` runs
"""

from __future__ import annotations

__all__: list[str] = []

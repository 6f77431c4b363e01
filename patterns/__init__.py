"""zmqkit patterns: broker-less messaging patterns built only from public names of ``zmqkit``.

General layout (one pattern per module):

- ``rpc``      call methods on nodes found by name: sync, asyncio, streaming
- ``pubsub``   publish and subscribe by topic across every discovered publisher
"""

from __future__ import annotations

__all__: list[str] = []

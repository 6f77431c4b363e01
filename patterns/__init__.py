"""zmqkit patterns: broker-less messaging patterns built only from public names of ``zmqkit``.

General layout (one pattern per module):

- ``rpc``      call methods on nodes found by name: sync, asyncio, streaming
- ``pubsub``   publish and subscribe by topic across every discovered publisher
- ``survey``   ask every node of a name at once and gather the answers (scatter-gather)
- ``failover`` one sticky primary among replicas, the next on failure (Freelance)
- ``farm``     hand tasks to workers found by name; they pull, results come back
- ``state``    a key-value map replicated across the nodes of a group (Clone)
- ``groups``   join named groups; shout to a group, whisper to one peer

and ``_durable``, the one SQLite file that a durable farm submitter or state replica keeps.
"""

from __future__ import annotations

from . import failover, farm, groups, pubsub, rpc, state, survey

__all__ = ["failover", "farm", "groups", "pubsub", "rpc", "state", "survey"]

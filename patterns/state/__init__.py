"""Replicated key-value state: a map that every node of a group holds, with no server.

This is the ZeroMQ Guide's Clone pattern without its central server:

    with state.State(node, "inventory") as inventory:   # usable once constructed
        inventory.wait_synced(timeout=2.0)          # the snapshot from a member is in
        inventory.set("apples", 12)                 # applied here at once, published to the group
        inventory.set("lease:42", "me", ttl=30.0)   # gone on every node 30 s later
        inventory.delete("pears")
        inventory.get("apples"), inventory.items()
        inventory.on_change(print)                  # or: for change in inventory.changes(1.0)

    async with state.AsyncState(node, "inventory") as inventory:   # asyncio, on one loop
        await inventory.wait_for("apples", timeout=2.0)

How the replicas stay in step:

- Every write is applied locally at once, then published on the group's topic with the writer's
  sequence number (one per replica instance, from 1). Receivers apply each writer's writes in
  order, exactly once: a write already applied is dropped, and a write that does not follow on
  from the last one applied (a **gap**) is held back and triggers a sync.
- A sync asks one member (over its ROUTER, with a ``zmqkit.state.sync`` request) for every entry
  that the asker has not seen, judged by the asker's per-writer sequence numbers, plus the
  member's own. A late joiner does this first; updates arriving meanwhile are held and replayed
  after the snapshot, so nothing is applied twice and nothing is skipped.
- Every member publishes a digest of its per-writer sequence numbers each ``heartbeat``. A
  member that sees a digest ahead of its own for longer than a heartbeat asks that member for
  what it lacks: a write lost at the tail of a stream (a writer SIGKILLed mid-send) still reaches
  everyone. A sync request that fails is tried again later, waiting longer after each failure in
  a row (0.2 s doubled, up to 10 s); ``sync_status()`` says where it stands.
- Conflicts: per key, the write with the higher ``(stamp, writer)`` wins, where ``stamp`` is the
  writer's wall clock in nanoseconds (raised past the stamp of the entry it replaces, so a node's
  own write always wins on that node) and ``writer`` the writer's 16-byte id, compared as bytes.
  Every node applies the same rule, so every node ends with the same winner, whatever the order.
- Deletes are tombstones: they keep the key's version so that an older write arriving late cannot
  resurrect it. A TTL key carries ``expires_at`` (the writer's stamp plus the TTL); on every node
  it reads as absent from that wall-clock time on, and turns into a tombstone.

Durable, as an opt-in: ``state.State(node, "inventory", store="map.db")`` keeps the replica in a
SQLite file (its map, tombstones and per-writer table); ``set`` and ``delete`` return once the
write is there, and a replica started on the store after a crash has every such write.

Limits: a tombstone (deleted or expired key) costs its key and version until the replica
closes (in a store: for good), so use a bounded key space; the per-writer table holds the
writers that hold a key, plus the last 1,000 that no longer do (a writer is one ``State``
instance: each start is a new one); a snapshot travels as one frame (64 MiB at most); TTLs are
only as consistent as the nodes' wall clocks.

- ``wire``         the group's messages (docs/protocol.md, section 9.2), through ``zmqkit.codec``
- ``core``         ``StateCore``: the map, versions, tombstones, TTL, per-writer sequences (pure)
- ``store``        ``Store``: a durable replica's map in one SQLite file
- ``planner``      ``SyncPlanner``: which member to ask for a sync, and when (pure, fed ``now``)
- ``replica``      ``Replica``: core and planner behind one lock, between callers and the engine
- ``engine``       ``Engine``: the service thread that alone owns the replica's sockets
- ``base``         what both front-ends share: life cycle, reads, writes (from any thread), stats
- ``state``        ``State``: blocking waits and change iterators
- ``async_state``  ``AsyncState``: the same replica for one asyncio loop
"""

from __future__ import annotations

from . import wire
from .async_state import AsyncState
from .core import Change, ChangeKind, StateCore
from .planner import Plan, SyncPlanner, SyncStatus
from .state import State
from .wire import SYNC_METHOD, pub_role, sync_role, topic

__all__ = [
    "SYNC_METHOD",
    "AsyncState",
    "Change",
    "ChangeKind",
    "Plan",
    "State",
    "StateCore",
    "SyncPlanner",
    "SyncStatus",
    "pub_role",
    "sync_role",
    "topic",
    "wire",
]

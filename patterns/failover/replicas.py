"""Failover's routing policy: replicas in a fixed order, one sticky primary. Pure.

The primary is the first replica in order that has not failed in the last ``FAILURE_PENALTY``
seconds, and it stays primary while it works, even if a replica that sorts earlier appears later
(sticky: no flapping). When it fails, the next one in order takes over.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Callable, Iterable
from typing import Any

from zmqkit.patterns.rpc.routes import FAILURE_PENALTY, ROLE, Target, Targets

from zmqkit import Peer

__all__ = ["Order", "Replicas", "by_uuid"]

Order = Callable[[Peer], Any]


def by_uuid(peer: Peer) -> bytes:
    """The default failover order: by UUID, the same at every client, arbitrary but stable."""
    return peer.uuid.bytes


class Replicas(Targets):
    """The replicas of one name in failover order, and which one is primary (sticky)."""

    def __init__(self, order: Order = by_uuid) -> None:
        super().__init__()
        self.order = order
        self.primary_uuid: uuid_module.UUID | None = None

    def make(self, peer: Peer) -> Target:
        """A replica, ranked by ``order`` (UUID breaks ties)."""
        return Target(peer.uuid, peer.endpoints[ROLE], peer=peer,
                      rank=(self.order(peer), peer.uuid.bytes))

    def uuids(self) -> list[uuid_module.UUID]:
        """The known replicas' UUIDs, in failover order (what the clients show)."""
        return [target.uuid for target in self.ordered()]

    def ordered(self) -> list[Target]:
        """The replicas in failover order."""
        return sorted(self.targets.values(), key=lambda replica: replica.rank)

    def remove(self, target: Target) -> None:
        """Forget ``target``; if it was primary, the next call chooses afresh."""
        super().remove(target)
        if target.uuid == self.primary_uuid:
            self.primary_uuid = None

    def pick(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Target | None:
        """The replica to send to: the sticky primary, or else the best other one (which then
        becomes primary); None when every replica is in ``exclude`` or none is known."""
        excluded = set(exclude)
        current = self.targets.get(self.primary_uuid) if self.primary_uuid else None
        if current is not None and current.uuid not in excluded:
            return current
        candidates = [r for r in self.targets.values() if r.uuid not in excluded]
        if not candidates:
            return None

        def preference(replica: Target) -> tuple[bool, float, tuple[Any, bytes]]:
            recent = now - replica.failed_at < FAILURE_PENALTY
            # healthy ones first in order; among the recently failed, the longest ago first
            return (recent, replica.failed_at if recent else 0.0, replica.rank)

        best = min(candidates, key=preference)
        self.primary_uuid = best.uuid
        return best

    def penalize(self, target: Target, now: float) -> None:
        """``target`` failed: it loses the primary role and goes to the back of the order."""
        target.failed_at = now
        if self.primary_uuid == target.uuid:
            self.primary_uuid = None

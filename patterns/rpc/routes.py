"""Routing policies: which node of a name gets the next call. Pure: no sockets, no clock.

``Targets`` keeps the nodes that serve a name in step with discovery; a policy subclass says
which one a call goes to (``pick``; ``take`` also counts the call as ``started`` there) and hears
how each call went (``started``, ``finished``, ``failed``, ``unreachable``). The call core
(``core.CallCore``) drives any policy the same way.

- ``Routes`` (RPC): the node with the fewest calls pending, the least recently used among
  equals (round robin), and nodes that failed recently only when nothing else is left.
- ``failover.Replicas``: one sticky primary in a fixed order, the next one when it fails.
"""

from __future__ import annotations

import math
import uuid as uuid_module
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zmqkit import Peer

__all__ = ["FAILURE_PENALTY", "ROLE", "Route", "Routes", "Target", "Targets"]

ROLE = "rpc"  # what a node serving calls advertises
FAILURE_PENALTY = 5.0  # seconds a node that failed a call is chosen only as a last resort


@dataclass(slots=True, eq=False)
class Target:
    """One node that serves the name, and how calls to it have been doing."""

    uuid: uuid_module.UUID
    endpoint: str
    peer: Peer | None = None  # as discovery last described it: its CURVE key, for a connect
    rank: tuple[Any, bytes] = ((), b"")  # its place in a fixed order (failover)
    pending: int = 0  # calls routed to it and not ended yet
    failed_at: float = -math.inf
    last_used: int = 0

    def __str__(self) -> str:
        name = self.peer.name if self.peer is not None else "node"
        return f"{name}/{self.uuid.hex[:8]}"


Route = Target  # the name the RPC tests and docs used first


class Targets:
    """The nodes serving one name, kept in step with discovery; subclasses pick among them."""

    def __init__(self) -> None:
        self.targets: dict[uuid_module.UUID, Target] = {}

    def make(self, peer: Peer) -> Target:
        """A target for a newly discovered ``peer`` (a policy may rank it)."""
        return Target(peer.uuid, peer.endpoints[ROLE], peer=peer)

    def sync(self, peers: Iterable[Peer]) -> tuple[list[Target], list[Target]]:
        """Bring the targets in line with ``peers``; return (added, removed).

        A node whose endpoint changed is removed and added again: what was sent to the old
        endpoint is lost with it.
        """
        wanted = {peer.uuid: peer for peer in peers if ROLE in peer.endpoints}
        removed = [
            target
            for uuid, target in self.targets.items()
            if uuid not in wanted or wanted[uuid].endpoints[ROLE] != target.endpoint
        ]
        for target in removed:
            self.remove(target)
        added = [self.make(peer) for uuid, peer in wanted.items() if uuid not in self.targets]
        for target in added:
            self.targets[target.uuid] = target
        for target in self.targets.values():  # keep the newest description (its key, headers)
            target.peer = wanted[target.uuid]
        return added, removed

    def remove(self, target: Target) -> None:
        """Forget ``target`` (it left, or this node may not talk to it)."""
        self.targets.pop(target.uuid, None)

    def pick(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Target | None:
        """The target for the next call, or None when there is none outside ``exclude``."""
        raise NotImplementedError

    def take(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Target | None:
        """``pick``, and count the call as ``started`` on the target picked."""
        target = self.pick(now, exclude)
        if target is not None:
            self.started(target)
        return target

    def started(self, target: Target) -> None:
        """A call was routed to ``target``."""
        target.pending += 1

    def finished(self, target: Target) -> None:
        """A call on ``target`` ended with an answer (or was ended by its caller)."""
        if target.pending > 0:
            target.pending -= 1

    def failed(self, target: Target, now: float) -> None:
        """A call on ``target`` timed out or lost its node."""
        target.pending = max(0, target.pending - 1)
        self.penalize(target, now)

    def penalize(self, target: Target, now: float) -> None:
        """``target`` failed at ``now``: choose it only as a last resort for a while."""
        target.failed_at = now

    def unreachable(self, target: Target, now: float) -> None:
        """A call routed to ``target`` could not even be sent (no connection in time)."""
        self.failed(target, now)


class Routes(Targets):
    """RPC's policy: fewest calls pending, then round robin; recent failures last."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name
        self._turn = 0

    def pick(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Target | None:
        """The target for the next call, or None when there is none outside ``exclude``."""
        targets = self.targets
        if len(targets) == 1 and not exclude:  # the common case, without a sort
            for target in targets.values():
                return target
        excluded = set(exclude)
        candidates = [target for target in targets.values() if target.uuid not in excluded]
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda t: (now - t.failed_at < FAILURE_PENALTY, t.pending, t.last_used),
        )

    def take(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Target | None:
        """``pick`` and ``started`` in one step, on the path of every call."""
        if len(self.targets) != 1 or exclude:
            return super().take(now, exclude)
        for target in self.targets.values():  # the common case: one node, nothing to choose
            self._turn += 1
            target.last_used = self._turn
            target.pending += 1
            return target
        return None  # not reached: there is one target

    def started(self, target: Target) -> None:
        """A call was routed to ``target``: it is now the most recently used."""
        self._turn += 1
        target.last_used = self._turn
        target.pending += 1

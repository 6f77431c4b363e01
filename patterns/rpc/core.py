"""The calling logic that the sync and asyncio clients share: no sockets, no clock of its own.

``Routes`` decides which node of a name gets the next call: the one with the fewest calls
pending, the least recently used among equals (round robin), and nodes that failed recently
only when nothing else is left.
``outcome`` turns a reply message into a value or a ``RemoteError``; ``may_retry`` states which
calls may be sent again after a failure:

- a request that never left this process (no connection to the chosen node) is always retried
  on another node;
- a request that left may have run: it is retried only if the caller marked it idempotent.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zmqkit import Peer, ProtocolError
from zmqkit.codec import Kind
from zmqkit.errors import remote_error

__all__ = ["DEFAULT_TIMEOUT", "FAILURE_PENALTY", "Route", "Routes", "may_retry", "outcome"]

DEFAULT_TIMEOUT = 5.0
FAILURE_PENALTY = 5.0  # seconds a node that failed a call is tried only as a last resort
SLICE = 0.25  # while waiting, look at discovery this often to notice a node that left


@dataclass(slots=True)
class Route:
    """One node that serves the name, and how it has been doing."""

    uuid: uuid_module.UUID
    endpoint: str
    pending: int = 0
    failed_at: float = float("-inf")
    last_used: int = 0
    peer: Peer | None = None  # as discovery last described it: its CURVE key, for a connect


class Routes:
    """The nodes serving one name, kept in step with discovery."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: dict[uuid_module.UUID, Route] = {}
        self.version = -1
        self._turn = 0

    def sync(self, peers: Iterable[Peer], version: int) -> tuple[list[Route], list[Route]]:
        """Bring the routes in line with ``peers``; return (added, removed)."""
        self.version = version
        wanted = {peer.uuid: peer for peer in peers if "rpc" in peer.endpoints}
        removed = [
            route
            for uuid, route in self.routes.items()
            if uuid not in wanted or wanted[uuid].endpoints["rpc"] != route.endpoint
        ]
        for route in removed:
            del self.routes[route.uuid]
        added = [
            Route(uuid, peer.endpoints["rpc"], peer=peer)
            for uuid, peer in wanted.items()
            if uuid not in self.routes
        ]
        for route in added:
            self.routes[route.uuid] = route
        return added, removed

    def drop(self, route: Route) -> None:
        """Forget ``route`` until discovery changes (a node this one may not talk to)."""
        self.routes.pop(route.uuid, None)

    def pick(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Route | None:
        """The route for the next call, or None when there is none outside ``exclude``."""
        if len(self.routes) == 1 and not exclude:
            return next(iter(self.routes.values()))
        excluded = set(exclude)
        candidates = [route for route in self.routes.values() if route.uuid not in excluded]
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda r: (now - r.failed_at < FAILURE_PENALTY, r.pending, r.last_used),
        )

    def started(self, route: Route) -> None:
        self._turn += 1
        route.last_used = self._turn
        route.pending += 1

    def finished(self, route: Route) -> None:
        """A call on ``route`` got its answer."""
        route.pending = max(0, route.pending - 1)

    def failed(self, route: Route, now: float) -> None:
        """A call on ``route`` timed out or lost its node."""
        route.pending = max(0, route.pending - 1)
        route.failed_at = now

    def unreachable(self, route: Route, now: float) -> None:
        """A call could not even be sent on ``route`` (no connection in time)."""
        route.failed_at = now


def may_retry(*, idempotent: bool, sent: bool) -> bool:
    """Whether a failed call may be sent again (see the module docstring)."""
    return idempotent or not sent


def outcome(message: list[Any]) -> Any:
    """The value a reply carries, or raise the ``RemoteError`` an error reply carries.

    Raises:
        RemoteError: the reply is an ERROR.
        ProtocolError: the message is not a reply at all.
    """
    kind = message[1]
    if kind == Kind.REPLY or kind == Kind.STREAM_ITEM:
        return message[3]
    if kind == Kind.ERROR:
        raise remote_error(message[3], message[4], message[5])
    if kind == Kind.STREAM_END:
        return None
    raise ProtocolError(f"expected a reply, got a message of kind {kind!r}")

"""The blocking failover client: ``FailoverClient(node, "store").call("get", "k")``, from any
thread. The driver is RPC's own (``rpc.sync_caller``), over ``FailoverCore``."""

from __future__ import annotations

import uuid as uuid_module

from zmqkit.patterns.rpc.core import DEFAULT_TIMEOUT
from zmqkit.patterns.rpc.sync_caller import SyncCaller

from zmqkit import Node

from .core import FailoverCore
from .replicas import Order, Replicas, by_uuid

__all__ = ["FailoverClient"]


class FailoverClient(SyncCaller):
    """Calls the replicas called ``name`` through one sticky primary, from any thread.

    ``client.call("get", "k", idempotent=True)``. Every call has a deadline (``timeout``,
    default 5 s) shared by all its attempts. Closed by ``close()`` (from any thread), ``with``,
    or its node's close.

    Args:
        order: sort key over ``Peer`` for the failover order, e.g.
            ``lambda peer: int(peer.headers.get("rank", "99"))``; default by UUID.
        attempt_timeout: after this many silent seconds, an idempotent call is also sent to the
            next replica (and the silent one stops being primary); None: only on failure.
    """

    def __init__(
        self,
        node: Node,
        name: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float | None = None,
        order: Order = by_uuid,
    ) -> None:
        core = FailoverCore(name, order=order, attempt_timeout=attempt_timeout)
        self._replicas: Replicas = core.replicas
        super().__init__(node, core, timeout=timeout)

    def __repr__(self) -> str:
        primary = self.primary.hex[:8] if self.primary else "not chosen yet"
        return f"<zmqkit failover.FailoverClient for {self.name!r}, primary {primary}>"

    def __enter__(self) -> FailoverClient:
        return self

    @property
    def primary(self) -> uuid_module.UUID | None:
        """The UUID of the replica calls go to now (None before the first call)."""
        return self._replicas.primary_uuid

    @property
    def replicas(self) -> list[uuid_module.UUID]:
        """The known replicas, in failover order."""
        with self._lock:
            return self._replicas.uuids()

"""The asyncio failover client: any number of calls in flight, on one loop. The driver is RPC's
own (``rpc.async_caller``), over ``FailoverCore``."""

from __future__ import annotations

import uuid as uuid_module

from zmqkit.patterns.rpc.async_caller import AsyncCaller
from zmqkit.patterns.rpc.core import DEFAULT_TIMEOUT

from zmqkit import Node

from .core import FailoverCore
from .replicas import Order, Replicas, by_uuid

__all__ = ["AsyncFailoverClient"]


class AsyncFailoverClient(AsyncCaller):
    """``FailoverClient`` for asyncio code; any number of calls in flight, on one loop.

    ``await client.call("get", "k", idempotent=True)``. One reader task per replica hands
    answers to the core; each call's own coroutine sends, retries and keeps its deadlines. Used
    off its loop it raises ``WrongThread``; ``close()`` works from any thread.
    """

    _SYNC_CLASS = "failover.FailoverClient"

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
        return f"<zmqkit failover.AsyncFailoverClient for {self.name!r}, primary {primary}>"

    async def __aenter__(self) -> AsyncFailoverClient:
        self._bind_loop()
        return self

    @property
    def primary(self) -> uuid_module.UUID | None:
        """The UUID of the replica calls go to now (None before the first call)."""
        return self._replicas.primary_uuid

    @property
    def replicas(self) -> list[uuid_module.UUID]:
        """The known replicas, in failover order."""
        return self._replicas.uuids()

"""The asyncio RPC client: ``await AsyncClient(node, "calc").add(1, 2)``, many calls in flight.

It runs on the loop that first uses it (see ``async_caller``); replies are matched to calls by
call id, so any number of calls may be pipelined, and ``submit`` starts a call without the cost
of a coroutine. From another thread, use ``rpc.Client`` (any thread may call it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from zmqkit import Node

from .async_caller import AsyncCaller
from .core import DEFAULT_TIMEOUT, CallCore
from .handlers import DESCRIBE_METHOD
from .proxy import remote_method
from .routes import Routes

__all__ = ["AsyncClient"]


class AsyncClient(AsyncCaller):
    """Calls methods on the nodes called ``name`` from asyncio code.

    ``await client.call("add", 1, 2)``, ``await client.add(1, 2)``, ``async for x in
    client.stream("count", 5)``. Use ``async with`` (or ``await client.aclose()``; ``close()``
    from any thread) so that its tasks and sockets are closed; its node's close closes it too.
    Used off its loop it raises ``WrongThread``.

    The attribute sugar never shadows the client's own methods: a remote method called
    ``close``, ``submit`` or ``stats`` (or any name in ``proxy.RESERVED``) is called as
    ``await client.call("close")``.
    """

    _SYNC_CLASS = "rpc.Client"

    def __init__(self, node: Node, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(node, CallCore(name, Routes(name)), timeout=timeout)

    def __repr__(self) -> str:
        calls = len(self._core.calls)
        return f"<zmqkit rpc.AsyncClient for {self.name!r}, {calls} calls in flight>"

    async def __aenter__(self) -> AsyncClient:
        self._bind_loop()
        return self

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        name = remote_method(self, method)
        return lambda *args, **kwargs: self.call_with(name, args, kwargs)

    submit = AsyncCaller._submit  # the cheapest way to pipeline: no wrapper frame around it

    def stream(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Iterate the items a generator method yields; ``timeout`` is the wait between items.

        Leaving the loop early tells the node to stop producing.
        """
        return self._stream(method, args, kwargs, timeout)

    async def methods(self, timeout: float | None = None) -> list[dict[str, str]]:
        """The node's methods: name, signature, doc and how each runs."""
        result: list[dict[str, str]] = await self.call_with(DESCRIBE_METHOD, timeout=timeout)
        return result

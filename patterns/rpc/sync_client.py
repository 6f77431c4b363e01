"""The blocking RPC client: ``Client(node, "calc").add(1, 2)``, from any thread.

Made once (say in ``main``) and called from anywhere in the process: the thread that made it, an
RPC handler of any kind, a callback, a thread of your own. Each calling thread gets its own
socket per node (see ``sync_caller``); the routing among the nodes of the name is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from zmqkit import Node

from .core import DEFAULT_TIMEOUT, CallCore
from .handlers import DESCRIBE_METHOD
from .proxy import remote_method
from .routes import Routes
from .sync_caller import SyncCaller

__all__ = ["Client"]


class Client(SyncCaller):
    """Calls methods on the nodes called ``name``, from any thread.

    ``client.call("add", 1, 2)`` or ``client.add(1, 2)``; ``client.stream("count", 5)`` for a
    generator method. Every call has a deadline (``timeout``, default 5 s) and raises
    ``PeerNotFound`` when no such node appears in time, ``Timeout`` when it does not answer in
    time and ``RemoteError`` when its handler raised. Calls spread over the nodes of the name
    (fewest pending first, then round robin).

    The attribute sugar never shadows the client's own methods: a remote method called
    ``close``, ``stream`` or ``stats`` (or any name in ``proxy.RESERVED``) is called as
    ``client.call("close")``.
    """

    def __init__(self, node: Node, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(node, CallCore(name, Routes(name)), timeout=timeout)

    def __repr__(self) -> str:
        return f"<zmqkit rpc.Client for {self.name!r}>"

    def __enter__(self) -> Client:
        return self

    def __getattr__(self, method: str) -> Callable[..., Any]:
        name = remote_method(self, method)
        return lambda *args, **kwargs: self._call(name, args, kwargs, None, False)

    def stream(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Iterate the items a generator method yields; ``timeout`` is the wait between items.

        Leaving the loop early (``break``) tells the node to stop producing. Read a stream in
        the thread that started it.
        """
        return self._stream(method, args, kwargs, timeout)

    def methods(self, timeout: float | None = None) -> list[dict[str, str]]:
        """The node's methods: name, signature, doc and how each runs."""
        result: list[dict[str, str]] = self.call_with(DESCRIBE_METHOD, timeout=timeout)
        return result

"""RPC by name: serve an object's methods on a node, call them from any node by name.

    server = rpc.serve(node, Calculator())          # plain, async, generator methods
    with rpc.Client(node, "calc") as calc:          # blocking, from any thread
        calc.add(1, 2)
    async with rpc.AsyncClient(node, "calc") as calc:   # asyncio, many calls in flight
        await calc.add(1, 2)

- ``handlers``      which methods are served and how each runs (inline, pool, loop)
- ``server``        ``Server`` and ``serve``: the server thread and its worker pool
- ``routes``        routing policies: which node of a name gets a call (pure)
- ``core``          the call core: correlation, deadlines, retries (pure; failover's too)
- ``connections``   the DEALERs of one owner (a thread, or a loop), made by the node
- ``sync_caller``   the blocking driver of the core: calls from any thread
- ``async_caller``  the asyncio driver of the core: calls on one loop
- ``proxy``         ``client.add(1, 2)`` sugar, which never shadows a client's own names
- ``sync_client``   ``Client``
- ``async_client``  ``AsyncClient``
"""

from __future__ import annotations

from .async_client import AsyncClient
from .core import DEFAULT_TIMEOUT
from .handlers import blocking
from .server import DEFAULT_WORKERS, Server, serve
from .sync_client import Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORKERS",
    "AsyncClient",
    "Client",
    "Server",
    "blocking",
    "serve",
]

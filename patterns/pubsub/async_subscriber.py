"""The asyncio subscriber: ``await AsyncSubscriber(node, "ticks").recv(timeout)`` on one loop.

It belongs to the loop it was made on, which owns its SUB socket (the loop watches the socket's
descriptor: no thread of its own). Used from another thread or loop it raises ``WrongThread``.
``close`` works from any thread: it closes the socket on the loop (``LoopOwner.call``), and a
receive waiting then ends with ``ClosedError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from zmqkit import (
    AsyncSocket,
    ClosedError,
    Deadline,
    LoopOwner,
    Node,
    SocketOptions,
    Timeout,
)

from .base import SETTLE, SLICE, BaseSubscriber
from .core import Message

__all__ = ["AsyncSubscriber"]


class AsyncSubscriber(BaseSubscriber):
    """``Subscriber`` for asyncio code, made and used on one event loop.

        async with pubsub.AsyncSubscriber(node, "ticks") as ticks:
            message = await ticks.recv(timeout=2.0)
            async for message in ticks.messages(): ...

    Usable once made and attached to its node; ``close()`` from any thread (idempotent),
    ``async with``, or closing the node ends it.

    Raises:
        WrongThread: made where no event loop runs (use ``Subscriber`` there).
        ConfigError: a topic is not valid.
        ClosedError: the node is closed.
    """

    def __init__(self, node: Node, *topics: str, options: SocketOptions | None = None) -> None:
        self._owner = LoopOwner("an AsyncSubscriber", instead="pubsub.Subscriber")
        self._open(node, topics, options, asyncio=True)
        assert isinstance(self._feed.sock, AsyncSocket)
        self._sock = self._feed.sock

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def _check_loop(self) -> None:
        """Raise ``WrongThread`` off the subscriber's loop, ``ClosedError`` once closed."""
        self._owner.check(self)
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    @contextmanager
    def _owned(self) -> Iterator[None]:
        self._check_loop()
        yield

    def close(self) -> None:
        """Stop receiving and close the socket on the loop. Idempotent; from any thread."""
        if self._closed:
            return
        self._closed = True
        self._owner.call(self._sock.close)
        self.node.detach(self)

    async def wait_for_publishers(self, count: int = 1, timeout: float = 5.0) -> int:
        """Connect to at least ``count`` publishers, waiting at most ``timeout`` seconds.

        Returns the number connected (see ``Subscriber.wait_for_publishers``).

        Raises:
            PeerNotFound: fewer than ``count`` publishers were found in time.
        """
        deadline = Deadline.after(timeout)
        while (connected := self._look_for_publishers(count, deadline, timeout)) is None:
            await asyncio.sleep(min(0.01, deadline.remaining()))
        await asyncio.sleep(min(SETTLE, deadline.remaining()))  # the subscription travels
        return connected

    async def recv(self, timeout: float) -> Message:
        """The next message, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no message in time.
            ClosedError: the subscriber is closed (or was closed while waiting).
            WrongThread: called off the subscriber's loop.
        """
        ready = self._feed.ready
        if ready and self._owner.is_current:
            return ready.popleft()
        self._check_loop()
        deadline = Deadline.after(timeout)
        while not self._feed.drain():
            if deadline.expired():
                raise Timeout(f"no message on {self!r} in {timeout:g} s")
            await self._sock.wait_readable(min(SLICE, deadline.remaining()))
            if self._closed:
                raise ClosedError(f"{self!r} was closed while a receive waited")
        return ready.popleft()

    async def messages(self, idle_timeout: float | None = None) -> AsyncIterator[Message]:
        """Yield messages until none has come for ``idle_timeout`` seconds (None: until the
        consumer stops; bound it with ``asyncio.timeout`` or ``asyncio.wait_for``)."""
        while True:
            try:
                yield await self.recv(3600.0 if idle_timeout is None else idle_timeout)
            except Timeout:
                if idle_timeout is not None:
                    return

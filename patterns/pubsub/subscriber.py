"""The blocking subscriber: ``Subscriber(node, "ticks").recv(timeout)`` in one thread.

The SUB socket belongs to the thread that made the subscriber, which receives from it
(``recv``, ``messages``, ``wait_for_publishers``, ``subscribe``). ``close`` may come from any
thread: it wakes a receive that is waiting, takes the socket over under the subscriber's lock
(its thread holds that lock whenever it touches the socket) and closes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from zmqkit import (
    ClosedError,
    Deadline,
    Node,
    Poller,
    SocketOptions,
    Timeout,
    Wakeup,
)

from .base import SETTLE, SLICE, BaseSubscriber
from .core import Message

__all__ = ["Subscriber"]


class Subscriber(BaseSubscriber):
    """Receives ``topics`` from every publisher that discovery finds, joining late ones too.

    A topic is exact (``news`` never receives ``newsletter``), or a ``prefix*`` pattern.
    Usable once made (connected to the publishers known now) and attached to its node; used
    from the thread that made it; ``close()`` from any thread (idempotent), ``with``, or
    closing the node ends it. In asyncio code use ``AsyncSubscriber``.

    Raises:
        ConfigError: a topic is not valid.
        ClosedError: the node is closed.
    """

    def __init__(self, node: Node, *topics: str, options: SocketOptions | None = None) -> None:
        self._lock = threading.Lock()  # held by the owner thread whenever it uses the socket
        self._closing = False
        self._open(node, topics, options, asyncio=False)
        self._ready = self._feed.ready
        self._wakeup = Wakeup()  # set by close() from another thread: a waiting recv stops
        self._poller = Poller([self._feed.sock, self._wakeup])

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving and close the socket. Idempotent; from any thread (a ``recv``
        waiting in the owner thread then raises ``ClosedError``)."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        with self._lock:  # the owner thread is not using the socket: it is ours to close
            self._feed.sock.close()
            self._wakeup.close()
            self._closed = True
        self.node.detach(self)

    def _check_open(self) -> None:
        """Under the lock, before using the socket."""
        if self._closing:
            raise ClosedError(f"{self!r} is closed")

    @contextmanager
    def _owned(self) -> Iterator[None]:
        with self._lock:
            self._check_open()
            yield

    def wait_for_publishers(self, count: int = 1, timeout: float = 5.0) -> int:
        """Connect to at least ``count`` publishers, waiting at most ``timeout`` seconds.

        Connections are otherwise made whenever the subscriber is used (``recv`` looks at
        discovery at least every 0.25 s). A script that publishes right after subscribing calls
        this first: messages published before the connection is up are not received.
        Returns the number of publishers connected.

        Raises:
            PeerNotFound: fewer than ``count`` publishers were found in time.
        """
        deadline = Deadline.after(timeout)
        while (connected := self._look_for_publishers(count, deadline, timeout)) is None:
            time.sleep(min(0.01, deadline.remaining()))
        time.sleep(min(SETTLE, deadline.remaining()))  # the subscription travels to them
        return connected

    def recv(self, timeout: float) -> Message:
        """The next message, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no message in time.
            ClosedError: the subscriber is closed (or was closed while waiting).
        """
        ready = self._ready
        if ready:
            return ready.popleft()
        with self._lock:
            self._check_open()
            if self._feed.drain():
                return ready.popleft()
            deadline = Deadline.after(timeout)
            while True:
                woken = self._poller.poll(min(SLICE, deadline.remaining()))
                if not woken and deadline.expired():
                    raise Timeout(f"no message on {self!r} in {timeout:g} s")
                if self._closing:
                    raise ClosedError(f"{self!r} was closed while a receive waited")
                if self._feed.drain():
                    return ready.popleft()

    def messages(self, idle_timeout: float) -> Iterator[Message]:
        """Yield messages until none has come for ``idle_timeout`` seconds."""
        ready = self._ready
        while True:
            while ready:  # what was taken in already, without a call each
                yield ready.popleft()
            try:
                yield self.recv(idle_timeout)
            except Timeout:
                return

"""A way for any thread to wake a thread that waits in a ``zmq.Poller``: one byte on a socket pair.

Only the first wake-up between two waits writes a byte, so a burst of results or submissions
costs one system call, not one each. The poller reports a plain descriptor by its number, so
``woke`` looks for that number (matching the socket object itself never succeeds).
"""

from __future__ import annotations

import contextlib
import socket

import zmq

__all__ = ["Wakeup"]


class Wakeup:
    """Wake one polling thread from any other: ``set`` anywhere, ``woke`` in the polling thread."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = False

    def register(self, poller: zmq.Poller) -> None:
        poller.register(self._reader, zmq.POLLIN)

    def woke(self, events: dict[object, int]) -> bool:
        """Whether ``events`` (from the poller) include this wake-up; if so, take it."""
        if self._reader.fileno() not in events:
            return False
        self._pending = False
        with contextlib.suppress(OSError):  # drained already, or closed
            self._reader.recv(4096)
        return True

    def set(self) -> None:
        """Wake the waiting thread (from any thread; after close, does nothing)."""
        if not self._pending:
            self._pending = True
            with contextlib.suppress(OSError):  # closed (stopping) or full (already awake)
                self._writer.send(b"\0")

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

"""Waking a waiter from any other thread, written once.

- ``Wakeup``: wakes a thread that waits in a ``Poller`` (one byte on a socket pair).
- ``LoopWakeup``: wakes a coroutine that waits on an asyncio loop.

Both coalesce: only the first wake-up between two waits costs a system call (or a callback), so a
burst of results or submissions wakes the waiter once, not once each. Both are quiet after their
waiter is gone (closed, or its loop closed): a late wake-up is never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["LoopWakeup", "Wakeup"]


class Wakeup:
    """Wake one polling thread from any other: ``set`` anywhere, ``woke`` in the polling thread."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = False

    def fileno(self) -> int:
        """The descriptor a ``Poller`` watches."""
        return self._reader.fileno()

    def take(self) -> None:
        """In the waiting thread, once woken: drain, so that the next ``set`` wakes again.

        Drain first, then clear: a ``set`` between the two writes nothing (the waiter is awake
        and looks at its work after this), whereas clearing first would let the drain eat the
        byte of a ``set`` that came in between and leave ``_pending`` set for good, so that no
        later ``set`` would ever wake the waiter again.
        """
        with contextlib.suppress(OSError):  # drained already, or closed
            self._reader.recv(4096)
        self._pending = False

    def set(self) -> None:
        """Wake the waiting thread (from any thread; after close, does nothing)."""
        if not self._pending:
            self._pending = True
            with contextlib.suppress(OSError):  # closed (stopping) or full (already awake)
                self._writer.send(b"\0")

    def close(self) -> None:
        """Close the socket pair; a later ``set`` does nothing."""
        self._reader.close()
        self._writer.close()


class LoopWakeup:
    """Wake a coroutine waiting on ``loop`` from any thread: ``set`` anywhere, ``wait`` on the loop.

    Made on its loop (or given it). ``set`` after the loop closed does nothing: nobody waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._pending = False

    def set(self) -> None:
        """Wake the waiter (from any thread, the loop's own included)."""
        if self._pending:
            return
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        self._pending = False
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """On the loop: wait at most ``timeout`` seconds for a ``set``; True if one came."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

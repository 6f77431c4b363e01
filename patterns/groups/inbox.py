"""The inbox: events waiting for their reader, filled by the groups thread, read anywhere.

Bounded: beyond ``limit`` events the oldest is dropped and counted, so a node that never reads
its inbox (one that uses callbacks only, say) cannot grow without end. A reader waits in a
thread (``get``), or on a loop through a waker (a ``LoopWakeup.set``) that ``put`` calls.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from zmqkit import ClosedError, Deadline, Timeout

from .core import GroupEvent

__all__ = ["MAX_INBOX", "Inbox"]

MAX_INBOX = 10_000


class Inbox:
    """Events for ``recv``, in order; ``put`` from the groups thread, ``take``/``get`` anywhere.

    Args:
        owner: how errors name the part that reads it.
        limit: the most events kept unread.
    """

    def __init__(self, owner: str, limit: int = MAX_INBOX) -> None:
        self.owner = owner
        self.limit = limit
        self.dropped = 0
        self._events: deque[GroupEvent] = deque()
        self._changed = threading.Condition()
        self._wakers: list[Callable[[], None]] = []
        self._closed = False

    def put(self, events: list[GroupEvent]) -> None:
        """Add ``events``, dropping the oldest beyond the limit; wake every reader."""
        with self._changed:
            for event in events:
                if len(self._events) >= self.limit:
                    self._events.popleft()
                    self.dropped += 1
                self._events.append(event)
            self._changed.notify_all()
        self._wake_all()

    def take(self) -> GroupEvent | None:
        """The oldest event, or None when there is none (never waits).

        Raises:
            ClosedError: the inbox is empty and closed: no event will come.
        """
        with self._changed:
            if self._events:
                return self._events.popleft()
            if self._closed:
                raise ClosedError(f"{self.owner} is closed")
            return None

    def get(self, timeout: float) -> GroupEvent:
        """The oldest event, waiting at most ``timeout`` seconds in this thread.

        Raises:
            Timeout: none came in time.
            ClosedError: closed (and empty) while waiting.
        """
        deadline = Deadline.after(timeout)
        with self._changed:
            while True:
                event = self.take()
                if event is not None:
                    return event
                if deadline.expired():
                    raise Timeout(f"no group event in {timeout:g} s")
                self._changed.wait(deadline.remaining())

    def add_waker(self, waker: Callable[[], None]) -> Callable[[], None]:
        """Call ``waker()`` (in the groups thread) whenever events arrive or the inbox closes;
        returns a function that stops it."""
        with self._changed:
            self._wakers.append(waker)

        def remove() -> None:
            with self._changed:
                if waker in self._wakers:
                    self._wakers.remove(waker)

        return remove

    def close(self) -> None:
        """No event will come any more: waiting readers get what is left, then ``ClosedError``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._wake_all()

    def _wake_all(self) -> None:
        with self._changed:
            wakers = list(self._wakers)
        for waker in wakers:
            waker()

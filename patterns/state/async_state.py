"""The asyncio replica: ``AsyncState``, the same replica for code that runs on an event loop.

    async with state.AsyncState(node, "inventory") as inventory:
        await inventory.wait_synced(timeout=2.0)
        inventory.set("apples", 12)                  # never waits: no await
        await inventory.wait_for("pears", timeout=5.0)
        async for change in inventory.changes(idle_timeout=1.0): ...

The replica's sockets still belong to its own service thread (a snapshot for a joining member
is encoded there, not on your loop); waits are woken on the loop with ``LoopWakeup``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from zmqkit import Deadline, LoopOwner, LoopWakeup, Node, check_timeout

from .base import ANY, BaseState, Stored
from .core import Change
from .state import MAX_CHANGE_BACKLOG

__all__ = ["AsyncState"]


class AsyncState(BaseState):
    """``State`` for asyncio code: made on a running loop and used from that loop.

    The same options and the same replica as ``State``; the waits are awaitable and the changes
    come as an async iterator. ``close()`` works from any thread (the node's close included).
    With a store, ``set`` and ``delete`` return once the replica's thread has stored the write
    (a fraction of a millisecond, during which the loop waits).

    Raises:
        WrongThread: made without a running loop (use ``State`` from plain code).
    """

    def __init__(self, node: Node, group: str, *, heartbeat: float = 1.0,
                 sync_timeout: float = 2.0, join_wait: float = 0.5, give_up: float = 5.0,
                 store: Stored = None) -> None:
        self._owner = LoopOwner("an AsyncState", instead="state.State")
        super().__init__(node, group, heartbeat=heartbeat, sync_timeout=sync_timeout,
                         join_wait=join_wait, give_up=give_up, store=store)

    async def __aenter__(self) -> AsyncState:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def _check_caller(self) -> None:
        self._owner.check(self)

    async def wait_synced(self, timeout: float = 5.0) -> None:
        """Wait until the initial sync is done.

        Raises:
            Timeout: not synced within ``timeout`` seconds (no member answered).
            ClosedError: the replica closed meanwhile.
        """
        await self._until(lambda: self._replica.synced, timeout,
                          f"{self!r} not synced in {timeout:g} s")

    async def wait_for(self, key: str, timeout: float = 5.0, *, value: Any = ANY) -> Any:
        """Wait until ``key`` is visible here (holding ``value``, if given); return its value.

        Raises:
            Timeout: it did not happen within ``timeout`` seconds.
            ClosedError: the replica closed meanwhile.
        """
        found: list[Any] = []
        await self._until(lambda: self._present(key, value, found), timeout,
                          f"{self._wanted(key, value)} in {self!r} in {timeout:g} s")
        return found[-1]

    async def _until(self, ready: Callable[[], bool], timeout: float, failure: str) -> None:
        self._check_caller()
        deadline = Deadline.after(timeout)
        wakeup = LoopWakeup(self._owner.loop)
        stop = self._replica.watch(wakeup.set)  # before the first look: no change is missed
        try:
            while not ready():
                if self._replica.closed or deadline.expired():
                    raise self._wait_failed(failure)
                await wakeup.wait(deadline.remaining())
        finally:
            stop()

    async def changes(self, idle_timeout: float) -> AsyncIterator[Change]:
        """Changes as they are applied here, until none comes for ``idle_timeout`` s or the
        replica closes."""
        self._check_caller()
        check_timeout(idle_timeout)
        backlog: deque[Change] = deque(maxlen=MAX_CHANGE_BACKLOG)  # filled by the replica thread
        wakeup = LoopWakeup(self._owner.loop)

        def listener(changes: list[Change]) -> None:
            backlog.extend(changes)
            wakeup.set()

        stop = self._replica.listen(listener)
        try:
            while True:
                while backlog:
                    yield backlog.popleft()
                idle = self._replica.closed or not await wakeup.wait(idle_timeout)
                if idle and not backlog:
                    return
        finally:
            stop()

"""The blocking replica: ``State``, for plain code and any thread.

    with state.State(node, "inventory") as inventory:
        inventory.wait_synced(timeout=2.0)
        inventory.set("apples", 12)                  # from any thread, a callback included
        inventory.wait_for("pears", timeout=5.0)
        for change in inventory.changes(idle_timeout=1.0): ...
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from zmqkit import check_timeout

from .base import ANY, BaseState
from .core import Change

__all__ = ["MAX_CHANGE_BACKLOG", "State"]

log = logging.getLogger("zmqkit.state")

MAX_CHANGE_BACKLOG = 10_000  # a ``changes()`` reader that falls this far behind loses the oldest


class State(BaseState):
    """One replica of the group ``group``'s map, on ``node``: usable once constructed.

    The constructor starts the replica's thread, binds and advertises its sockets, begins the
    initial sync and attaches it to the node; ``close()`` (or ``with``, or the node's close)
    stops it. ``get``, ``items``, ``set`` and ``delete`` work on the local copy and never wait
    on the network, from any thread. Change callbacks run in the replica's thread: keep them
    short (they may read and write the replica).

    Args:
        node: a running node.
        group: the name of the replicated map (1 to 64 bytes of text).
        heartbeat: seconds between digests (how fast a lost tail is noticed).
        sync_timeout: seconds a member gets to answer a sync request before another is asked.
        join_wait: seconds to wait for a first member before starting alone.
        give_up: seconds a gap that no member can fill is waited for before it is skipped.
        store: a file (SQLite) to keep the replica in: its map, tombstones and per-writer
            table. A replica started on it after a crash (SIGKILL included) holds every write
            whose ``set`` or ``delete`` had returned, then syncs with the group as usual.

    Raises:
        ConfigError: a bad group name or option, the node already holds a replica of the
            group, the sockets could not be bound, or the store cannot be used (another
            replica holds it, or it is another group's).
        ClosedError: the node is not running.
    """

    def __enter__(self) -> State:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_synced(self, timeout: float = 5.0) -> None:
        """Wait until the initial sync is done.

        Raises:
            Timeout: not synced within ``timeout`` seconds (no member answered).
            ClosedError: the replica closed meanwhile.
        """
        if not self._replica.wait(lambda: self._replica.synced, timeout):
            raise self._wait_failed(f"{self!r} not synced in {timeout:g} s")

    def wait_for(self, key: str, timeout: float = 5.0, *, value: Any = ANY) -> Any:
        """Wait until ``key`` is visible here (holding ``value``, if given); return its value.

        Raises:
            Timeout: it did not happen within ``timeout`` seconds.
            ClosedError: the replica closed meanwhile.
        """
        found: list[Any] = []
        if not self._replica.wait(lambda: self._present(key, value, found), timeout):
            raise self._wait_failed(f"{self._wanted(key, value)} in {self!r} in {timeout:g} s")
        return found[-1]

    def on_change(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` for every visible change, in the order applied here;
        returns a function that unsubscribes. It runs in the replica's thread: keep it short."""

        def listener(changes: list[Change]) -> None:
            for change in changes:
                try:
                    callback(change)
                except Exception:  # a user's callback must not stop replication; logged loudly
                    log.exception("state change callback %r failed on %r", callback, change.key)

        return self._replica.listen(listener)

    def changes(self, idle_timeout: float) -> Iterator[Change]:
        """Yield changes as they are applied here, until none comes for ``idle_timeout`` s or
        the replica closes."""
        check_timeout(idle_timeout)
        backlog: deque[Change] = deque(maxlen=MAX_CHANGE_BACKLOG)
        arrived = threading.Condition()

        def listener(changes: list[Change]) -> None:
            with arrived:
                backlog.extend(changes)
                arrived.notify()

        def ready() -> bool:
            return bool(backlog) or self._replica.closed

        stop = self._replica.listen(listener)
        try:
            while True:
                with arrived:
                    if not arrived.wait_for(ready, idle_timeout):
                        return
                    pending = list(backlog)
                    backlog.clear()
                if not pending:
                    return  # closed
                yield from pending
        finally:
            stop()

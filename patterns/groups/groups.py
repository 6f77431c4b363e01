"""``Groups``: this node's part in groups, for threads.

    with groups.Groups(node) as chat:                # usable at once; the node's close closes it
        chat.join("ops")
        chat.shout("ops", {"text": "deploying"})
        chat.whisper(peer_uuid, "psst", timeout=2)
        for event in chat.events(idle_timeout=1.0): ...

Every method may be called from any thread: an RPC handler, a callback, a thread of your own.
The sockets stay in the groups thread; calls hand their work to it. Callbacks run in the groups
thread: keep them short, and whisper from them with ``submit_whisper`` (``whisper`` would wait
for the thread that runs the callback).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

from zmqkit import ClosedError, Timeout, WrongThread, ZmqkitError

from .base import BaseGroups
from .core import GroupEvent
from .runner import DEFAULT_TIMEOUT, PeerRef

__all__ = ["Groups"]


class Groups(BaseGroups):
    """This node's part in groups: membership, shouts, whispers and the events they make.

    Made, it has started (one named thread owns its sockets), advertises the node's roles
    ``groups`` and ``groups-pub``, and is attached to the node. ``close()`` (any thread, any
    number of times, or the node's close) leaves every group and stops it; whispers still
    waiting fail with ``ClosedError``.

    Args:
        node: a running node (one ``Groups`` per node).
        inbox: keep events for ``recv``/``events`` (False: callbacks only).
        timeout: how long starting may take.

    Raises:
        ConfigError: the node has its groups already, or the sockets could not be bound.
        ClosedError: the node is not running (or closed).
    """

    def __enter__(self) -> Groups:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def join(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Join ``group``: receive its shouts, and let peers see this node in it.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: the beacon has no room for another group; nothing changed.
            ClosedError: closed.
        """
        _wait(self._runner.change(group, True), timeout, f"joining {group!r}")

    def leave(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Leave ``group``: peers see LEAVE, and its shouts stop reaching this node."""
        _wait(self._runner.change(group, False), timeout, f"leaving {group!r}")

    # -- sending ---------------------------------------------------------------------------------

    def submit_whisper(self, peer: PeerRef, body: Any,
                       timeout: float = DEFAULT_TIMEOUT) -> concurrent.futures.Future[None]:
        """Send ``body`` to one peer; return a future that settles when it acknowledges.

        Never waits, so callbacks may use it. A peer not discovered yet is waited for, within
        ``timeout``. The future fails with ``PeerNotFound`` (no such peer in groups in time, or
        it has gone), ``Timeout`` (no acknowledgement within ``timeout``), ``BrokenError`` (the
        peer went before it answered: it may or may not have the message), ``BusyError`` (too
        many whispers to that peer wait already) or ``ClosedError``.

        Raises:
            EncodeError: ``body`` cannot travel on the wire.
            ConfigError: ``peer`` is this node.
            ClosedError: closed.
        """
        return self._runner.submit_whisper(peer, body, timeout)

    def whisper(self, peer: PeerRef, body: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send ``body`` to one peer and wait until it has it.

        Raises:
            PeerNotFound: no peer with that UUID took part in groups within ``timeout``, or it
                has gone (at once: a node's UUID never comes back).
            Timeout: no acknowledgement within ``timeout`` (a dead peer not yet declared gone).
            BrokenError: the peer went before it acknowledged.
            BusyError: too many whispers to that peer wait already.
            WrongThread: called from a callback, which runs in the groups thread: that thread
                cannot wait for the acknowledgement it would have to receive itself.
        """
        if self._runner.in_groups_thread:
            raise WrongThread("a group event callback runs in the groups thread, which cannot "
                              "wait for a whisper's acknowledgement: call submit_whisper() there "
                              "(it returns a future and never waits), or whisper from another "
                              "thread")
        _wait(self.submit_whisper(peer, body, timeout), timeout + 1.0,  # settled at the deadline
              f"whisper to {peer}")

    # -- receiving -------------------------------------------------------------------------------

    def recv(self, timeout: float) -> GroupEvent:
        """The next event, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no event in time.
            ClosedError: closed, and every event read.
            ConfigError: made with ``inbox=False``.
        """
        return self._need_inbox().get(timeout)

    def events(self, idle_timeout: float) -> Iterator[GroupEvent]:
        """Yield events until none has come for ``idle_timeout`` seconds (or the close)."""
        inbox = self._need_inbox()
        while True:
            try:
                yield inbox.get(idle_timeout)
            except (Timeout, ClosedError):
                return

    def _deliver(self, events: list[GroupEvent]) -> None:
        """In the groups thread: the inbox first, then the callbacks."""
        if self._inbox is not None:
            self._inbox.put(events)
        self._call_listeners(events)


def _wait(future: concurrent.futures.Future[None], timeout: float, what: str) -> None:
    """Wait for work handed to the groups thread; its error is raised here."""
    try:
        future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        if isinstance(exc, ZmqkitError):
            raise  # the work itself timed out (zmqkit's Timeout is a TimeoutError too)
        future.cancel()
        raise Timeout(f"{what}: no answer in {timeout:g} s") from None

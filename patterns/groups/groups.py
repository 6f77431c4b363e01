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
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from zmqkit import ClosedError, ConfigError, Node, Timeout, WrongThread, ZmqkitError

from .core import GroupEvent, Member
from .inbox import Inbox
from .runner import DEFAULT_TIMEOUT, GroupsRunner, PeerRef

__all__ = ["Groups"]

log = logging.getLogger("zmqkit.groups")


class Groups:
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

    def __init__(self, node: Node, *, inbox: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.node = node
        self._inbox = Inbox(f"groups of {node.name!r}") if inbox else None
        self._listeners: list[Callable[[GroupEvent], None]] = []
        self._closed = False
        self._closing = threading.Lock()
        self._runner = GroupsRunner(node, self._deliver, timeout=timeout)
        try:
            node.attach(self)
        except BaseException:  # the node closed meanwhile
            self._runner.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<zmqkit groups.Groups {self.node.name!r} in {sorted(self.joined)} {state}>"

    def __enter__(self) -> Groups:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self, timeout: float = 2.0) -> None:
        """Leave every group, stop the groups thread and join it. Safe to call twice, from any
        thread (from a callback: the thread stops when the callback returns)."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        try:
            self._runner.close(timeout)
        finally:
            if self._inbox is not None:
                self._inbox.close()
            self.node.detach(self)

    @property
    def endpoint(self) -> str:
        """Where this node takes whispers (role ``groups``)."""
        return self._runner.endpoint

    @property
    def pub_endpoint(self) -> str:
        """Where this node publishes its shouts (role ``groups-pub``)."""
        return self._runner.pub_endpoint

    def stats(self) -> dict[str, int]:
        """Counters: shouts, whispers, gaps, dropped-* by reason, ..."""
        counts = self._runner.stats()
        if self._inbox is not None and self._inbox.dropped:
            counts["dropped-inbox"] = self._inbox.dropped
        return counts

    # -- membership ------------------------------------------------------------------------------

    @property
    def joined(self) -> frozenset[str]:
        """The groups this node is in."""
        return self._runner.joined

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

    def members(self, group: str) -> list[Member]:
        """The peers known to be in ``group`` (not this node), sorted."""
        return self._runner.members(group)

    def groups(self) -> dict[str, list[Member]]:
        """Every group a known peer is in, with its members."""
        return self._runner.groups()

    # -- sending ---------------------------------------------------------------------------------

    def shout(self, group: str, body: Any) -> int:
        """Send ``body`` to every member of ``group`` (this node need not be one); returns its
        sequence number on the group's topic. Never waits.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: ``body`` cannot travel on the wire.
            ClosedError: closed.
        """
        return self._runner.shout(group, body)

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

    def on_event(self, callback: Callable[[GroupEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event, in the groups thread; returns a function
        that unsubscribes. A callback may join, leave, shout and ``submit_whisper``."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

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

    def _need_inbox(self) -> Inbox:
        if self._inbox is None:
            raise ConfigError(f"{self!r} was made with inbox=False: use on_event")
        return self._inbox

    def _deliver(self, events: list[GroupEvent]) -> None:
        """In the groups thread: the inbox first, then the callbacks."""
        if self._inbox is not None:
            self._inbox.put(events)
        for event in events:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # a user's callback must not stop the groups; logged loudly
                    log.exception("group event callback %r failed on %s", listener, event)


def _wait(future: concurrent.futures.Future[None], timeout: float, what: str) -> None:
    """Wait for work handed to the groups thread; its error is raised here."""
    try:
        future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        if isinstance(exc, ZmqkitError):
            raise  # the work itself timed out (zmqkit's Timeout is a TimeoutError too)
        future.cancel()
        raise Timeout(f"{what}: no answer in {timeout:g} s") from None

"""What ``Groups`` and ``AsyncGroups`` share: the life cycle, membership, shouts and callbacks.

A front-end is usable once made: its ``GroupsRunner`` has started the groups thread and
advertises, and the front-end is attached to its node (``node.close()`` closes it). The
front-ends differ only in how they wait (a thread blocks, a coroutine awaits) and where the
callbacks run (the groups thread, or the loop).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from zmqkit import ConfigError, Node

from .core import GroupEvent, Member
from .inbox import Inbox
from .runner import DEFAULT_TIMEOUT, GroupsRunner

__all__ = ["BaseGroups"]

log = logging.getLogger("zmqkit.groups")


class BaseGroups:
    """This node's part in groups, less the waits (see ``Groups`` for the options).

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
        return (f"<zmqkit groups.{type(self).__name__} {self.node.name!r} in "
                f"{sorted(self.joined)} {state}>")

    def close(self, timeout: float = 2.0) -> None:
        """Leave every group, stop the groups thread and join it. Safe to call twice, from any
        thread (from a ``Groups`` callback: the thread stops when the callback returns);
        waiting readers get ``ClosedError`` (``events()`` ends).

        It detaches from the node first: peers that see this node gone (the runner withdraws
        from discovery last) find it closed and detached."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self.node.detach(self)
        try:
            self._runner.close(timeout)
        finally:
            if self._inbox is not None:
                self._inbox.close()

    @property
    def endpoint(self) -> str:
        """Where this node takes whispers (role ``groups``)."""
        return self._runner.endpoint

    @property
    def pub_endpoint(self) -> str:
        """Where this node publishes its shouts (role ``groups-pub``)."""
        return self._runner.pub_endpoint

    def stats(self) -> dict[str, int]:
        """Counters: shouts, whispers, gaps, dropped-* by reason, ... (any thread)."""
        counts = self._runner.stats()
        if self._inbox is not None and self._inbox.dropped:
            counts["dropped-inbox"] = self._inbox.dropped
        return counts

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the groups joined, and the counters."""
        return {"groups": sorted(self.joined), "stats": self.stats()}

    # -- membership ------------------------------------------------------------------------------

    @property
    def joined(self) -> frozenset[str]:
        """The groups this node is in."""
        return self._runner.joined

    def members(self, group: str) -> list[Member]:
        """The peers known to be in ``group`` (not this node), sorted (any thread)."""
        return self._runner.members(group)

    def groups(self) -> dict[str, list[Member]]:
        """Every group a known peer is in, with its members (any thread)."""
        return self._runner.groups()

    # -- sending ---------------------------------------------------------------------------------

    def shout(self, group: str, body: Any) -> int:
        """Send ``body`` to every member of ``group`` (this node need not be one); returns its
        sequence number on the group's topic. Never waits (so not a coroutine either).

        Raises:
            ConfigError: not a valid group name.
            EncodeError: ``body`` cannot travel on the wire.
            ClosedError: closed.
            WrongThread: an ``AsyncGroups`` called off its loop.
        """
        self._check_caller()
        return self._runner.shout(group, body)

    def _check_caller(self) -> None:
        """Raise ``WrongThread`` where this front-end may not be used (``AsyncGroups``)."""

    # -- receiving -------------------------------------------------------------------------------

    def on_event(self, callback: Callable[[GroupEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes.

        ``Groups`` calls it in the groups thread (keep it short: it may join, leave, shout and
        ``submit_whisper``), ``AsyncGroups`` on its loop."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _need_inbox(self) -> Inbox:
        if self._inbox is None:
            raise ConfigError(f"{self!r} was made with inbox=False: use on_event")
        return self._inbox

    def _deliver(self, events: list[GroupEvent]) -> None:
        """In the groups thread: the events into the inbox, then to the callbacks."""
        raise NotImplementedError

    def _call_listeners(self, events: list[GroupEvent], *, until_closed: bool = False) -> None:
        """Call the callbacks with each event, in order (stopping at the close, if told)."""
        for event in events:
            for listener in list(self._listeners):
                if until_closed and self._closed:
                    return
                try:
                    listener(event)
                except Exception:  # a user's callback must not stop the others; logged loudly
                    log.exception("group event callback %r failed on %s", listener, event)

"""``AsyncGroups``: this node's part in groups, for asyncio code on one loop.

    async with groups.AsyncGroups(node) as chat:     # made on the loop that uses it
        await chat.join("ops")
        chat.shout("ops", {"text": "deploying"})     # never waits
        await chat.whisper(peer_uuid, "psst", timeout=2)
        async for event in chat.events(): ...

The same groups thread as ``Groups`` owns the sockets (a node takes part in groups whether or not
its loop is busy); waits are awaited on the loop, and callbacks run on the loop too. Used from
another loop or thread it raises ``WrongThread``: threads use ``Groups``, or hand a coroutine to
this loop with ``asyncio.run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from zmqkit import (
    ClosedError,
    ConfigError,
    Deadline,
    LoopWakeup,
    Node,
    Timeout,
    WrongThread,
    ZmqkitError,
)

from .core import GroupEvent, Member
from .inbox import Inbox
from .runner import DEFAULT_TIMEOUT, GroupsRunner, PeerRef

__all__ = ["AsyncGroups"]

log = logging.getLogger("zmqkit.groups")

IDLE_FOREVER = 3600.0  # events() without an idle timeout waits this long between looks


class AsyncGroups:
    """``Groups`` for asyncio code: the same options and events, awaitable waits, one loop.

    Made inside a coroutine: it has started (the groups thread makes its sockets meanwhile, a
    few milliseconds), advertises, and is attached to the node. ``close()`` works from any
    thread, any number of times; ``async with`` closes it too.

    Raises:
        WrongThread: made outside a running event loop.
        ConfigError: the node has its groups already, or the sockets could not be bound.
        ClosedError: the node is not running (or closed).
    """

    def __init__(self, node: Node, *, inbox: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongThread("AsyncGroups is made in a coroutine, on the loop that will use "
                              "it; threads use groups.Groups") from None
        self.node = node
        self._woken = LoopWakeup(self._loop)
        self._inbox = Inbox(f"groups of {node.name!r}") if inbox else None
        if self._inbox is not None:
            self._inbox.add_waker(self._woken.set)
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
        return f"<zmqkit groups.AsyncGroups {self.node.name!r} in {sorted(self.joined)} {state}>"

    async def __aenter__(self) -> AsyncGroups:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self, timeout: float = 2.0) -> None:
        """Leave every group, stop the groups thread and join it. Safe to call twice, from any
        thread; waiting readers get ``ClosedError`` (``events()`` ends)."""
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
        """Counters: shouts, whispers, gaps, dropped-* by reason, ... (any thread)."""
        counts = self._runner.stats()
        if self._inbox is not None and self._inbox.dropped:
            counts["dropped-inbox"] = self._inbox.dropped
        return counts

    # -- membership ------------------------------------------------------------------------------

    @property
    def joined(self) -> frozenset[str]:
        """The groups this node is in."""
        return self._runner.joined

    async def join(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Join ``group``: receive its shouts, and let peers see this node in it.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: the beacon has no room for another group; nothing changed.
            ClosedError: closed.
        """
        self._check_loop("join")
        await _wait(self._runner.change(group, True), timeout, f"joining {group!r}")

    async def leave(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Leave ``group``: peers see LEAVE, and its shouts stop reaching this node."""
        self._check_loop("leave")
        await _wait(self._runner.change(group, False), timeout, f"leaving {group!r}")

    def members(self, group: str) -> list[Member]:
        """The peers known to be in ``group`` (not this node), sorted (any thread)."""
        return self._runner.members(group)

    def groups(self) -> dict[str, list[Member]]:
        """Every group a known peer is in, with its members (any thread)."""
        return self._runner.groups()

    # -- sending ---------------------------------------------------------------------------------

    def shout(self, group: str, body: Any) -> int:
        """Send ``body`` to every member of ``group``; returns its sequence number on the
        group's topic. Never waits, so it is not a coroutine.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: ``body`` cannot travel on the wire.
            ClosedError: closed.
        """
        self._check_loop("shout")
        return self._runner.shout(group, body)

    async def whisper(self, peer: PeerRef, body: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send ``body`` to one peer and wait until it has it (from a callback, which must not
        wait: ``asyncio.create_task(groups.whisper(...))``).

        Raises:
            PeerNotFound: no peer with that UUID took part in groups within ``timeout``, or it
                has gone.
            Timeout: no acknowledgement within ``timeout``.
            BrokenError: the peer went before it acknowledged.
            BusyError: too many whispers to that peer wait already.
        """
        self._check_loop("whisper")
        future = self._runner.submit_whisper(peer, body, timeout)
        await _wait(future, timeout + 1.0, f"whisper to {peer}")  # settled at the deadline

    # -- receiving -------------------------------------------------------------------------------

    def on_event(self, callback: Callable[[GroupEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on this loop for every event; returns a function that
        unsubscribes."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    async def recv(self, timeout: float) -> GroupEvent:
        """The next event, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no event in time.
            ClosedError: closed, and every event read.
            ConfigError: made with ``inbox=False``.
        """
        self._check_loop("recv")
        inbox = self._need_inbox()
        deadline = Deadline.after(timeout)
        while True:
            event = inbox.take()
            if event is not None:
                return event
            if deadline.expired():
                raise Timeout(f"no group event in {timeout:g} s")
            await self._woken.wait(deadline.remaining())

    async def events(self, idle_timeout: float | None = None) -> AsyncIterator[GroupEvent]:
        """Yield events until the close, or until none came for ``idle_timeout`` seconds."""
        while True:
            try:
                yield await self.recv(IDLE_FOREVER if idle_timeout is None else idle_timeout)
            except Timeout:
                if idle_timeout is not None:
                    return
            except ClosedError:
                return

    # -- helpers ---------------------------------------------------------------------------------

    def _check_loop(self, what: str) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise WrongThread(f"{what}() of {self!r} was called off the event loop that made it: "
                              "threads use groups.Groups, other code hands a coroutine to this "
                              "loop with asyncio.run_coroutine_threadsafe")

    def _need_inbox(self) -> Inbox:
        if self._inbox is None:
            raise ConfigError(f"{self!r} was made with inbox=False: use on_event")
        return self._inbox

    def _deliver(self, events: list[GroupEvent]) -> None:
        """In the groups thread: into the inbox (its waker wakes ``recv``), and the callbacks'
        share onto the loop."""
        if self._inbox is not None:
            self._inbox.put(events)
        if self._listeners:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                self._loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[GroupEvent]) -> None:
        """On the loop: call the callbacks, in order."""
        for event in events:
            for listener in list(self._listeners):
                if self._closed:
                    return
                try:
                    listener(event)
                except Exception:  # a user's callback must not stop the others; logged loudly
                    log.exception("group event callback %r failed on %s", listener, event)


async def _wait(future: concurrent.futures.Future[None], timeout: float, what: str) -> None:
    """Await work handed to the groups thread; its error is raised here."""
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except asyncio.TimeoutError as exc:
        if isinstance(exc, ZmqkitError):
            raise  # the work itself timed out (zmqkit's Timeout is a TimeoutError too)
        raise Timeout(f"{what}: no answer in {timeout:g} s") from None

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
from collections.abc import AsyncIterator
from typing import Any

from zmqkit import (
    ClosedError,
    Deadline,
    LoopOwner,
    LoopWakeup,
    Node,
    Timeout,
    ZmqkitError,
)

from .base import BaseGroups
from .core import GroupEvent
from .runner import DEFAULT_TIMEOUT, PeerRef

__all__ = ["AsyncGroups"]

IDLE_FOREVER = 3600.0  # events() without an idle timeout waits this long between looks


class AsyncGroups(BaseGroups):
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
        self._owner = LoopOwner("an AsyncGroups", instead="groups.Groups")
        self._woken = LoopWakeup(self._owner.loop)
        super().__init__(node, inbox=inbox, timeout=timeout)
        if self._inbox is not None:
            self._inbox.add_waker(self._woken.set)

    async def __aenter__(self) -> AsyncGroups:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    # -- membership ------------------------------------------------------------------------------

    async def join(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Join ``group``: receive its shouts, and let peers see this node in it.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: the beacon has no room for another group; nothing changed.
            ClosedError: closed.
        """
        self._check_caller()
        await _wait(self._runner.change(group, True), timeout, f"joining {group!r}")

    async def leave(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Leave ``group``: peers see LEAVE, and its shouts stop reaching this node."""
        self._check_caller()
        await _wait(self._runner.change(group, False), timeout, f"leaving {group!r}")

    # -- sending ---------------------------------------------------------------------------------

    async def whisper(self, peer: PeerRef, body: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send ``body`` to one peer and wait until it has it (from a callback, which must not
        wait: ``asyncio.create_task(groups.whisper(...))``).

        Raises:
            PeerNotFound: no peer with that UUID took part in groups within ``timeout``, or it
                has gone.
            Timeout: no acknowledgement within ``timeout``.
            BrokenError: the peer went before it acknowledged.
            BusyError: too many whispers to that peer wait already.
            WrongThread: called off the loop it was made on.
        """
        self._check_caller()
        future = self._runner.submit_whisper(peer, body, timeout)
        await _wait(future, timeout + 1.0, f"whisper to {peer}")  # settled at the deadline

    # -- receiving -------------------------------------------------------------------------------

    async def recv(self, timeout: float) -> GroupEvent:
        """The next event, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no event in time.
            ClosedError: closed, and every event read.
            ConfigError: made with ``inbox=False``.
        """
        self._check_caller()
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

    def _check_caller(self) -> None:
        self._owner.check(self)

    def _deliver(self, events: list[GroupEvent]) -> None:
        """In the groups thread: into the inbox (its waker wakes ``recv``), and the callbacks'
        share onto the loop."""
        if self._inbox is not None:
            self._inbox.put(events)
        if self._listeners:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                self._owner.loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[GroupEvent]) -> None:
        """On the loop: call the callbacks, in order, until the close."""
        self._call_listeners(events, until_closed=True)


async def _wait(future: concurrent.futures.Future[None], timeout: float, what: str) -> None:
    """Await work handed to the groups thread; its error is raised here."""
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except asyncio.TimeoutError as exc:
        if isinstance(exc, ZmqkitError):
            raise  # the work itself timed out (zmqkit's Timeout is a TimeoutError too)
        raise Timeout(f"{what}: no answer in {timeout:g} s") from None

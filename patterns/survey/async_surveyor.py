"""The asyncio surveyor: ``await AsyncSurveyor(node, "sensor").ask("read")`` on one loop.

It belongs to the loop it was made on: one task per node asked, all on that loop. Surveys may
run at once (from several tasks): each takes a set of sockets of its own from a pool, so no
survey reads another's answers. ``close`` works from any thread: it closes the sockets on the
loop (``LoopOwner.call``), and a survey running then ends with ``ClosedError``.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuid_module
from typing import Any

from zmqkit import (
    AsyncSocket,
    BusyError,
    ClosedError,
    LoopOwner,
    LoopWakeup,
    Node,
    PeerEvent,
    Timeout,
)

from .base import BaseSurveyor
from .connections import Connections
from .core import DEFAULT_MAX_CONCURRENT, DEFAULT_TIMEOUT, SurveyResult, SurveyState
from .surveyor import SLICE

__all__ = ["AsyncSurveyor"]


class AsyncSurveyor(BaseSurveyor):
    """``Surveyor`` for asyncio code, made and used on one event loop.

    ``async with AsyncSurveyor(node, "sensor") as sensors: await sensors.ask("read")``.

    Args:
        timeout: the default deadline of each survey, in seconds.
        max_concurrent: how many surveys may run at once (each holds a socket per node); one
            more raises ``BusyError``.

    Raises:
        WrongThread: made where no event loop runs (use ``Surveyor`` there).
    """

    def __init__(self, node: Node, name: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        self._owner = LoopOwner("an AsyncSurveyor", instead="survey.Surveyor")
        self._idle: list[Connections] = []  # socket sets kept for the next survey
        self._busy: set[Connections] = set()  # one per survey running
        self._wakeups: set[LoopWakeup] = set()  # one per survey running
        super().__init__(node, name, timeout=timeout, max_concurrent=max_concurrent)

    async def __aenter__(self) -> AsyncSurveyor:
        self._check_usable()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def _close_sockets(self) -> None:
        self._owner.call(self._close_on_loop)

    def _close_on_loop(self) -> None:
        for connections in [*self._idle, *self._busy]:
            connections.close()  # a survey waiting on one of them wakes with nothing
        self._idle.clear()
        with self._lock:
            for wakeup in self._wakeups:
                wakeup.set()

    async def ask(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        min_replies: int | None = None,
        **kwargs: Any,
    ) -> SurveyResult:
        """Ask every node ``method(*args, **kwargs)``; see ``Surveyor.ask``.

        Raises:
            WrongThread: called off the loop the surveyor was made on.
        """
        return await self.ask_with(method, args, kwargs, timeout=timeout, min_replies=min_replies)

    async def ask_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        min_replies: int | None = None,
    ) -> SurveyResult:
        """``ask`` with the arguments as values, for methods with a ``timeout`` parameter."""
        self._check_usable()
        state = self._start(method, args, kwargs, timeout, min_replies)
        connections = self._acquire()
        changed = LoopWakeup(self._owner.loop)
        with self._lock:
            self._wakeups.add(changed)
        askers: dict[uuid_module.UUID, asyncio.Task[None]] = {}
        try:
            connections.refresh(state)
            while True:
                if self._closed:
                    raise ClosedError(f"{self!r} was closed while a survey ran")
                for node_uuid in state.unsent():
                    if node_uuid not in askers:
                        sock = connections.sockets[node_uuid][1]
                        assert isinstance(sock, AsyncSocket)
                        asking = self._ask_one(state, node_uuid, sock, changed)
                        askers[node_uuid] = asyncio.ensure_future(asking)
                if state.done(now := time.monotonic()):
                    break
                await changed.wait(min(SLICE, state.remaining(now)))
                if not self._closed and connections.version != self.node.peers_version:
                    _, removed = connections.refresh(state)
                    for node_uuid in removed:
                        if node_uuid in askers:
                            askers[node_uuid].cancel()
        finally:
            with self._lock:
                self._wakeups.discard(changed)
            try:
                for asker in askers.values():
                    asker.cancel()
                outcomes = await asyncio.gather(*askers.values(), return_exceptions=True)
            finally:
                self._release(connections)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        return self._finish(state)

    @staticmethod
    async def _ask_one(
        state: SurveyState, node_uuid: uuid_module.UUID, sock: AsyncSocket, changed: LoopWakeup
    ) -> None:
        """Send one node its request once it is connected, then read until it has answered."""
        frame = state.request(node_uuid)
        try:
            while not sock.try_send(frame):
                remaining = state.remaining(time.monotonic())
                if remaining <= 0 or not await sock.wait_writable(remaining):
                    return  # never connected in time: the survey counts it missing
            state.sent(node_uuid)
            while not state.settled(node_uuid):
                answer = await sock.recv_async(state.remaining(time.monotonic()))
                if state.receive(node_uuid, answer):
                    changed.set()
        except (Timeout, ClosedError):
            return  # the deadline passed, or the node went (or the surveyor closed) meanwhile

    # -- the pool of socket sets, on the loop -----------------------------------------------------

    def _check_usable(self) -> None:
        self._owner.check(self)
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    def _acquire(self) -> Connections:
        """A set of sockets for one survey: an idle one, or a new one."""
        if len(self._busy) >= self._max_concurrent:
            raise BusyError(
                f"{self!r} runs {len(self._busy)} surveys already (max_concurrent); "
                "try again when one has ended"
            )
        connections = self._idle.pop() if self._idle else Connections(
            self.node, self.name, asyncio=True
        )
        self._busy.add(connections)
        return connections

    def _release(self, connections: Connections) -> None:
        """After a survey: keep its sockets for the next one, unless closed or too many."""
        self._busy.discard(connections)
        if self._closed or len(self._idle) >= self._max_concurrent:
            connections.close()
        else:
            self._idle.append(connections)

    def _on_presence(self, _: PeerEvent) -> None:
        """In the beacon thread: wake every survey running, to look at discovery again."""
        with self._lock:
            for wakeup in self._wakeups:
                wakeup.set()

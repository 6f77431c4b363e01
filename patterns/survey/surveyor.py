"""The blocking surveyor: ``Surveyor(node, "sensor").ask("read")`` from any thread.

Each thread that surveys gets a set of sockets of its own (one DEALER per node, made on its first
survey and kept for the next), so surveys from several threads run at once and no socket is ever
touched by two threads. The thread waits in a ``Poller`` over its sockets and a ``Wakeup`` that
discovery and ``close`` set. A set whose thread has ended, or one beyond ``max_concurrent``, is
closed; ``close`` closes the idle sets itself and lets each busy one close its own sockets.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from zmqkit import (
    BusyError,
    ClosedError,
    Node,
    PeerEvent,
    Poller,
    Socket,
    Wakeup,
)

from .base import BaseSurveyor
from .connections import Connections
from .core import DEFAULT_MAX_CONCURRENT, DEFAULT_TIMEOUT, SurveyResult, SurveyState

__all__ = ["SLICE", "Surveyor", "ask"]

SLICE = 0.1  # while waiting, look at discovery this often (new nodes, nodes gone)
FIRST_TICK = 0.001  # a request waiting for its connection is retried this soon, then less often
CLOSE_WAIT = 2.0  # how long close() waits for busy threads to close their own sockets


class _ThreadSockets:
    """One thread's sockets, the poller it waits in, and the wake-up that interrupts it."""

    def __init__(self, node: Node, name: str | None, thread: threading.Thread) -> None:
        self.thread = thread
        self.wakeup = Wakeup()
        self.poller = Poller([self.wakeup])
        self.connections = Connections(node, name, poller=self.poller)
        self.busy = False  # a survey runs on it now (its thread is using the sockets)
        self.closed = False

    def close(self) -> None:
        self.connections.close()
        self.poller.unregister(self.wakeup)
        self.wakeup.close()
        self.closed = True


class Surveyor(BaseSurveyor):
    """Surveys the nodes called ``name`` (None: every node serving RPC), from any thread.

    Keeps one DEALER per node and per surveying thread between surveys, so repeated surveys cost
    no reconnection. Usable once made; closed by ``close()`` (from any thread), ``with``, or when
    its node closes.

    Args:
        timeout: the default deadline of each survey, in seconds.
        max_concurrent: how many surveys may run at once (each in its own thread); one more
            raises ``BusyError``.
    """

    def __init__(self, node: Node, name: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        self._sets: dict[threading.Thread, _ThreadSockets] = {}  # before discovery calls in
        self._running = 0
        super().__init__(node, name, timeout=timeout, max_concurrent=max_concurrent)
        self._released = threading.Condition(self._lock)

    def __enter__(self) -> Surveyor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _close_sockets(self) -> None:
        """Close the idle threads' sockets here; wake the busy ones, which close their own, and
        wait for them (a survey running in another thread ends at once with ClosedError)."""
        with self._lock:
            idle = [sockets for sockets in self._sets.values() if not sockets.busy]
            busy = [sockets for sockets in self._sets.values() if sockets.busy]
            for sockets in idle:
                del self._sets[sockets.thread]
            for sockets in busy:  # under the lock: its thread closes it only once it has it
                sockets.wakeup.set()
        for sockets in idle:  # no thread uses them: the lock handed them over to this one
            sockets.close()
        others = [sockets for sockets in busy if sockets.thread is not threading.current_thread()]
        with self._released:
            self._released.wait_for(lambda: all(s.closed for s in others), CLOSE_WAIT)

    def ask(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        min_replies: int | None = None,
        **kwargs: Any,
    ) -> SurveyResult:
        """Ask every node ``method(*args, **kwargs)``; gather until a quorum, everyone or timeout.

        Raises:
            PeerNotFound: no node to ask was found before the deadline.
            BusyError: ``max_concurrent`` surveys are running already.
            ClosedError: the surveyor is closed (or was closed during the survey).
        """
        return self.ask_with(method, args, kwargs, timeout=timeout, min_replies=min_replies)

    def ask_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        min_replies: int | None = None,
    ) -> SurveyResult:
        """``ask`` with the arguments as values, for methods with a ``timeout`` parameter."""
        state = self._start(method, args, kwargs, timeout, min_replies)
        sockets = self._acquire()
        try:
            self._run(state, sockets)
        finally:
            self._release(sockets)
        return self._finish(state)

    # -- one thread's sockets ---------------------------------------------------------------------

    def _acquire(self) -> _ThreadSockets:
        """The calling thread's sockets, marked busy (made on its first survey)."""
        thread = threading.current_thread()
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            if self._running >= self._max_concurrent:
                raise BusyError(
                    f"{self!r} runs {self._running} surveys already (max_concurrent); "
                    "try again when one has ended"
                )
            ended = [s for t, s in self._sets.items() if not t.is_alive()]
            for sockets in ended:
                del self._sets[sockets.thread]
            mine = self._sets.get(thread)
            if mine is None:
                mine = self._sets[thread] = _ThreadSockets(self.node, self.name, thread)
            # one thread runs one survey at a time: nothing inside a survey calls back out
            assert not mine.busy, "a survey inside a survey on one thread"
            mine.busy = True
            self._running += 1
        for sockets in ended:  # their threads are gone: nobody else can touch them
            sockets.close()
        return mine

    def _release(self, mine: _ThreadSockets) -> None:
        """After a survey: keep the sockets for the next one, or close them here, their thread."""
        with self._lock:
            mine.busy = False
            self._running -= 1
            drop = self._closed or len(self._sets) > self._max_concurrent
            if drop:
                self._sets.pop(mine.thread, None)
        if drop:
            mine.close()
            with self._released:
                self._released.notify_all()

    def _on_presence(self, _: PeerEvent) -> None:
        """In the beacon thread: wake every survey running, to look at discovery again."""
        with self._lock:  # held: a set's thread closes its wake-up only after taking it out
            for sockets in self._sets.values():
                if sockets.busy:
                    sockets.wakeup.set()

    # -- one survey ------------------------------------------------------------------------------

    def _run(self, state: SurveyState, mine: _ThreadSockets) -> None:
        connections = mine.connections
        connections.refresh(state)
        tick = FIRST_TICK
        while not state.done(now := time.monotonic()):
            if self._closed:
                raise ClosedError(f"{self!r} was closed while a survey ran")
            if connections.version != self.node.peers_version:
                connections.refresh(state)
                if state.done(now):
                    break
            self._send(state, connections)
            wait = min(SLICE, state.remaining(now))
            if unsent := state.unsent():  # the Poller sees answers only: look again soon
                wait = min(wait, tick)
                tick = min(tick * 2, SLICE)
                if not state.waiting_for():  # no answer to wait for yet: wait for a connection
                    connections.sockets[unsent[0]][1].poll_writable(wait)
                    continue
            self._receive(state, connections, mine.poller.poll(wait))

    @staticmethod
    def _send(state: SurveyState, connections: Connections) -> None:
        """Send every request whose node is connected; the others wait for their connection."""
        for node_uuid in state.unsent():
            sock = connections.sockets[node_uuid][1]
            if sock.try_send(state.request(node_uuid)):  # False: not connected yet
                state.sent(node_uuid)

    @staticmethod
    def _receive(state: SurveyState, connections: Connections,
                 ready: list[Socket | Wakeup]) -> None:
        """Take every frame queued on the sockets ``ready`` (a woken Wakeup is drained)."""
        for sock in ready:
            if not isinstance(sock, Socket):
                continue  # the wake-up: discovery changed, or close() was called
            node_uuid = connections.owner_of(sock)
            if node_uuid is None:
                continue  # closed meanwhile (its node went)
            while (frame := sock.try_recv()) is not None:
                state.receive(node_uuid, frame)


def ask(
    node: Node,
    name: str | None,
    method: str,
    *args: Any,
    timeout: float = DEFAULT_TIMEOUT,
    min_replies: int | None = None,
    **kwargs: Any,
) -> SurveyResult:
    """Ask every node called ``name`` (None: every node serving RPC) ``method(*args, **kwargs)``.

    From any thread; the sockets are made for this survey and closed after it.

    Raises:
        PeerNotFound: no node to ask was found before the deadline.
    """
    with Surveyor(node, name, timeout=timeout) as surveyor:
        return surveyor.ask_with(method, args, kwargs, min_replies=min_replies)

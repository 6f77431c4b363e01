"""The asyncio driver of the call core, for ``rpc.AsyncClient`` and
``failover.AsyncFailoverClient``.

Everything runs on one event loop, the one that first uses the client: one DEALER per node and
one reader task per DEALER that hands each answer to the core, which matches it to its call, so
any number of calls may be in flight. One timer serves every call's deadline. Used
from another thread or loop, the client raises ``WrongThread`` and says what to use instead;
``close()`` works from any thread (it runs on the loop, through ``call_on_loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from zmqkit import (
    BusyError,
    ClosedError,
    LoopWakeup,
    Node,
    PeerNotFound,
    Socket,
    Timeout,
    WrongThread,
    ZmqkitError,
    call_on_loop,
    codec,
)

from .connections import Connections
from .core import CONNECT_WAIT, SLICE, Call, CallCore, Phase
from .routes import ROLE, Target

__all__ = ["AsyncCaller"]

READER_WAIT = 60.0  # a reader (and the discovery watcher) waits this long per look
PRUNE_SLACK = 10_000  # wake-up times of ended calls kept before they are cleaned away
_DONE, _ROUTING, _IN_FLIGHT = Phase.DONE, Phase.ROUTING, Phase.IN_FLIGHT


class AsyncCaller:
    """Calls the nodes of one name through ``core`` from asyncio code, on one event loop.

    Attached to ``node`` once made (closed with it). Bound to the running loop when made inside
    one, else to the loop that first uses it.
    """

    _SYNC_CLASS: ClassVar[str] = "rpc.Client"  # what to use from a thread without this loop

    def __init__(self, node: Node, core: CallCore, *, timeout: float) -> None:
        self.node = node
        self.name = core.name
        self.timeout = timeout
        core.explain(keyed=node.security is not None, beacon_port=node.port)
        self._core = core
        self._conns = Connections(node, asyncio=True)
        self._readers: dict[Target, asyncio.Task[None]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}  # a driving coroutine's wake-up
        self._last_reply: dict[Target, float] = {}  # when each node's socket last gave anything
        # when to look at each call, for the one timer: the ids of submitted calls in a queue,
        # in deadline order (see _submit); every other wake-up in a heap of (when, call id)
        self._deadlines: deque[int] = deque()
        self._last_deadline = -math.inf  # the deadline of the newest id in the queue
        self._prune_at = PRUNE_SLACK  # its length when it is cleaned of ended calls
        self._timers: list[tuple[float, int]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        node.attach(self)  # a closed node refuses before anything is made
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # made outside any loop: the first loop that uses it gets it
            return
        self._bind(loop)

    def __enter__(self) -> AsyncCaller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> AsyncCaller:
        self._bind_loop()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def close(self) -> None:
        """Stop the readers, close the sockets; calls in flight raise ClosedError.

        Idempotent, and callable from any thread: the work runs on the client's loop.
        """
        if self._closed:
            return
        loop = self._loop
        if loop is None:
            self._close_here()
        else:
            call_on_loop(loop, self._close_here)

    async def aclose(self) -> None:
        """``close``, then wait for the reader tasks to finish."""
        tasks = [*self._readers.values(), *([self._watcher] if self._watcher else [])]
        self.close()
        if tasks and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        """Counters: calls, sent, answered, retried, unreachable, refused, dropped-*."""
        return dict(self._core.stats)

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the service called, and the calls made."""
        stats = self.stats()
        return {"target": self.name, "calls": stats.get("calls", 0), "stats": stats}

    # -- calling -------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``method(*args, **kwargs)`` on a node of the name and return its result.

        See the sync client's ``call`` for what it raises.
        """
        return await self.call_with(method, args, kwargs, timeout=timeout, idempotent=idempotent)

    async def call_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """``call`` with the arguments as values, for methods with a ``timeout`` parameter."""
        self._bind_loop()
        call = self._core.begin(
            method, args, kwargs or {}, idempotent=idempotent,
            timeout=self.timeout if timeout is None else timeout, now=time.monotonic(),
        )
        try:
            await self._drive(call)
        finally:
            if call.phase is not _DONE:  # cancelled by the caller
                self._core.abandon(call)
        return call.outcome()

    def _submit(self, method: str, /, *args: Any, timeout: float | None = None,
                **kwargs: Any) -> asyncio.Future[Any]:
        """Send a call now and return a future of its result: the cheapest way to pipeline.

        Needs a node already known and connected (after a first ``await`` call); raises
        ``PeerNotFound`` otherwise, and ``BusyError`` when there is no room to send now. Not
        retried on failure. (``AsyncClient.submit`` is this very function: no wrapper frame.)
        """
        loop = self._loop
        try:
            here = asyncio.get_running_loop() is loop and not self._closed
        except RuntimeError:  # no loop runs in this thread: _bind_loop says what to do
            here = False
        if not here or loop is None:
            loop = self._bind_loop()
        core = self._core
        if core.version != self.node.peers_version:
            self._refresh()
        now = time.monotonic()
        call = core.begin(method, args, kwargs, False,
                          self.timeout if timeout is None else timeout, now)
        target = core.route(call, now)
        if target is None:
            core.abandon(call)
            if core.refusal is not None and not core.targets.targets:
                raise core.refusal
            raise PeerNotFound(f"no node called {self.name!r} is known yet; await a call first")
        conns = self._conns
        sock = conns.sockets.get(target) if conns.generation == core.generation else (
            self._socket(target))
        if sock is None or not sock.try_send(call.frame):
            core.unreachable(call, target, now)
            core.abandon(call)
            raise BusyError(
                f"no room to send to {self.name!r} now (its queue is full, or its connection is "
                "not up yet): await some results first"
            )
        core.sent(call, target, now, sock)
        future: asyncio.Future[Any] = loop.create_future()
        call.promise = future
        # Its deadline never moves (it is not retried), and calls made with one timeout come in
        # deadline order: a queue of their ids keeps them in order for the timer, an int each
        # where a heap needs a tuple that the garbage collector tracks (with a thousand calls in
        # flight, that made it collect three times as often).
        deadline = call.deadline
        if deadline < self._last_deadline:  # a shorter timeout than an earlier call's
            self._later(deadline, call.call_id)
            return future
        deadlines, calls = self._deadlines, core.calls
        deadlines.append(call.call_id)
        self._last_deadline = deadline
        if deadlines[0] not in calls:  # ended: the queue sheds one for each it takes
            deadlines.popleft()
        elif len(deadlines) > self._prune_at:  # held up behind a slow call
            self._deadlines = deque(call_id for call_id in deadlines if call_id in calls)
            self._prune_at = 2 * len(self._deadlines) + PRUNE_SLACK
        if deadline < self._sweep_at:
            self._arm(deadline)
        return future

    async def _stream(self, method: str, args: tuple[Any, ...] | list[Any],
                      kwargs: dict[str, Any], timeout: float | None) -> AsyncIterator[Any]:
        """The items a generator method yields, as they come (``timeout``: the longest wait
        for one), granting the server credit as they are taken (see ``core``)."""
        self._bind_loop()
        core = self._core
        call = core.begin(
            method, args, kwargs, idempotent=False,
            timeout=self.timeout if timeout is None else timeout, now=time.monotonic(),
            stream=True,
        )
        done = False
        try:
            while True:
                if not call.items:  # (its reader task may have queued some while we paused)
                    await self._drive(call)
                items, call.items = call.items, None
                for item in items or ():
                    yield item
                    limit = core.took(call, 1)
                    if limit is not None:
                        self._grant(call, limit)
                if call.phase is _DONE:
                    break
                core.waiting(call, time.monotonic())
            call.outcome()  # raises the error it ended with, if any
            done = True
        finally:
            if not done:
                self._cancel(call)

    # -- the parts -----------------------------------------------------------------------------

    def _off_loop(self, why: str) -> str:
        return (
            f"{self!r} is for asyncio code on the loop that first used it, and {why}: from "
            f"another thread use {self._SYNC_CLASS} (any thread may call it), or hand the call "
            "to the client's loop with asyncio.run_coroutine_threadsafe(client.call(...), loop)"
        )

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be the client's (the first one binds it).

        Raises:
            WrongThread: no loop runs here, or another one does.
            ClosedError: the client is closed.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongThread(self._off_loop("no event loop runs in this thread")) from None
        if loop is not self._loop:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            if self._loop is not None:
                raise WrongThread(self._off_loop("this is another loop"))
            self._bind(loop)
        elif self._closed:
            raise ClosedError(f"{self!r} is closed")
        return loop

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        wakeup = LoopWakeup(loop)
        self._unsubscribe = self.node.on_event(lambda _: wakeup.set())
        self._watcher = loop.create_task(self._watch(wakeup))

    async def _watch(self, wakeup: LoopWakeup) -> None:
        """Follow discovery: a node that leaves fails (or moves) the calls that wait on it."""
        while True:
            await wakeup.wait(READER_WAIT)
            if self._core.version != self.node.peers_version:
                self._refresh()

    def _refresh(self) -> None:
        core, node = self._core, self.node
        version = node.peers_version  # first: a change after this read is seen next time
        _, _, changed = core.sync(node.peers(self.name, role=ROLE), time.monotonic(), version)
        self._follow()
        for call in changed:
            self._wake(call)

    def _follow(self) -> None:
        """Sockets and readers in line with the core's targets."""
        core, conns = self._core, self._conns
        if conns.generation == core.generation or self._closed:
            return
        opened, closed, refused = conns.sync(list(core.targets.targets.values()))
        for target in closed:
            reader = self._readers.pop(target, None)
            if reader is not None:
                reader.cancel()
        for target in opened:
            self._start_reader(target)
        now = time.monotonic()
        for target, error in refused:
            for call in core.refuse(target, error, now):
                self._wake(call)
        conns.generation = core.generation

    def _start_reader(self, target: Target) -> None:
        sock = self._conns.socket(target)
        assert sock is not None and self._loop is not None
        self._readers[target] = self._loop.create_task(self._read(target, sock))

    def _socket(self, target: Target) -> Socket | None:
        if self._conns.generation != self._core.generation:
            self._follow()
        return self._conns.sockets.get(target)

    async def _drive(self, call: Call) -> None:
        """Run ``call`` until it ends (or, for a stream, until it has items to hand over)."""
        core, node = self._core, self.node
        while True:
            if core.version != node.peers_version:
                self._refresh()
            phase = call.phase
            if phase is _ROUTING:
                target = self._send_now(call)
                if target is not None:
                    await self._send_when_connected(call, target)
                elif call.phase is _ROUTING:  # no node known yet
                    await self._wait_for_discovery(call)
            elif phase is _IN_FLIGHT:
                await self._wait(call)
            if call.phase is not _DONE and core.expire(call, time.monotonic()):
                self._after_timeout(call)
            if call.phase is _DONE or (call.stream and call.items):
                return

    def _send_now(self, call: Call) -> Target | None:
        """Route and send without suspending (the usual case); the target when the call must
        wait for a connection to it, else None (sent, or no node known)."""
        now = time.monotonic()
        target = self._core.route(call, now)
        if target is None:
            return None
        sock = self._socket(target)
        if sock is not None and sock.try_send(call.frame):
            self._core.sent(call, target, now, via=sock)
            return None
        return target

    async def _send_when_connected(self, call: Call, target: Target) -> None:
        """No connection to the chosen node yet: give it a moment, then try the next node.
        The call counts as pending there meanwhile, so a burst of calls spreads over the nodes."""
        sock = self._socket(target)
        sent = False
        if sock is not None:
            now = time.monotonic()
            wait_until = now + min(CONNECT_WAIT, call.remaining(now))
            while not sent:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or not await sock.wait_writable(remaining) or sock.closed:  # type: ignore[attr-defined]
                    break
                sent = sock.try_send(call.frame)
        if sent:
            self._core.sent(call, target, time.monotonic(), via=sock)
        else:
            self._core.unreachable(call, target, time.monotonic())

    async def _wait_for_discovery(self, call: Call) -> None:
        """No node known: wait a slice for one to appear (``expire`` ends the wait in time)."""
        try:
            await self.node.wait_for_async(
                self.name, min(SLICE, call.remaining(time.monotonic())), role=ROLE
            )
        except PeerNotFound:
            return
        self._core.version = -1  # one serves the name: look at the peers again now

    async def _wait(self, call: Call) -> None:
        """Wait for the call's answer, a discovery change (both wake it) or its next deadline."""
        assert self._loop is not None
        waiter = self._waiters[call.call_id] = self._loop.create_future()
        self._later(self._core.wake_at(call), call.call_id)
        try:
            await waiter
        finally:
            self._waiters.pop(call.call_id, None)

    def _wake(self, call: Call) -> None:
        """``call`` changed: wake the coroutine driving it, or settle its future."""
        promise = call.promise  # a submitted call's future
        if promise is not None:
            if call.phase is _DONE:
                call.promise = None
                if not promise.done():
                    if call.error is not None:
                        promise.set_exception(call.error)
                    else:
                        promise.set_result(call.result)
            return
        waiter = self._waiters.get(call.call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _later(self, at: float, call_id: int) -> None:
        """Look at call ``call_id`` at ``at`` (a driven call's next wake-up, or a submitted call
        out of deadline order): a heap entry, under the one timer."""
        timers = self._timers
        heapq.heappush(timers, (at, call_id))
        if len(timers) > 4 * len(self._core.calls) + PRUNE_SLACK:  # mostly calls that ended
            timers[:] = [entry for entry in timers if entry[1] in self._core.calls]
            heapq.heapify(timers)
        if at < self._sweep_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        assert self._loop is not None
        self._sweep_at = at
        self._sweeper = self._loop.call_later(max(0.0, at - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        """Apply the deadlines whose time has come; arm the timer for the next one."""
        self._sweeper, self._sweep_at = None, math.inf
        calls, now = self._core.calls, time.monotonic()
        due, at = [], math.inf
        deadlines = self._deadlines
        while deadlines:
            call = calls.get(deadlines[0])
            if call is not None and call.deadline > now:
                at = call.deadline  # the next one in the queue
                break
            deadlines.popleft()
            if call is not None:
                due.append(call)
        timers = self._timers
        while timers and timers[0][0] <= now:
            call = calls.get(heapq.heappop(timers)[1])
            if call is not None:
                due.append(call)
        for call in due:
            if self._core.expire(call, now):
                self._after_timeout(call)
            self._wake(call)
        if timers:
            at = min(at, timers[0][0])
        if at < math.inf:
            self._arm(at)

    def _after_timeout(self, call: Call) -> None:
        """A call that timed out in flight: a node that gave nothing at all since it was sent
        gets a fresh socket (the Lazy Pirate reset)."""
        if not isinstance(call.error, Timeout) or not call.sent_to:
            return
        targets = self._core.targets.targets
        for uuid in call.sent_to:
            target = targets.get(uuid)
            if target is None or self._last_reply.get(target, -math.inf) >= call.started:
                continue
            reader = self._readers.pop(target, None)
            if reader is not None:
                reader.cancel()
            if self._conns.reset(target) is not None:
                self._start_reader(target)

    async def _read(self, target: Target, sock: Socket) -> None:
        """Hand every frame from ``target``'s socket to the core; wake the calls it changes."""
        receive, last_reply, node = self._core.receive, self._last_reply, target.uuid
        try:
            while True:
                frame = sock.try_recv()
                if frame is None:
                    await sock.wait_readable(READER_WAIT)  # type: ignore[attr-defined]
                    continue
                now = last_reply[target] = time.monotonic()
                call = receive(node, frame, sock, now)
                if call is None:
                    continue
                promise = call.promise
                if promise is None:
                    self._wake(call)
                elif not promise.done():  # a submitted call: it has ended
                    if call.error is None:
                        promise.set_result(call.result)
                    else:
                        promise.set_exception(call.error)
        except ClosedError:
            return  # the node went and its socket was closed under us

    def _grant(self, call: Call, limit: int) -> None:
        """Let the server send a stream's items up to ``limit`` (best effort: a CREDIT that
        cannot go means the connection is gone, which the deadline then reports)."""
        sock = call.via
        if isinstance(sock, Socket) and not sock.closed:
            with contextlib.suppress(ZmqkitError):
                sock.try_send(codec.encode_credit(call.call_id, limit))

    def _cancel(self, call: Call) -> None:
        """A stream left early: end it, and tell its node to stop producing (best effort)."""
        running = call.phase is not _DONE
        self._core.abandon(call)
        sock = call.via
        if running and isinstance(sock, Socket) and not sock.closed:
            with contextlib.suppress(ZmqkitError):  # best effort: the node stops it on its own too
                sock.try_send(codec.encode_cancel(call.call_id))

    def _close_here(self) -> None:
        """Close, on the client's loop (or anywhere once that loop has stopped)."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        loop = self._loop
        alive = loop is not None and not loop.is_closed()
        if alive:
            for task in [*self._readers.values(), *([self._watcher] if self._watcher else [])]:
                task.cancel()
            if self._sweeper is not None:
                self._sweeper.cancel()
        self._readers.clear()
        self._conns.close()
        error = ClosedError(f"{self!r} was closed")
        for call in list(self._core.calls.values()):
            self._core.end(call, error)
            if alive:
                self._wake(call)
        self.node.detach(self)

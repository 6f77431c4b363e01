"""The asyncio RPC client: ``await AsyncClient(node, "calc").add(1, 2)``, many calls in flight.

One DEALER socket per node that serves the name and one reader task per socket, all on the loop
that first used the client. Replies are matched to calls by call id, so any number of calls may
be pipelined; ``submit`` starts a call without the cost of a coroutine and returns its future.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import zmq

from zmqkit import (
    AsyncSocket,
    BrokenError,
    BusyError,
    ClosedError,
    Deadline,
    Node,
    PeerNotFound,
    ProtocolError,
    SocketOptions,
    Timeout,
    ZmqkitError,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.security import SecurityError

from .core import DEFAULT_TIMEOUT, SLICE, Route, Routes, may_retry, outcome
from .handlers import DESCRIBE_METHOD

__all__ = ["AsyncClient"]

CLIENT_OPTIONS = SocketOptions(immediate=True)
READER_WAIT = 60.0  # a reader waits this long per look; it is cancelled on close


class PeerGone(Exception):
    """The node a call went to left before it answered (internal: a retry or BrokenError)."""


# call id -> (what waits for it: a future of the result or a stream's queue, its route, method)
Entry = tuple[Any, Route, str]
PRUNE_SLACK = 10_000  # deadlines of finished calls kept before the heap is cleaned


class AsyncClient:
    """Calls methods on the nodes called ``name`` from asyncio code.

    ``await client.call("add", 1, 2)``, ``await client.add(1, 2)``, ``async for x in
    client.stream("count", 5)``. Use ``async with`` (or ``await client.aclose()``) so that the
    reader tasks and sockets are closed.
    """

    def __init__(self, node: Node, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.node = node
        self.name = name
        self.timeout = timeout
        self._routes = Routes(name)
        self._sockets: dict[Any, AsyncSocket] = {}
        self._readers: dict[Any, asyncio.Task[None]] = {}
        self._waiting: dict[int, Entry] = {}
        self._collected: dict[int, list[Any]] = {}
        self._ids = itertools.count(1)
        self._refused: SecurityError | None = None  # why the last node found was not used
        self._last_reply: dict[Any, float] = {}  # route -> when its socket last gave anything
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._deadlines: list[tuple[float, int, float]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf

    def __repr__(self) -> str:
        return f"<zmqkit rpc.AsyncClient for {self.name!r}, {len(self._waiting)} calls in flight>"

    async def __aenter__(self) -> AsyncClient:
        self._bind_loop()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call_with(method, args, kwargs)

    async def aclose(self) -> None:
        """Stop the readers, close the sockets, fail calls still in flight with ClosedError."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._sweeper is not None:
            self._sweeper.cancel()
        readers = list(self._readers.values())
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._readers.clear()
        for call_id in list(self._waiting):
            self._fail(call_id, ClosedError(f"{self!r} was closed"))

    # -- calling -------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``method(*args, **kwargs)`` on one node of the name and return its result."""
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
        deadline = Deadline.after(self.timeout if timeout is None else timeout)
        tried: set[Any] = set()
        while True:
            future: asyncio.Future[Any] = self._bind_loop().create_future()
            route, _ = await self._send(method, args, kwargs or {}, deadline, tried, future)
            try:
                return await future
            except PeerGone:
                if not may_retry(idempotent=idempotent, sent=True):
                    raise BrokenError(
                        f"{self.name} node left during {method}(); not retried "
                        "because the call is not marked idempotent"
                    ) from None
                tried.add(route.uuid)

    def submit(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> asyncio.Future[Any]:
        """Send a call now and return a future of its result: the cheapest way to pipeline.

        Needs a node already known and connected (after a first ``await`` call); raises
        ``PeerNotFound`` otherwise. Not retried on failure.
        """
        loop = self._bind_loop()
        self._refresh()
        route = self._routes.pick(time.monotonic())
        if route is None:
            raise PeerNotFound(f"no node called {self.name!r} is known yet; await a call first")
        future: asyncio.Future[Any] = loop.create_future()
        call_id = next(self._ids)
        frame = codec.encode_request(call_id, method, args, kwargs)
        if not self._sockets[route.uuid].send_nowait(frame):
            raise BusyError(
                f"the queue to {self.name!r} is full; await some results first"
            ) from None
        self._track(call_id, future, route, self.timeout if timeout is None else timeout, method)
        return future

    async def stream(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Iterate the items a generator method yields; ``timeout`` is the wait between items."""
        self._bind_loop()  # a closed client or a foreign loop fails here, as call() does
        budget = self.timeout if timeout is None else timeout
        queue: asyncio.Queue[list[Any] | Exception] = asyncio.Queue()
        route, call_id = await self._send(
            method, args, kwargs, Deadline.after(budget), set(), queue
        )
        done = False
        try:
            while not done:
                try:
                    message = await asyncio.wait_for(queue.get(), budget)
                except asyncio.TimeoutError:
                    raise Timeout(f"{self.name}.{method}() sent no item in {budget} s") from None
                if isinstance(message, PeerGone):
                    done = True
                    raise BrokenError(f"{self.name} node left during the stream {method}()")
                if isinstance(message, Exception):  # the client was closed under the stream
                    done = True
                    raise message
                done = message[1] != Kind.STREAM_ITEM
                if message[1] != Kind.STREAM_END:
                    yield outcome(message)
        finally:
            if self._waiting.pop(call_id, None) is not None:
                self._routes.finished(route)
            sock = self._sockets.get(route.uuid)
            if not done and sock is not None:
                with contextlib.suppress(ZmqkitError):  # best effort: the node stops on its own too
                    sock.send_nowait(codec.encode_cancel(call_id))

    async def methods(self, timeout: float | None = None) -> list[dict[str, str]]:
        """The node's methods: name, signature, doc and how each runs."""
        result: list[dict[str, str]] = await self.call_with(DESCRIBE_METHOD, timeout=timeout)
        return result

    # -- the parts -----------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._loop is None:
            self._loop = loop

            def on_presence(_: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._refresh)

            self._unsubscribe = self.node.on_event(on_presence)
        elif self._loop is not loop:
            raise BusyError(f"{self!r} belongs to another event loop; make one per loop")
        return loop

    def _unreachable_message(self) -> str:
        hint = (
            " (a CURVE node admits only peers whose key is in its keyring: is this node's?)"
            if self.node.security is not None
            else ""
        )
        return f"could not connect to any {self.name!r} node before the deadline{hint}"

    def _refresh(self) -> None:
        if self._routes.version == self.node.peers_version or self._closed:
            return
        version = self.node.peers_version  # first: a change after this read is seen next time
        peers = self.node.peers(self.name)
        added, removed = self._routes.sync(peers, version)
        self._refused = None
        for route in removed:
            self._readers.pop(route.uuid).cancel()
            self._sockets.pop(route.uuid).close()
            for call_id, (_, call_route, _) in list(self._waiting.items()):
                if call_route is route:
                    self._fail(call_id, PeerGone())
        for route in added:
            try:
                self._open(route)
            except SecurityError as exc:  # not a node we may talk to: no route to it
                self._routes.drop(route)
                self._refused = exc

    def _open(self, route: Route) -> None:
        """A DEALER to ``route`` and the task that reads its replies."""
        assert route.peer is not None  # Routes.sync always records the peer
        sock = AsyncSocket(zmq.DEALER, options=CLIENT_OPTIONS)
        try:
            self.node.secure_client(sock, route.peer)
            sock.connect(route.endpoint)
        except BaseException:
            sock.close()
            raise
        self._sockets[route.uuid] = sock
        self._readers[route.uuid] = asyncio.ensure_future(self._read(route, sock))

    def _reset(self, route: Route) -> None:
        """A fresh socket for a route that answered nothing for a whole timeout (the Lazy Pirate
        reset): a connection that libzmq dropped for good (say, after a reply over the size
        limit) is made anew. Calls still waiting on the old socket run into their deadlines."""
        sock = self._sockets.pop(route.uuid, None)
        if sock is None:
            return
        self._readers.pop(route.uuid).cancel()
        sock.close()
        self._open(route)

    async def _send(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        deadline: Deadline,
        tried: set[Any],
        waiter: Any,
    ) -> tuple[Route, int]:
        """Send to the best node that takes it; try others while the request never left."""
        while True:
            self._refresh()
            route = self._routes.pick(time.monotonic(), tried)
            if route is None:
                if tried and self._routes.routes:
                    tried.clear()
                    continue
                await self._wait_for_route(deadline)
                continue
            sock = self._sockets[route.uuid]
            call_id = next(self._ids)
            frame = codec.encode_request(call_id, method, args, kwargs)
            sent = sock.send_nowait(frame)
            if not sent:
                # pending while it waits for a connection: a burst of calls made together (a
                # gather on a new client) then spreads over the nodes instead of all going to
                # the first one picked
                self._routes.started(route)
                try:
                    while not (sent := sock.send_nowait(frame)):
                        if not await sock.wait_writable(min(SLICE, deadline.remaining())):
                            break
                finally:
                    self._routes.finished(route)
            if sent:
                timeout = None if isinstance(waiter, asyncio.Queue) else deadline.remaining()
                self._track(call_id, waiter, route, timeout, method)
                return route, call_id
            self._routes.unreachable(route, time.monotonic())
            tried.add(route.uuid)  # never left: safe to try another node
            if deadline.expired():
                raise Timeout(self._unreachable_message())

    async def _wait_for_route(self, deadline: Deadline) -> None:
        if self._refused is not None:  # the nodes found are ones this node may not talk to
            raise self._refused
        try:
            await self.node.wait_for_async(self.name, deadline.remaining(), role="rpc")
        except PeerNotFound:
            raise PeerNotFound(
                f"no node called {self.name!r} serving RPC was found (beacon port {self.node.port})"
            ) from None
        self._routes.version = -1  # a node serves the name: look at the peers again now

    def _track(
        self, call_id: int, waiter: Any, route: Route, timeout: float | None, method: str
    ) -> None:
        """Remember a call until its reply; one heap of deadlines serves every call."""
        self._waiting[call_id] = (waiter, route, method)
        self._routes.started(route)
        if timeout is None:
            return
        at = self._loop.time() + timeout  # type: ignore[union-attr]
        deadlines = self._deadlines
        heapq.heappush(deadlines, (at, call_id, timeout))
        if len(deadlines) > 4 * len(self._waiting) + PRUNE_SLACK:
            deadlines[:] = [d for d in deadlines if d[1] in self._waiting]
            heapq.heapify(deadlines)
        if at < self._sweep_at:
            self._arm_sweeper(at)

    def _arm_sweeper(self, at: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweep_at = at
        self._sweeper = self._loop.call_at(at, self._sweep)  # type: ignore[union-attr]

    def _sweep(self) -> None:
        """Fail the calls whose deadline has passed; re-arm for the next one."""
        self._sweeper, self._sweep_at = None, math.inf
        now = self._loop.time()  # type: ignore[union-attr]
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            at, call_id, timeout = heapq.heappop(deadlines)
            entry = self._waiting.get(call_id)
            if entry is not None:
                route = entry[1]
                self._fail(
                    call_id, Timeout(f"{self.name}.{entry[2]}() got no reply in {timeout:g} s")
                )
                if self._last_reply.get(route.uuid, -math.inf) < at - timeout:
                    self._reset(route)  # not one reply since this call was sent
        if deadlines:
            self._arm_sweeper(deadlines[0][0])

    def _fail(self, call_id: int, error: BaseException) -> None:
        """End a call with ``error``: a timeout, its node gone, or the client closed."""
        entry = self._waiting.get(call_id)
        if entry is None:
            return
        waiter, route, _ = entry
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait(error)  # the stream's consumer ends the call
            return
        del self._waiting[call_id]
        self._collected.pop(call_id, None)
        self._routes.failed(route, time.monotonic())
        if not waiter.done():
            waiter.set_exception(error)

    async def _read(self, route: Route, sock: AsyncSocket) -> None:
        raw = sock.raw
        waiting = self._waiting
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                await sock.wait_readable(READER_WAIT)
                continue
            self._last_reply[route.uuid] = loop.time()
            try:
                message = codec.decode(frame)
            except ProtocolError:
                continue  # a garbled reply cannot be matched to a call; its call times out
            call_id, kind = message[2], message[1]
            entry = waiting.get(call_id)
            if entry is None:
                continue  # a reply to a call that timed out or was cancelled
            waiter, route, _ = entry
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(message)
                continue
            if kind == Kind.STREAM_ITEM:  # a generator method called with call(): collect
                self._collected.setdefault(call_id, []).append(message[3])
                continue
            del waiting[call_id]
            self._routes.finished(route)
            if waiter.done():
                continue
            if kind == Kind.REPLY:
                waiter.set_result(message[3])
            elif kind == Kind.STREAM_END:
                waiter.set_result(self._collected.pop(call_id, []))
            else:
                try:
                    outcome(message)
                except Exception as exc:  # RemoteError, or ProtocolError for a stray kind
                    waiter.set_exception(exc)

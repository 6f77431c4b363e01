"""The RPC server: one ROUTER socket in one service thread, plus the helpers its handlers need.

    caller DEALER ──► ROUTER (server thread) ──► plain handler, inline
                                             ├──► worker pool ──┐  @blocking and generators
                                             └──► asyncio loop ─┤  async def handlers
                          replies ◄── outbox ◄──────────────────┘  (the server thread sends)

Only the server thread touches the ROUTER (made by the node: a CURVE server that admits only its
keyring whenever the node has keys). Other threads put finished replies in an outbox and wake
the server thread. While nothing is outstanding in other threads, the server thread waits in a
plain blocking receive, which is as fast as a hand-written REP loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zmqkit import (
    ClosedError,
    ConfigError,
    EncodeError,
    Latency,
    Node,
    Poller,
    ProtocolError,
    ServiceThread,
    Socket,
    SocketKind,
    Timeout,
    codec,
)
from zmqkit.codec import Kind

from . import streams
from .handlers import DESCRIBE_METHOD, Handler, Mode, collect_handlers
from .routes import ROLE
from .streams import STREAM_METHOD, Flow, Stop
from .tracing import TRACE_KEY, traced

__all__ = ["DEFAULT_WORKERS", "Server", "serve"]

log = logging.getLogger("zmqkit.rpc")

DEFAULT_WORKERS = 8
MAX_OUTSTANDING = 1000  # calls waiting for the pool or the loop; beyond this, callers get BusyError
TICK = 0.1  # seconds between looks at the stop flag
MAX_TRACEBACK = 8192
STATS = ("calls", "errors", "busy", "bad-requests")  # what stats() counts
ALWAYS_TIMED = 100  # an inline method's first calls are all timed...
SAMPLE = 8  # ...then one call in 8: the percentiles of a busy method cost an eighth as much
LOOP_DRAIN = 1.0  # seconds the loop's cancelled handlers get to finish when the server closes

# The way back to a caller: its ROUTER identity, and for a REQ caller the empty delimiter too
Address = tuple[bytes, ...]
# (caller's address, frame or None for none, whether the call is finished)
Outgoing = tuple[Address, bytes | None, bool]
# plain names: an enum member looked up on its class costs ten times more, on every call
_REQUEST, _CANCEL, _CREDIT, _INLINE = Kind.REQUEST, Kind.CANCEL, Kind.CREDIT, Mode.INLINE
_STREAMING = (Mode.STREAM, Mode.ASYNC_STREAM)
_clock = time.perf_counter


class Server:
    """Serves ``target``'s public callables over RPC under ``node``'s name.

    Usable once made: its threads run, its endpoint is advertised (role ``"rpc"``), and it is
    attached to the node, which closes it. ``serve(node, target)`` says the same in a word.

    Args:
        node: the node to advertise on; it must be running.
        target: an object (its public methods), a ``{name: function}`` map, or a list of functions.
        workers: threads for ``@blocking`` and generator handlers. Eight lets a few slow calls run
            side by side while bounding threads and memory; more calls than that wait their turn,
            and more than ``MAX_OUTSTANDING`` waiting are refused with a ``BusyError``.

    Raises:
        ClosedError: the node is not running.
        ConfigError: the node already serves RPC, or the target has nothing to serve.
    """

    def __init__(
        self,
        node: Node,
        target: object | Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if not node.running:
            raise ClosedError(f"{node!r} is not running; start it first (with Node(...) as node:)")
        if ROLE in node.endpoints:
            raise ConfigError(f"{node!r} already serves RPC; serve one target per node")
        self.node = node
        self.handlers: dict[str, Handler] = collect_handlers(target)
        self.workers = workers
        self.endpoint = ""
        self._stats: Counter[str] = Counter(dict.fromkeys(STATS, 0))
        self._calls = 0  # the hot counter, a plain int (the server thread alone counts it)
        # per method, for introspection: how long each call took (its count is the calls
        # served) and how many failed
        self._latency = {name: Latency() for name in self.handlers}
        self._failed: Counter[str] = Counter()
        self._outbox: deque[Outgoing] = deque()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # (caller, call id) of each flow-controlled stream in progress. Only streams the server
        # started are here, so stray or forged CANCELs and CREDITs cannot grow it.
        self._flows: dict[tuple[Address, int], Flow] = {}
        self._next_sweep = 0.0  # when to look for flows whose caller stopped giving credit
        self._outstanding = 0
        self._closing = threading.Lock()
        self._closed = False
        self._service = ServiceThread(f"zmqkit-rpc:{node.name}", self._run)
        self._pool: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        node.attach(self)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<zmqkit rpc.Server {self.node.name!r} {self.endpoint or 'not serving'}>"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters: calls, errors, busy, bad-requests."""
        stats = dict(self._stats)
        stats["calls"] = self._calls
        return stats

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): each method with its calls, errors and latency
        percentiles in seconds (from the request's arrival to its answer, queueing included)."""
        methods = {
            name: {"calls": latency.count, "errors": self._failed[name],
                   **latency.percentiles(), "mode": self.handlers[name].mode.value}
            for name, latency in self._latency.items()
        }
        every = Latency.merged(self._latency.values())
        return {"service": self.node.name, "endpoint": self.endpoint, "methods": methods,
                "latency": every.percentiles(), "stats": self.stats()}

    # -- life cycle ------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the threads, bind, and advertise the endpoint."""
        modes = {handler.mode for handler in self.handlers.values()}
        if modes & {Mode.BLOCKING, Mode.STREAM}:
            for index in range(self.workers):
                worker = threading.Thread(
                    target=self._work,
                    name=f"zmqkit-rpc-worker:{self.node.name}:{index}",
                    daemon=True,
                )
                worker.start()
                self._pool.append(worker)
        if modes & {Mode.ASYNC, Mode.ASYNC_STREAM}:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name=f"zmqkit-rpc-loop:{self.node.name}", daemon=True
            )
            self._loop_thread.start()
        self._service.start()
        self.node.advertise(ROLE, self.endpoint)

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving, withdraw the endpoint and join every thread.

        Idempotent, and callable from any thread, a handler of this server included (the
        thread it runs in is then left to end by itself).
        """
        with self._closing:
            if self._closed:
                return
            self._closed = True
        if self.endpoint and self.node.endpoints.get(ROLE) == self.endpoint:
            self.node.withdraw(ROLE)
        self._service.stop(timeout)
        for flow in list(self._flows.values()):
            if flow.halt(Stop.CLOSED):  # waiting for credit: end it now, the pool is closing
                flow.resume()
        here = threading.current_thread()
        for _ in self._pool:
            self._jobs.put(None)
        for worker in self._pool:
            if worker is here:
                continue
            worker.join(timeout)
            if worker.is_alive():
                log.warning(
                    "%s is still running a handler after %s s; left behind", worker.name, timeout
                )
        loop, loop_thread = self._loop, self._loop_thread
        if loop is not None and loop_thread is not None:
            with contextlib.suppress(RuntimeError):  # closed already
                loop.call_soon_threadsafe(lambda: loop.create_task(self._stop_loop()))
            if loop_thread is not here:
                loop_thread.join(timeout + LOOP_DRAIN)
                if not loop_thread.is_alive():
                    loop.close()
        self.node.detach(self)

    async def _stop_loop(self) -> None:
        """Cancel the handlers still running and let them finish, then stop the loop (a task
        stopped with the loop instead would be destroyed while pending)."""
        assert self._loop is not None
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=LOOP_DRAIN)
        await self._loop.shutdown_asyncgens()
        self._loop.stop()

    # -- the server thread ---------------------------------------------------------------------

    def _run(self, service: ServiceThread) -> None:
        router = self.node.server_socket(SocketKind.ROUTER)
        try:
            self.endpoint = router.endpoint
            poller = Poller([router, service.wakeup])
            service.ready()
            while not service.stopping:
                if self._outstanding:
                    ready = poller.poll(TICK)
                    self._flush(router)
                    if self._flows:
                        self._sweep()
                    if router not in ready:
                        continue
                    message = router.try_recv_multipart()
                    if message is None:
                        continue
                else:
                    # the caller's address, then the rest of its message, here now (whole). Not
                    # recv_multipart: it reads the more-frames flag after the address too, and
                    # each read (pyzmq makes the option an enum first) costs more than a frame
                    try:
                        identity = router.recv(TICK)
                    except Timeout:
                        continue
                    message = router.try_recv_multipart()
                    if message is None:
                        continue
                    message.insert(0, identity)
                self._handle(router, message)
        except ClosedError:
            if not service.stopping:
                raise
        finally:
            router.close()

    def _flush(self, router: Socket) -> None:
        while self._outbox:
            address, frame, finished = self._outbox.popleft()
            if frame is not None:
                _reply(router, address, frame)
            if finished:
                self._outstanding -= 1

    def _sweep(self) -> None:
        """End the flows whose caller has given no credit for ``streams.IDLE_LIMIT`` seconds
        (a reader that went away without a CANCEL), looking about once a second."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for flow in list(self._flows.values()):
            if flow.expire(now):
                flow.resume()

    def _handle(self, router: Socket, message: list[bytes]) -> None:
        """One message from a caller: its address (its routing id, then an empty delimiter for
        a REQ caller) and exactly one request frame. An inline handler's reply goes back in the
        same list, its last frame replaced: the usual call makes no address of its own."""
        if len(message) != 2 and not (len(message) == 3 and not message[1]):
            self._bad_request(router, message, 0, "a request is exactly one frame")
            return
        try:
            request = codec.decode(message[-1])
        except ProtocolError as exc:
            self._bad_request(router, message, 0, str(exc))
            return
        kind, call_id = request[1], request[2]
        if kind != _REQUEST:
            self._not_a_request(router, message, request)
            return
        self._calls += 1
        handler = self.handlers.get(request[3])
        kwargs = request[5]
        if kwargs and TRACE_KEY in kwargs and handler is not None:  # a call made in a span
            handler = traced(handler, kwargs.pop(TRACE_KEY))
        if handler is not None and handler.mode is _INLINE:  # the usual call, first
            # every call is counted; the first ones and then one in SAMPLE are timed too
            latency = self._latency[handler.name]
            timed = latency.count < ALWAYS_TIMED or not self._calls % SAMPLE
            started = _clock() if timed else 0.0
            args = request[4]
            try:
                message[-1] = codec.encode_reply(call_id, handler.function(*args, **kwargs))
            except Exception as exc:  # the caller gets it as RemoteError; the server keeps serving
                message[-1] = self._failure(handler, call_id, args, kwargs, exc)
            router.try_send_multipart(message)  # a ROUTER drops what cannot go at once
            if timed:
                latency.record(_clock() - started)
            else:
                latency.count += 1
            return
        started = _clock()
        address = tuple(message[:-1])
        if handler is None:
            method = request[3]
            if method == STREAM_METHOD:
                self._open_flow(router, address, call_id, request[4], started)
                return
            _reply(
                router,
                address,
                self._describe(call_id)
                if method == DESCRIBE_METHOD
                else self._not_found(call_id, method),
            )
        elif self._outstanding >= MAX_OUTSTANDING:
            self._stats["busy"] += 1
            _reply(
                router,
                address,
                _error(
                    call_id,
                    "zmqkit.BusyError",
                    f"{self.node.name} has {MAX_OUTSTANDING} calls waiting",
                ),
            )
        else:
            self._outstanding += 1
            self._dispatch(handler, address, call_id, request[4], request[5], started)

    def _not_a_request(self, router: Socket, message: list[bytes], request: list[Any]) -> None:
        """A CREDIT lets the stream it names run further, a CANCEL stops it (neither gets an
        answer, even for a stream that is not there); any other kind gets an error."""
        kind, call_id = request[1], request[2]
        if kind in (_CREDIT, _CANCEL):
            flow = self._flows.get((tuple(message[:-1]), call_id))
            if flow is not None and (flow.grant(request[3]) if kind == _CREDIT else flow.cancel()):
                flow.resume()
            return
        answered = call_id if kind != Kind.PUBLISH and kind != Kind.PUBLISH_BATCH else 0
        self._bad_request(router, message, answered, "expected a request")

    def _bad_request(self, router: Socket, message: list[bytes], call_id: int,
                     why: str) -> None:
        """Say why a message is dropped, to its sender (after an empty frame, a REQ caller)."""
        self._stats["bad-requests"] += 1
        address = (message[0], b"") if len(message) > 2 and not message[1] else (message[0],)
        _reply(router, address, _error(call_id, "zmqkit.ProtocolError", why))

    def _dispatch(
        self,
        handler: Handler,
        address: Address,
        call_id: int,
        args: list[Any],
        kwargs: dict[str, Any],
        started: float,
    ) -> None:
        """A call for the pool or the loop (a generator called plainly: all its items in one
        REPLY, as the protocol lets a server answer any call)."""
        if handler.mode is Mode.BLOCKING or handler.mode is Mode.STREAM:
            self._jobs.put(lambda: self._post(
                address, self._call(handler, call_id, args, kwargs), True, handler, started))
        else:
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(
                self._call_async(handler, address, call_id, args, kwargs, started), self._loop
            )

    def _open_flow(self, router: Socket, address: Address, call_id: int,
                   stream_args: list[Any], started: float) -> None:
        """A REQUEST for ``zmqkit.stream``: start a flow-controlled stream, or say why not."""
        opened = streams.open_args(stream_args)
        if isinstance(opened, str):
            self._stats["errors"] += 1
            _reply(router, address, _error(call_id, "zmqkit.BadArguments", opened))
            return
        method, args, kwargs, window = opened
        handler = self.handlers.get(method)
        if handler is None:
            _reply(router, address, self._not_found(call_id, method))
        elif handler.mode not in _STREAMING:
            self._stats["errors"] += 1
            _reply(router, address, _error(
                call_id, "zmqkit.NotAStream",
                f"{self.node.name}.{method}() does not stream (it runs {handler.mode.value}): "
                "call it with a plain REQUEST"))
        elif self._outstanding >= MAX_OUTSTANDING or (address, call_id) in self._flows:
            self._stats["busy"] += 1
            _reply(router, address, _error(
                call_id, "zmqkit.BusyError",
                f"{self.node.name} has {MAX_OUTSTANDING} calls waiting, or a stream with this "
                "call id already"))
        else:
            self._outstanding += 1
            flow = self._flows[(address, call_id)] = Flow(call_id, window)

            def post(frame: bytes | None, finished: bool) -> None:
                if finished:
                    self._post(address, frame, True, handler, started)
                else:
                    self._post(address, frame, False)

            if handler.mode is Mode.STREAM:
                job = self._flow_job(handler, address, flow, args, kwargs, post)
                flow.resume = lambda: self._jobs.put(job)
                self._jobs.put(job)
            else:
                assert self._loop is not None
                asyncio.run_coroutine_threadsafe(
                    self._flow_async(handler, address, flow, args, kwargs, post), self._loop
                )

    def _describe(self, call_id: int) -> bytes:
        return codec.encode_reply(call_id, [h.describe() for h in self.handlers.values()])

    def _not_found(self, call_id: int, method: object) -> bytes:
        self._stats["errors"] += 1
        known = ", ".join(sorted(self.handlers))
        return _error(
            call_id,
            "zmqkit.MethodNotFound",
            f"{self.node.name} has no method {method!r} (it has: {known})",
        )

    # -- running handlers (any thread) ---------------------------------------------------------

    def _call(
        self, handler: Handler, call_id: int, args: list[Any], kwargs: dict[str, Any]
    ) -> bytes:
        try:
            result = handler.function(*args, **kwargs)
            if handler.mode is Mode.STREAM:  # a generator called plainly: one REPLY of it all
                return streams.collect(handler.name, call_id, result)
            return codec.encode_reply(call_id, result)
        except Exception as exc:  # the caller gets it as RemoteError; the server keeps serving
            return self._failure(handler, call_id, args, kwargs, exc)

    def _failure(
        self,
        handler: Handler,
        call_id: int,
        args: list[Any],
        kwargs: dict[str, Any],
        exc: Exception,
    ) -> bytes:
        self._stats["errors"] += 1
        self._failed[handler.name] += 1
        misfit = handler.arguments_misfit(args, kwargs) if isinstance(exc, TypeError) else None
        if misfit is not None:
            signature = handler.describe()["signature"]
            return _error(
                call_id, "zmqkit.BadArguments", f"{signature} cannot take these arguments: {misfit}"
            )
        if isinstance(exc, EncodeError):
            return _error(call_id, "zmqkit.EncodeError", f"{handler.name} returned {exc}")
        return _error(
            call_id, type(exc).__name__, str(exc), traceback.format_exc()[-MAX_TRACEBACK:]
        )

    def _flow_job(self, handler: Handler, address: Address, flow: Flow, args: list[Any],
                  kwargs: dict[str, Any], post: streams.Post) -> Callable[[], None]:
        """The pool's job for a flow of a plain generator: each run sends what the credit
        allows, then gives the thread back; the server thread queues it again on credit."""
        generator: list[Any] = []  # made by the first run, in the pool

        def run() -> None:
            try:
                if not generator:
                    generator.append(handler.function(*args, **kwargs))
                if not streams.produce(flow, generator[0], post, time.monotonic):
                    return  # waiting for credit
            except Exception as exc:  # reported to the caller as RemoteError
                post(self._failure(handler, flow.call_id, args, kwargs, exc), True)
            self._flows.pop((address, flow.call_id), None)

        return run

    async def _flow_async(self, handler: Handler, address: Address, flow: Flow,
                          args: list[Any], kwargs: dict[str, Any], post: streams.Post) -> None:
        """A flow of an async generator, on the loop: it awaits credit in its own task."""
        try:
            items = handler.function(*args, **kwargs)
            try:
                await streams.produce_async(flow, items, post, time.monotonic)
            finally:
                await items.aclose()
        except Exception as exc:  # reported to the caller as RemoteError
            post(self._failure(handler, flow.call_id, args, kwargs, exc), True)
        finally:
            self._flows.pop((address, flow.call_id), None)

    async def _call_async(
        self,
        handler: Handler,
        address: Address,
        call_id: int,
        args: list[Any],
        kwargs: dict[str, Any],
        started: float,
    ) -> None:
        try:
            if handler.mode is Mode.ASYNC:
                result = await handler.function(*args, **kwargs)
                reply = codec.encode_reply(call_id, result)
            else:  # an async generator called plainly: one REPLY of it all
                reply = await streams.collect_async(
                    handler.name, call_id, handler.function(*args, **kwargs))
        except Exception as exc:  # reported to the caller as RemoteError
            reply = self._failure(handler, call_id, args, kwargs, exc)
        self._post(address, reply, True, handler, started)

    def _post(self, address: Address, frame: bytes | None, finished: bool,
              handler: Handler | None = None, started: float = 0.0) -> None:
        """Hand a frame to the server thread, waking it if it is not awake already; the last
        frame of a call (given its ``handler`` and when it ``started``) counts its latency."""
        if handler is not None:
            self._latency[handler.name].record(_clock() - started)
        self._outbox.append((address, frame, finished))
        self._service.wake()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not self._closed:
                job()


def _reply(router: Socket, address: Address, frame: bytes) -> None:
    """Send ``frame`` back along ``address``. A ROUTER never blocks: it drops a reply to a
    caller that is gone or whose queue is full, so a send that cannot go at once is dropped."""
    router.try_send_multipart([*address, frame])


def _error(call_id: int, type_name: str, message: str, remote_traceback: str = "") -> bytes:
    return codec.encode_error(call_id, type_name, message, remote_traceback)


def serve(
    node: Node,
    target: object | Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
    *,
    workers: int = DEFAULT_WORKERS,
) -> Server:
    """Serve ``target`` under ``node``'s name until the node closes; returns the running server.

    The same as ``Server(node, target, workers=workers)``.

    Raises:
        ConfigError: the node already serves RPC, or the target has nothing to serve.
        ClosedError: the node is closed.
    """
    return Server(node, target, workers=workers)

"""The RPC server: one ROUTER socket in one named thread, plus the helpers its handlers need.

    caller DEALER ──► ROUTER (server thread) ──► plain handler, inline
                                             ├──► worker pool ──┐  @blocking and generators
                                             └──► asyncio loop ─┤  async def handlers
                          replies ◄── outbox ◄──────────────────┘  (the server thread sends)

Only the server thread touches the ROUTER. Other threads put finished replies in an outbox and
wake the server thread through a socket pair. While nothing is outstanding in other threads, the
server thread waits in a plain blocking receive, which is as fast as a hand-written REP loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import zmq

from zmqkit import ClosedError, ConfigError, EncodeError, Node, ProtocolError, Socket, codec
from zmqkit.codec import Kind
from zmqkit.wakeup import Wakeup

from .handlers import DESCRIBE_METHOD, Handler, Mode, collect_handlers

__all__ = ["DEFAULT_WORKERS", "Server", "serve"]

log = logging.getLogger("zmqkit.rpc")

DEFAULT_WORKERS = 8
MAX_OUTSTANDING = 1000  # calls waiting for the pool or the loop; beyond this, callers get BusyError
TICK = 0.1  # seconds between looks at the stop flag
MAX_TRACEBACK = 8192

# The way back to a caller: its ROUTER identity, and for a REQ caller the empty delimiter too
Address = tuple[bytes, ...]
Outgoing = tuple[Address, bytes, bool]  # (caller's address, frame, whether the call is finished)
_NEVER_CANCELLED = threading.Event()  # a one-shot call has no cancel flag: this one is never set


class Server:
    """Serves ``target``'s public callables over RPC under ``node``'s name.

    Prefer ``serve(node, target)``, which starts the server and ties it to the node's lifetime.

    Args:
        node: the node to advertise on (role ``"rpc"``).
        target: an object (its public methods), a ``{name: function}`` map, or a list of functions.
        workers: threads for ``@blocking`` and generator handlers. Eight lets a few slow calls run
            side by side while bounding threads and memory; more calls than that wait their turn,
            and more than ``MAX_OUTSTANDING`` waiting are refused with a ``BusyError``.
    """

    def __init__(
        self,
        node: Node,
        target: object | Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if "rpc" in node.endpoints:
            raise ConfigError(f"{node!r} already serves RPC; serve one target per node")
        self.node = node
        self.handlers: dict[str, Handler] = collect_handlers(target)
        self.workers = workers
        self.endpoint = ""
        self.stats: Counter[str] = Counter()
        self._outbox: deque[Outgoing] = deque()
        self._wakeup = Wakeup()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # (caller, call id) of each stream in progress -> set when its caller cancels it. Only
        # streams the server started are here, so stray or forged CANCELs cannot grow it.
        self._streams: dict[tuple[Address, int], threading.Event] = {}
        self._outstanding = 0
        self._stopping = False
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"zmqkit-rpc:{node.name}", daemon=True
        )
        self._pool: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<zmqkit rpc.Server {self.node.name!r} {self.endpoint or 'not started'}>"

    # -- life cycle (owner's thread) -----------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Server:
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
        self._thread.start()
        if not self._ready.wait(timeout) or self._startup_error is not None:
            self.close()
            raise ConfigError(
                f"RPC server for {self.node.name!r} failed to start"
            ) from self._startup_error
        self.node.advertise("rpc", self.endpoint)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving, withdraw the endpoint and join every thread. Safe to call twice."""
        if self._stopping:
            return
        self._stopping = True
        self.node.withdraw("rpc")
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for _ in self._pool:
            self._jobs.put(None)
        for worker in self._pool:
            worker.join(timeout)
            if worker.is_alive():
                log.warning(
                    "%s is still running a handler after %s s; left behind", worker.name, timeout
                )
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._stop_loop)
            self._loop_thread.join(timeout)
            if not self._loop_thread.is_alive():
                self._loop.close()
        self._wakeup.close()

    def _stop_loop(self) -> None:
        assert self._loop is not None
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.stop()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the server thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            router = Socket(zmq.ROUTER)
            self.node.secure_server(router)
            self.endpoint = router.bind(self.node.host)
        except BaseException as exc:  # handed to start(), which raises it in the owner's thread
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        raw = router.raw
        raw.rcvtimeo = int(TICK * 1000)
        poller = zmq.Poller()
        poller.register(raw, zmq.POLLIN)
        self._wakeup.register(poller)
        try:
            while not self._stopping:
                if self._outstanding:
                    ready = dict(poller.poll(int(TICK * 1000)))
                    self._wakeup.woke(ready)
                    self._flush(raw)
                    if raw not in ready:
                        continue
                    flags = _NOBLOCK
                else:
                    flags = 0
                try:
                    identity = raw.recv(flags)
                except zmq.Again:
                    continue
                address: Address = (identity,)
                frame = raw.recv()  # a ROUTER message has 2 frames at least
                if not frame and raw.getsockopt(_RCVMORE):  # a REQ caller: identity, "", request
                    address, frame = (identity, b""), raw.recv()
                if raw.getsockopt(_RCVMORE):
                    self._drop_rest(raw, address)
                    continue
                self._handle(raw, address, frame)
        except zmq.ZMQError as exc:
            if not self._stopping:
                log.error("RPC server %s stopped: %s", self.node.name, exc)
        finally:
            router.close()

    def _drop_rest(self, raw: zmq.Socket[Any], address: Address) -> None:
        """A request of more than one frame: read and drop the rest, and say why."""
        while raw.getsockopt(_RCVMORE):
            raw.recv()
        self.stats["bad-requests"] += 1
        _reply(raw, address, _error(0, "zmqkit.ProtocolError", "a request is exactly one frame"))

    def _flush(self, raw: zmq.Socket[Any]) -> None:
        while self._outbox:
            address, frame, finished = self._outbox.popleft()
            _reply(raw, address, frame)
            if finished:
                self._outstanding -= 1

    def _handle(self, raw: zmq.Socket[Any], address: Address, frame: bytes) -> None:
        try:
            message = codec.decode(frame)
        except ProtocolError as exc:
            self.stats["bad-requests"] += 1
            _reply(raw, address, _error(0, "zmqkit.ProtocolError", str(exc)))
            return
        kind, call_id = message[1], message[2]
        if kind == Kind.CANCEL:
            cancelled = self._streams.get((address, call_id))
            if cancelled is not None:
                cancelled.set()
            return
        if kind != Kind.REQUEST:
            self.stats["bad-requests"] += 1
            answered = call_id if kind != Kind.PUBLISH and kind != Kind.PUBLISH_BATCH else 0
            _reply(raw, address, _error(answered, "zmqkit.ProtocolError", "expected a request"))
            return
        method, args, kwargs = message[3], message[4], message[5]
        self.stats["calls"] += 1
        handler = self.handlers.get(method)
        if handler is None:
            _reply(
                raw,
                address,
                self._describe(call_id)
                if method == DESCRIBE_METHOD
                else self._not_found(call_id, method),
            )
        elif handler.mode is Mode.INLINE:
            _reply(raw, address, self._call(handler, call_id, args, kwargs))
        elif self._outstanding >= MAX_OUTSTANDING:
            self.stats["busy"] += 1
            _reply(
                raw,
                address,
                _error(
                    call_id,
                    "zmqkit.BusyError",
                    f"{self.node.name} has {MAX_OUTSTANDING} calls waiting",
                ),
            )
        else:
            self._outstanding += 1
            self._dispatch(handler, address, call_id, args, kwargs)

    def _dispatch(
        self,
        handler: Handler,
        address: Address,
        call_id: int,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        cancelled = _NEVER_CANCELLED
        if handler.mode in (Mode.STREAM, Mode.ASYNC_STREAM):
            cancelled = self._streams[(address, call_id)] = threading.Event()
        if handler.mode is Mode.BLOCKING:
            self._jobs.put(
                lambda: self._post(address, self._call(handler, call_id, args, kwargs), True)
            )
        elif handler.mode is Mode.STREAM:
            self._jobs.put(lambda: self._stream(handler, address, call_id, args, kwargs, cancelled))
        else:
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(
                self._call_async(handler, address, call_id, args, kwargs, cancelled), self._loop
            )

    def _describe(self, call_id: int) -> bytes:
        return codec.encode_reply(call_id, [h.describe() for h in self.handlers.values()])

    def _not_found(self, call_id: int, method: object) -> bytes:
        self.stats["errors"] += 1
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
            return codec.encode_reply(call_id, handler.function(*args, **kwargs))
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
        self.stats["errors"] += 1
        if isinstance(exc, TypeError) and not handler.arguments_fit(args, kwargs):
            signature = handler.describe()["signature"]
            return _error(
                call_id, "zmqkit.BadArguments", f"{signature} cannot take these arguments: {exc}"
            )
        if isinstance(exc, EncodeError):
            return _error(call_id, "zmqkit.EncodeError", f"{handler.name} returned {exc}")
        return _error(
            call_id, type(exc).__name__, str(exc), traceback.format_exc()[-MAX_TRACEBACK:]
        )

    def _stream(
        self,
        handler: Handler,
        address: Address,
        call_id: int,
        args: list[Any],
        kwargs: dict[str, Any],
        cancelled: threading.Event,
    ) -> None:
        key = (address, call_id)
        try:
            items = handler.function(*args, **kwargs)
            try:
                for item in items:
                    if cancelled.is_set() or self._stopping:  # an endless stream ends on close
                        break
                    self._post(address, codec.encode_stream_item(call_id, item), False)
            finally:
                items.close()
            self._post(address, codec.encode_stream_end(call_id), True)
        except Exception as exc:  # reported to the caller as RemoteError
            self._post(address, self._failure(handler, call_id, args, kwargs, exc), True)
        finally:
            self._streams.pop(key, None)

    async def _call_async(
        self,
        handler: Handler,
        address: Address,
        call_id: int,
        args: list[Any],
        kwargs: dict[str, Any],
        cancelled: threading.Event,
    ) -> None:
        key = (address, call_id)
        try:
            if handler.mode is Mode.ASYNC:
                result = await handler.function(*args, **kwargs)
                self._post(address, codec.encode_reply(call_id, result), True)
                return
            items = handler.function(*args, **kwargs)
            try:
                async for item in items:
                    if cancelled.is_set():
                        break
                    self._post(address, codec.encode_stream_item(call_id, item), False)
            finally:
                await items.aclose()
            self._post(address, codec.encode_stream_end(call_id), True)
        except Exception as exc:  # reported to the caller as RemoteError
            self._post(address, self._failure(handler, call_id, args, kwargs, exc), True)
        finally:
            self._streams.pop(key, None)

    def _post(self, address: Address, frame: bytes, finished: bool) -> None:
        """Hand a frame to the server thread, waking it if it is not awake already."""
        self._outbox.append((address, frame, finished))
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not self._stopping:
                job()


_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def _reply(raw: zmq.Socket[Any], address: Address, frame: bytes) -> None:
    """Send ``frame`` back along ``address`` (plain int flags keep pyzmq fast)."""
    for part in address:
        raw.send(part, _SNDMORE)
    raw.send(frame, 0, copy=len(frame) < 65536)


def _error(call_id: int, type_name: str, message: str, remote_traceback: str = "") -> bytes:
    return codec.encode_error(call_id, type_name, message, remote_traceback)


def serve(
    node: Node,
    target: object | Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
    *,
    workers: int = DEFAULT_WORKERS,
) -> Server:
    """Serve ``target`` under ``node``'s name until the node closes; returns the running server.

    Raises:
        ConfigError: the node already serves RPC, or the target has nothing to serve.
        ClosedError: the node is closed.
    """
    if not node.running:
        raise ClosedError(f"{node!r} is not running; start it first (with Node(...) as node:)")
    server = Server(node, target, workers=workers).start()
    node.attach(server)
    return server

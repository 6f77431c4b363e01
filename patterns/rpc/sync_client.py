"""The blocking RPC client: ``Client(node, "calc").add(1, 2)``.

One DEALER socket per node that serves the name, all owned by the thread that made the client.
Waiting for a reply is a plain blocking receive with a timeout, as fast as a hand-written REQ.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from zmqkit import (
    BrokenError,
    BusyError,
    ClosedError,
    Deadline,
    Node,
    PeerNotFound,
    Socket,
    SocketOptions,
    Timeout,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.security import SecurityError
from zmqkit.sockets import translate_zmq_error

from .core import DEFAULT_TIMEOUT, SLICE, Route, Routes, may_retry, outcome
from .handlers import DESCRIBE_METHOD

__all__ = ["Client"]

CLIENT_OPTIONS = SocketOptions(immediate=True)
_NOBLOCK = int(zmq.NOBLOCK)  # a send to a node not yet connected fails fast
_REPLY, _STREAM_ITEM, _STREAM_END = int(Kind.REPLY), int(Kind.STREAM_ITEM), int(Kind.STREAM_END)


class PeerGone(Exception):
    """The node a call went to left before it answered (becomes a retry or a BrokenError)."""


class Client:
    """Calls methods on the nodes called ``name``, from the thread that created it.

    ``client.call("add", 1, 2)`` or ``client.add(1, 2)``; ``client.stream("count", 5)`` for a
    generator method. Every call has a deadline (``timeout``, default 5 s) and raises
    ``PeerNotFound`` when no such node appears in time, ``Timeout`` when it does not answer in
    time and ``RemoteError`` when its handler raised.
    """

    def __init__(self, node: Node, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.node = node
        self.name = name
        self.timeout = timeout
        self._routes = Routes(name)
        self._sockets: dict[Any, Socket] = {}
        self._ids = itertools.count(1)
        self._refused: SecurityError | None = None  # why the last node found was not used
        self._owner = threading.get_ident()
        self._closed = False

    def __repr__(self) -> str:
        return f"<zmqkit rpc.Client for {self.name!r}, {len(self._sockets)} nodes>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; later calls raise ClosedError. Safe to call twice."""
        self._closed = True
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._routes.routes.clear()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call_with(method, args, kwargs)

    # -- calling -------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``method(*args, **kwargs)`` on one node of the name and return its result.

        A generator method's items come back as a list. ``idempotent=True`` lets the call be
        sent again to another node if the first one leaves before answering.
        """
        return self.call_with(method, args, kwargs, timeout=timeout, idempotent=idempotent)

    def call_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """``call`` with the arguments as values, for methods with a ``timeout`` parameter."""
        if self._closed or threading.get_ident() != self._owner:
            self._check_usable()
        deadline = Deadline.after(self.timeout if timeout is None else timeout)
        tried: set[Any] = set()
        while True:
            route, sock, call_id = self._send(method, args, kwargs or {}, deadline, tried)
            try:
                message = self._reply(sock, route, call_id, deadline)
                if message[1] == _REPLY:  # the common case, first
                    self._routes.finished(route)
                    return message[3]
                items = []
                while message[1] == _STREAM_ITEM:
                    items.append(message[3])
                    message = self._reply(sock, route, call_id, deadline)
                self._routes.finished(route)
                return items if message[1] == _STREAM_END else outcome(message)
            except PeerGone:
                self._routes.failed(route, time.monotonic())
                if not may_retry(idempotent=idempotent, sent=True):
                    raise BrokenError(
                        f"{self.name} node left during {method}(); not retried "
                        "because the call is not marked idempotent"
                    ) from None
                tried.add(route.uuid)
            except Timeout:
                self._routes.failed(route, time.monotonic())
                self._reset(route)
                raise Timeout(
                    f"{self.name}.{method}() got no reply in {self._budget(timeout)} s"
                ) from None

    def stream(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Iterate the items a generator method yields; ``timeout`` is the wait between items.

        Leaving the loop early (``break``) tells the node to stop producing.
        """
        self._check_usable()
        budget = self._budget(timeout)
        route, sock, call_id = self._send(method, args, kwargs, Deadline.after(budget), set())
        done = failed = False
        try:
            while not done:
                try:
                    message = self._reply(sock, route, call_id, Deadline.after(budget))
                except PeerGone:
                    done = failed = True
                    raise BrokenError(
                        f"{self.name} node left during the stream {method}()"
                    ) from None
                except Timeout:
                    failed = True
                    raise Timeout(f"{self.name}.{method}() sent no item in {budget} s") from None
                done = message[1] != Kind.STREAM_ITEM
                if message[1] != Kind.STREAM_END:
                    yield outcome(message)
        finally:
            if failed:
                self._routes.failed(route, time.monotonic())
            else:
                self._routes.finished(route)
            if not done and not sock.closed:
                with contextlib.suppress(
                    zmq.ZMQError
                ):  # best effort: the node stops on its own too
                    sock.raw.send(codec.encode_cancel(call_id), zmq.NOBLOCK)

    def methods(self, timeout: float | None = None) -> list[dict[str, str]]:
        """The node's methods: name, signature, doc and how each runs."""
        result: list[dict[str, str]] = self.call_with(DESCRIBE_METHOD, timeout=timeout)
        return result

    # -- the parts -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        """Refuse a closed client (its emptied routes would look like a node not found yet, and
        the call would spin until its deadline) and a thread that did not create the client
        (checked here, before any of its sockets is touched, even by a poll).
        """
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if threading.get_ident() != self._owner:
            raise BusyError(f"{self!r} belongs to the thread that created it; make one per thread")

    def _budget(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _unreachable_message(self) -> str:
        hint = (
            " (a CURVE node admits only peers whose key is in its keyring: is this node's?)"
            if self.node.security is not None
            else ""
        )
        return f"could not connect to any {self.name!r} node before the deadline{hint}"

    def _refresh(self) -> None:
        """Bring the routes and sockets in line with discovery, if it changed."""
        if self._routes.version != self.node.peers_version:
            self._sync_routes()

    def _sync_routes(self) -> None:
        version = self.node.peers_version  # first: a change after this read is seen next time
        peers = self.node.peers(self.name)
        added, removed = self._routes.sync(peers, version)
        self._refused = None
        for route in removed:
            self._sockets.pop(route.uuid).close()
        for route in added:
            try:
                self._sockets[route.uuid] = self._connect(route)
            except SecurityError as exc:  # not a node we may talk to: no route to it
                self._routes.drop(route)
                self._refused = exc

    def _connect(self, route: Route) -> Socket:
        assert route.peer is not None  # Routes.sync always records the peer
        sock = Socket(zmq.DEALER, options=CLIENT_OPTIONS)
        try:
            self.node.secure_client(sock, route.peer)
            sock.connect(route.endpoint)
        except BaseException:
            sock.close()
            raise
        return sock

    def _reset(self, route: Route) -> None:
        """After a timeout, a fresh socket for ``route`` (the Lazy Pirate reset): a connection
        that libzmq dropped for good (say, after a reply over the size limit) is made anew."""
        old = self._sockets.pop(route.uuid, None)
        if old is None:
            return
        old.close()
        self._sockets[route.uuid] = self._connect(route)

    def _send(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        deadline: Deadline,
        tried: set[Any],
    ) -> tuple[Route, Socket, int]:
        """Send the request to the best node that takes it; retry others while it never left."""
        while True:
            if self._routes.version != self.node.peers_version:  # _refresh(), inlined
                self._sync_routes()
            route = self._routes.pick(time.monotonic(), tried)
            if route is None:
                if tried and self._routes.routes:
                    tried.clear()  # every node failed once: give them another turn
                    continue
                self._wait_for_route(deadline)
                continue
            sock = self._sockets[route.uuid]
            call_id = next(self._ids)
            frame = codec.encode_request(call_id, method, args, kwargs)
            try:
                sock.raw.send(frame, _NOBLOCK)  # at once if a connection is ready
                sent = True
            except zmq.Again:
                sent = self._send_when_connected(sock, frame, deadline)
            except zmq.ZMQError as exc:
                raise translate_zmq_error(exc, "sending a request") from exc
            if sent:
                self._routes.started(route)
                return route, sock, call_id
            self._routes.unreachable(route, time.monotonic())
            tried.add(route.uuid)  # never left: safe to try another node
            if deadline.expired():
                raise Timeout(self._unreachable_message())

    @staticmethod
    def _send_when_connected(sock: Socket, frame: bytes, deadline: Deadline) -> bool:
        """Wait a slice for a connection and send; False if none came."""
        if sock.raw.poll(int(min(SLICE, deadline.remaining()) * 1000), zmq.POLLOUT):
            sock.send(frame)
            return True
        return False

    def _wait_for_route(self, deadline: Deadline) -> None:
        if self._refused is not None:  # the nodes found are ones this node may not talk to
            raise self._refused
        try:
            self.node.wait_for(self.name, deadline.remaining(), role="rpc")
        except PeerNotFound:
            raise PeerNotFound(
                f"no node called {self.name!r} serving RPC was found (beacon port {self.node.port})"
            ) from None
        self._routes.version = -1  # a node serves the name: look at the peers again now

    def _reply(self, sock: Socket, route: Route, call_id: int, deadline: Deadline) -> list[Any]:
        """The next message for ``call_id``; stale replies to earlier calls are dropped."""
        while True:
            try:
                frame = sock.recv(min(SLICE, deadline.remaining()))
            except Timeout:
                if deadline.expired():
                    raise
                self._refresh()
                if route.uuid not in self._routes.routes:
                    raise PeerGone() from None
                continue
            message = codec.decode(frame)
            if message[2] == call_id or (message[2] == 0 and message[1] == Kind.ERROR):
                return message

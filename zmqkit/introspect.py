"""Introspection: every node says how it is doing, without its user writing a line for it.

A running node that announces itself binds one more ROUTER, advertised as the ``admin`` role, and
answers a REQUEST for the method ``zmqkit.introspect`` (no arguments) with a REPLY whose result
is the node's report: who it is, the parts attached to it (each part's ``describe()``), its peers
and its beacon counters. The envelope is RPC's, so another implementation reads and answers it
with the codec it already has (docs/protocol.md, "Introspection"). The socket is the node's, so a
keyed node answers only peers in its keyring.

``ask_nodes`` is the other side: it asks many nodes at once, from the calling thread, and returns
their reports (the ``zmqkit top``, ``topics``, ``services`` and ``graph`` commands start there).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import socket as socket_module
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import zmq

from . import codec
from .codec import Kind
from .deadline import Deadline, check_timeout
from .errors import ProtocolError, SecurityError, ZmqkitError
from .peers import Peer
from .service import ServiceThread
from .sockets import Poller, Socket, SocketKind

__all__ = ["ADMIN_ROLE", "INTROSPECT", "Introspection", "ask_nodes", "describe_part"]

log = logging.getLogger("zmqkit.introspect")

ADMIN_ROLE = "admin"  # the endpoint role that answers introspection
INTROSPECT = "zmqkit.introspect"  # the one method it answers
REPORT_VERSION = 1  # the "report" field of a report: grows when a field changes meaning
POLL = 0.5  # seconds the admin thread waits per look (it is woken at once to stop)
DEFAULT_WAIT = 1.0  # how long ask_nodes waits for answers


class Reporting(Protocol):
    """What the admin thread needs of its node."""

    name: str

    def server_socket(self, kind: SocketKind) -> Socket:
        """A bound socket, secured as the node is."""

    def advertise(self, role: str, endpoint: str) -> None:
        """Announce ``endpoint`` under ``role``."""

    def report(self) -> dict[str, Any]:
        """The node's report."""


class Introspection:
    """The node's admin thread: answers ``zmqkit.introspect`` with ``node.report()``.

    Made and closed by the node; ``close`` is idempotent and may come from any thread.
    """

    def __init__(self, node: Reporting) -> None:
        self._node = node
        self.endpoint = ""
        self.stats = {"answered": 0, "refused": 0}
        self._service = ServiceThread(f"zmqkit-admin:{node.name}", self._run)
        self._service.start()
        self._node.advertise(ADMIN_ROLE, self.endpoint)

    def close(self) -> None:
        """Stop answering and close the socket (on its own thread). The endpoint stays in the
        node's beacon: the node closes next, and its goodbye says the rest."""
        self._service.stop()

    def _run(self, service: ServiceThread) -> None:
        router = self._node.server_socket(SocketKind.ROUTER)
        try:
            self.endpoint = router.endpoint
            poller = Poller([router, service.wakeup])
            service.ready()
            while not service.stopping:
                if router not in poller.poll(POLL):
                    continue
                while (message := router.try_recv_multipart()) is not None:
                    self._answer(router, message)
        finally:
            router.close()

    def _answer(self, router: Socket, message: list[bytes]) -> None:
        """One request: its caller's routing id, then one frame (a REQ caller puts an empty
        delimiter between them)."""
        address, frame = message[:-1], message[-1]
        try:
            if len(message) != 2 and not (len(message) == 3 and not message[1]):
                address = message[:2] if len(message) > 2 and not message[1] else message[:1]
                raise ProtocolError("a request is exactly one frame")
            request = codec.decode(frame)
            if request[1] != Kind.REQUEST:
                raise ProtocolError(f"expected a REQUEST, not kind {request[1]!r}")
        except ProtocolError as exc:
            self.stats["refused"] += 1
            log.debug("admin request refused: %s", exc)
            if address:
                router.try_send_multipart([*address, codec.encode_error(
                    0, "zmqkit.ProtocolError", str(exc))])
            return
        call_id, method = request[2], request[3]
        if method != INTROSPECT:
            self.stats["refused"] += 1
            reply = codec.encode_error(call_id, "zmqkit.MethodNotFound",
                                       f"the admin endpoint answers {INTROSPECT!r} only")
        else:
            self.stats["answered"] += 1
            try:
                reply = codec.encode_reply(call_id, self._node.report())
            except ZmqkitError as exc:  # a part described itself with something CBOR lacks
                reply = codec.encode_error(call_id, "zmqkit.EncodeError", str(exc))
        router.try_send_multipart([*address, reply])


def describe_part(part: object) -> dict[str, Any]:
    """What a part says of itself: its kind (``rpc.Server``: the pattern and the class), then
    its ``describe()`` if it has one, else its ``stats()``. A part that fails to describe
    itself is reported, not fatal."""
    module = type(part).__module__
    family = module.removeprefix("zmqkit.patterns.").split(".")[0]  # rpc, pubsub, farm, ...
    kind = f"{family}.{type(part).__name__}"
    try:
        describe: Callable[[], dict[str, Any]] | None = getattr(part, "describe", None)
        if describe is not None:
            return {"kind": kind, **describe()}
        stats = getattr(part, "stats", None)
        return {"kind": kind, "stats": dict(stats()) if callable(stats) else {}}
    except Exception as exc:  # a report names the broken part and goes on
        return {"kind": kind, "error": f"{type(exc).__name__}: {exc}"}


def identity(name: str, uuid_hex: str, started: float) -> dict[str, Any]:
    """The fields of a report that say who and where the node is."""
    return {
        "report": REPORT_VERSION,
        "name": name,
        "uuid": uuid_hex,
        "pid": os.getpid(),
        "host": socket_module.gethostname(),
        "versions": {
            "zmqkit": _zmqkit_version(),
            "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
        },
        "uptime": round(time.monotonic() - started, 3),
    }


def _zmqkit_version() -> str:
    try:
        return importlib.metadata.version("zmqkit")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def peer_rows(peers: Iterable[Peer], now: float) -> list[dict[str, Any]]:
    """The peers part of a report: who, where, and the age of the last beacon."""
    return [
        {"name": peer.name, "uuid": peer.uuid.hex, "address": peer.address,
         "age": round(peer.age(now), 3)}
        for peer in peers
    ]


# -- asking ------------------------------------------------------------------------------------


class Asker(Protocol):
    """What ``ask_nodes`` needs of the asking node."""

    def client_socket(self, kind: SocketKind) -> Socket:
        """A socket to connect to peers with, secured as the node is."""


def ask_nodes(node: Asker, peers: Iterable[Peer], timeout: float = DEFAULT_WAIT
              ) -> list[dict[str, Any]]:
    """Ask every peer that serves introspection for its report, all at once, and wait at most
    ``timeout`` seconds in all. Returns one entry per peer asked, in the order given: its report,
    or ``{"name", "uuid", "error"}`` for a node that did not answer in time or refused.

    Raises:
        ConfigError: ``timeout`` is not a number of seconds from 0 to 10**7.
    """
    deadline = Deadline.after(check_timeout(timeout))
    asked: list[tuple[Peer, Socket]] = []
    answers: dict[int, dict[str, Any]] = {}
    poller = Poller()
    try:
        for peer in peers:
            if ADMIN_ROLE not in peer.endpoints:
                continue
            sock = node.client_socket(SocketKind.DEALER)
            asked.append((peer, sock))
            try:
                sock.connect_peer(peer, ADMIN_ROLE)
            except SecurityError as exc:
                answers[len(asked) - 1] = _failed(peer, str(exc))
                continue
            sock.try_send(codec.encode_request(len(asked), INTROSPECT, (), {}))
            poller.register(sock)
        by_socket = {id(sock): index for index, (_, sock) in enumerate(asked)}
        while len(answers) < len(asked) and not deadline.expired():
            for ready in poller.poll(deadline.remaining()):
                assert isinstance(ready, Socket)
                index = by_socket[id(ready)]
                frame = ready.try_recv()
                if frame is None or index in answers:
                    continue
                answers[index] = _read_answer(asked[index][0], frame)
                poller.unregister(ready)
    finally:
        for _, sock in asked:
            sock.close()
    return [answers.get(index) or _failed(peer, f"no answer in {timeout:g} s")
            for index, (peer, _) in enumerate(asked)]


def _read_answer(peer: Peer, frame: bytes) -> dict[str, Any]:
    try:
        message = codec.decode(frame)
    except ProtocolError as exc:
        return _failed(peer, f"an undecodable answer: {exc}")
    if message[1] == Kind.ERROR:
        return _failed(peer, f"{message[3]}: {message[4]}")
    result = message[3] if message[1] == Kind.REPLY else None
    if not isinstance(result, dict):
        return _failed(peer, "the answer is not a report")
    return result


def _failed(peer: Peer, error: str) -> dict[str, Any]:
    return {"name": peer.name, "uuid": peer.uuid.hex, "error": error}

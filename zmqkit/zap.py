"""The ZAP handler: ZeroMQ asks it whether to admit each CURVE peer.

``ZapHandler`` is that handler for the whole process: one named thread ("zmqkit-zap"), started by
the first secure node and stopped with the last, answering per domain (one domain per node) from
that node's keyring. Its REP socket is a socket block like any other, made and closed in its thread.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import zmq.utils.z85

from .errors import SecurityError, ZmqkitError
from .security import Keyring
from .service import ServiceThread
from .sockets import Poller, Socket, SocketKind, SocketOptions

__all__ = ["ZAP_ENDPOINT", "ZapHandler"]

log = logging.getLogger("zmqkit.security")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
_OPTIONS = SocketOptions(linger=0)


class ZapHandler:
    """Admits CURVE peers by domain (one domain per secure node), in one thread per process."""

    _lock = threading.Lock()
    _instance: ZapHandler | None = None

    def __init__(self) -> None:
        self.rings: dict[str, Keyring] = {}
        self.stats: Counter[str] = Counter()
        self._refused_keys: set[str] = set()
        self._service = ServiceThread("zmqkit-zap", self._run)

    @classmethod
    def acquire(cls, domain: str, keyring: Keyring) -> ZapHandler:
        """Register ``domain``; the first registration starts the handler thread.

        Raises:
            SecurityError: the handler cannot start (the ZAP endpoint is taken).
        """
        with cls._lock:
            if cls._instance is None:
                handler = ZapHandler()
                try:
                    handler._service.start()
                except ZmqkitError as exc:
                    raise SecurityError(f"cannot start the ZAP handler: {exc}") from exc
                cls._instance = handler
            cls._instance.rings[domain] = keyring
            return cls._instance

    @classmethod
    def release(cls, domain: str) -> None:
        """Forget ``domain``; the last one stops and joins the handler thread."""
        with cls._lock:
            handler = cls._instance
            if handler is None:
                return
            handler.rings.pop(domain, None)
            if handler.rings:
                return
            cls._instance = None
            # joined under the lock: a node starting now must not bind the ZAP endpoint while
            # this handler still holds it (its bind would fail and leave no handler at all)
            handler._service.stop()

    def _run(self, service: ServiceThread) -> None:
        with Socket(SocketKind.REP, options=_OPTIONS) as sock:
            sock.bind_endpoint(ZAP_ENDPOINT)
            poller = Poller([sock, service.wakeup])
            service.ready()
            try:
                while not service.stopping:
                    if sock in poller.poll(1.0):
                        request = sock.try_recv_multipart()
                        if request is not None:
                            sock.send_multipart(self._answer(request))
            finally:  # at once: a closed socket gives its inproc name back only later
                sock.unbind(ZAP_ENDPOINT)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """One ZAP reply: 200 for a key in the domain's keyring, 400 otherwise."""
        if len(request) < 7:
            return [
                b"1.0",
                request[1] if len(request) > 1 else b"",
                b"500",
                b"bad request",
                b"",
                b"",
            ]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        ring = self.rings.get(domain.decode(errors="replace"))
        if mechanism != b"CURVE" or ring is None:
            self.stats["refused"] += 1
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        key = zmq.utils.z85.encode(request[6]).decode()
        if key in ring:
            self.stats["admitted"] += 1
            return [version, request_id, b"200", b"OK", key.encode(), b""]
        self.stats["refused"] += 1
        level = logging.DEBUG if key in self._refused_keys else logging.WARNING
        if len(self._refused_keys) >= 1000:  # a flood of strangers must not grow memory
            self._refused_keys.clear()
        self._refused_keys.add(key)
        log.log(
            level,
            "refused a CURVE peer from %s: key %s... is not in the keyring",
            address.decode(errors="replace"),
            key[:8],
        )
        return [version, request_id, b"400", b"key not in keyring", b"", b""]

"""Seed names, looked up again and again, in a thread of their own.

A seed given by name (a Kubernetes headless service, a Compose service, a host in /etc/hosts)
may stand for several nodes and may change: every address it resolves to gets beacons, and the
name is looked up again every few intervals. A lookup can block for seconds on a slow resolver,
so it runs here, never in the beacon thread, whose silence would get the node expired.

A failed lookup is logged once (then at debug level until it resolves again), keeps the last
addresses the name had, and is retried: it is never fatal.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable

from .service import ServiceThread

__all__ = ["Resolver", "lookup"]

log = logging.getLogger("zmqkit.beacon")

Address = tuple[str, int]


def lookup(host: str, port: int) -> set[Address]:
    """Every IPv4 address ``host`` resolves to now, with ``port``.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    return {(str(info[4][0]), port) for info in infos}


class Resolver:
    """Resolves each seed name every ``every`` seconds and hands the result to ``deliver``.

    ``deliver(host, port, addresses)`` is called from the resolver's thread after each
    successful lookup, and must not block.
    """

    def __init__(self, name: str, deliver: Callable[[str, int, set[Address]], None]) -> None:
        self._deliver = deliver
        self._names: dict[Address, float] = {}  # (host, port) -> seconds between lookups
        self._due: dict[Address, float] = {}
        self._failing: set[Address] = set()
        self._lock = threading.Lock()
        self._service = ServiceThread(name, self._run)

    def start(self) -> None:
        """Start the thread."""
        self._service.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and join it (a lookup in progress is left to finish on its own)."""
        self._service.stop(timeout)

    def add(self, host: str, port: int, every: float) -> None:
        """Look ``host`` up now, then every ``every`` seconds (the shortest asked for wins)."""
        with self._lock:
            key = (host, port)
            self._names[key] = min(every, self._names.get(key, every))
            self._due.setdefault(key, 0.0)
        self._service.wake()

    def _run(self, service: ServiceThread) -> None:
        service.ready()
        while not service.stopping:
            now = time.monotonic()
            with self._lock:
                due = [key for key, at in self._due.items() if at <= now]
                for key in due:
                    self._due[key] = now + self._names[key]
                wake_at = min(self._due.values(), default=now + 60.0)
            for host, port in due:
                if service.stopping:
                    return
                self._resolve(host, port)
            wakeup = service.wakeup.fileno()
            if select.select([wakeup], [], [], max(0.0, wake_at - time.monotonic()))[0]:
                service.wakeup.take()

    def _resolve(self, host: str, port: int) -> None:
        key = (host, port)
        try:
            addresses = lookup(host, port)
        except OSError as exc:
            level = logging.DEBUG if key in self._failing else logging.WARNING
            self._failing.add(key)
            log.log(level, "seed %s:%d does not resolve (%s); retrying (logged once)",
                    host, port, exc)
            return
        if key in self._failing:
            self._failing.discard(key)
            log.info("seed %s:%d resolves again: %s", host, port, sorted(addresses))
        self._deliver(host, port, addresses)

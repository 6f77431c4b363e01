"""What ``State`` and ``AsyncState`` share: the life cycle, reading, writing and stats.

A replica is usable once constructed: its service thread is running, its sockets are bound and
advertised, and it is attached to its node (``node.close()`` closes it). Reads and writes work on
the local copy and never wait on the network; a write is applied at once and handed to the
service thread, which alone touches the sockets and publishes it. With a store, the service
thread also writes it to the store first, and the write returns once it is there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

from zmqkit import BrokenError, ClosedError, ConfigError, Node, ServiceThread, Timeout

from .._durable import check_path
from .engine import Engine
from .planner import SyncPlanner, SyncStatus
from .replica import Replica
from .wire import check_group, pub_role, sync_role, wire_value

__all__ = ["ANY", "BaseState", "Stored"]

Stored = str | os.PathLike[str] | None  # where a durable replica keeps its map

NS = 1_000_000_000
ANY: Any = object()  # wait_for: any value will do


class BaseState:
    """One replica of the group ``group``'s map, on ``node`` (see ``State`` for the options)."""

    def __init__(self, node: Node, group: str, *, heartbeat: float = 1.0,
                 sync_timeout: float = 2.0, join_wait: float = 0.5, give_up: float = 5.0,
                 store: Stored = None) -> None:
        self.node = node
        self.group = check_group(group)
        self.store = None if store is None else check_path(store, "state store")
        for name, seconds in (("heartbeat", heartbeat), ("sync_timeout", sync_timeout),
                              ("join_wait", join_wait), ("give_up", give_up)):
            if not 0 < seconds < 1e6:
                raise ConfigError(f"{name} is a number of seconds > 0, not {seconds!r}")
        if not node.running:
            raise ClosedError(f"{node!r} is not running; start it first")
        if sync_role(group) in node.endpoints:
            raise ConfigError(f"{node!r} already holds a replica of {group!r}; share it")
        self.writer = uuid_module.uuid4()
        self.heartbeat = heartbeat
        planner = SyncPlanner(join_wait=join_wait, timeout=sync_timeout, grace=heartbeat,
                              give_up=give_up)
        self._replica = Replica(self.writer.bytes, planner,
                                f"state replica {group!r} on {node.name!r}",
                                durable=self.store is not None)
        self._engine = Engine(node, self._replica, group, self.writer, heartbeat, self.store)
        self._service = ServiceThread(f"zmqkit-state:{group}", self._engine.run)
        self._replica.wake = self._service.wake
        self._replica.in_engine = lambda: self._service.is_current
        self._replica.store_now = self._engine.persist
        self._closing = threading.Lock()
        self._closed = False
        self._unsubscribe: Callable[[], None] | None = None
        try:
            node.attach(self)  # first: a closed node refuses before a thread is started
            self._unsubscribe = node.on_event(lambda _event: self._service.wake())
            self._service.start()
            node.advertise(pub_role(group), self._engine.pub_endpoint)
            node.advertise(sync_role(group), self._engine.endpoint)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<zmqkit state.{type(self).__name__} {self.group!r} on {self.node.name!r} {state}>"

    def close(self, timeout: float = 2.0) -> None:
        """Withdraw from the group, stop the replica's thread (it closes its own sockets) and
        detach from the node. Idempotent, from any thread (a change callback included); waits
        and iterators end."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
        for role, endpoint in ((sync_role(self.group), self._engine.endpoint),
                               (pub_role(self.group), self._engine.pub_endpoint)):
            if endpoint and self.node.endpoints.get(role) == endpoint:
                self.node.withdraw(role)
        self._replica.close()  # refuses writes: the thread publishes those made before, and stops
        self._service.stop(timeout)
        self.node.detach(self)

    # -- what the replica is -------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The sync ROUTER's endpoint (advertised as ``state:GROUP``)."""
        return self._engine.endpoint

    @property
    def pub_endpoint(self) -> str:
        """The update PUB's endpoint (advertised as ``state-pub:GROUP``)."""
        return self._engine.pub_endpoint

    @property
    def synced(self) -> bool:
        """True once the initial sync is done (a member's snapshot merged, or no member found)."""
        return self._replica.synced

    def stats(self) -> dict[str, int]:
        """Counters: applied, duplicates, held, lost, dropped-* by reason, syncs, served,
        sync-failures, retired-writers, store-writes, ...; and the gauges writers and retired
        (the per-writer tables, both bounded)."""
        return {**self._replica.stats(), **self._replica.table_sizes()}

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the map's group, and the counters."""
        return {"name": self.group, "stats": self.stats()}

    def sync_status(self) -> SyncStatus:
        """Where syncing stands: synced or not, the member asked now, failures in a row and the
        last one's reason, and how long until the next try (backing off after failures)."""
        return self._replica.sync_status(time.monotonic())

    # -- reading and writing -------------------------------------------------------------------

    def _check_caller(self) -> None:
        """Raise ``WrongThread`` when this front-end may not be used from here (AsyncState)."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` here, or ``default`` if it is absent, deleted or expired."""
        self._check_caller()
        entry = self._replica.lookup(key, time.time_ns())
        return default if entry is None else entry.value

    def __contains__(self, key: object) -> bool:
        self._check_caller()
        return isinstance(key, str) and self._replica.lookup(key, time.time_ns()) is not None

    def items(self) -> dict[str, Any]:
        """A copy of every visible key and value here."""
        self._check_caller()
        return self._replica.visible(time.time_ns())

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Set ``key`` here at once and publish the write to the group. With a store, it
        returns once the store holds the write: a crash after that loses it not.

        ``ttl``: seconds after which the key expires on every node (by the writer's clock).

        Raises:
            EncodeError: the value cannot travel on the wire; nothing changed.
            ConfigError: the key is not text or the ttl is not a positive number.
            ClosedError: the replica is closed.
            BrokenError: the replica's thread failed (the error is the cause), its store
                included.
            Timeout: the store did not take the write within ``STORE_WAIT`` seconds.
        """
        self._check_caller()
        if type(key) is not str:
            raise ConfigError(f"a key is text, not {key!r}")
        if ttl is not None and not 0 < ttl < 1e9:
            raise ConfigError(f"a ttl is a number of seconds > 0, not {ttl!r}")
        value, size = wire_value(value)
        self._check_alive()
        ttl_ns = None if ttl is None else max(1, int(ttl * NS))
        self._replica.write(key, value, size, time.time_ns(), ttl_ns)

    def delete(self, key: str) -> bool:
        """Delete ``key`` on every node; True if it was visible here. With a store, it returns
        once the store holds the tombstone.

        The tombstone is published even when the key is absent here: a write of it that has not
        reached this node yet is older, and loses.

        Raises:
            ConfigError: the key is not text.
            ClosedError: the replica is closed.
            BrokenError: the replica's thread failed, its store included.
            Timeout: the store did not take the delete within ``STORE_WAIT`` seconds.
        """
        self._check_caller()
        if type(key) is not str:
            raise ConfigError(f"a key is text, not {key!r}")
        self._check_alive()
        return self._replica.remove(key, time.time_ns())

    def _check_alive(self) -> None:
        error = self._service.error
        if error is not None:
            raise BrokenError(f"{self!r} stopped: {error!r}") from error

    # -- helpers for the waits of both front-ends ------------------------------------------------

    def _present(self, key: str, value: Any, found: list[Any]) -> bool:
        """Whether ``key`` is visible (holding ``value`` unless ANY); if so its value is put in
        ``found``."""
        entry = self._replica.lookup(key, time.time_ns())
        if entry is None or (value is not ANY and entry.value != value):
            return False
        found.append(entry.value)
        return True

    def _wait_failed(self, failure: str) -> Exception:
        """The error a wait that did not get what it waited for raises: closed, broken or late."""
        if self._replica.closed:
            return ClosedError(f"{self!r} is closed")
        error = self._service.error
        if error is not None:
            broken = BrokenError(f"{self!r} stopped: {error!r}")
            broken.__cause__ = error
            return broken
        return Timeout(f"{failure} ({self.sync_status()})")

    @staticmethod
    def _wanted(key: str, value: Any) -> str:
        return f"{key!r} did not appear" if value is ANY else f"{key!r} did not become {value!r}"

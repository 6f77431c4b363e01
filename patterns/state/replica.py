"""The replica's data, shared by the callers' threads and the engine, behind one lock.

Callers (any thread) read and write here and never wait on the network: a write is applied to the
core at once and queued in the outbox. The engine (the replica's service thread) takes the
outbox, feeds in what the group sends, asks the planner what to do, and hands the changes to the
listeners. This is the whole interface between the two sides; no socket is touched here, and
the clock is read only by the blocking waits.

A durable replica's writes return once its store holds them: the engine, which alone uses the
store, takes what changed (``take_changes``), writes it, and says how far it got (``stored``);
writes from many threads share one transaction.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from zmqkit import BrokenError, ClosedError, Deadline, ProtocolError, Timeout

from .core import Change, Entry, StateCore
from .planner import Plan, SyncPlanner, SyncStatus
from .store import Changes
from .wire import OP_OVERHEAD

__all__ = ["STORE_WAIT", "Listener", "Replica"]

log = logging.getLogger("zmqkit.state")

STORE_WAIT = 10.0  # the longest a durable write waits for its store

Listener = Callable[[list[Change]], None]  # called with [] once, on close


class Replica:
    """A ``StateCore`` and a ``SyncPlanner`` behind one lock, with an outbox and listeners.

    ``name`` is how errors name the replica (``ClosedError`` once ``close`` was called).
    ``wake`` is called after every local write: it wakes the engine to publish it.
    ``durable``: a write returns once the engine has stored it.
    """

    def __init__(self, writer: bytes, planner: SyncPlanner, name: str, *,
                 durable: bool = False) -> None:
        self.name = name
        self.wake: Callable[[], None] = lambda: None
        self.durable = durable
        # the engine's thread writing from a change callback cannot wait for itself: it stores
        # the write there and then (set by the owner: is the caller the engine? store now)
        self.in_engine: Callable[[], bool] = lambda: False
        self.store_now: Callable[[], None] = lambda: None
        self._core = StateCore(writer, durable=durable)
        self._planner = planner
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)  # notified as the store catches up
        self._stored_seq = 0  # this replica's own writes the store holds, up to this one
        self._engine_failure: BaseException | None = None
        self._engine_done = False
        self._changed = threading.Condition()  # notified after changes, a sync, or the close
        self._outbox: list[list[Any]] = []
        self._sizes: list[int] = []
        self._outbox_seq = 0
        self._pending: list[Change] = []
        self._synced_seen = False
        self._listeners: list[Listener] = []
        self._watchers: list[Callable[[], None]] = []  # told after anything happened, and on close
        self._counts: Counter[str] = Counter()
        self._closed = False

    # -- callers: reading --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close`` was called: writes are refused."""
        return self._closed

    @property
    def synced(self) -> bool:
        """True once the initial sync is done."""
        return self._core.synced

    def lookup(self, key: str, wall: int) -> Entry | None:
        """The entry holding ``key`` if it is visible at ``wall``."""
        with self._lock:
            return self._core.lookup(key, wall)

    def visible(self, wall: int) -> dict[str, Any]:
        """A copy of every key visible at ``wall``, with its value."""
        with self._lock:
            return self._core.visible(wall)

    def stats(self) -> dict[str, int]:
        """The core's counters and the engine's, in a fresh dict."""
        with self._lock:
            return dict(Counter(self._core.stats()) + self._counts)

    def sync_status(self, now: float) -> SyncStatus:
        """Where syncing stands at ``now`` (monotonic seconds)."""
        with self._lock:
            return self._planner.status(now, synced=self._core.synced)

    def table_sizes(self) -> dict[str, int]:
        """How many writers the per-writer tables hold: live and retired."""
        with self._lock:
            return {"writers": len(self._core.applied), "retired": len(self._core.retired)}

    # -- callers: writing --------------------------------------------------------------------------

    def write(self, key: str, value: Any, size: int, wall: int, ttl_ns: int | None) -> None:
        """Apply a set here and queue it for the group; ``size`` is the value's encoded size.
        Durable: returns once the store holds it.

        Raises:
            ClosedError: the replica is closed.
            BrokenError, Timeout: see ``_wait_stored``.
        """
        with self._lock:
            self._check_open()
            op, change = self._core.write(key, value, wall, ttl_ns)
            self._queue(op, len(key) + size)
            self._pending.append(change)
            seq = self._core.seq
        self.wake()
        self._wait_stored(seq)

    def remove(self, key: str, wall: int) -> bool:
        """Apply a delete here and queue it; True if the key was visible. Durable: returns once
        the store holds it.

        Raises:
            ClosedError: the replica is closed.
            BrokenError, Timeout: see ``_wait_stored``.
        """
        with self._lock:
            self._check_open()
            op, change = self._core.remove(key, wall)
            self._queue(op, len(key))
            if change is not None:
                self._pending.append(change)
            seq = self._core.seq
        self.wake()
        self._wait_stored(seq)
        return change is not None

    def _wait_stored(self, seq: int) -> None:
        """Wait until the store holds this replica's own writes up to ``seq`` (durable only).

        Raises:
            BrokenError: the engine stopped on an error (the store failed, say).
            ClosedError: the engine stopped before storing it.
            Timeout: not stored within ``STORE_WAIT`` seconds.
        """
        if not self.durable:
            return
        if self.in_engine():
            self.store_now()
        deadline = Deadline.after(STORE_WAIT)
        with self._stored:
            while self._stored_seq < seq:
                failure = self._engine_failure
                if failure is not None:
                    raise BrokenError(f"{self.name} stopped: {failure!r}") from failure
                if self._engine_done:
                    raise ClosedError(f"{self.name} closed before the write was stored")
                if deadline.expired():
                    raise Timeout(f"{self.name}: the store did not take a write in "
                                  f"{STORE_WAIT:g} s")
                self._stored.wait(deadline.remaining())

    def _queue(self, op: list[Any], size: int) -> None:
        self._outbox.append(op)
        self._sizes.append(size + OP_OVERHEAD)
        self._outbox_seq = self._core.seq

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.name} is closed")

    # -- callers: waiting and watching -------------------------------------------------------------

    def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Block until ``ready()`` (called without the lock held) or the close; False when
        ``timeout`` seconds passed first."""
        deadline = Deadline.after(timeout)
        with self._changed:
            while not ready():
                if self._closed or deadline.expired():
                    return False
                self._changed.wait(deadline.remaining())
        return True

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(changes)`` in the engine's thread as changes are applied, and with
        [] on close; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def watch(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """Call ``watcher()`` (from any thread) after changes, the first sync, and the close."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    def close(self) -> None:
        """Refuse writes from now on; wake every waiter, iterator and watcher."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._changed:
            self._changed.notify_all()
        for listener in list(self._listeners):
            listener([])
        for watcher in list(self._watchers):
            watcher()

    # -- the engine: publishing --------------------------------------------------------------------

    def take_outbox(self) -> tuple[list[list[Any]], list[int], int]:
        """The ops written since the last call, their sizes, and the seq of the last one."""
        with self._lock:
            ops, sizes, last_seq = self._outbox, self._sizes, self._outbox_seq
            self._outbox, self._sizes = [], []
        return ops, sizes, last_seq

    def digest(self) -> list[list[Any]]:
        """``[[writer, seq], ...]``: how far this replica has applied each writer."""
        with self._lock:
            return self._core.digest()

    def count(self, what: str, how_many: int = 1) -> None:
        """Add to one of the engine's counters."""
        with self._lock:  # stats() reads the counters from other threads
            self._counts[what] += how_many

    # -- the engine: the store --------------------------------------------------------------------

    def restore(self, entries: Mapping[str, Entry], progress: Mapping[bytes, int]) -> None:
        """Take back what the store held (before the engine serves)."""
        with self._lock:
            self._core.restore(entries, progress)

    def take_changes(self) -> tuple[Changes, int] | None:
        """What changed since the last call, for the store, with the seq of this replica's last
        write it includes; None when nothing did."""
        with self._lock:
            core = self._core
            dirty = core.take_dirty()
            if not (dirty.keys or dirty.writers):
                return None
            entries = [core.entries[key].as_wire(key) for key in dirty.keys]
            writers = [(writer, core.progress.get(writer)) for writer in dirty.writers]
            return Changes(entries, writers), core.seq

    def stored(self, seq: int) -> None:
        """The store holds this replica's writes up to ``seq``: their writers may return."""
        with self._stored:
            self._stored_seq = max(self._stored_seq, seq)
            self._stored.notify_all()

    def engine_stopped(self, failure: BaseException | None) -> None:
        """The engine has stopped (on ``failure``, if not None): no write will be stored now."""
        with self._stored:
            self._engine_done = True
            self._engine_failure = failure
            self._stored.notify_all()

    # -- the engine: what the group sends ----------------------------------------------------------

    def receive(self, writer: bytes, last_seq: int, ops: list[Any], wall: int) -> None:
        """An UPDATES from the group (see ``StateCore.receive``)."""
        with self._lock:
            self._pending += self._core.receive(writer, last_seq, ops, wall)

    def digest_from(self, member: uuid_module.UUID, applied: Mapping[bytes, int],
                    now: float) -> None:
        """A member's DIGEST: the planner notes what it has that we lack."""
        with self._lock:
            self._planner.digest_from(member, applied, self._core.progress, now)

    def snapshot(self, known: Mapping[bytes, int]) -> dict[str, Any]:
        """What a member that has applied ``known`` lacks (the result of a sync request)."""
        with self._lock:
            return self._core.snapshot(known)

    def merge(self, snapshot: Any, error: str | None, now: float, wall: int) -> None:
        """A member's answer to the sync request: merged, or the request counted as failed."""
        with self._lock:
            try:
                if error is not None:
                    raise ProtocolError(error)
                self._pending += self._core.merge(snapshot, wall)
                self._planner.succeeded(now)
            except ProtocolError as exc:
                log.debug("%s: a sync failed: %s", self.name, exc)
                self._counts["sync-failures"] += 1
                self._planner.failed(now, str(exc))

    # -- the engine: planning ----------------------------------------------------------------------

    def begin(self, now: float) -> None:
        """The engine runs from ``now``: a replica alone waits ``join_wait`` from here."""
        with self._lock:
            self._planner.start(now)

    def set_members(self, members: Mapping[uuid_module.UUID, str]) -> uuid_module.UUID | None:
        """The members to sync with; the member of the request in flight if it has gone."""
        with self._lock:
            return self._planner.set_members(members)

    def tick(self, now: float, wall: int) -> tuple[Plan, dict[bytes, int]]:
        """Expire what is due and ask the planner; return its plan and what we know (for a
        sync request)."""
        with self._lock:
            core = self._core
            self._pending += core.expire(wall)
            plan = self._planner.plan(now, synced=core.synced, applied=core.progress,
                                      missing=core.missing())
            if plan.alone:
                core.synced = True
                self._counts["started-alone"] += 1
            for writer in plan.give_up:
                log.warning("%s: gave up waiting for lost writes of writer %s", self.name,
                            writer.hex()[:8])
                self._pending += core.skip_gap(writer, wall)
            return plan, dict(core.applied)

    def next_wake(self, now: float, wall: int) -> float:
        """Seconds until the core or the planner may want the engine again."""
        with self._lock:
            wait = self._planner.next_wake(now, synced=self._core.synced,
                                           gaps=bool(self._core.held))
            expiry = self._core.next_expiry()
        if expiry is not None:
            wait = min(wait, max(0.0, (expiry - wall) / 1e9) + 0.001)
        return wait

    # -- the engine: telling the listeners ---------------------------------------------------------

    def dispatch(self) -> None:
        """Hand the changes applied since the last call to the listeners, in the engine's
        thread and without the lock: a listener may read and write the replica."""
        with self._lock:
            changes, self._pending = self._pending, []
            synced_now = self._core.synced and not self._synced_seen
            self._synced_seen = self._core.synced
        if not (changes or synced_now):
            return
        with self._changed:
            self._changed.notify_all()
        if changes:
            for listener in list(self._listeners):
                listener(changes)
        for watcher in list(self._watchers):
            watcher()

"""The replicated map without sockets or a clock: last writer wins, tombstones, TTLs, gaps. Pure.

``StateCore`` is fed writes (local ones, UPDATES from the group, snapshots from a member) and
``wall`` (nanoseconds since the epoch), and returns the visible ``Change``s. It is the same on
every replica, so every replica ends with the same map whatever order the writes arrive in.

The per-writer table stays bounded: a writer that holds no key any more (every write of it was
superseded) is **retired**, its sequence number kept in a bounded table of its own, so that a
late write of it is still known for what it is. A durable replica's core also notes what
changed (``dirty``) for its store to write, and ``restore`` takes a store's content back.
"""

from __future__ import annotations

import enum
import heapq
import uuid as uuid_module
from collections import ChainMap, Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zmqkit import ConfigError, ProtocolError

from .wire import OP_DELETE, OP_SET, is_uint, is_writer, seq_table, valid_op

__all__ = ["MAX_HELD", "MAX_RETIRED", "Change", "ChangeKind", "Dirty", "Entry", "StateCore"]

MAX_HELD = 10_000  # messages held back behind a gap; beyond it the oldest go (a sync refills them)
MAX_RETIRED = 1000  # writers that hold no key, remembered with their sequence numbers


class ChangeKind(enum.Enum):
    """What happened to a key, as this replica saw it."""

    SET = "set"
    DELETED = "deleted"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Change:
    """One visible change to the map: a key set, deleted, or expired."""

    key: str
    kind: ChangeKind
    value: Any  # the new value for SET; None otherwise
    writer: uuid_module.UUID  # the State instance whose write this is
    stamp: int  # the write's wall-clock stamp, nanoseconds since the epoch
    local: bool  # written by this replica


@dataclass(slots=True)
class Entry:
    """The write that currently holds a key (a tombstone when ``deleted``)."""

    stamp: int
    writer: bytes
    seq: int
    value: Any
    expires_at: int | None
    deleted: bool

    def visible(self, wall: int) -> bool:
        """Not a tombstone, and not expired at ``wall``."""
        return not self.deleted and (self.expires_at is None or wall < self.expires_at)

    def as_wire(self, key: str) -> list[Any]:
        """``[writer, seq, op, key, stamp, value, expires_at]``: the op that last wrote the key."""
        code = OP_DELETE if self.deleted else OP_SET
        return [self.writer, self.seq, code, key, self.stamp, self.value, self.expires_at]

    @classmethod
    def from_wire(cls, entry: list[Any], wall: int) -> Entry:
        """The entry ``as_wire`` describes (expired at ``wall``: a tombstone)."""
        writer, seq, code, _, stamp, value, expires_at = entry
        deleted = code == OP_DELETE or (expires_at is not None and expires_at <= wall)
        return cls(stamp, writer, seq, None if deleted else value, expires_at, deleted)


@dataclass(slots=True)
class Dirty:
    """What changed since a durable replica's store last wrote: keys, and writers' progress."""

    keys: set[str] = field(default_factory=set)
    writers: set[bytes] = field(default_factory=set)


class StateCore:
    """The replicated map without sockets or a clock: fed writes and ``wall`` (ns since the
    epoch), it returns the visible changes. Not thread-safe: ``Replica`` holds it behind a lock.

    ``applied[w]`` is the last sequence number of writer ``w`` applied here, with every earlier
    one applied too (or given up as lost, see ``skip_gap``). A message that does not follow on is
    ``held`` until a merge fills the gap. ``retired`` keeps the same for writers that hold no key
    (the oldest forgotten beyond ``max_retired``); ``progress`` reads both.

    ``durable``: note what changes in ``dirty``, for a store to write.
    """

    def __init__(self, writer: bytes, *, max_held: int = MAX_HELD,
                 max_retired: int = MAX_RETIRED, durable: bool = False) -> None:
        if not is_writer(writer):
            raise ConfigError("a writer id is 16 bytes")
        self.writer = writer
        self.entries: dict[str, Entry] = {}
        self.applied: dict[bytes, int] = {}
        self.retired: OrderedDict[bytes, int] = OrderedDict()
        self.progress: ChainMap[bytes, int] = ChainMap(self.applied, self.retired)
        self.holding: Counter[bytes] = Counter()  # keys (tombstones too) each writer holds
        self.dirty: Dirty | None = Dirty() if durable else None
        self.seq = 0
        self.held: deque[tuple[bytes, int, list[Any]]] = deque()
        self.max_held = max_held
        self.max_retired = max_retired
        self.synced = False
        self._idle: set[bytes] = set()  # writers whose last key went since the last settle
        self._counts: Counter[str] = Counter()
        self._expiries: list[tuple[int, str]] = []
        self._uuids: dict[bytes, uuid_module.UUID] = {}

    # -- reading ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: applied, duplicates, held, lost, superseded, merged, dropped-* by reason."""
        return dict(self._counts)

    def lookup(self, key: str, wall: int) -> Entry | None:
        """The entry holding ``key`` if it is visible at ``wall``, else None."""
        entry = self.entries.get(key)
        return entry if entry is not None and entry.visible(wall) else None

    def visible(self, wall: int) -> dict[str, Any]:
        """Every key visible at ``wall``, with its value."""
        return {key: entry.value for key, entry in self.entries.items() if entry.visible(wall)}

    def digest(self) -> list[list[Any]]:
        """``[[writer, seq], ...]``: how far this replica has applied each writer."""
        return [[writer, seq] for writer, seq in self.applied.items()]

    # -- local writes ----------------------------------------------------------------------------

    def write(
        self, key: str, value: Any, wall: int, ttl_ns: int | None = None
    ) -> tuple[list[Any], Change]:
        """Apply a local set; return the op to publish and its change."""
        stamp = self._next_stamp(key, wall)
        op = [OP_SET, key, stamp, value, None if ttl_ns is None else stamp + ttl_ns]
        change = self._apply_local(op, wall)
        assert change is not None  # a fresh stamp always wins, and a positive TTL is in the future
        return op, change

    def remove(self, key: str, wall: int) -> tuple[list[Any], Change | None]:
        """Apply a local delete; return the op to publish and its change (None if absent)."""
        op = [OP_DELETE, key, self._next_stamp(key, wall), None, None]
        return op, self._apply_local(op, wall)

    def _next_stamp(self, key: str, wall: int) -> int:
        """``wall``, raised past the stamp of the entry it replaces: a local write always wins
        here, even against a peer whose clock runs ahead."""
        current = self.entries.get(key)
        return wall if current is None or wall > current.stamp else current.stamp + 1

    def _apply_local(self, op: list[Any], wall: int) -> Change | None:
        self.seq += 1
        self._advance(self.writer, self.seq)
        change = self._apply(self.writer, self.seq, op, wall)
        self._settle(())
        return change

    # -- remote writes ---------------------------------------------------------------------------

    def _apply(self, writer: bytes, seq: int, op: list[Any], wall: int) -> Change | None:
        """Last writer wins: apply ``op`` if its (stamp, writer) beats the stored one."""
        code, key, stamp, value, expires_at = op
        current = self.entries.get(key)
        if current is not None and (stamp, writer) <= (current.stamp, current.writer):
            self._counts["superseded"] += 1
            return None
        expired = expires_at is not None and expires_at <= wall
        deleted = code == OP_DELETE or expired
        stored = None if deleted else value
        self._store(key, Entry(stamp, writer, seq, stored, expires_at, deleted), current)
        if not deleted:
            if expires_at is not None:
                self._schedule_expiry(expires_at, key)
            return self._change(key, ChangeKind.SET, value, writer, stamp)
        if current is not None and current.visible(wall):
            return self._change(key, ChangeKind.EXPIRED if expired else ChangeKind.DELETED,
                                None, writer, stamp)
        return None

    def _change(self, key: str, kind: ChangeKind, value: Any, writer: bytes, stamp: int) -> Change:
        writer_uuid = self._uuids.get(writer)
        if writer_uuid is None:
            writer_uuid = self._uuids[writer] = uuid_module.UUID(bytes=writer)
        return Change(key, kind, value, writer_uuid, stamp, writer == self.writer)

    def receive(self, writer: bytes, last_seq: int, ops: list[Any], wall: int) -> list[Change]:
        """Take one UPDATES message: ``ops`` are ``writer``'s writes ``last_seq - len(ops) + 1``
        to ``last_seq``. Already applied ones are dropped; a gap holds the message back."""
        if writer == self.writer:
            self._counts["dropped-own"] += 1  # our own id from elsewhere: never trusted
            return []
        first = last_seq - len(ops) + 1
        if not ops or first < 1 or not all(valid_op(op) for op in ops):
            self._counts["dropped-malformed"] += 1
            return []
        done = self.progress.get(writer, 0)
        if last_seq <= done:
            self._counts["duplicates"] += len(ops)
            return []
        if first > done + 1:
            self._counts["held"] += 1
            if len(self.held) >= self.max_held:
                self.held.popleft()
                self._counts["dropped-held"] += 1
            self.held.append((writer, first, ops))
            return []
        changes = []
        for offset in range(done + 1 - first, len(ops)):
            change = self._apply(writer, first + offset, ops[offset], wall)
            if change is not None:
                changes.append(change)
        self._advance(writer, last_seq)
        self._counts["applied"] += len(ops) - (done + 1 - first)
        self._settle((writer,))
        return changes

    def missing(self) -> dict[bytes, int]:
        """Writers whose held messages wait for a gap: writer -> first missing sequence number."""
        return {writer: self.progress.get(writer, 0) + 1 for writer, _, _ in self.held}

    def skip_gap(self, writer: bytes, wall: int) -> list[Change]:
        """Give up waiting for ``writer``'s missing writes (nobody has them: its node died before
        they reached anyone); apply what is held after them. Counted in ``stats()["lost"]``."""
        firsts = [first for held_writer, first, _ in self.held if held_writer == writer]
        if not firsts:
            return []
        done = self.progress.get(writer, 0)
        resume = min(firsts)
        if resume > done + 1:
            self._counts["lost"] += resume - done - 1
            self._advance(writer, resume - 1)
        return self._replay(wall)

    def _replay(self, wall: int) -> list[Change]:
        held, self.held = self.held, deque()
        changes: list[Change] = []
        for writer, first, ops in held:
            changes += self.receive(writer, first + len(ops) - 1, ops, wall)
        return changes

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self, known: Mapping[bytes, int]) -> dict[str, Any]:
        """What a replica that has applied ``known`` lacks: the entries written after it (by
        writer and sequence), and this replica's per-writer table (retired writers too)."""
        entries = [
            entry.as_wire(key) for key, entry in self.entries.items()
            if entry.seq > known.get(entry.writer, 0)
        ]
        return {"writers": [[w, seq] for w, seq in self.progress.items()], "entries": entries}

    def merge(self, snapshot: object, wall: int) -> list[Change]:
        """Merge a sync reply (see ``snapshot``), then replay what was held.

        Raises:
            ProtocolError: the reply is not a snapshot; nothing was changed.
        """
        if type(snapshot) is not dict:
            raise ProtocolError("a snapshot is a map")
        writers = seq_table(snapshot.get("writers"))
        entries = snapshot.get("entries")
        if writers is None or type(entries) is not list:
            raise ProtocolError("a snapshot has 'writers' ([[writer, seq], ...]) and 'entries'")
        for entry in entries:
            if (type(entry) is not list or len(entry) != 7 or not is_writer(entry[0])
                    or not is_uint(entry[1]) or not valid_op(entry[2:])):
                raise ProtocolError(f"a snapshot entry is [writer, seq, op, key, stamp, value, "
                                    f"expires_at], not {entry!r:.200}")
        changes: list[Change] = []
        for entry in entries:
            if entry[0] != self.writer:  # our own writes: we know them best
                change = self._apply(entry[0], entry[1], entry[2:], wall)
                if change is not None:
                    changes.append(change)
        for writer, seq in writers.items():
            if writer != self.writer and seq > self.progress.get(writer, 0):
                self._advance(writer, seq)
        self.synced = True
        self._counts["merged"] += 1
        self._settle(writers)
        return changes + self._replay(wall)

    # -- the per-writer table ------------------------------------------------------------------

    def _store(self, key: str, entry: Entry, current: Entry | None) -> None:
        """Put ``entry`` in place of ``current``, counting the keys each writer holds."""
        self.entries[key] = entry
        self.holding[entry.writer] += 1
        if current is not None:
            left = self.holding[current.writer] - 1
            if left:
                self.holding[current.writer] = left
            else:
                del self.holding[current.writer]
                self._idle.add(current.writer)
        if self.dirty is not None:
            self.dirty.keys.add(key)

    def _advance(self, writer: bytes, seq: int) -> None:
        """``writer`` is applied up to ``seq``: live again if it was retired."""
        self.retired.pop(writer, None)
        self.applied[writer] = seq
        if self.dirty is not None:
            self.dirty.writers.add(writer)

    def _settle(self, touched: Iterable[bytes]) -> None:
        """Retire the writers (among ``touched`` and those whose last key went) that hold no key
        and wait for no gap: their sequence numbers move to ``retired``, which stays bounded."""
        candidates = self._idle.union(touched)
        self._idle.clear()
        for writer in candidates:
            if (writer == self.writer or writer in self.holding or writer not in self.applied
                    or any(held[0] == writer for held in self.held)):
                continue
            self.retired[writer] = self.applied.pop(writer)
            self._counts["retired-writers"] += 1
            dirty = self.dirty
            if dirty is not None:
                dirty.writers.add(writer)
            if len(self.retired) > self.max_retired:
                forgotten, _ = self.retired.popitem(last=False)
                if dirty is not None:
                    dirty.writers.add(forgotten)

    def take_dirty(self) -> Dirty:
        """What changed since the last call (empty without ``durable``)."""
        dirty = self.dirty
        if dirty is None:
            return Dirty()
        self.dirty = Dirty()
        return dirty

    def restore(self, entries: Mapping[str, Entry], progress: Mapping[bytes, int]) -> None:
        """Take back what a store held: the entries (tombstones too) and each writer's progress.

        Raises:
            ConfigError: the core has been used already.
        """
        if self.entries or self.progress or self.seq:
            raise ConfigError("a store is restored into a new replica only")
        for key, entry in entries.items():
            self._store(key, entry, None)
            if not entry.deleted and entry.expires_at is not None:
                self._schedule_expiry(entry.expires_at, key)
        self.applied.update(progress)
        self._settle(progress)
        self.dirty = Dirty() if self.dirty is not None else None

    # -- expiry ----------------------------------------------------------------------------------

    def _schedule_expiry(self, at: int, key: str) -> None:
        heapq.heappush(self._expiries, (at, key))
        if len(self._expiries) > 2 * len(self.entries) + 1000:  # keys rewritten many times
            self._expiries = [(e.expires_at, k) for k, e in self.entries.items()
                              if not e.deleted and e.expires_at is not None]
            heapq.heapify(self._expiries)

    def expire(self, wall: int) -> list[Change]:
        """Turn the keys whose time has come into tombstones; return an EXPIRED change each."""
        changes = []
        while self._expiries and self._expiries[0][0] <= wall:
            at, key = heapq.heappop(self._expiries)
            entry = self.entries.get(key)
            if entry is None or entry.deleted or entry.expires_at != at:
                continue  # rewritten since
            entry.deleted, entry.value = True, None
            if self.dirty is not None:
                self.dirty.keys.add(key)
            changes.append(self._change(key, ChangeKind.EXPIRED, None, entry.writer, entry.stamp))
        return changes

    def next_expiry(self) -> int | None:
        """The wall-clock time (ns) of the next expiry, if any."""
        return self._expiries[0][0] if self._expiries else None

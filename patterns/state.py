"""Replicated key-value state: a map that every node of a group holds, with no server.

This is the ZeroMQ Guide's Clone pattern without its central server:

    with state.State(node, "inventory") as inventory:
        inventory.wait_synced(timeout=2.0)          # the snapshot from a member is in
        inventory.set("apples", 12)                 # applied here at once, published to the group
        inventory.set("lease:42", "me", ttl=30.0)   # gone on every node 30 s later
        inventory.delete("pears")
        inventory.get("apples"), inventory.items()
        inventory.on_change(print)                  # or: for change in inventory.changes(1.0)

How the replicas stay in step:

- Every write is applied locally at once, then published on the group's topic with the writer's
  sequence number (one per ``State`` instance, from 1). Receivers apply each writer's writes in
  order, exactly once: a write already applied is dropped, and a write that does not follow on
  from the last one applied (a **gap**) is held back and triggers a sync.
- A sync asks one member (over its ROUTER, with a ``zmqkit.state.sync`` request) for every entry
  that the asker has not seen, judged by the asker's per-writer sequence numbers, plus the
  member's own. A late joiner does this first; updates arriving meanwhile are held and replayed
  after the snapshot, so nothing is applied twice and nothing is skipped.
- Every member publishes a digest of its per-writer sequence numbers each ``heartbeat``. A
  member that sees a digest ahead of its own for longer than a heartbeat asks that member for
  what it lacks: a write lost at the tail of a stream (a writer SIGKILLed mid-send) still reaches
  everyone.
- Conflicts: per key, the write with the higher ``(stamp, writer)`` wins, where ``stamp`` is the
  writer's wall clock in nanoseconds (raised past the stamp of the entry it replaces, so a node's
  own write always wins on that node) and ``writer`` the writer's 16-byte id, compared as bytes.
  Every node applies the same rule, so every node ends with the same winner, whatever the order.
- Deletes are tombstones: they keep the key's version so that an older write arriving late cannot
  resurrect it. A TTL key carries ``expires_at`` (the writer's stamp plus the TTL); on every node
  it reads as absent from that wall-clock time on, and turns into a tombstone.

Limits: a tombstone (deleted or expired key) costs its key and version until the ``State`` closes,
so use a bounded key space; the per-writer table grows by one entry per ``State`` ever started in
the group; a snapshot travels as one frame (64 MiB at most); TTLs are only as consistent as the
nodes' wall clocks.

- ``StateCore``   the map, versions, tombstones, TTL, per-writer sequences, gaps (pure)
- ``SyncPlanner`` which member to ask for a sync, and when (pure, fed ``now``)
- ``State``       the replica: one named thread that owns its sockets, with a blocking and an
                  asyncio front-end over the same core
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import threading
import time
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import zmq

from zmqkit import (
    ClosedError,
    ConfigError,
    Deadline,
    EncodeError,
    Node,
    Peer,
    ProtocolError,
    Socket,
    Timeout,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.security import SecurityError
from zmqkit.wakeup import Wakeup

__all__ = [
    "SYNC_METHOD",
    "Change",
    "ChangeKind",
    "State",
    "StateCore",
    "SyncPlanner",
    "pub_role",
    "sync_role",
    "topic",
]

log = logging.getLogger("zmqkit.state")

SYNC_METHOD = "zmqkit.state.sync"  # not a Python identifier: no user RPC method can clash
TOPIC_PREFIX = "zmqkit.state."
ROLE_PREFIX = "state:"  # + group: the ROUTER that answers sync requests
PUB_ROLE_PREFIX = "state-pub:"  # + group: the PUB that carries updates and digests
MAX_GROUP_BYTES = 64

UPDATES = 1  # [1, last_seq, ops]
DIGEST = 2  # [2, node_uuid, [[writer, seq], ...]]
OP_SET = 1  # [1, key, stamp, value, expires_at]
OP_DELETE = 2  # [2, key, stamp, null, null]

MAX_HELD = 10_000  # messages held back behind a gap; beyond it the oldest go (a sync refills them)
MAX_OPS_PER_MESSAGE = 1000
MAX_BYTES_PER_MESSAGE = 1 << 20
MAX_CHANGE_BACKLOG = 10_000  # a ``changes()`` reader that falls this far behind loses the oldest
FAILURE_PENALTY = 5.0  # seconds a member that failed a sync is asked only as a last resort
NS = 1_000_000_000
UINT_LIMIT = 1 << 64
WRITER_BYTES = 16
# values that need no round trip through the decoder to be known wire-safe
_PLAIN = (str, int, float, bool, type(None), bytes)


def topic(group: str) -> str:
    """The pub/sub topic that carries ``group``'s updates and digests."""
    return TOPIC_PREFIX + group


def sync_role(group: str) -> str:
    """The beacon role under which members advertise their sync ROUTER."""
    return ROLE_PREFIX + group


def pub_role(group: str) -> str:
    """The beacon role under which members advertise their update PUB socket."""
    return PUB_ROLE_PREFIX + group


def _check_group(group: object) -> str:
    if (
        not isinstance(group, str)
        or not 0 < len(group.encode(errors="surrogatepass")) <= MAX_GROUP_BYTES
        or group.endswith("*")
    ):
        raise ConfigError(f"a state group is 1 to {MAX_GROUP_BYTES} bytes of text not ending in "
                          f"'*', not {group!r}")
    return group


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value < UINT_LIMIT


def _is_writer(value: object) -> bool:
    return type(value) is bytes and len(value) == WRITER_BYTES


def _valid_op(op: object) -> bool:
    return (
        type(op) is list
        and len(op) == 5
        and (op[0] == OP_SET or op[0] == OP_DELETE)
        and type(op[0]) is int
        and type(op[1]) is str
        and _is_uint(op[2])
        and (op[4] is None or _is_uint(op[4]))
    )


def _seq_table(pairs: object) -> dict[bytes, int] | None:
    """``[[writer, seq], ...]`` as a dict, or None when it is not one."""
    if type(pairs) is not list:
        return None
    table: dict[bytes, int] = {}
    for pair in pairs:
        if (type(pair) is not list or len(pair) != 2 or not _is_writer(pair[0])
                or not _is_uint(pair[1])):
            return None
        table[pair[0]] = max(pair[1], table.get(pair[0], 0))
    return table


# -- the pure core ---------------------------------------------------------------------------------


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
        return not self.deleted and (self.expires_at is None or wall < self.expires_at)

    def as_wire(self, key: str) -> list[Any]:
        """``[writer, seq, op, key, stamp, value, expires_at]``: the op that last wrote the key."""
        code = OP_DELETE if self.deleted else OP_SET
        return [self.writer, self.seq, code, key, self.stamp, self.value, self.expires_at]


class StateCore:
    """The replicated map without sockets or a clock: fed writes and ``wall`` (ns since the
    epoch), it returns the visible changes. Not thread-safe: its owner holds a lock.

    ``applied[w]`` is the last sequence number of writer ``w`` applied here, with every earlier
    one applied too (or given up as lost, see ``skip_gap``). A message that does not follow on is
    ``held`` until a merge fills the gap.
    """

    def __init__(self, writer: bytes, *, max_held: int = MAX_HELD) -> None:
        if not _is_writer(writer):
            raise ConfigError("a writer id is 16 bytes")
        self.writer = writer
        self.entries: dict[str, Entry] = {}
        self.applied: dict[bytes, int] = {}
        self.seq = 0
        self.held: deque[tuple[bytes, int, list[Any]]] = deque()
        self.max_held = max_held
        self.synced = False
        self.stats: Counter[str] = Counter()
        self._expiries: list[tuple[int, str]] = []
        self._uuids: dict[bytes, uuid_module.UUID] = {}

    # -- reading ---------------------------------------------------------------------------------

    def lookup(self, key: str, wall: int) -> Entry | None:
        """The entry holding ``key`` if it is visible at ``wall``, else None."""
        entry = self.entries.get(key)
        return entry if entry is not None and entry.visible(wall) else None

    def visible(self, wall: int) -> dict[str, Any]:
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
        self.applied[self.writer] = self.seq
        return self._apply(self.writer, self.seq, op, wall)

    # -- remote writes ---------------------------------------------------------------------------

    def _apply(self, writer: bytes, seq: int, op: list[Any], wall: int) -> Change | None:
        """Last writer wins: apply ``op`` if its (stamp, writer) beats the stored one."""
        code, key, stamp, value, expires_at = op
        current = self.entries.get(key)
        if current is not None and (stamp, writer) <= (current.stamp, current.writer):
            self.stats["superseded"] += 1
            return None
        expired = expires_at is not None and expires_at <= wall
        deleted = code == OP_DELETE or expired
        stored = None if deleted else value
        self.entries[key] = Entry(stamp, writer, seq, stored, expires_at, deleted)
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
            self.stats["dropped-own"] += 1  # our own id from elsewhere: never trusted
            return []
        first = last_seq - len(ops) + 1
        if not ops or first < 1 or not all(_valid_op(op) for op in ops):
            self.stats["dropped-malformed"] += 1
            return []
        done = self.applied.get(writer, 0)
        if last_seq <= done:
            self.stats["duplicates"] += len(ops)
            return []
        if first > done + 1:
            self.stats["held"] += 1
            if len(self.held) >= self.max_held:
                self.held.popleft()
                self.stats["dropped-held"] += 1
            self.held.append((writer, first, ops))
            return []
        changes = []
        for offset in range(done + 1 - first, len(ops)):
            change = self._apply(writer, first + offset, ops[offset], wall)
            if change is not None:
                changes.append(change)
        self.applied[writer] = last_seq
        self.stats["applied"] += len(ops) - (done + 1 - first)
        return changes

    def missing(self) -> dict[bytes, int]:
        """Writers whose held messages wait for a gap: writer -> first missing sequence number."""
        return {writer: self.applied.get(writer, 0) + 1 for writer, _, _ in self.held}

    def skip_gap(self, writer: bytes, wall: int) -> list[Change]:
        """Give up waiting for ``writer``'s missing writes (nobody has them: its node died before
        they reached anyone); apply what is held after them. Counted in ``stats["lost"]``."""
        firsts = [first for held_writer, first, _ in self.held if held_writer == writer]
        if not firsts:
            return []
        done = self.applied.get(writer, 0)
        resume = min(firsts)
        if resume > done + 1:
            self.stats["lost"] += resume - done - 1
            self.applied[writer] = resume - 1
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
        writer and sequence), and this replica's per-writer table."""
        entries = [
            entry.as_wire(key) for key, entry in self.entries.items()
            if entry.seq > known.get(entry.writer, 0)
        ]
        return {"writers": self.digest(), "entries": entries}

    def merge(self, snapshot: object, wall: int) -> list[Change]:
        """Merge a sync reply (see ``snapshot``), then replay what was held.

        Raises:
            ProtocolError: the reply is not a snapshot; nothing was changed.
        """
        if type(snapshot) is not dict:
            raise ProtocolError("a snapshot is a map")
        writers = _seq_table(snapshot.get("writers"))
        entries = snapshot.get("entries")
        if writers is None or type(entries) is not list:
            raise ProtocolError("a snapshot has 'writers' ([[writer, seq], ...]) and 'entries'")
        for entry in entries:
            if (type(entry) is not list or len(entry) != 7 or not _is_writer(entry[0])
                    or not _is_uint(entry[1]) or not _valid_op(entry[2:])):
                raise ProtocolError(f"a snapshot entry is [writer, seq, op, key, stamp, value, "
                                    f"expires_at], not {entry!r:.200}")
        changes: list[Change] = []
        for entry in entries:
            if entry[0] != self.writer:  # our own writes: we know them best
                change = self._apply(entry[0], entry[1], entry[2:], wall)
                if change is not None:
                    changes.append(change)
        for writer, seq in writers.items():
            if writer != self.writer and seq > self.applied.get(writer, 0):
                self.applied[writer] = seq
        self.synced = True
        self.stats["merged"] += 1
        return changes + self._replay(wall)

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
            changes.append(self._change(key, ChangeKind.EXPIRED, None, entry.writer, entry.stamp))
        return changes

    def next_expiry(self) -> int | None:
        """The wall-clock time (ns) of the next expiry, if any."""
        return self._expiries[0][0] if self._expiries else None


class Plan(NamedTuple):
    """What the planner wants done now."""

    ask: uuid_module.UUID | None = None  # send a sync request to this member
    timed_out: uuid_module.UUID | None = None  # the request in flight to this member failed
    alone: bool = False  # no member showed up: this replica is synced as it is
    give_up: tuple[bytes, ...] = ()  # writers whose gaps nobody can fill (see skip_gap)


@dataclass(slots=True)
class _Claim:
    seq: int
    member: uuid_module.UUID
    since: float


@dataclass
class SyncPlanner:
    """Decides which member to ask for a sync, and when. Pure: fed ``now`` (monotonic seconds).

    Reasons to ask: not synced yet (ask any member; alone after ``join_wait`` with none); a gap
    in a writer's stream (ask a member whose digest covers it, else each member once, and after
    ``give_up`` seconds with nobody able to fill it, give it up); a member's digest ahead of ours
    for ``grace`` seconds (ask that member). One request at a time, ``timeout`` seconds each.
    """

    join_wait: float = 0.5
    timeout: float = 2.0
    grace: float = 1.0
    give_up: float = 5.0
    retry: float = 0.2
    members: dict[uuid_module.UUID, str] = field(default_factory=dict)
    digests: dict[uuid_module.UUID, dict[bytes, int]] = field(default_factory=dict)
    inflight: tuple[uuid_module.UUID, float] | None = None
    started_at: float | None = None
    _claims: dict[bytes, _Claim] = field(default_factory=dict)
    _asked: dict[bytes, dict[uuid_module.UUID, int]] = field(default_factory=dict)
    _gap_since: dict[bytes, float] = field(default_factory=dict)
    _failed_at: dict[uuid_module.UUID, float] = field(default_factory=dict)
    _not_before: float = 0.0
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def start(self, now: float) -> None:
        self.started_at = now

    def set_members(self, members: Mapping[uuid_module.UUID, str]) -> uuid_module.UUID | None:
        """The members now known (node uuid -> sync endpoint). Returns the member of the request
        in flight if it has gone (the request has failed)."""
        self.members = dict(members)
        for gone in [m for m in self.digests if m not in self.members]:
            del self.digests[gone]
        for writer in [w for w, claim in self._claims.items() if claim.member not in self.members]:
            del self._claims[writer]  # it went with what it had: nobody else claimed it
        if self.inflight is not None and self.inflight[0] not in self.members:
            gone_member = self.inflight[0]
            self.inflight = None
            return gone_member
        return None

    def digest_from(self, member: uuid_module.UUID, digest: Mapping[bytes, int],
                    applied: Mapping[bytes, int], now: float) -> None:
        """A member's digest: note what it has that we lack."""
        self.digests[member] = dict(digest)
        for writer, seq in digest.items():
            if seq > applied.get(writer, 0):
                claim = self._claims.get(writer)
                if claim is None:
                    self._claims[writer] = _Claim(seq, member, now)
                elif seq > claim.seq:
                    claim.seq, claim.member = seq, member

    def succeeded(self, now: float) -> None:
        self.inflight = None

    def failed(self, now: float) -> None:
        if self.inflight is not None:
            self._failed_at[self.inflight[0]] = now
        self.inflight = None
        self._not_before = now + self.retry

    def next_wake(self, now: float, *, synced: bool, gaps: bool) -> float:
        """Seconds until the planner may want to act again (a bound for the owner's wait)."""
        if self.inflight is not None:
            return max(0.0, self.inflight[1] - now)
        if not synced or gaps or self._claims:
            return 0.05
        return 3600.0

    def plan(self, now: float, *, synced: bool, applied: Mapping[bytes, int],
             missing: Mapping[bytes, int]) -> Plan:
        if self.inflight is not None:
            member, deadline = self.inflight
            if now < deadline:
                return Plan()
            self.failed(now)
            return Plan(timed_out=member)
        if now < self._not_before:
            return Plan()
        if not synced:
            if self.members:
                return Plan(ask=self._ask(self._pick(list(self.members), now), now))
            started = now if self.started_at is None else self.started_at
            return Plan(alone=now - started >= self.join_wait)
        needs = self._needs(now, applied, missing)
        for writer, seq in needs.items():
            asked = self._asked.setdefault(writer, {})
            covering = [m for m in self.members
                        if self.digests.get(m, {}).get(writer, 0) >= seq
                        and self.digests[m][writer] > asked.get(m, -1)]
            if covering:
                member = self._pick(covering, now)
                asked[member] = self.digests[member][writer]
                self._claims.pop(writer, None)
                return Plan(ask=self._ask(member, now))
        for writer in needs:
            asked = self._asked[writer]
            untried = [m for m in self.members if m not in asked]
            if untried and writer in missing:
                member = self._pick(untried, now)
                asked[member] = self.digests.get(member, {}).get(writer, 0)
                return Plan(ask=self._ask(member, now))
        hopeless = tuple(w for w in needs
                         if w in missing and now - self._gap_since[w] >= self.give_up)
        for writer in hopeless:
            self._forget(writer)
        return Plan(give_up=hopeless)

    def _needs(
        self, now: float, applied: Mapping[bytes, int], missing: Mapping[bytes, int]
    ) -> dict[bytes, int]:
        needs = dict(missing)
        for writer, claim in list(self._claims.items()):
            if applied.get(writer, 0) >= claim.seq:
                del self._claims[writer]
            elif now - claim.since >= self.grace and writer not in needs:
                needs[writer] = applied.get(writer, 0) + 1
        for writer in [w for w in self._gap_since if w not in needs]:
            self._forget(writer)
        for writer in needs:
            self._gap_since.setdefault(writer, now)
        return needs

    def _forget(self, writer: bytes) -> None:
        self._gap_since.pop(writer, None)
        self._asked.pop(writer, None)
        self._claims.pop(writer, None)

    def _pick(self, candidates: list[uuid_module.UUID], now: float) -> uuid_module.UUID:
        """Members that failed recently last; otherwise take turns."""
        turn = next(self._turn)
        fresh = [m for m in candidates
                 if now - self._failed_at.get(m, -FAILURE_PENALTY) >= FAILURE_PENALTY]
        pool = sorted(fresh or candidates)
        return pool[turn % len(pool)]

    def _ask(self, member: uuid_module.UUID, now: float) -> uuid_module.UUID:
        self.inflight = (member, now + self.timeout)
        return member


# -- the wire --------------------------------------------------------------------------------------


def _array_head(length: int) -> bytes:
    """The CBOR head of an array of ``length`` items, shortest form."""
    if length < 24:
        return bytes([0x80 + length])
    if length < 1 << 8:
        return bytes([0x98, length])
    if length < 1 << 16:
        return b"\x99" + length.to_bytes(2, "big")
    return b"\x9a" + length.to_bytes(4, "big")


def _encode_value(value: Any) -> tuple[bytes, Any]:
    """The value as CBOR, and a copy of it as every replica will read it back (tuples become
    lists), so that the caller changing its object later changes nothing here.

    Raises:
        EncodeError: the wire cannot carry the value (or a receiver would refuse it).
    """
    data = codec.dumps(value)
    kind = type(value)
    if kind in _PLAIN:
        return data, value
    # flat maps and lists of plain values (the common case) need a copy, not a decode
    if kind is dict and all(type(k) is str and type(v) in _PLAIN for k, v in value.items()):
        return data, dict(value)
    if kind is list and all(type(v) in _PLAIN for v in value):
        return data, list(value)
    try:
        return data, codec.loads(data)
    except ProtocolError as exc:
        raise EncodeError(f"a replica would refuse this {kind.__name__}: {exc}") from exc


def _cbor_uint(number: int) -> bytes:
    """A CBOR unsigned integer; stamps (about 2**60 ns) take the 9-byte form."""
    if 1 << 32 <= number < 1 << 64:
        return b"\x1b" + number.to_bytes(8, "big")
    return codec.dumps(number)


def _encode_op(code: int, key: str, stamp: int, value_cbor: bytes, expires_at: int | None) -> bytes:
    """``[code, key, stamp, value, expires_at]`` with the value already encoded."""
    return b"".join([b"\x85\x01" if code == OP_SET else b"\x85\x02", codec.dumps(key),
                     _cbor_uint(stamp), value_cbor,
                     b"\xf6" if expires_at is None else _cbor_uint(expires_at)])


def _updates_frame(topic_cbor: bytes, sender_cbor: bytes, pub_seq: int, last_seq: int,
                   ops: list[bytes]) -> bytes:
    """PUBLISH ``[1, 7, topic, sender, pub_seq, [UPDATES, last_seq, ops]]``, built from the ops
    already encoded by ``set`` (each value is encoded once, in the caller's thread)."""
    return b"".join([
        b"\x86\x01\x07", topic_cbor, sender_cbor, codec.dumps(pub_seq),
        b"\x83\x01", codec.dumps(last_seq), _array_head(len(ops)), *ops,
    ])


# -- the replica -----------------------------------------------------------------------------------

_ANY = object()  # wait_for: any value will do


def _holds(entry: Entry | None, value: Any) -> bool:
    return entry is not None and (value is _ANY or entry.value == value)


def _wanted(value: Any) -> str:
    return "did not appear" if value is _ANY else f"did not become {value!r}"


TICK = 0.5  # the longest the engine sleeps without looking at the clock


class State:
    """One replica of the group ``group``'s map, on ``node``.

    ``start()`` (or ``with``/``async with``) starts its thread, binds its sockets, advertises them
    and begins the initial sync; ``close()`` (or the node's close) stops it. Reading and writing
    never block on the network: ``get``, ``items``, ``set`` and ``delete`` work on the local copy,
    from any thread. Change callbacks run in the replica's thread: keep them short.

    Args:
        node: a running node.
        group: the name of the replicated map (1 to 64 bytes of text).
        heartbeat: seconds between digests (how fast a lost tail is noticed).
        sync_timeout: seconds a member gets to answer a sync request before another is asked.
        join_wait: seconds to wait for a first member before starting alone.
        give_up: seconds a gap that no member can fill is waited for before it is skipped.
    """

    def __init__(self, node: Node, group: str, *, heartbeat: float = 1.0, sync_timeout: float = 2.0,
                 join_wait: float = 0.5, give_up: float = 5.0) -> None:
        self.node = node
        self.group = _check_group(group)
        for name, seconds in (("heartbeat", heartbeat), ("sync_timeout", sync_timeout),
                              ("join_wait", join_wait), ("give_up", give_up)):
            if not 0 < seconds < 1e6:
                raise ConfigError(f"{name} is a number of seconds > 0, not {seconds!r}")
        if sync_role(group) in node.endpoints:
            raise ConfigError(f"{node!r} already holds a replica of {group!r}; share it")
        self.writer = uuid_module.uuid4()
        self.heartbeat = heartbeat
        self.endpoint = ""
        self.pub_endpoint = ""
        self._core = StateCore(self.writer.bytes)
        self._planner = SyncPlanner(join_wait=join_wait, timeout=sync_timeout, grace=heartbeat,
                                    give_up=give_up)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outbox: list[bytes] = []
        self._outbox_seq = 0
        self._pending: list[Change] = []
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._watchers: list[Callable[[], None]] = []  # woken after anything happened, or on close
        self._stats: Counter[str] = Counter()
        self._wakeup = Wakeup()
        self._stopping = False
        self._state = "new"
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"zmqkit-state:{group}", daemon=True)

    def __repr__(self) -> str:
        return f"<zmqkit state.State {self.group!r} on {self.node.name!r} {self._state}>"

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> State:
        """Start the thread, bind, advertise, and begin the initial sync.

        Raises:
            ClosedError: the node is not running, or this replica was started before.
            ConfigError: the sockets could not be bound.
        """
        if self._state != "new":
            raise ClosedError(f"{self!r} cannot start twice")
        if not self.node.running:
            raise ClosedError(f"{self.node!r} is not running; start it first")
        self.node.attach(self)  # first: a closed node refuses before a thread is started
        self._state = "running"
        self._unsubscribe = self.node.on_event(lambda _event: self._wake())
        self._thread.start()
        if not self._ready.wait(timeout) or self._startup_error is not None:
            self.close()
            failure = f"state replica {self.group!r} failed to start"
            raise ConfigError(failure) from self._startup_error
        # advertised from the caller's thread, as every other part of the node does
        self.node.advertise(pub_role(self.group), self.pub_endpoint)
        self.node.advertise(sync_role(self.group), self.endpoint)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Withdraw from the group, stop the thread and join it. Safe to call twice."""
        if self._state == "closed":
            return
        started = self._state == "running"
        self._state = "closed"
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
        if started:
            self.node.withdraw(sync_role(self.group))
            self.node.withdraw(pub_role(self.group))
            self._stopping = True
            self._wake()
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._thread.join(timeout)
        self.node.detach(self)
        self._wakeup.close()
        with self._changed:
            self._changed.notify_all()
        for listener in list(self._listeners):
            listener([])  # wakes iterators so that they see the replica is closed
        for watcher in list(self._watchers):
            watcher()

    def __enter__(self) -> State:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> State:
        return self.start()

    async def __aexit__(self, *_: object) -> None:
        self.close()

    @property
    def synced(self) -> bool:
        """True once the initial sync is done (a member's snapshot merged, or no member found)."""
        return self._core.synced

    def stats(self) -> dict[str, int]:
        """Counters: applied, duplicates, held, lost, dropped-* by reason, syncs, served, ..."""
        with self._lock:
            return dict(self._core.stats + self._stats)

    # -- reading and writing (any thread) --------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` here, or ``default`` if it is absent, deleted or expired."""
        with self._lock:
            entry = self._core.lookup(key, time.time_ns())
        return default if entry is None else entry.value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return isinstance(key, str) and self._core.lookup(key, time.time_ns()) is not None

    def items(self) -> dict[str, Any]:
        """A copy of every visible key and value here."""
        with self._lock:
            return self._core.visible(time.time_ns())

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Set ``key`` here at once and publish the write to the group.

        ``ttl``: seconds after which the key expires on every node (by the writer's clock).

        Raises:
            EncodeError: the value cannot travel on the wire; nothing changed.
            ConfigError: the key is not text or the ttl is not a positive number.
            ClosedError: the replica is closed.
        """
        if type(key) is not str:
            raise ConfigError(f"a key is text, not {key!r}")
        if ttl is not None and not 0 < ttl < 1e9:
            raise ConfigError(f"a ttl is a number of seconds > 0, not {ttl!r}")
        value_cbor, value = _encode_value(value)
        ttl_ns = None if ttl is None else max(1, int(ttl * NS))
        with self._lock:
            self._check_open()
            op, change = self._core.write(key, value, time.time_ns(), ttl_ns)
            self._outbox.append(_encode_op(OP_SET, key, op[2], value_cbor, op[4]))
            self._outbox_seq = self._core.seq
            self._pending.append(change)
        self._wake()

    def delete(self, key: str) -> bool:
        """Delete ``key`` on every node; True if it was visible here.

        The tombstone is published even when the key is absent here: a write of it that has not
        reached this node yet is older, and loses.
        """
        if type(key) is not str:
            raise ConfigError(f"a key is text, not {key!r}")
        with self._lock:
            self._check_open()
            op, change = self._core.remove(key, time.time_ns())
            self._outbox.append(_encode_op(OP_DELETE, key, op[2], b"\xf6", None))
            self._outbox_seq = self._core.seq
            if change is not None:
                self._pending.append(change)
        self._wake()
        return change is not None

    def _check_open(self) -> None:
        if self._state == "closed":
            raise ClosedError(f"{self!r} is closed")

    # -- waiting ---------------------------------------------------------------------------------

    def wait_synced(self, timeout: float = 5.0) -> None:
        """Wait until the initial sync is done.

        Raises:
            Timeout: not synced within ``timeout`` seconds (no member answered).
        """
        deadline = Deadline.after(timeout)
        with self._changed:
            while not self._core.synced:
                self._check_open()
                if deadline.expired():
                    raise Timeout(f"{self!r} not synced in {timeout:g} s")
                self._changed.wait(deadline.remaining())

    def wait_for(self, key: str, timeout: float = 5.0, *, value: Any = _ANY) -> Any:
        """Wait until ``key`` is visible here (holding ``value``, if given); return its value.

        Raises:
            Timeout: it did not happen within ``timeout`` seconds.
        """
        deadline = Deadline.after(timeout)
        with self._changed:
            while not _holds(entry := self._core.lookup(key, time.time_ns()), value):
                self._check_open()
                if deadline.expired():
                    raise Timeout(f"{key!r} {_wanted(value)} in {self!r} in {timeout:g} s")
                self._changed.wait(deadline.remaining())
        assert entry is not None
        return entry.value

    async def wait_synced_async(self, timeout: float = 5.0) -> None:
        """``wait_synced`` for asyncio code: waits without blocking the loop."""
        failure = f"{self!r} not synced in {timeout:g} s"
        await self._await(lambda: self._core.synced, timeout, failure)

    async def wait_for_async(self, key: str, timeout: float = 5.0, *, value: Any = _ANY) -> Any:
        """``wait_for`` for asyncio code."""
        found: list[Entry] = []

        def present() -> bool:
            entry = self._core.lookup(key, time.time_ns())
            if _holds(entry, value):
                assert entry is not None
                found.append(entry)
                return True
            return False

        failure = f"{key!r} {_wanted(value)} in {self!r} in {timeout:g} s"
        await self._await(present, timeout, failure)
        return found[-1].value

    async def _await(self, condition: Callable[[], bool], timeout: float, failure: str) -> None:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def watcher() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(changed.set)

        deadline = Deadline.after(timeout)
        self._watchers.append(watcher)
        try:
            while True:
                with self._lock:
                    if condition():
                        return
                self._check_open()
                try:
                    await asyncio.wait_for(changed.wait(), deadline.remaining())
                except asyncio.TimeoutError:
                    raise Timeout(failure) from None
                changed.clear()
        finally:
            self._watchers.remove(watcher)

    # -- changes ---------------------------------------------------------------------------------

    def on_change(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` for every visible change, in the order applied here;
        returns a function that unsubscribes. It runs in the replica's thread: keep it short."""

        def listener(changes: list[Change]) -> None:
            for change in changes:
                try:
                    callback(change)
                except Exception:  # a user's callback must not stop replication; logged loudly
                    log.exception("state change callback %r failed on %r", callback, change.key)

        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def changes(self, idle_timeout: float) -> Iterator[Change]:
        """Yield changes as they are applied here, until none comes for ``idle_timeout`` s."""
        backlog: deque[Change] = deque(maxlen=MAX_CHANGE_BACKLOG)
        arrived = threading.Condition()

        def listener(changes: list[Change]) -> None:
            with arrived:
                backlog.extend(changes)
                arrived.notify()

        def ready() -> bool:
            return bool(backlog) or self._state == "closed"

        self._listeners.append(listener)
        try:
            while True:
                with arrived:
                    if not arrived.wait_for(ready, idle_timeout):
                        return
                    pending = list(backlog)
                    backlog.clear()
                if not pending:
                    return  # closed
                yield from pending
        finally:
            self._listeners.remove(listener)

    async def achanges(self) -> AsyncIterator[Change]:
        """Changes for asyncio code, until the consumer stops (bound it with asyncio.timeout)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change | None] = asyncio.Queue()

        def put(changes: list[Change]) -> None:
            if not changes:
                queue.put_nowait(None)
            for change in changes:
                if queue.qsize() >= MAX_CHANGE_BACKLOG:
                    queue.get_nowait()
                queue.put_nowait(change)

        def listener(changes: list[Change]) -> None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop is closed
                loop.call_soon_threadsafe(put, changes)

        self._listeners.append(listener)
        try:
            while (change := await queue.get()) is not None or self._state != "closed":
                if change is not None:
                    yield change
        finally:
            self._listeners.remove(listener)

    # -- the replica's thread --------------------------------------------------------------------

    def _wake(self) -> None:
        self._wakeup.set()

    def _run(self) -> None:
        sockets: list[Socket] = []
        try:
            pub, sub, router = Socket(zmq.PUB), Socket(zmq.SUB), Socket(zmq.ROUTER)
            sockets += [pub, sub, router]
            self.node.secure_server(pub)  # a node with keys serves only peers in its keyring
            self.node.secure_server(router)
            self.pub_endpoint = pub.bind(self.node.host)
            self.endpoint = router.bind(self.node.host)
            for prefix in codec.publish_prefixes(topic(self.group)):
                sub.raw.subscribe(prefix)
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            self._startup_error = exc
            for sock in sockets:
                sock.close()
            self._ready.set()
            return
        self._ready.set()
        engine = _Engine(self, pub, sub, router)
        try:
            engine.run()
        except zmq.ZMQError as exc:
            if not self._stopping:
                log.error("state replica %s stopped: %s", self.group, exc)
        finally:
            engine.close()


class _Engine:
    """The loop of a replica's thread: it alone touches the sockets."""

    def __init__(self, state: State, pub: Socket, sub: Socket, router: Socket) -> None:
        self.state = state
        self.core = state._core
        self.planner = state._planner
        self.pub, self.sub, self.router = pub, sub, router
        self.topic_cbor = codec.dumps(topic(state.group))
        self.sender_cbor = codec.dumps(state.writer.bytes)
        self.node_uuid = state.node.uuid.bytes
        self.pub_seq = 0
        self.published_seq = 0
        self.connected: dict[uuid_module.UUID, str] = {}
        self.member_peers: dict[uuid_module.UUID, Peer] = {}
        self.refused: set[uuid_module.UUID] = set()  # members whose keys we may not talk to
        self.peers_version = -1
        self.next_digest = 0.0
        self.dealer: Socket | None = None
        self.synced_seen = False
        self.call_id = 0
        self.call_ids = itertools.count(1)
        self.poller = zmq.Poller()
        for sock in (sub, router):
            self.poller.register(sock.raw, zmq.POLLIN)
        state._wakeup.register(self.poller)

    def count(self, what: str, how_many: int = 1) -> None:
        with self.state._lock:  # stats() reads the counters from other threads
            self.state._stats[what] += how_many

    def run(self) -> None:
        state = self.state
        self.planner.start(time.monotonic())
        while not state._stopping:
            now = time.monotonic()
            self.refresh_members()
            self.flush()
            self.tick(now, time.time_ns())
            self.dispatch()
            wait = self.next_wait(now)
            ready = dict(self.poller.poll(round(wait * 1000)))
            state._wakeup.woke(ready)
            if self.sub.raw in ready:
                self.take_updates()
            if self.router.raw in ready:
                self.serve()
            if self.dealer is not None and self.dealer.raw in ready:
                self.take_sync_reply()

    def close(self) -> None:
        try:
            self.flush()  # writes made just before the close still go out (PUB lingers 0.2 s)
        finally:
            if self.dealer is not None:
                self.dealer.close()
            for sock in (self.pub, self.sub, self.router):
                sock.close()

    def next_wait(self, now: float) -> float:
        with self.state._lock:
            synced, gaps = self.core.synced, bool(self.core.held)
            expiry = self.core.next_expiry()
        wait = min(TICK, max(0.0, self.next_digest - now),
                   self.planner.next_wake(now, synced=synced, gaps=gaps))
        if expiry is not None:
            wait = min(wait, max(0.0, (expiry - time.time_ns()) / NS) + 0.001)
        return wait

    # -- membership ------------------------------------------------------------------------------

    def refresh_members(self) -> None:
        node = self.state.node
        if node.peers_version == self.peers_version:
            return
        self.peers_version = node.peers_version
        role, pub = sync_role(self.state.group), pub_role(self.state.group)
        self.member_peers = {peer.uuid: peer for peer in node.peers(role=role)
                             if pub in peer.endpoints}
        wanted = {uuid: peer.endpoints[pub] for uuid, peer in self.member_peers.items()}
        for member, endpoint in list(self.connected.items()):
            if wanted.get(member) != endpoint:
                self.sub.disconnect(endpoint)
                del self.connected[member]
        for member, endpoint in wanted.items():
            if member not in self.connected and member not in self.refused:
                try:
                    node.secure_client(self.sub, self.member_peers[member])
                except SecurityError as exc:  # not a member we may talk to: skipped, counted
                    self.refused.add(member)
                    self.count("refused-members")
                    log.warning("state %s: not syncing with %s", self.state.group, exc)
                    continue
                self.sub.connect(endpoint)
                self.connected[member] = endpoint
        members = {uuid: peer.endpoints[role] for uuid, peer in self.member_peers.items()
                   if uuid not in self.refused}
        with self.state._lock:
            lost = self.planner.set_members(members)
        if lost is not None:
            self.drop_dealer()

    # -- publishing ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Publish the writes made since the last flush, in as few messages as fit."""
        state = self.state
        with state._lock:
            ops, last_seq = state._outbox, state._outbox_seq
            state._outbox = []
        first = last_seq - len(ops) + 1
        start = 0
        while start < len(ops):
            end, size = start, 0
            while end < len(ops) and end - start < MAX_OPS_PER_MESSAGE and (
                    size < MAX_BYTES_PER_MESSAGE or end == start):
                size += len(ops[end])
                end += 1
            self.pub_seq += 1
            self.pub.send(_updates_frame(self.topic_cbor, self.sender_cbor, self.pub_seq,
                                         first + end - 1, ops[start:end]))
            start = end
        if ops:
            self.count("published", len(ops))

    def publish_digest(self) -> None:
        with self.state._lock:
            digest = self.core.digest()
        if digest:
            self.pub_seq += 1
            self.pub.send(codec.encode_publish(topic(self.state.group), self.state.writer.bytes,
                                               self.pub_seq, [DIGEST, self.node_uuid, digest]))

    # -- timers ----------------------------------------------------------------------------------

    def tick(self, now: float, wall: int) -> None:
        state = self.state
        if now >= self.next_digest:
            self.next_digest = now + state.heartbeat
            self.publish_digest()
        with state._lock:
            state._pending += self.core.expire(wall)
            plan = self.planner.plan(now, synced=self.core.synced, applied=self.core.applied,
                                     missing=self.core.missing())
            if plan.alone:
                self.core.synced = True
                state._changed.notify_all()
                state._stats["started-alone"] += 1
            for writer in plan.give_up:
                log.warning("state %s: gave up waiting for lost writes of writer %s", state.group,
                            writer.hex()[:8])
                state._pending += self.core.skip_gap(writer, wall)
            known = dict(self.core.applied)
        if plan.timed_out is not None:
            self.count("sync-timeouts")
            self.drop_dealer()
        if plan.ask is not None:
            self.ask(plan.ask, known)

    # -- syncing ---------------------------------------------------------------------------------

    def ask(self, member: uuid_module.UUID, known: dict[bytes, int]) -> None:
        endpoint = self.planner.members[member]
        self.drop_dealer()
        self.dealer = Socket(zmq.DEALER)
        self.state.node.secure_client(self.dealer, self.member_peers[member])  # checked already
        self.dealer.connect(endpoint)
        self.poller.register(self.dealer.raw, zmq.POLLIN)
        self.call_id = next(self.call_ids)
        request = codec.encode_request(self.call_id, SYNC_METHOD,
                                       [self.state.group, [[w, s] for w, s in known.items()]], {})
        self.dealer.send(request)  # queued until connected; the planner's deadline bounds it
        self.count("syncs")

    def drop_dealer(self) -> None:
        if self.dealer is not None:
            self.poller.unregister(self.dealer.raw)
            self.dealer.close()
            self.dealer = None

    def take_sync_reply(self) -> None:
        assert self.dealer is not None
        state = self.state
        try:
            message = codec.decode(self.dealer.raw.recv(zmq.NOBLOCK))
        except zmq.Again:
            return
        except ProtocolError:
            self.count("dropped-bad-reply")
            return
        if message[1] not in (Kind.REPLY, Kind.ERROR) or message[2] not in (self.call_id, 0):
            self.count("dropped-bad-reply")
            return
        now = time.monotonic()
        with state._lock:
            try:
                if message[1] == Kind.ERROR:
                    raise ProtocolError(f"{message[3]}: {message[4]}")
                state._pending += self.core.merge(message[3], time.time_ns())
                self.planner.succeeded(now)
                state._changed.notify_all()
            except ProtocolError as exc:
                log.debug("state %s: a sync failed: %s", state.group, exc)
                state._stats["sync-failures"] += 1
                self.planner.failed(now)
        self.drop_dealer()

    # -- receiving -------------------------------------------------------------------------------

    def take_updates(self) -> None:
        state, raw = self.state, self.sub.raw
        for _ in range(1000):  # then look at the other sockets too
            try:
                frame = raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = codec.decode(frame)
            except ProtocolError:
                self.count("dropped-malformed")
                continue
            data = message[5]
            if message[1] != Kind.PUBLISH or type(data) is not list or not data:
                self.count("dropped-malformed")
                continue
            if (data[0] == UPDATES and len(data) == 3 and _is_uint(data[1])
                    and type(data[2]) is list):
                with state._lock:
                    changes = self.core.receive(message[3], data[1], data[2], time.time_ns())
                    if changes:
                        state._pending += changes
            elif data[0] == DIGEST and len(data) == 3 and _is_writer(data[1]):
                digest = _seq_table(data[2])
                if digest is None:
                    self.count("dropped-malformed")
                    continue
                with state._lock:
                    self.planner.digest_from(uuid_module.UUID(bytes=data[1]), digest,
                                             self.core.applied, time.monotonic())
            else:
                self.count("dropped-malformed")

    # -- serving sync requests -------------------------------------------------------------------

    def serve(self) -> None:
        raw = self.router.raw
        for _ in range(100):
            try:
                frames = raw.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            address, body = frames[:-1], frames[-1]
            if len(frames) == 3 and frames[1] == b"":  # a REQ caller: identity, "", request
                address = frames[:2]
            elif len(frames) != 2:
                self.count("bad-requests")
                self.answer(frames[:1], codec.encode_error(0, "zmqkit.ProtocolError",
                                                          "a request is exactly one frame"))
                continue
            self.answer(address, self.answer_for(body))

    def answer(self, address: list[bytes], frame: bytes | None) -> None:
        if frame is not None:
            self.router.raw.send_multipart([*address, frame])

    def answer_for(self, body: bytes) -> bytes | None:
        state = self.state
        try:
            message = codec.decode(body)
        except ProtocolError as exc:
            self.count("bad-requests")
            return codec.encode_error(0, "zmqkit.ProtocolError", str(exc))
        kind, call_id = message[1], message[2]
        if kind == Kind.CANCEL:
            return None
        if kind != Kind.REQUEST:
            self.count("bad-requests")
            answered = 0 if kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH) else call_id
            return codec.encode_error(answered, "zmqkit.ProtocolError", "expected a request")
        method, args = message[3], message[4]
        if method != SYNC_METHOD:
            return codec.encode_error(call_id, "zmqkit.MethodNotFound", f"a state replica "
                                      f"answers only {SYNC_METHOD!r}, not {method!r}")
        known = _seq_table(args[1]) if len(args) == 2 and args[0] == state.group else None
        if known is None:
            return codec.encode_error(call_id, "zmqkit.BadArguments",
                                      f"{SYNC_METHOD}(group, [[writer, seq], ...]) for group "
                                      f"{state.group!r}")
        with state._lock:
            snapshot = self.core.snapshot(known)
        self.count("served")
        frame = codec.encode_reply(call_id, snapshot)
        if len(frame) > codec.DEFAULT_MAX_MESSAGE_SIZE:
            return codec.encode_error(call_id, "zmqkit.EncodeError", f"the snapshot is "
                                      f"{len(frame)} bytes, over one frame's maximum")
        return frame

    # -- handing changes to listeners ------------------------------------------------------------

    def dispatch(self) -> None:
        state = self.state
        with state._lock:
            changes, state._pending = state._pending, []
            synced_now = self.core.synced and not self.synced_seen
            self.synced_seen = self.core.synced
            if changes or synced_now:
                state._changed.notify_all()
        if changes:
            for listener in list(state._listeners):
                listener(changes)
        if changes or synced_now:
            for watcher in list(state._watchers):
                watcher()

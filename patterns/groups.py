"""Groups, as in Zyre: nodes JOIN and LEAVE named groups, SHOUT to a group, WHISPER to one peer.

    with groups.Groups(node) as chat:
        chat.join("ops")                            # peers see a JOIN event
        chat.shout("ops", {"text": "deploying"})    # every member of "ops" that is connected
        chat.whisper(peer_uuid, "psst", timeout=2)  # one peer; returns once it has the message
        for event in chat.events(idle_timeout=1.0): # JOIN, LEAVE, GONE, SHOUT, WHISPER
            print(event.kind, event.peer, event.group, event.body)

Membership travels in the beacon: a node's groups are its ``groups`` header (comma-separated),
so a join or a leave is an UPDATED presence event for every peer, and a node that dies leaves
all its groups when discovery declares it gone (GOODBYE or expiry). Shouts are publications on
the topic ``zmqkit.group.<group>`` of each node's ``groups-pub`` socket; whispers are requests
(``zmqkit.groups.whisper``) to the peer's ``groups`` ROUTER, acknowledged by a reply, so a
whisper to a dead peer fails within its deadline instead of vanishing.

Guarantees and limits: shouts are at most once and in order per sender, like pub/sub (a member
whose connection is not up yet, or whose queue is full, misses them; ``stats()["gaps"]`` counts
what was missed). A whisper that returns has reached the peer's inbox. Events wait in an inbox of
10,000 (the oldest dropped and counted beyond that) for ``recv``, ``events`` and ``aevents``;
callbacks see every event too, in the groups thread.

- ``GroupsCore``  membership from beacons, whisper correlation and deadlines, shout intake (pure)
- ``Groups``      one named thread per node that owns the sockets; blocking and asyncio front-ends
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import itertools
import logging
import threading
import time
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import zmq

from zmqkit import (
    BrokenError,
    BusyError,
    ClosedError,
    ConfigError,
    Deadline,
    EventKind,
    Node,
    Peer,
    PeerEvent,
    PeerNotFound,
    ProtocolError,
    Socket,
    Timeout,
    ZmqkitError,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.errors import remote_error
from zmqkit.security import SecurityError
from zmqkit.wakeup import Wakeup

__all__ = [
    "GROUPS_HEADER",
    "PUB_ROLE",
    "ROLE",
    "TOPIC_PREFIX",
    "WHISPER_METHOD",
    "GroupEvent",
    "GroupEventKind",
    "Groups",
    "GroupsCore",
    "Member",
    "format_groups",
    "parse_groups",
]

log = logging.getLogger("zmqkit.groups")

GROUPS_HEADER = "groups"  # beacon header: the node's groups, comma-separated
ROLE = "groups"  # beacon role: the ROUTER that takes whispers
PUB_ROLE = "groups-pub"  # beacon role: the PUB that sends shouts
TOPIC_PREFIX = "zmqkit.group."  # + group: the topic of the group's shouts
WHISPER_METHOD = "zmqkit.groups.whisper"
MAX_GROUP_BYTES = 64
MAX_INBOX = 10_000
MAX_GONE = 10_000  # UUIDs of peers seen going, so that a whisper to one fails at once
BATCH_BYTES = 65_536  # shouts queued together leave as one PUBLISH_BATCH of at most this
BATCH_COUNT = 1024  # ... or this many
DEFAULT_TIMEOUT = 5.0
TICK = 0.5  # the longest the groups thread sleeps without looking at the clock
UUID_BYTES = 16


def _valid_group(group: object) -> bool:
    return (
        isinstance(group, str)
        and 0 < len(group.encode(errors="surrogatepass")) <= MAX_GROUP_BYTES
        and "," not in group
        and not group.endswith("*")
        and group == group.strip()
    )


def _check_group(group: object) -> str:
    if not _valid_group(group):
        raise ConfigError(f"a group is 1 to {MAX_GROUP_BYTES} bytes of text without ',', spaces "
                          f"at either end or a final '*', not {group!r}")
    return group  # type: ignore[return-value]


def parse_groups(header: str | None) -> tuple[frozenset[str], int]:
    """The groups a ``groups`` header names, and how many of its items were not valid names."""
    if not header:
        return frozenset(), 0
    items = header.split(",")
    groups = frozenset(item for item in items if _valid_group(item))
    return groups, len(items) - len(groups)


def format_groups(groups: Iterable[str]) -> str | None:
    """The ``groups`` header for ``groups`` (sorted), or None for no group (no header)."""
    return ",".join(sorted(groups)) or None


def _topic(group: str) -> str:
    return TOPIC_PREFIX + group


# -- events ----------------------------------------------------------------------------------------


class GroupEventKind(enum.Enum):
    JOIN = "join"  # a peer joined a group
    LEAVE = "leave"  # a peer left a group (also when it goes)
    GONE = "gone"  # a peer is gone: body says "left" (goodbye), "expired" or "closed"
    SHOUT = "shout"  # a message to a group
    WHISPER = "whisper"  # a message to this node alone


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """Something a peer did: joined, left, went, shouted or whispered."""

    kind: GroupEventKind
    peer: str  # the peer's node name
    uuid: uuid_module.UUID  # the peer's node UUID
    group: str | None = None  # JOIN, LEAVE, SHOUT
    body: Any = None  # SHOUT, WHISPER: the message; GONE: why

    def __str__(self) -> str:
        where = f" {self.group}" if self.group else ""
        said = self.kind in (GroupEventKind.SHOUT, GroupEventKind.WHISPER)
        what = f": {self.body!r}" if said else ""
        return f"{self.peer} {self.kind.value}{where}{what}"


class Member(NamedTuple):
    """A peer in a group."""

    name: str
    uuid: uuid_module.UUID


# -- the pure core ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tracked:
    name: str
    groups: frozenset[str]
    seq: int
    whisper_endpoint: str
    pub_endpoint: str | None


@dataclass(slots=True)
class _Pending:
    peer: uuid_module.UUID
    deadline: float
    waiter: Any


class GroupsCore:
    """Membership, whisper correlation and shout intake, with no socket and no clock.

    Fed peers from discovery, decoded shouts and whisper requests, and ``now``; returns events
    and the waiters of whispers to settle. Not thread-safe: the groups thread alone uses it.
    """

    def __init__(self, own_uuid: uuid_module.UUID) -> None:
        self.own_uuid = own_uuid
        self.peers: dict[uuid_module.UUID, _Tracked] = {}
        self.gone: dict[uuid_module.UUID, None] = {}  # oldest first; a UUID never comes back
        self.stats: Counter[str] = Counter()
        self._pending: dict[int, _Pending] = {}
        self._call_ids = itertools.count(1)
        self._last_seq: dict[tuple[bytes, str], int] = {}
        self._uuids: dict[bytes, uuid_module.UUID] = {}

    # -- membership ------------------------------------------------------------------------------

    def update(self, peer: Peer) -> list[GroupEvent]:
        """A peer appeared or changed: the JOIN and LEAVE events its ``groups`` header implies."""
        if peer.uuid == self.own_uuid:
            return []
        known = self.peers.get(peer.uuid)
        if known is not None and peer.seq < known.seq:
            return []  # an older description, queued before a newer one was read
        if ROLE not in peer.endpoints:
            return self.remove(peer.uuid, "closed") if known is not None else []
        self.gone.pop(peer.uuid, None)  # its Groups closed and opened again
        groups, bad = parse_groups(peer.headers.get(GROUPS_HEADER))
        self.stats["dropped-bad-group"] += bad
        before = known.groups if known is not None else frozenset()
        self.peers[peer.uuid] = _Tracked(peer.name, groups, peer.seq, peer.endpoints[ROLE],
                                         peer.endpoints.get(PUB_ROLE))
        joins = [GroupEvent(GroupEventKind.JOIN, peer.name, peer.uuid, g)
                 for g in sorted(groups - before)]
        leaves = [GroupEvent(GroupEventKind.LEAVE, peer.name, peer.uuid, g)
                  for g in sorted(before - groups)]
        return joins + leaves

    def remove(self, peer_uuid: uuid_module.UUID, reason: str) -> list[GroupEvent]:
        """A peer is gone: LEAVE each of its groups, then GONE."""
        known = self.peers.pop(peer_uuid, None)
        if known is None:
            return []
        self.gone[peer_uuid] = None
        if len(self.gone) > MAX_GONE:
            del self.gone[next(iter(self.gone))]
        for key in [key for key in self._last_seq if key[0] == peer_uuid.bytes]:
            del self._last_seq[key]
        leaves = [GroupEvent(GroupEventKind.LEAVE, known.name, peer_uuid, g)
                  for g in sorted(known.groups)]
        return [*leaves, GroupEvent(GroupEventKind.GONE, known.name, peer_uuid, None, reason)]

    def presence(self, event: PeerEvent) -> list[GroupEvent]:
        """The group events of one presence event."""
        if event.kind in (EventKind.JOINED, EventKind.UPDATED):
            return self.update(event.peer)
        return self.remove(event.peer.uuid, event.kind.value)

    def members(self, group: str) -> list[Member]:
        return sorted(Member(p.name, u) for u, p in self.peers.items() if group in p.groups)

    def groups(self) -> dict[str, list[Member]]:
        """Every group some known peer is in, with its members."""
        names = sorted({g for p in self.peers.values() for g in p.groups})
        return {group: self.members(group) for group in names}

    # -- whispers --------------------------------------------------------------------------------

    def start_whisper(self, peer_uuid: uuid_module.UUID, deadline: float, waiter: Any) -> int:
        """Note a whisper sent to ``peer_uuid``; return its call id."""
        call_id = next(self._call_ids)
        self._pending[call_id] = _Pending(peer_uuid, deadline, waiter)
        return call_id

    def answered(self, call_id: int) -> Any:
        """The waiter of the whisper ``call_id`` answers, or None (late, or never sent)."""
        pending = self._pending.pop(call_id, None)
        return None if pending is None else pending.waiter

    def expired(self, now: float) -> list[tuple[Any, uuid_module.UUID]]:
        """The whispers whose deadline has passed: (waiter, peer) each, forgotten."""
        late = [call_id for call_id, p in self._pending.items() if p.deadline <= now]
        return [(p.waiter, p.peer) for p in (self._pending.pop(call_id) for call_id in late)]

    def abandoned(
        self, gone: Iterable[uuid_module.UUID] | None = None
    ) -> list[tuple[Any, uuid_module.UUID]]:
        """The whispers waiting on peers in ``gone`` (all when None): (waiter, peer), forgotten."""
        peers = None if gone is None else set(gone)
        dropped = [call_id for call_id, p in self._pending.items()
                   if peers is None or p.peer in peers]
        return [(p.waiter, p.peer) for p in (self._pending.pop(call_id) for call_id in dropped)]

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def take_whisper(self, args: list[Any]) -> GroupEvent | None:
        """The WHISPER event a request's args carry (``[sender_uuid, sender_name, body]``), or
        None when they are not that shape."""
        if (len(args) != 3 or type(args[0]) is not bytes or len(args[0]) != UUID_BYTES
                or type(args[1]) is not str):
            self.stats["dropped-bad-whisper"] += 1
            return None
        self.stats["whispers"] += 1
        return GroupEvent(GroupEventKind.WHISPER, args[1], self._uuid(args[0]), None, args[2])

    # -- shouts ----------------------------------------------------------------------------------

    def take_shout(self, message: list[Any], joined: Iterable[str]) -> list[GroupEvent]:
        """The SHOUT events of a decoded PUBLISH or PUBLISH_BATCH on a group topic; what is not
        a shout, or is for a group left since, is dropped and counted."""
        _, kind, shout_topic, sender, seq, data = message
        items = data if kind == Kind.PUBLISH_BATCH else (data,)
        group = shout_topic[len(TOPIC_PREFIX):] if shout_topic.startswith(TOPIC_PREFIX) else ""
        if kind not in (Kind.PUBLISH, Kind.PUBLISH_BATCH) or not all(
                type(item) is list and len(item) == 2 and type(item[0]) is str for item in items):
            self.stats["dropped-malformed"] += 1
            return []
        if group not in joined:
            self.stats["dropped-not-joined"] += len(items)  # left the group while on their way
            return []
        key = (sender, shout_topic)
        last = self._last_seq.get(key)
        if last is not None and seq > last + 1:
            self.stats["gaps"] += seq - last - 1
        self._last_seq[key] = seq + len(items) - 1
        self.stats["shouts"] += len(items)
        sender_uuid = self._uuid(sender)
        return [GroupEvent(GroupEventKind.SHOUT, item[0], sender_uuid, group, item[1])
                for item in items]

    def _uuid(self, raw: bytes) -> uuid_module.UUID:
        """``UUID(bytes=raw)``, cached: building one costs more than the rest of a message."""
        found = self._uuids.get(raw)
        if found is None:
            if len(self._uuids) >= MAX_GONE:
                self._uuids.clear()
            found = self._uuids[raw] = uuid_module.UUID(bytes=raw)
        return found


# -- the node's groups -----------------------------------------------------------------------------

class Groups:
    """This node's part in groups: membership, shouts, whispers and the events they make.

    ``start()`` (or ``with``/``async with``) starts one named thread that owns every socket;
    ``close()`` (or the node's close) leaves every group and stops it. ``join``, ``leave``,
    ``shout`` and ``whisper`` may be called from any thread; callbacks run in the groups thread,
    so keep them short, and whisper from them with ``submit_whisper`` (which does not wait).

    Args:
        node: a running node.
        inbox: keep events for ``recv``/``events``/``aevents`` (False: callbacks only).
    """

    def __init__(self, node: Node, *, inbox: bool = True) -> None:
        if ROLE in node.endpoints:
            raise ConfigError(f"{node!r} already has its Groups; share it")
        self.node = node
        self.endpoint = ""
        self.pub_endpoint = ""
        self._core = GroupsCore(node.uuid)
        self._joined: frozenset[str] = frozenset()
        self._join_lock = threading.Lock()  # one membership change at a time: header, then socket
        self._use_inbox = inbox
        self._inbox: deque[GroupEvent] = deque()
        self._inbox_changed = threading.Condition()
        self._wakers: list[Callable[[], None]] = []
        self._listeners: list[Callable[[GroupEvent], None]] = []
        self._lock = threading.Lock()  # the outbox, the command queue and the shout numbering
        self._outbox: list[tuple[str, int, bytes]] = []  # (topic, seq, encoded [name, body])
        self._commands: deque[Callable[[_Engine], None]] = deque()
        self._presence: deque[PeerEvent] = deque()
        self._shout_seqs: dict[str, int] = {}
        self._stats: Counter[str] = Counter()
        self._wakeup = Wakeup()
        self._stopping = False
        self._state = "new"
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._engine: _Engine | None = None
        self._thread = threading.Thread(target=self._run, name=f"zmqkit-groups:{node.name}",
                                        daemon=True)

    def __repr__(self) -> str:
        return f"<zmqkit groups.Groups {self.node.name!r} in {sorted(self._joined)} {self._state}>"

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Groups:
        """Start the thread, bind, and advertise (in no group yet).

        Raises:
            ClosedError: the node is not running, or this was started before.
            ConfigError: the sockets could not be bound.
        """
        if self._state != "new":
            raise ClosedError(f"{self!r} cannot start twice")
        if not self.node.running:
            raise ClosedError(f"{self.node!r} is not running; start it first")
        self.node.attach(self)  # first: a closed node refuses before a thread is started
        self._state = "running"
        self._unsubscribe = self.node.on_event(self._on_presence)
        self._thread.start()
        if not self._ready.wait(timeout) or self._startup_error is not None:
            self.close()
            failure = f"groups for {self.node.name!r} failed to start"
            raise ConfigError(failure) from self._startup_error
        self.node.advertise(PUB_ROLE, self.pub_endpoint)
        self.node.advertise(ROLE, self.endpoint)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Leave every group, stop the thread and join it; whispers waiting fail with
        ClosedError. Safe to call twice."""
        if self._state == "closed":
            return
        started = self._state == "running"
        self._state = "closed"
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
        if started:
            with self._join_lock:
                self.node.set_header(GROUPS_HEADER, None)
                self.node.withdraw(ROLE)
                self.node.withdraw(PUB_ROLE)
            self._stopping = True
            self._wake()
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._thread.join(timeout)
        self.node.detach(self)
        self._wakeup.close()
        self._notify_readers()

    def __enter__(self) -> Groups:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> Groups:
        return self.start()

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters: shouts, whispers, gaps, dropped-* by reason, ..."""
        return self._ask_core(lambda: dict(self._core.stats + self._stats))  # type: ignore[no-any-return]

    # -- membership ------------------------------------------------------------------------------

    @property
    def joined(self) -> frozenset[str]:
        """The groups this node is in."""
        return self._joined

    def join(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Join ``group``: receive its shouts, and let peers see this node in it.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: the beacon has no room for another group; nothing changed.
        """
        _check_group(group)
        with self._join_lock:
            self._check_running()
            if group in self._joined:
                return
            before = self._joined
            # taken, then subscribed, then announced: a peer that sees the header can reach us
            self._joined = before | {group}
            try:
                self._in_thread(lambda engine: engine.subscribe(group, True), timeout)
                self.node.set_header(GROUPS_HEADER, format_groups(self._joined))
            except ZmqkitError:
                self._joined = before
                with contextlib.suppress(ZmqkitError):
                    self._in_thread(lambda engine: engine.subscribe(group, False), timeout)
                raise

    def leave(self, group: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Leave ``group``: peers see LEAVE, and its shouts stop reaching this node."""
        with self._join_lock:
            self._check_running()
            if group not in self._joined:
                return
            self._joined = self._joined - {group}
            self.node.set_header(GROUPS_HEADER, format_groups(self._joined))
            self._in_thread(lambda engine: engine.subscribe(group, False), timeout)

    def members(self, group: str) -> list[Member]:
        """The peers known to be in ``group`` (not this node), sorted."""
        return self._ask_core(lambda: self._core.members(group))  # type: ignore[no-any-return]

    def groups(self) -> dict[str, list[Member]]:
        """Every group a known peer is in, with its members."""
        return self._ask_core(self._core.groups)  # type: ignore[no-any-return]

    def _ask_core(self, question: Callable[[], Any]) -> Any:
        """Read the core where it is safe to: in the groups thread, or when it is not running."""
        if threading.current_thread() is self._thread or self._state != "running":
            return question()
        return self._in_thread(lambda _engine: question(), DEFAULT_TIMEOUT)

    # -- sending ---------------------------------------------------------------------------------

    def shout(self, group: str, body: Any) -> int:
        """Send ``body`` to every member of ``group`` (this node need not be one); returns its
        sequence number on the group's topic. Never blocks.

        Raises:
            EncodeError: ``body`` cannot travel on the wire.
        """
        _check_group(group)
        encoded = codec.dumps([self.node.name, body])
        with self._lock:
            self._check_running()
            seq = self._shout_seqs.get(group, 0) + 1
            self._shout_seqs[group] = seq
            self._outbox.append((_topic(group), seq, encoded))
        self._wake()
        return seq

    def submit_whisper(self, peer: uuid_module.UUID | Peer | Member, body: Any,
                       timeout: float = DEFAULT_TIMEOUT) -> concurrent.futures.Future[None]:
        """Send ``body`` to one peer; return a future that settles when it acknowledges.

        A peer not discovered yet is waited for, within ``timeout``. The future fails with
        ``PeerNotFound`` (no such peer in groups in time, or it has gone), ``Timeout`` (no
        acknowledgement within ``timeout``), ``BrokenError`` (the peer went before it answered:
        it may or may not have the message) or ``ClosedError``.

        Raises:
            EncodeError: ``body`` cannot travel on the wire.
            ConfigError: ``peer`` is this node.
        """
        peer_uuid = peer if isinstance(peer, uuid_module.UUID) else peer.uuid
        if peer_uuid == self.node.uuid:
            raise ConfigError("a node cannot whisper to itself")
        deadline = Deadline.after(timeout)
        args = [self.node.uuid.bytes, self.node.name, body]
        codec.dumps(body)  # an EncodeError belongs to the caller, not to the groups thread
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._command(lambda engine: engine.send_whisper(peer_uuid, args, deadline, future))
        return future

    def whisper(self, peer: uuid_module.UUID | Peer | Member, body: Any,
                timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send ``body`` to one peer and wait until it has it.

        Raises:
            PeerNotFound: no peer with that UUID took part in groups within ``timeout``, or it
                has gone (at once: a node's UUID never comes back).
            Timeout: no acknowledgement within ``timeout`` (a dead peer not yet declared gone).
            BrokenError: the peer went before it acknowledged.
            BusyError: called from a callback (the groups thread cannot wait for itself).
        """
        if threading.current_thread() is self._thread:
            raise BusyError("a callback cannot wait for a whisper; use submit_whisper")
        future = self.submit_whisper(peer, body, timeout)
        try:
            future.result(timeout + 1.0)  # the groups thread settles it at the deadline
        except concurrent.futures.TimeoutError:
            raise Timeout(f"whisper to {peer} not acknowledged in {timeout:g} s") from None

    async def whisper_async(self, peer: uuid_module.UUID | Peer | Member, body: Any,
                            timeout: float = DEFAULT_TIMEOUT) -> None:
        """``whisper`` for asyncio code."""
        await asyncio.wrap_future(self.submit_whisper(peer, body, timeout))

    # -- receiving -------------------------------------------------------------------------------

    def on_event(self, callback: Callable[[GroupEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event, in the groups thread; returns a function
        that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def recv(self, timeout: float) -> GroupEvent:
        """The next event, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no event in time.
            ClosedError: closed while waiting.
        """
        self._check_inbox()
        deadline = Deadline.after(timeout)
        with self._inbox_changed:
            while not self._inbox:
                if self._state == "closed":
                    raise ClosedError(f"{self!r} is closed")
                if deadline.expired():
                    raise Timeout(f"no group event in {timeout:g} s")
                self._inbox_changed.wait(deadline.remaining())
            return self._inbox.popleft()

    def events(self, idle_timeout: float) -> Iterator[GroupEvent]:
        """Yield events until none has come for ``idle_timeout`` seconds (or the close)."""
        while True:
            try:
                yield self.recv(idle_timeout)
            except (Timeout, ClosedError):
                return

    async def recv_async(self, timeout: float) -> GroupEvent:
        """``recv`` for asyncio code."""
        self._check_inbox()
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def waker() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(arrived.set)

        deadline = Deadline.after(timeout)
        self._wakers.append(waker)
        try:
            while True:
                with self._inbox_changed:
                    if self._inbox:
                        return self._inbox.popleft()
                if self._state == "closed":
                    raise ClosedError(f"{self!r} is closed")
                try:
                    await asyncio.wait_for(arrived.wait(), deadline.remaining())
                except asyncio.TimeoutError:
                    raise Timeout(f"no group event in {timeout:g} s") from None
                arrived.clear()
        finally:
            self._wakers.remove(waker)

    async def aevents(self) -> AsyncIterator[GroupEvent]:
        """Events for asyncio code until the close (bound it with asyncio.timeout, or break)."""
        while True:
            try:
                yield await self.recv_async(3600.0)
            except Timeout:
                continue
            except ClosedError:
                return

    # -- helpers (any thread) --------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != "running":
            raise ClosedError(f"{self!r} is not running")

    def _check_inbox(self) -> None:
        if not self._use_inbox:
            raise ConfigError(f"{self!r} was made with inbox=False: use on_event")

    def _wake(self) -> None:
        self._wakeup.set()

    def _command(self, command: Callable[[_Engine], None]) -> None:
        with self._lock:
            self._check_running()
            self._commands.append(command)
        self._wake()

    def _in_thread(self, question: Callable[[_Engine], Any], timeout: float) -> Any:
        """Run ``question`` in the groups thread and return its answer (directly when called
        from that thread, by a callback)."""
        if threading.current_thread() is self._thread:
            assert self._engine is not None
            return question(self._engine)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run(engine: _Engine) -> None:
            try:
                future.set_result(question(engine))
            except ZmqkitError as exc:
                future.set_exception(exc)

        self._command(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Timeout(f"{self!r} did not answer in {timeout:g} s") from None

    def _on_presence(self, event: PeerEvent) -> None:
        """In the beacon thread: queue the event for the groups thread."""
        self._presence.append(event)
        self._wake()

    def _notify_readers(self) -> None:
        with self._inbox_changed:
            self._inbox_changed.notify_all()
        for waker in list(self._wakers):
            waker()

    # -- the groups thread -----------------------------------------------------------------------

    def _run(self) -> None:
        sockets: list[Socket] = []
        try:
            pub, sub, router = Socket(zmq.PUB), Socket(zmq.SUB), Socket(zmq.ROUTER)
            sockets += [pub, sub, router]
            self.node.secure_server(pub)  # a node with keys serves only peers in its keyring
            self.node.secure_server(router)
            self.pub_endpoint = pub.bind(self.node.host)
            self.endpoint = router.bind(self.node.host)
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            self._startup_error = exc
            for sock in sockets:
                sock.close()
            self._ready.set()
            return
        engine = self._engine = _Engine(self, pub, sub, router)
        self._ready.set()
        try:
            engine.run()
        except zmq.ZMQError as exc:
            if not self._stopping:
                log.error("groups of %s stopped: %s", self.node.name, exc)
        finally:
            engine.close()



# a whisper waiting for its peer to be discovered: (peer, args, deadline, future)
_Parked = tuple[uuid_module.UUID, list[Any], Deadline, "concurrent.futures.Future[None]"]


class _Engine:
    """The loop of the groups thread: it alone touches the sockets and the core."""

    def __init__(self, groups: Groups, pub: Socket, sub: Socket, router: Socket) -> None:
        self.groups = groups
        self.core = groups._core
        self.pub, self.sub, self.router = pub, sub, router
        self.dealers: dict[uuid_module.UUID, Socket] = {}
        self.dealer_owner: dict[Any, uuid_module.UUID] = {}
        self.connected: dict[uuid_module.UUID, str] = {}
        self.refused: dict[uuid_module.UUID, SecurityError] = {}  # peers whose keys we may not use
        self.parked: list[_Parked] = []
        self.poller = zmq.Poller()
        for sock in (sub, router):
            self.poller.register(sock.raw, zmq.POLLIN)
        groups._wakeup.register(self.poller)

    def run(self) -> None:
        groups = self.groups
        self.emit(self.take_presence_snapshot())
        while not groups._stopping:
            self.run_commands()
            self.take_presence()
            self.flush()
            self.settle_expired(time.monotonic())
            ready = dict(self.poller.poll(round(self.next_wait() * 1000)))
            groups._wakeup.woke(ready)
            if self.sub.raw in ready:
                self.take_shouts()
            if self.router.raw in ready:
                self.serve()
            for raw, owner in list(self.dealer_owner.items()):
                if raw in ready:
                    self.take_acks(owner)

    def close(self) -> None:
        for waiter, _ in self.core.abandoned():
            _settle(waiter, ClosedError("groups closed before the whisper was acknowledged"))
        with self.groups._lock:
            commands = list(self.groups._commands)
            self.groups._commands.clear()
        for command in commands:  # whispers queued after the last look: fail them, do not hang
            with contextlib.suppress(ZmqkitError):
                command(self)
        for _, _, _, future in self.parked:
            _settle(future, ClosedError("groups closed before the peer was found"))
        for waiter, _ in self.core.abandoned():
            _settle(waiter, ClosedError("groups closed before the whisper was sent"))
        try:
            self.flush()  # shouts made just before the close still go out (PUB lingers 0.2 s)
        finally:
            for sock in [*self.dealers.values(), self.pub, self.sub, self.router]:
                sock.close()

    def next_wait(self) -> float:
        deadlines = [d.at for _, _, d, _ in self.parked]
        pending = self.core.next_deadline()
        if pending is not None:
            deadlines.append(pending)
        if not deadlines:
            return TICK
        return min(TICK, max(0.0, min(deadlines) - time.monotonic()) + 0.001)

    # -- commands and events ---------------------------------------------------------------------

    def run_commands(self) -> None:
        groups = self.groups
        while True:
            with groups._lock:
                if not groups._commands:
                    return
                command = groups._commands.popleft()
            command(self)

    def emit(self, events: list[GroupEvent]) -> None:
        groups = self.groups
        if not events:
            return
        if groups._use_inbox:
            with groups._inbox_changed:
                for event in events:
                    if len(groups._inbox) >= MAX_INBOX:
                        groups._inbox.popleft()
                        groups._stats["dropped-inbox"] += 1
                    groups._inbox.append(event)
                groups._inbox_changed.notify_all()
            for waker in list(groups._wakers):
                waker()
        for event in events:
            for listener in list(groups._listeners):
                try:
                    listener(event)
                except Exception:  # a user's callback must not stop the groups; logged loudly
                    log.exception("group event callback %r failed on %s", listener, event)

    def take_presence_snapshot(self) -> list[GroupEvent]:
        events: list[GroupEvent] = []
        for peer in self.groups.node.peers(role=ROLE):
            events += self.core.update(peer)
        self.refresh_connections()
        return events

    def take_presence(self) -> None:
        presence = self.groups._presence
        if not presence:
            return
        events: list[GroupEvent] = []
        while presence:
            events += self.core.presence(presence.popleft())
        self.refresh_connections()
        self.emit(events)
        parked, self.parked = self.parked, []
        for whisper in parked:  # the peers they wait for may be here now
            self.send_whisper(*whisper)

    def refresh_connections(self) -> None:
        """Connect to the shouts of every peer in groups; drop what belonged to peers gone."""
        wanted = {u: p.pub_endpoint for u, p in self.core.peers.items() if p.pub_endpoint}
        for peer_uuid, endpoint in list(self.connected.items()):
            if wanted.get(peer_uuid) != endpoint:
                self.sub.disconnect(endpoint)
                del self.connected[peer_uuid]
        new = [u for u in wanted if u not in self.connected and u not in self.refused]
        peers = {peer.uuid: peer for peer in self.groups.node.peers(role=ROLE)} if new else {}
        for peer_uuid in new:
            if peer_uuid not in peers:
                continue  # gone again since the event: the next refresh drops it
            if self.secured(self.sub, peers[peer_uuid]):
                self.sub.connect(wanted[peer_uuid])
                self.connected[peer_uuid] = wanted[peer_uuid]
        gone = [u for u in self.dealers if u not in self.core.peers]
        for peer_uuid in gone:
            self.drop_dealer(peer_uuid)
        for waiter, peer_uuid in self.core.abandoned(gone) if gone else []:
            _settle(waiter, BrokenError(f"peer {peer_uuid} went before acknowledging a whisper; "
                                        "it may or may not have it"))

    # -- shouts ----------------------------------------------------------------------------------

    def subscribe(self, group: str, on: bool) -> None:
        """(Un)subscribe to the group's shouts."""
        for prefix in codec.publish_prefixes(_topic(group)):
            if on:
                self.sub.raw.subscribe(prefix)
            else:
                self.sub.raw.unsubscribe(prefix)

    def flush(self) -> None:
        """Send the shouts queued since the last look: those of one group that queued together
        leave as one PUBLISH_BATCH (consecutive sequence numbers): how a busy sender keeps up."""
        groups = self.groups
        with groups._lock:
            queued, groups._outbox = groups._outbox, []
        sender = groups.node.uuid.bytes
        start = 0
        while start < len(queued):
            batches: dict[str, tuple[int, list[bytes]]] = {}
            size = 0
            end = start
            while end < len(queued) and end - start < BATCH_COUNT and size < BATCH_BYTES:
                shout_topic, seq, encoded = queued[end]
                batches.setdefault(shout_topic, (seq, []))[1].append(encoded)
                size += len(encoded)
                end += 1
            for shout_topic, (first_seq, items) in batches.items():
                if len(items) == 1:
                    frame = codec.encode_publish_from(shout_topic, sender, first_seq, items[0])
                else:
                    frame = codec.encode_publish_batch_from(shout_topic, sender, first_seq, items)
                self.pub.send(frame)
            start = end

    def take_shouts(self) -> None:
        groups, raw = self.groups, self.sub.raw
        events: list[GroupEvent] = []
        for _ in range(1000):  # then look at the other sockets too
            try:
                frame = raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = codec.decode(frame)
            except ProtocolError:
                self.core.stats["dropped-malformed"] += 1
                continue
            events += self.core.take_shout(message, groups._joined)
        self.emit(events)

    # -- whispers --------------------------------------------------------------------------------

    def send_whisper(self, peer_uuid: uuid_module.UUID, args: list[Any], deadline: Deadline,
                     future: concurrent.futures.Future[None]) -> None:
        if self.groups._stopping:
            _settle(future, ClosedError("groups closed before the whisper was sent"))
            return
        tracked = self.core.peers.get(peer_uuid)
        if tracked is None:
            if peer_uuid in self.core.gone:
                _settle(future, PeerNotFound(f"peer {peer_uuid} has gone"))
            else:  # not discovered yet: wait for it, within the whisper's deadline
                self.parked.append((peer_uuid, args, deadline, future))
            return
        dealer = self.dealers.get(peer_uuid)
        if dealer is None:
            # queues while the connection is made; the whisper's deadline bounds the wait
            dealer = Socket(zmq.DEALER)
            found = [p for p in self.groups.node.peers(role=ROLE) if p.uuid == peer_uuid]
            if not found or not self.secured(dealer, found[0]):
                dealer.close()
                _settle(future, self.refused.get(peer_uuid) or PeerNotFound(
                    f"peer {peer_uuid} has gone"))
                return
            self.dealers[peer_uuid] = dealer
            dealer.connect(tracked.whisper_endpoint)
            self.dealer_owner[dealer.raw] = peer_uuid
            self.poller.register(dealer.raw, zmq.POLLIN)
        call_id = self.core.start_whisper(peer_uuid, deadline.at, future)
        try:
            dealer.raw.send(codec.encode_request(call_id, WHISPER_METHOD, args, {}), zmq.NOBLOCK)
        except zmq.Again:
            self.core.answered(call_id)
            _settle(future, BusyError(f"10,000 whispers to {tracked.name} are waiting already"))

    def take_acks(self, peer_uuid: uuid_module.UUID) -> None:
        dealer = self.dealers[peer_uuid]
        for _ in range(1000):
            try:
                frame = dealer.raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = codec.decode(frame)
            except ProtocolError:
                self.core.stats["dropped-bad-ack"] += 1
                continue
            if message[1] not in (Kind.REPLY, Kind.ERROR):
                self.core.stats["dropped-bad-ack"] += 1
                continue
            waiter = self.core.answered(message[2])
            if waiter is None:
                continue  # late: the whisper has timed out already
            if message[1] == Kind.REPLY:
                _settle(waiter, None)
            else:
                _settle(waiter, remote_error(message[3], message[4], message[5]))

    def secured(self, sock: Socket, peer: Peer) -> bool:
        """Set ``sock``'s CURVE options for ``peer``; False (counted, warned once) when this node
        may not talk to it."""
        if peer.uuid in self.refused:
            return False
        try:
            self.groups.node.secure_client(sock, peer)
        except SecurityError as exc:
            self.refused[peer.uuid] = exc
            self.core.stats["refused-peers"] += 1
            log.warning("groups: not talking to %s", exc)
            return False
        return True

    def settle_expired(self, now: float) -> None:
        late = [whisper for whisper in self.parked if whisper[2].expired(now)]
        if late:
            self.parked = [whisper for whisper in self.parked if not whisper[2].expired(now)]
        for peer_uuid, _, _, future in late:
            _settle(future, PeerNotFound(f"no peer {peer_uuid} took part in groups in time "
                                         f"(beacon port {self.groups.node.port})"))
        for waiter, peer_uuid in self.core.expired(now):
            tracked = self.core.peers.get(peer_uuid)
            name = tracked.name if tracked is not None else "?"
            _settle(waiter, Timeout(f"whisper to {name} ({peer_uuid}) not acknowledged in time"))

    def drop_dealer(self, peer_uuid: uuid_module.UUID) -> None:
        dealer = self.dealers.pop(peer_uuid)
        self.dealer_owner.pop(dealer.raw, None)
        self.poller.unregister(dealer.raw)
        dealer.close()

    # -- taking whispers -------------------------------------------------------------------------

    def serve(self) -> None:
        raw = self.router.raw
        events: list[GroupEvent] = []
        for _ in range(1000):
            try:
                frames = raw.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            address, body = frames[:-1], frames[-1]
            if len(frames) == 3 and frames[1] == b"":  # a REQ caller: identity, "", request
                address = frames[:2]
            elif len(frames) != 2:
                self.core.stats["bad-requests"] += 1
                raw.send_multipart([frames[0], codec.encode_error(
                    0, "zmqkit.ProtocolError", "a request is exactly one frame")])
                continue
            answer, event = self.answer_for(body)
            if event is not None:
                events.append(event)
            if answer is not None:
                raw.send_multipart([*address, answer])
        self.emit(events)

    def answer_for(self, body: bytes) -> tuple[bytes | None, GroupEvent | None]:
        stats = self.core.stats
        try:
            message = codec.decode(body)
        except ProtocolError as exc:
            stats["bad-requests"] += 1
            return codec.encode_error(0, "zmqkit.ProtocolError", str(exc)), None
        kind, call_id = message[1], message[2]
        if kind == Kind.CANCEL:
            return None, None
        if kind != Kind.REQUEST:
            stats["bad-requests"] += 1
            answered = 0 if kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH) else call_id
            return codec.encode_error(answered, "zmqkit.ProtocolError", "expected a request"), None
        if message[3] != WHISPER_METHOD:
            return codec.encode_error(call_id, "zmqkit.MethodNotFound",
                                      f"a groups node answers only {WHISPER_METHOD!r}, "
                                      f"not {message[3]!r}"), None
        event = self.core.take_whisper(message[4])
        if event is None:
            return codec.encode_error(call_id, "zmqkit.BadArguments",
                                      f"{WHISPER_METHOD}(sender_uuid, sender_name, body)"), None
        return codec.encode_reply(call_id, None), event


def _settle(future: concurrent.futures.Future[Any], outcome: BaseException | None) -> None:
    """Settle a whisper's future once (a second settle, after a race with close, is ignored)."""
    if future.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

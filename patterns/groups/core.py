"""The logic of groups, with no socket and no clock: membership, whispers, shouts, events.

``GroupsCore`` is fed peers from discovery, frames from the sockets and ``now``; it returns
events, the answers to send and the waiters of whispers to settle. The groups thread alone
uses it (it is not thread-safe); tests drive it directly.

A peer's JOIN is reported once the peer can hear this node's shouts to the group: when its mark
(``wire.join_mark``) has reached this node's publisher, or ``JOIN_GRACE`` seconds after its
beacon announced the group, whichever comes first. Until then it is not among the members.
"""

from __future__ import annotations

import enum
import itertools
import uuid as uuid_module
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from zmqkit import EventKind, Peer, PeerEvent, ProtocolError, codec, remote_error
from zmqkit.codec import Kind

from . import wire

__all__ = ["JOIN_GRACE", "MAX_GONE", "MAX_MARKS", "MAX_SENDERS", "GroupEvent", "GroupEventKind",
           "GroupsCore", "Member"]

MAX_GONE = 10_000  # UUIDs of peers seen going, so that a whisper to one fails at once
MAX_SENDERS = 10_000  # (sender, topic) pairs whose last shout number is kept, to count gaps
MAX_MARKS = 10_000  # (peer, group) marks kept, for joins their beacons have not announced yet
JOIN_GRACE = 2.0  # a member that sends no mark is reported joined this long after its beacon

W = TypeVar("W")  # what waits for a whisper's acknowledgement (a future, in the groups thread)


class GroupEventKind(enum.Enum):
    """What a ``GroupEvent`` tells."""

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


@dataclass(slots=True)
class Tracked:
    """A peer that takes part in groups, as its latest beacon describes it."""

    name: str
    groups: frozenset[str]
    seq: int
    whisper_endpoint: str
    pub_endpoint: str | None


@dataclass(slots=True)
class _Pending(Generic[W]):
    peer: uuid_module.UUID
    deadline: float
    waiter: W


class GroupsCore(Generic[W]):
    """Membership, whisper correlation and deadlines, shout and whisper intake (pure).

    Args:
        own_uuid: this node's UUID (its own beacons are not a peer's).
    """

    def __init__(self, own_uuid: uuid_module.UUID) -> None:
        self.own_uuid = own_uuid
        self.peers: dict[uuid_module.UUID, Tracked] = {}
        self.gone: dict[uuid_module.UUID, None] = {}  # oldest first; a UUID never comes back
        self.stats: Counter[str] = Counter()
        self._pending: dict[int, _Pending[W]] = {}
        self._call_ids = itertools.count(1)
        self._last_seq: dict[tuple[bytes, str], int] = {}  # oldest first, MAX_SENDERS at most
        self._uuids: dict[bytes, uuid_module.UUID] = {}
        self.marks: dict[tuple[uuid_module.UUID, str], None] = {}  # marks read, oldest first
        self.joining: dict[tuple[uuid_module.UUID, str], float] = {}  # announced, not marked

    # -- membership ------------------------------------------------------------------------------

    def update(self, peer: Peer, now: float) -> list[GroupEvent]:
        """A peer appeared or changed: the JOIN and LEAVE events its ``groups`` header implies
        (a JOIN only once the peer's mark for the group came: see ``mark`` and ``due``)."""
        if peer.uuid == self.own_uuid:
            return []
        known = self.peers.get(peer.uuid)
        if known is not None and peer.seq < known.seq:
            return []  # an older description, queued before a newer one was read
        if wire.ROLE not in peer.endpoints:
            return self.remove(peer.uuid, "closed") if known is not None else []
        self.gone.pop(peer.uuid, None)  # its Groups closed and opened again
        groups, bad = wire.parse_groups(peer.headers.get(wire.GROUPS_HEADER))
        self.stats["dropped-bad-group"] += bad
        before = known.groups if known is not None else frozenset()
        self.peers[peer.uuid] = Tracked(peer.name, groups, peer.seq, peer.endpoints[wire.ROLE],
                                        peer.endpoints.get(wire.PUB_ROLE))
        events = []
        for group in sorted(groups - before):
            if (peer.uuid, group) in self.marks:
                events.append(GroupEvent(GroupEventKind.JOIN, peer.name, peer.uuid, group))
            else:
                self.joining[(peer.uuid, group)] = now + JOIN_GRACE
        for group in sorted(before - groups):
            if self.joining.pop((peer.uuid, group), None) is None:  # else: never reported
                events.append(GroupEvent(GroupEventKind.LEAVE, peer.name, peer.uuid, group))
        return events

    def mark(self, peer_uuid: uuid_module.UUID, group: str, subscribed: bool) -> list[GroupEvent]:
        """A peer's mark for ``group`` reached (or left) this node's publisher: its JOIN, if its
        beacon announced the group already."""
        key = (peer_uuid, group)
        if not subscribed:
            self.marks.pop(key, None)
            return []
        self.marks[key] = None
        if len(self.marks) > MAX_MARKS:
            del self.marks[next(iter(self.marks))]
        known = self.peers.get(peer_uuid)
        if self.joining.pop(key, None) is None or known is None:
            return []
        return [GroupEvent(GroupEventKind.JOIN, known.name, peer_uuid, group)]

    def due(self, now: float) -> list[GroupEvent]:
        """The JOINs whose mark did not come within ``JOIN_GRACE`` (a peer that sends none)."""
        late = [key for key, deadline in self.joining.items() if deadline <= now]
        events = []
        for peer_uuid, group in late:
            del self.joining[(peer_uuid, group)]
            self.stats["joins-unmarked"] += 1
            events.append(GroupEvent(GroupEventKind.JOIN, self.peers[peer_uuid].name, peer_uuid,
                                     group))
        return events

    def next_join(self) -> float | None:
        """When the next unmarked JOIN is due."""
        return min(self.joining.values(), default=None)

    def remove(self, peer_uuid: uuid_module.UUID, reason: str) -> list[GroupEvent]:
        """A peer is gone: LEAVE each of its groups (those reported joined), then GONE."""
        known = self.peers.pop(peer_uuid, None)
        if known is None:
            return []
        self.gone[peer_uuid] = None
        if len(self.gone) > MAX_GONE:
            del self.gone[next(iter(self.gone))]
        for key in [key for key in self._last_seq if key[0] == peer_uuid.bytes]:
            del self._last_seq[key]
        for mark in [mark for mark in self.marks if mark[0] == peer_uuid]:
            del self.marks[mark]
        unreported = {g for g in known.groups
                      if self.joining.pop((peer_uuid, g), None) is not None}
        leaves = [GroupEvent(GroupEventKind.LEAVE, known.name, peer_uuid, g)
                  for g in sorted(known.groups - unreported)]
        return [*leaves, GroupEvent(GroupEventKind.GONE, known.name, peer_uuid, None, reason)]

    def presence(self, event: PeerEvent, now: float) -> list[GroupEvent]:
        """The group events of one presence event."""
        if event.kind in (EventKind.JOINED, EventKind.UPDATED):
            return self.update(event.peer, now)
        return self.remove(event.peer.uuid, event.kind.value)

    def members(self, group: str) -> list[Member]:
        """The peers known to be in ``group`` (their JOIN reported), sorted."""
        return sorted(Member(p.name, u) for u, p in self.peers.items()
                      if group in p.groups and (u, group) not in self.joining)

    def groups(self) -> dict[str, list[Member]]:
        """Every group some known peer is in, with its members."""
        names = sorted({g for u, p in self.peers.items() for g in p.groups
                        if (u, g) not in self.joining})
        return {group: self.members(group) for group in names}

    # -- whispers sent ---------------------------------------------------------------------------

    def start_whisper(self, peer_uuid: uuid_module.UUID, deadline: float, waiter: W) -> int:
        """Note a whisper sent to ``peer_uuid``; return its call id."""
        call_id = next(self._call_ids)
        self._pending[call_id] = _Pending(peer_uuid, deadline, waiter)
        return call_id

    def answered(self, call_id: int) -> W | None:
        """The waiter of the whisper ``call_id`` answers, or None (late, or never sent)."""
        pending = self._pending.pop(call_id, None)
        return None if pending is None else pending.waiter

    def take_ack(self, frame: bytes) -> tuple[W, BaseException | None] | None:
        """A peer's answer to a whisper: its waiter and the error it carries (None: the peer
        has the whisper); None for an answer that is late or not an answer (counted)."""
        try:
            message = codec.decode(frame)
        except ProtocolError:
            self.stats["dropped-bad-ack"] += 1
            return None
        if message[1] not in (Kind.REPLY, Kind.ERROR):
            self.stats["dropped-bad-ack"] += 1
            return None
        waiter = self.answered(message[2])
        if waiter is None:
            return None  # late: the whisper has timed out already
        if message[1] == Kind.REPLY:
            return waiter, None
        return waiter, remote_error(message[3], message[4], message[5])

    def expired(self, now: float) -> list[tuple[W, uuid_module.UUID]]:
        """The whispers whose deadline has passed: (waiter, peer) each, forgotten."""
        late = [call_id for call_id, p in self._pending.items() if p.deadline <= now]
        return [(p.waiter, p.peer) for p in (self._pending.pop(call_id) for call_id in late)]

    def abandoned(
        self, gone: Iterable[uuid_module.UUID] | None = None
    ) -> list[tuple[W, uuid_module.UUID]]:
        """The whispers waiting on peers in ``gone`` (all when None): (waiter, peer), forgotten."""
        peers = None if gone is None else set(gone)
        dropped = [call_id for call_id, p in self._pending.items()
                   if peers is None or p.peer in peers]
        return [(p.waiter, p.peer) for p in (self._pending.pop(call_id) for call_id in dropped)]

    def went(self, peer_uuid: uuid_module.UUID, until: float) -> None:
        """``peer_uuid`` has gone: its whispers wait for their acks until ``until`` at most
        (acks it sent before going may still be on their way)."""
        for pending in self._pending.values():
            if pending.peer == peer_uuid:
                pending.deadline = min(pending.deadline, until)

    def waiting_on(self, peer_uuid: uuid_module.UUID) -> bool:
        """Whether a whisper to ``peer_uuid`` still waits for its acknowledgement."""
        return any(pending.peer == peer_uuid for pending in self._pending.values())

    def next_deadline(self) -> float | None:
        """The earliest deadline of a whisper waiting for its acknowledgement."""
        return min((p.deadline for p in self._pending.values()), default=None)

    # -- whispers taken --------------------------------------------------------------------------

    def take_whisper(self, args: list[Any]) -> GroupEvent | None:
        """The WHISPER event a request's args carry (``[sender_uuid, sender_name, body]``), or
        None when they are not that shape."""
        whisper = wire.read_whisper_args(args)
        if whisper is None:
            self.stats["dropped-bad-whisper"] += 1
            return None
        self.stats["whispers"] += 1
        sender, name, body = whisper
        return GroupEvent(GroupEventKind.WHISPER, name, self._uuid(sender), None, body)

    def serve(self, frames: list[bytes]) -> tuple[list[bytes] | None, GroupEvent | None]:
        """What the whisper ROUTER received (routing id, then the request): the frames to send
        back (None: nothing) and the WHISPER event it made, if any."""
        address, body = frames[:-1], frames[-1]
        if len(frames) == 3 and frames[1] == b"":  # a REQ caller: identity, "", request
            address = frames[:2]
        elif len(frames) != 2:
            self.stats["bad-requests"] += 1
            return [frames[0], wire.encode_refusal(0, "zmqkit.ProtocolError",
                                                   "a request is exactly one frame")], None
        answer, event = self.answer(body)
        return (None if answer is None else [*address, answer]), event

    def answer(self, frame: bytes) -> tuple[bytes | None, GroupEvent | None]:
        """The answer to one request frame (None: none is due) and its WHISPER event."""
        try:
            message = codec.decode(frame)
        except ProtocolError as exc:
            self.stats["bad-requests"] += 1
            return wire.encode_refusal(0, "zmqkit.ProtocolError", str(exc)), None
        kind, call_id = message[1], message[2]
        if kind in (Kind.CANCEL, Kind.CREDIT):  # a stream's controls: no answer (section 6.5)
            return None, None
        if kind != Kind.REQUEST:
            self.stats["bad-requests"] += 1
            answered = 0 if kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH) else call_id
            return wire.encode_refusal(answered, "zmqkit.ProtocolError", "expected a request"), None
        if message[3] != wire.WHISPER_METHOD:
            return wire.encode_refusal(call_id, "zmqkit.MethodNotFound",
                                       f"a groups node answers only {wire.WHISPER_METHOD!r}, "
                                       f"not {message[3]!r}"), None
        event = self.take_whisper(message[4])
        if event is None:
            usage = f"{wire.WHISPER_METHOD}(sender_uuid, sender_name, body)"
            return wire.encode_refusal(call_id, "zmqkit.BadArguments", usage), None
        return wire.encode_ack(call_id), event

    # -- shouts taken ----------------------------------------------------------------------------

    def take_shout(self, message: list[Any], joined: Iterable[str]) -> list[GroupEvent]:
        """The SHOUT events of a decoded PUBLISH or PUBLISH_BATCH on a group topic; what is not
        a shout, or is for a group left since, is dropped and counted."""
        shouts = wire.read_shouts(message)
        if shouts is None:
            self.stats["dropped-malformed"] += 1
            return []
        if shouts.group not in joined:
            self.stats["dropped-not-joined"] += len(shouts.items)  # left while on their way
            return []
        key = (shouts.sender, shouts.topic)
        last = self._last_seq.pop(key, None)  # put back last: the table is oldest first
        if last is not None and shouts.first_seq > last + 1:
            self.stats["gaps"] += shouts.first_seq - last - 1
        self._last_seq[key] = shouts.first_seq + len(shouts.items) - 1
        if len(self._last_seq) > MAX_SENDERS:  # a sender quiet the longest starts afresh
            del self._last_seq[next(iter(self._last_seq))]
        self.stats["shouts"] += len(shouts.items)
        sender_uuid = self._uuid(shouts.sender)
        return [GroupEvent(GroupEventKind.SHOUT, item[0], sender_uuid, shouts.group, item[1])
                for item in shouts.items]

    def take_shout_frame(self, frame: bytes, joined: Iterable[str]) -> list[GroupEvent]:
        """``take_shout`` for a frame as the SUB received it (undecodable: dropped, counted)."""
        try:
            message = codec.decode(frame)
        except ProtocolError:
            self.stats["dropped-malformed"] += 1
            return []
        return self.take_shout(message, joined)

    def _uuid(self, raw: bytes) -> uuid_module.UUID:
        """``UUID(bytes=raw)``, cached: building one costs more than the rest of a message."""
        found = self._uuids.get(raw)
        if found is None:
            if len(self._uuids) >= MAX_GONE:
                self._uuids.clear()
            found = self._uuids[raw] = uuid_module.UUID(bytes=raw)
        return found

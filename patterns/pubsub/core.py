"""The subscriber's logic, written once for ``Subscriber`` and ``AsyncSubscriber``: no socket.

``Intake`` is fed frames as they come off a SUB socket and queues ``Message``s: it drops what
is not a publication (counted), keeps the topics its subscriber wants, unpacks batches, and
counts the sequence numbers each (publisher, topic) stream skipped as gaps.
"""

from __future__ import annotations

import uuid as uuid_module
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, NamedTuple

from zmqkit import ProtocolError, UnexpectedKind

from . import wire
from .topics import Topics

if TYPE_CHECKING:
    from zmqkit import Node

__all__ = ["MAX_STREAMS", "Intake", "Message"]

MAX_STREAMS = 10_000  # (publisher, topic) streams, and publisher names, an Intake remembers


class Message(NamedTuple):
    """One published message as a subscriber sees it."""

    topic: str
    data: Any
    publisher: str  # the publishing node's name
    sender: uuid_module.UUID  # the publishing node's UUID
    seq: int  # per (publisher, topic), from 1
    gap: int  # messages from this publisher on this topic missed just before this one


_PUBLISH = wire.PUBLISH
_decode = wire.decode

# Builds a Message from a ready tuple at a third of the cost of Message(...), whose generated
# __new__ is Python code: this runs once per received message.
_new_message = tuple.__new__


class Intake:
    """Frames in, ``ready`` messages out: filtering, unbatching, gap counting.

    It remembers the last sequence number of at most ``MAX_STREAMS`` (publisher, topic) streams
    and the names of as many publishers: a peer that invents a new sender id per message cannot
    grow them without bound. Past the limit the stream heard from longest ago is forgotten; if
    it speaks again, its next message counts as its first (no gap reported across the
    forgetting).
    """

    def __init__(self, node: Node, topics: tuple[str, ...] = ()) -> None:
        self.node = node
        self.topics = Topics()
        self.gaps = 0
        self.received = 0
        self.counts: Counter[str] = Counter()  # dropped-* by reason, refused-publishers
        self.ready: deque[Message] = deque()
        self.names: dict[bytes, tuple[str, uuid_module.UUID]] = {}
        self._last_seq: dict[tuple[bytes, str], int] = {}
        for topic in topics:
            self.topics.add(topic)

    def stats(self) -> dict[str, int]:
        """Counters: received, gaps, dropped-* by reason, refused-publishers."""
        return dict(self.counts, received=self.received, gaps=self.gaps)

    def take(self, frame: bytes) -> None:
        """Decode a frame into ``ready`` messages; count and drop what does not belong.

        The hot path of every subscriber: one decode, a few checks, one Message per item.
        """
        try:
            _, kind, topic, sender, seq, data = _decode(frame)
        except UnexpectedKind:
            self.counts["dropped-not-publish"] += 1
            return
        except ProtocolError:
            self.counts["dropped-malformed"] += 1
            return
        topics = self.topics  # Topics.wants, inlined
        if topic not in topics.exact and not (topics.patterns and topics.wants(topic)):
            return  # a pattern subscription sees every topic at the ZeroMQ level
        name, sender_uuid = self.names.get(sender) or self._name_of(sender)
        key = (sender, topic)
        last = self._last_seq.pop(key, None)  # and put back below: the table is kept LRU-first
        if last is None and len(self._last_seq) >= MAX_STREAMS:
            del self._last_seq[next(iter(self._last_seq))]  # the stream heard from longest ago
        gap = seq - last - 1 if last is not None and seq > last + 1 else 0
        if gap:
            self.gaps += gap
        if kind == _PUBLISH:
            self._last_seq[key] = seq
            self.ready.append(_new_message(Message, (topic, data, name, sender_uuid, seq, gap)))
            self.received += 1
            return
        # a batch holds consecutive sequence numbers: only its first message can follow a gap
        self.ready.append(_new_message(Message, (topic, data[0], name, sender_uuid, seq, gap)))
        self.ready.extend(
            _new_message(Message, (topic, item, name, sender_uuid, item_seq, 0))
            for item_seq, item in enumerate(data[1:], seq + 1)
        )
        self._last_seq[key] = seq + len(data) - 1
        self.received += len(data)

    def _name_of(self, sender: bytes) -> tuple[str, uuid_module.UUID]:
        """The publishing node's name, from discovery; cached until the peers change."""
        sender_uuid = uuid_module.UUID(bytes=sender)
        name = f"?{sender_uuid.hex[:8]}"  # not (yet) in the peer table
        if sender_uuid == self.node.uuid:
            name = self.node.name
        for peer in self.node.peers():
            if peer.uuid == sender_uuid:
                name = peer.name
        if len(self.names) >= MAX_STREAMS:
            del self.names[next(iter(self.names))]
        self.names[sender] = (name, sender_uuid)
        return name, sender_uuid

"""The subscriber's logic, written once for ``Subscriber`` and ``AsyncSubscriber``: no socket.

``Intake`` is fed frames as they come off a SUB socket and queues ``Message``s: it drops what
is not a publication (counted), keeps the topics its subscriber wants, unpacks batches, and
counts the sequence numbers each (publisher, topic) stream skipped as gaps.
"""

from __future__ import annotations

import struct
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import Iterable
from itertools import islice, repeat
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
_decode, _decode_data, _stream_key = wire.decode, wire.decode_data, wire.stream_key
_KINDS = {wire.PUBLISH_HEAD: False, wire.BATCH_HEAD: True}  # a frame's head -> is a batch
_LONG_TOPIC, _KEY_END, _LONG_KEY_END, _UINTS = (
    wire.LONG_TOPIC, wire.KEY_END, wire.LONG_KEY_END, wire.UINTS
)
READ_WHOLE = 128 * 1024  # a frame longer than this is decoded whole (no copy of its data)

# Builds a Message from a ready tuple at a third of the cost of Message(...), whose generated
# __new__ is Python code: this runs once per received message.
_new_message = tuple.__new__

# a stream: [topic, publisher name, sender UUID, last seq, sender bytes]
_TOPIC, _NAME, _UUID, _LAST, _SENDER = range(5)


class _ReadWhole(Exception):
    """Off the short path: the frame is decoded whole."""



class Intake:
    """Frames in, ``ready`` messages out: filtering, unbatching, gap counting.

    A frame of a stream it knows (by ``wire.stream_key``) is read on a short path: its head
    compared, its sequence number read from its bytes, its data decoded alone. Any other frame
    (a new stream, a long topic, a large frame, anything malformed) is decoded whole, checked
    and filtered; a wanted one starts a stream.

    It remembers at most ``MAX_STREAMS`` (publisher, topic) streams and the names of as many
    publishers: a peer that invents a new sender id per message cannot grow them without bound.
    Past the limit the stream heard from longest ago is forgotten; if it speaks again, its next
    message counts as its first (no gap reported across the forgetting).
    """

    def __init__(self, node: Node, topics: tuple[str, ...] = ()) -> None:
        self.node = node
        self.topics = Topics()
        self.gaps = 0
        self.received = 0
        self.counts: Counter[str] = Counter()  # dropped-* by reason, refused-publishers
        self.ready: deque[Message] = deque()
        self.names: dict[bytes, tuple[str, uuid_module.UUID]] = {}
        self._streams: dict[bytes, list[Any]] = {}  # stream key -> stream, heard longest ago first
        for topic in topics:
            self.topics.add(topic)

    def stats(self) -> dict[str, int]:
        """Counters: received, gaps, dropped-* by reason, refused-publishers."""
        return dict(self.counts, received=self.received, gaps=self.gaps)

    def take(self, frame: bytes) -> None:
        """Decode a frame into ``ready`` messages; count and drop what does not belong."""
        self.take_all((frame,))

    def take_all(self, frames: Iterable[bytes], enough: int | None = None) -> None:
        """``take`` each of ``frames``, in order; with ``enough``, stop after a batch that
        makes that many messages ready (the frames not taken yet stay where they are).

        The hot path of every subscriber, written out in one loop: per message a few byte
        reads, one dictionary look-up, one decode of the data and one Message.
        """
        streams, ready = self._streams, self.ready
        append = ready.append
        received = gaps = 0
        try:
            for frame in frames:
                try:  # the short path: a stream already known, read from its bytes
                    head = frame[3]
                    end = head + _KEY_END if head < _LONG_TOPIC else frame[4] + _LONG_KEY_END
                    key = frame[3:end]
                    stream = streams[key]
                    batch = _KINDS[frame[:3]]
                    first = frame[end]
                    if first < 24:
                        seq = first
                        end += 1
                    else:
                        read, size = _UINTS[first]
                        seq = read(frame, end + 1)[0]
                        end += size
                    if len(frame) > READ_WHOLE:
                        raise _ReadWhole
                    data = _decode_data(frame[end:])
                    if batch and (type(data) is not list or not data):
                        raise _ReadWhole  # malformed: the whole decode says why
                except (IndexError, KeyError, struct.error, ProtocolError, _ReadWhole):
                    taken = self._read_whole(frame)
                    if taken is None:
                        continue
                    key, stream, batch, seq, data = taken
                del streams[key]  # and put back: heard now, it goes last
                streams[key] = stream
                last = stream[_LAST]
                gap = seq - last - 1 if seq > last + 1 else 0
                gaps += gap
                if not batch:
                    stream[_LAST] = seq
                    append(_new_message(Message, (
                        stream[_TOPIC], data, stream[_NAME], stream[_UUID], seq, gap
                    )))
                    received += 1
                    continue
                # a batch holds consecutive numbers: only its first message can follow a gap
                count = len(data)
                stream[_LAST] = seq + count - 1
                topic, name, sender_uuid = stream[_TOPIC], stream[_NAME], stream[_UUID]
                append(_new_message(Message, (topic, data[0], name, sender_uuid, seq, gap)))
                ready.extend(map(_new_message, repeat(Message, count - 1), zip(
                    repeat(topic), islice(data, 1, None), repeat(name), repeat(sender_uuid),
                    range(seq + 1, seq + count), repeat(0),
                )))
                received += count
                if enough is not None and len(ready) >= enough:
                    return
        finally:
            self.received += received
            self.gaps += gaps

    def _read_whole(self, frame: bytes) -> tuple[bytes, list[Any], bool, int, Any] | None:
        """A frame off the short path, decoded whole and checked: (its stream's key, the
        stream, whether a batch, its seq, its data), or None when dropped (counted if not a
        valid publication) or not wanted. A wanted frame of a new stream starts the stream."""
        try:
            _, kind, topic, sender, seq, data = _decode(frame)
        except UnexpectedKind:
            self.counts["dropped-not-publish"] += 1
            return None
        except ProtocolError:
            self.counts["dropped-malformed"] += 1
            return None
        topics = self.topics  # Topics.wants, inlined
        if topic not in topics.exact and not (topics.patterns and topics.wants(topic)):
            return None  # a pattern subscription sees every topic at the ZeroMQ level
        key = _stream_key(topic, sender)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                del self._streams[next(iter(self._streams))]  # the one heard from longest ago
            name, sender_uuid = self._name_of(sender)
            stream = self._streams[key] = [topic, name, sender_uuid, seq - 1, sender]
        return key, stream, kind != _PUBLISH, seq, data

    def forget_names(self) -> None:
        """Look the publishers' names up again (discovery changed): for the streams known, and
        for new streams as they arrive."""
        self.names.clear()
        if self._streams:
            peers = self._peer_names()
            for stream in self._streams.values():
                stream[_NAME], stream[_UUID] = self._name_of(stream[_SENDER], peers)

    def _peer_names(self) -> dict[uuid_module.UUID, str]:
        return {peer.uuid: peer.name for peer in self.node.peers()}

    def _name_of(
        self, sender: bytes, peers: dict[uuid_module.UUID, str] | None = None
    ) -> tuple[str, uuid_module.UUID]:
        """The publishing node's name, from discovery (``peers``, if looked up already); cached
        until the peers change."""
        cached = self.names.get(sender)
        if cached is not None:
            return cached
        sender_uuid = uuid_module.UUID(bytes=sender)
        name = (peers if peers is not None else self._peer_names()).get(sender_uuid)
        if name is None:
            name = self.node.name if sender_uuid == self.node.uuid else f"?{sender_uuid.hex[:8]}"
        if len(self.names) >= MAX_STREAMS:
            del self.names[next(iter(self.names))]
        self.names[sender] = (name, sender_uuid)
        return name, sender_uuid

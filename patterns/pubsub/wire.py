"""The frames of pub/sub: PUBLISH and PUBLISH_BATCH envelopes (docs/protocol.md). Pure.

    [version, 7, topic, sender, seq, data]            PUBLISH: one message
    [version, 8, topic, sender, first_seq, items]     PUBLISH_BATCH: consecutive messages

Every frame is built and read by ``zmqkit.codec``; this module names what pub/sub uses of it,
and the ZeroMQ subscription prefixes that select topics. A frame starts with its envelope head
and its topic, so a SUB socket subscribed to ``topic_prefixes(topic)`` receives that topic and
no other (CBOR text carries its length first: ``news`` never matches ``newsletter``).

A subscriber reads the fixed part of a frame itself, byte by byte, once it knows the stream:

    offset  bytes                      what
    0       86 01 07 (or 86 01 08)     the head: array of 6, version 1, PUBLISH (or BATCH)
    3       60+n, then n bytes         the topic (n <= 23; 78 n for n <= 255)
    4+n     50, then 16 bytes          the sender
    21+n    a CBOR unsigned integer    seq (first_seq): 1, 2, 3, 5 or 9 bytes
    ...     one CBOR item              the data (the items)

The bytes from offset 3 to the end of the sender are the same in every frame of a (publisher,
topic) stream: ``stream_key``. What is not on that path is decoded whole by ``decode``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from zmqkit import Kind, codec

__all__ = [
    "ANY_TOPIC_PREFIXES",
    "BATCH_HEAD",
    "KEY_END",
    "LONG_KEY_END",
    "LONG_TOPIC",
    "PUBLISH",
    "PUBLISH_HEAD",
    "UINTS",
    "decode",
    "decode_data",
    "encode",
    "encode_after",
    "encode_batch_from",
    "encode_data",
    "encode_from",
    "publish_head",
    "stream_key",
    "topic_prefixes",
]

PUBLISH = int(Kind.PUBLISH)  # a decoded frame of any other kind is a PUBLISH_BATCH

# Each is a name for the codec function itself, not a wrapper: they are called once a message.
encode = codec.encode_publish  # (topic, sender, seq, data) -> one PUBLISH frame
publish_head = codec.publish_head  # (topic, sender) -> what every PUBLISH of theirs starts with
encode_after = codec.encode_publish_after  # (publish_head, seq, data) -> the PUBLISH frame
encode_data = codec.dumps  # data encoded once, for a frame built later by the sending thread
encode_from = codec.encode_publish_from  # (topic, sender, seq, encoded data)
encode_batch_from = codec.encode_publish_batch_from  # (topic, sender, first_seq, encoded items)
decode = codec.decode_publish  # -> [version, kind, topic, sender, seq, data or items]
decode_data = codec.decode_publish_data  # the frame from its data (items) on -> the data (items)
topic_prefixes = codec.publish_prefixes  # (PUBLISH prefix, PUBLISH_BATCH prefix) of one topic


def _without_topic(prefixes: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """The prefixes of the empty topic less that topic's bytes: every publication's heads."""
    topic_size = len(codec.dumps(""))
    return tuple(prefix[:-topic_size] for prefix in prefixes)


# What a subscriber to a pattern (``news.*``) subscribes to: every topic, filtered after ZeroMQ
ANY_TOPIC_PREFIXES = _without_topic(codec.publish_prefixes(""))

PUBLISH_HEAD, BATCH_HEAD = ANY_TOPIC_PREFIXES  # a frame's first 3 bytes, of either kind
LONG_TOPIC = 0x78  # the text head of a topic of 24 to 255 bytes: its length in the next byte
# where a stream's key ends: from the topic's text head (frame[3], 60+n), or with a long topic
# from its length (frame[4]): head, topic, and the sender's 17 bytes
KEY_END = 21 - 0x60
LONG_KEY_END = 22

# a CBOR unsigned integer's head (24-27) -> (reader of its value after the head, its size)
UINTS: dict[int, tuple[Callable[[bytes, int], tuple[int]], int]] = {
    24: (struct.Struct(">B").unpack_from, 2),
    25: (struct.Struct(">H").unpack_from, 3),
    26: (struct.Struct(">I").unpack_from, 5),
    27: (struct.Struct(">Q").unpack_from, 9),
}


def stream_key(topic: str, sender: bytes) -> bytes:
    """The bytes from offset 3 to the end of the sender in every frame on ``topic`` from
    ``sender``: the topic as CBOR text (section 4's form), the sender as a 16-byte string."""
    return publish_head(topic, sender)[len(PUBLISH_HEAD):]

"""The frames of pub/sub: PUBLISH and PUBLISH_BATCH envelopes (docs/protocol.md). Pure.

    [version, 7, topic, sender, seq, data]            PUBLISH: one message
    [version, 8, topic, sender, first_seq, items]     PUBLISH_BATCH: consecutive messages

Every frame is built and read by ``zmqkit.codec``; this module names what pub/sub uses of it,
and the ZeroMQ subscription prefixes that select topics. A frame starts with its envelope head
and its topic, so a SUB socket subscribed to ``topic_prefixes(topic)`` receives that topic and
no other (CBOR text carries its length first: ``news`` never matches ``newsletter``).
"""

from __future__ import annotations

from zmqkit import Kind, codec

__all__ = [
    "ANY_TOPIC_PREFIXES",
    "PUBLISH",
    "decode",
    "encode",
    "encode_batch_from",
    "encode_data",
    "encode_from",
    "topic_prefixes",
]

PUBLISH = int(Kind.PUBLISH)  # a decoded frame of any other kind is a PUBLISH_BATCH

# Each is a name for the codec function itself, not a wrapper: they are called once a message.
encode = codec.encode_publish  # (topic, sender, seq, data) -> one PUBLISH frame
encode_data = codec.dumps  # data encoded once, for a frame built later by the sending thread
encode_from = codec.encode_publish_from  # (topic, sender, seq, encoded data)
encode_batch_from = codec.encode_publish_batch_from  # (topic, sender, first_seq, encoded items)
decode = codec.decode_publish  # -> [version, kind, topic, sender, seq, data or items]
topic_prefixes = codec.publish_prefixes  # (PUBLISH prefix, PUBLISH_BATCH prefix) of one topic


def _without_topic(prefixes: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """The prefixes of the empty topic less that topic's bytes: every publication's heads."""
    topic_size = len(codec.dumps(""))
    return tuple(prefix[:-topic_size] for prefix in prefixes)


# What a subscriber to a pattern (``news.*``) subscribes to: every topic, filtered after ZeroMQ
ANY_TOPIC_PREFIXES = _without_topic(codec.publish_prefixes(""))

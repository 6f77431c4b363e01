"""The messages of groups: a beacon header, shouts (publications) and whispers (requests). Pure.

    beacon          header  groups = "dev,ops"               the node's groups, sorted
    node ──► group  PUBLISH or PUBLISH_BATCH on topic "zmqkit.group.<group>", data [name, body]
    node ──► peer   REQUEST zmqkit.groups.whisper            args [sender_uuid, sender_name, body]
    peer ──► node   REPLY null (the whisper is in its inbox), or ERROR
    member ─► peer  SUBSCRIBE ff "zmqkit.groups.joined" 00 <uuid: 16 bytes> <group>   the mark

The mark is a subscription that no publication matches, made after the group's own: a peer
whose publisher (an XPUB) reads it knows that the member's subscription to the group has
arrived (subscriptions on one connection arrive in order), so a shout it sends from then on
reaches the member. The peer reports the member's JOIN only then (or ``JOIN_GRACE`` seconds
after the beacon announced it, for a member that sends no mark).

docs/protocol.md (section 9.3) is the normative description. Everything here is built and read
through ``zmqkit.codec``; nothing touches a socket or a clock.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from zmqkit import ConfigError, codec

__all__ = [
    "GROUPS_HEADER",
    "JOIN_MARK",
    "MAX_GROUP_BYTES",
    "PUB_ROLE",
    "ROLE",
    "TOPIC_PREFIX",
    "UUID_BYTES",
    "WHISPER_METHOD",
    "Shouts",
    "check_group",
    "encode_ack",
    "encode_refusal",
    "encode_shout",
    "encode_shouts",
    "encode_whisper",
    "format_groups",
    "group_of",
    "join_mark",
    "parse_groups",
    "read_join_mark",
    "read_shouts",
    "read_whisper_args",
    "subscription",
    "topic_of",
    "valid_group",
]

GROUPS_HEADER = "groups"  # beacon header: the node's groups, comma-separated
ROLE = "groups"  # beacon role: the ROUTER that takes whispers
PUB_ROLE = "groups-pub"  # beacon role: the PUB that sends shouts
TOPIC_PREFIX = "zmqkit.group."  # + group: the topic of the group's shouts
WHISPER_METHOD = "zmqkit.groups.whisper"
JOIN_MARK = b"\xffzmqkit.groups.joined\x00"  # 0xff starts no CBOR message: it matches nothing
MAX_GROUP_BYTES = 64
UUID_BYTES = 16


# -- group names and the beacon header -------------------------------------------------------------


def valid_group(group: object) -> bool:
    """Whether ``group`` may name a group: 1 to 64 bytes of text, no ',', no spaces at either
    end, no final '*'."""
    return (
        isinstance(group, str)
        and 0 < len(group.encode(errors="surrogatepass")) <= MAX_GROUP_BYTES
        and "," not in group
        and not group.endswith("*")
        and group == group.strip()
    )


def check_group(group: object) -> str:
    """``group``, if it is a valid name.

    Raises:
        ConfigError: it is not.
    """
    if not valid_group(group):
        raise ConfigError(f"a group is 1 to {MAX_GROUP_BYTES} bytes of text without ',', spaces "
                          f"at either end or a final '*', not {group!r}")
    return group  # type: ignore[return-value]


def parse_groups(header: str | None) -> tuple[frozenset[str], int]:
    """The groups a ``groups`` header names, and how many of its items were not valid names."""
    if not header:
        return frozenset(), 0
    items = header.split(",")
    groups = frozenset(item for item in items if valid_group(item))
    return groups, len(items) - len(groups)


def format_groups(groups: Iterable[str]) -> str | None:
    """The ``groups`` header for ``groups`` (sorted), or None for no group (no header)."""
    return ",".join(sorted(groups)) or None


# -- shouts ----------------------------------------------------------------------------------------


def topic_of(group: str) -> str:
    """The topic of ``group``'s shouts."""
    return TOPIC_PREFIX + group


def group_of(topic: str) -> str:
    """The group a shout topic names ("" for a topic that is not a group's)."""
    return topic[len(TOPIC_PREFIX):] if topic.startswith(TOPIC_PREFIX) else ""


def subscription(group: str) -> tuple[bytes, bytes]:
    """The SUB prefixes that take ``group``'s shouts and nothing else."""
    return codec.publish_prefixes(topic_of(group))


def join_mark(member: uuid_module.UUID, group: str) -> bytes:
    """The subscription that tells a peer's publisher that ``member`` takes ``group``'s shouts."""
    return JOIN_MARK + member.bytes + group.encode(errors="surrogatepass")


def read_join_mark(message: bytes) -> tuple[uuid_module.UUID, str, bool] | None:
    """(member, group, subscribed) from a subscription message an XPUB read (``01`` or ``00``,
    then the prefix); None for any other subscription, or a mark naming no valid group."""
    head = len(JOIN_MARK) + 1
    if len(message) <= head + UUID_BYTES or message[1:head] != JOIN_MARK or message[0] > 1:
        return None
    try:
        group = message[head + UUID_BYTES:].decode()
    except UnicodeDecodeError:
        return None
    if not valid_group(group):
        return None
    return uuid_module.UUID(bytes=message[head:head + UUID_BYTES]), group, message[0] == 1


def encode_shout(name: str, body: Any) -> bytes:
    """The data of one shout, ``[name, body]``, encoded once, when it is made.

    Raises:
        EncodeError: ``body`` cannot travel on the wire.
    """
    return codec.dumps([name, body])


def encode_shouts(topic: str, sender: uuid_module.UUID, first_seq: int,
                  encoded: list[bytes]) -> bytes:
    """One PUBLISH (one shout) or PUBLISH_BATCH (several, numbered from ``first_seq``)."""
    if len(encoded) == 1:
        return codec.encode_publish_from(topic, sender.bytes, first_seq, encoded[0])
    return codec.encode_publish_batch_from(topic, sender.bytes, first_seq, encoded)


class Shouts(NamedTuple):
    """The shouts of one decoded PUBLISH or PUBLISH_BATCH: ``[name, body]`` each."""

    group: str  # "" when the topic is not a group's
    topic: str
    sender: bytes
    first_seq: int
    items: Sequence[list[Any]]


def read_shouts(message: list[Any]) -> Shouts | None:
    """The shouts a decoded message carries; None when it is not a publication of shouts."""
    if len(message) != 6 or message[1] not in (codec.Kind.PUBLISH, codec.Kind.PUBLISH_BATCH):
        return None
    _, kind, topic, sender, seq, data = message
    items = data if kind == codec.Kind.PUBLISH_BATCH else (data,)
    if not all(type(item) is list and len(item) == 2 and type(item[0]) is str for item in items):
        return None
    return Shouts(group_of(topic), topic, sender, seq, items)


# -- whispers --------------------------------------------------------------------------------------


def encode_whisper(call_id: int, sender: uuid_module.UUID, name: str, body: Any) -> bytes:
    """The REQUEST that whispers ``body`` from node ``sender`` called ``name``.

    Raises:
        EncodeError: ``body`` cannot travel on the wire.
    """
    return codec.encode_request(call_id, WHISPER_METHOD, [sender.bytes, name, body], {})


def read_whisper_args(args: list[Any]) -> tuple[bytes, str, Any] | None:
    """``(sender_uuid, sender_name, body)`` from a whisper's args; None when not that shape."""
    if (len(args) != 3 or type(args[0]) is not bytes or len(args[0]) != UUID_BYTES
            or type(args[1]) is not str):
        return None
    return args[0], args[1], args[2]


def encode_ack(call_id: int) -> bytes:
    """The REPLY that says the whisper ``call_id`` is in the inbox."""
    return codec.encode_reply(call_id, None)


def encode_refusal(call_id: int, type_name: str, message: str) -> bytes:
    """The ERROR that answers a request the node does not take."""
    return codec.encode_error(call_id, type_name, message)

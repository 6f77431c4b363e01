"""A state group's messages: publications on the group's topic and one reserved RPC. Pure.

    member ──► group   PUBLISH on zmqkit.state.G   data [1, last_seq, [op, ...]]          UPDATES
    member ──► group   PUBLISH on zmqkit.state.G   data [2, node_uuid, [[writer, seq]...]] DIGEST
    asker ──► member   REQUEST zmqkit.state.sync   args [G, [[writer, seq], ...]]
    member ──► asker   REPLY   {"writers": [[writer, seq], ...], "entries": [entry, ...]}

    op     [1, key, stamp, value, expires_at]  (set)   or  [2, key, stamp, null, null]  (delete)
    entry  [writer, seq, *op]: the op that last wrote a key, with its writer and sequence number

docs/protocol.md (section 9.2) is the normative description. Every frame is built and read with
``zmqkit.codec``; reading one gives a small tuple or raises ``ProtocolError``. Nothing here
touches a socket or a clock.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterator
from typing import Any, NamedTuple

from zmqkit import ConfigError, EncodeError, ProtocolError, codec
from zmqkit.codec import Kind

__all__ = [
    "DIGEST",
    "MAX_BYTES_PER_MESSAGE",
    "MAX_GROUP_BYTES",
    "MAX_OPS_PER_MESSAGE",
    "MULTIPART_ERROR",
    "OP_DELETE",
    "OP_SET",
    "SYNC_METHOD",
    "UPDATES",
    "Digest",
    "Refusal",
    "SyncReply",
    "SyncRequest",
    "Updates",
    "batches",
    "check_group",
    "encode_digest",
    "encode_snapshot",
    "encode_sync_request",
    "encode_updates",
    "is_uint",
    "is_writer",
    "pub_role",
    "read_publication",
    "read_sync_reply",
    "read_sync_request",
    "seq_table",
    "split_request",
    "sync_role",
    "topic",
    "valid_op",
    "wire_value",
]

SYNC_METHOD = "zmqkit.state.sync"  # not a Python identifier: no user RPC method can clash
TOPIC_PREFIX = "zmqkit.state."
ROLE_PREFIX = "state:"  # + group: the ROUTER that answers sync requests
PUB_ROLE_PREFIX = "state-pub:"  # + group: the PUB that carries updates and digests
MAX_GROUP_BYTES = 64

UPDATES = 1  # [1, last_seq, ops]
DIGEST = 2  # [2, node_uuid, [[writer, seq], ...]]
OP_SET = 1  # [1, key, stamp, value, expires_at]
OP_DELETE = 2  # [2, key, stamp, null, null]

MAX_OPS_PER_MESSAGE = 1000
MAX_BYTES_PER_MESSAGE = 1 << 20
OP_OVERHEAD = 32  # bytes an op takes beyond its key and value, at most (head, code, stamps)
UINT_LIMIT = 1 << 64
WRITER_BYTES = 16
# values that need no round trip through the decoder to be known wire-safe
_PLAIN = (str, int, float, bool, type(None), bytes)


# -- names -----------------------------------------------------------------------------------------


def topic(group: str) -> str:
    """The pub/sub topic that carries ``group``'s updates and digests."""
    return TOPIC_PREFIX + group


def sync_role(group: str) -> str:
    """The beacon role under which members advertise their sync ROUTER."""
    return ROLE_PREFIX + group


def pub_role(group: str) -> str:
    """The beacon role under which members advertise their update PUB socket."""
    return PUB_ROLE_PREFIX + group


def check_group(group: object) -> str:
    """A group name is 1 to 64 bytes of text not ending in ``*``.

    Raises:
        ConfigError: it is not.
    """
    if (
        not isinstance(group, str)
        or not 0 < len(group.encode(errors="surrogatepass")) <= MAX_GROUP_BYTES
        or group.endswith("*")
    ):
        raise ConfigError(f"a state group is 1 to {MAX_GROUP_BYTES} bytes of text not ending in "
                          f"'*', not {group!r}")
    return group


# -- field checks ----------------------------------------------------------------------------------


def is_uint(value: object) -> bool:
    """A plain CBOR unsigned integer: a sequence number or a stamp."""
    return type(value) is int and 0 <= value < UINT_LIMIT


def is_writer(value: object) -> bool:
    """A writer id (or a node UUID): 16 bytes."""
    return type(value) is bytes and len(value) == WRITER_BYTES


def valid_op(op: object) -> bool:
    """Whether ``op`` is ``[code, key, stamp, value, expires_at]`` as the table above says."""
    return (
        type(op) is list
        and len(op) == 5
        and (op[0] == OP_SET or op[0] == OP_DELETE)
        and type(op[0]) is int
        and type(op[1]) is str
        and is_uint(op[2])
        and (op[4] is None or is_uint(op[4]))
    )


def seq_table(pairs: object) -> dict[bytes, int] | None:
    """``[[writer, seq], ...]`` as a dict, or None when it is not one."""
    if type(pairs) is not list:
        return None
    table: dict[bytes, int] = {}
    for pair in pairs:
        if (type(pair) is not list or len(pair) != 2 or not is_writer(pair[0])
                or not is_uint(pair[1])):
            return None
        table[pair[0]] = max(pair[1], table.get(pair[0], 0))
    return table


def wire_value(value: Any) -> tuple[Any, int]:
    """``value`` as every replica will read it back (tuples become lists), copied so that the
    caller changing its object later changes nothing here, and its encoded size in bytes.

    Raises:
        EncodeError: the wire cannot carry the value (or a receiver would refuse it).
    """
    data = codec.dumps(value)
    kind = type(value)
    if kind in _PLAIN:
        return value, len(data)
    # flat maps and lists of plain values (the common case) need a copy, not a decode
    if kind is dict and all(type(k) is str and type(v) in _PLAIN for k, v in value.items()):
        return dict(value), len(data)
    if kind is list and all(type(v) in _PLAIN for v in value):
        return list(value), len(data)
    try:
        return codec.loads(data), len(data)
    except ProtocolError as exc:
        raise EncodeError(f"a replica would refuse this {kind.__name__}: {exc}") from exc


# -- publications ----------------------------------------------------------------------------------


class Updates(NamedTuple):
    """A writer's writes ``last_seq - len(ops) + 1`` to ``last_seq`` (ops checked by the core)."""

    writer: bytes
    last_seq: int
    ops: list[Any]


class Digest(NamedTuple):
    """How far a member (by node UUID) has applied each writer."""

    member: uuid_module.UUID
    applied: dict[bytes, int]


def batches(sizes: list[int]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` slices of ops whose encoded ``sizes`` fit one UPDATES each: at most
    ``MAX_OPS_PER_MESSAGE`` ops and about ``MAX_BYTES_PER_MESSAGE`` (an op alone may be more)."""
    start = 0
    while start < len(sizes):
        end, size = start, 0
        while end < len(sizes) and end - start < MAX_OPS_PER_MESSAGE and (
                size < MAX_BYTES_PER_MESSAGE or end == start):
            size += sizes[end]
            end += 1
        yield start, end
        start = end


def encode_updates(group: str, writer: bytes, pub_seq: int, last_seq: int,
                   ops: list[list[Any]]) -> bytes:
    """An UPDATES publication: ``ops`` are the writer's writes up to ``last_seq``."""
    return codec.encode_publish(topic(group), writer, pub_seq, [UPDATES, last_seq, ops])


def encode_digest(group: str, writer: bytes, pub_seq: int, node_uuid: uuid_module.UUID,
                  applied: list[list[Any]]) -> bytes:
    """A DIGEST publication: ``applied`` is ``[[writer, seq], ...]``."""
    return codec.encode_publish(topic(group), writer, pub_seq, [DIGEST, node_uuid.bytes, applied])


def read_publication(frame: bytes) -> Updates | Digest:
    """What a frame on the group's topic says (the ops of an UPDATES are left to the core).

    Raises:
        ProtocolError: not a PUBLISH, or not an UPDATES or a DIGEST.
    """
    message = codec.decode_publish(frame)
    data = message[5]
    if message[1] != Kind.PUBLISH or type(data) is not list or len(data) != 3:
        raise ProtocolError("state publications are PUBLISH [UPDATES or DIGEST, ..., ...]")
    if data[0] == UPDATES and type(data[0]) is int and is_uint(data[1]) and type(data[2]) is list:
        return Updates(message[3], data[1], data[2])
    if data[0] == DIGEST and type(data[0]) is int and is_writer(data[1]):
        applied = seq_table(data[2])
        if applied is not None:
            return Digest(uuid_module.UUID(bytes=data[1]), applied)
    raise ProtocolError("not an UPDATES [1, last_seq, ops] or a DIGEST [2, node, [[w, seq]...]]")


# -- the sync request ------------------------------------------------------------------------------


class SyncRequest(NamedTuple):
    """A member asks for what it lacks: ``known`` is how far it has applied each writer."""

    call_id: int
    known: dict[bytes, int]


class Refusal(NamedTuple):
    """A frame that is no sync request for this group: ``answer`` is the error frame to send
    back (None: send nothing); ``bad`` says whether it was garbage (counted) or a wrong call."""

    answer: bytes | None
    bad: bool


def encode_sync_request(call_id: int, group: str, known: dict[bytes, int]) -> bytes:
    """A sync request for what a replica that has applied ``known`` lacks."""
    return codec.encode_request(call_id, SYNC_METHOD,
                                [group, [[w, s] for w, s in known.items()]], {})


def split_request(frames: list[bytes]) -> tuple[list[bytes], bytes] | None:
    """A ROUTER's ``[identity, body]`` (from a DEALER) or ``[identity, b"", body]`` (from a
    REQ) as the address to answer and the body; None for any other shape."""
    if len(frames) == 2:
        return frames[:1], frames[1]
    if len(frames) == 3 and frames[1] == b"":
        return frames[:2], frames[2]
    return None


# the answer to a request of several frames (to its first frame, the sender's identity)
MULTIPART_ERROR = codec.encode_error(0, "zmqkit.ProtocolError", "a request is exactly one frame")


def read_sync_request(body: bytes, group: str) -> SyncRequest | Refusal:
    """What a frame sent to the sync ROUTER asks, or how to refuse it."""
    try:
        message = codec.decode(body)
    except ProtocolError as exc:
        return Refusal(codec.encode_error(0, "zmqkit.ProtocolError", str(exc)), bad=True)
    kind, call_id = message[1], message[2]
    if kind in (Kind.CANCEL, Kind.CREDIT):  # a stream's controls: no answer (section 6.5)
        return Refusal(None, bad=False)
    if kind != Kind.REQUEST:
        answered = 0 if kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH) else call_id
        return Refusal(codec.encode_error(answered, "zmqkit.ProtocolError", "expected a request"),
                       bad=True)
    method, args = message[3], message[4]
    if method != SYNC_METHOD:
        return Refusal(codec.encode_error(call_id, "zmqkit.MethodNotFound", f"a state replica "
                                          f"answers only {SYNC_METHOD!r}, not {method!r}"),
                       bad=False)
    known = seq_table(args[1]) if len(args) == 2 and args[0] == group else None
    if known is None:
        return Refusal(codec.encode_error(call_id, "zmqkit.BadArguments",
                                          f"{SYNC_METHOD}(group, [[writer, seq], ...]) for group "
                                          f"{group!r}"), bad=False)
    return SyncRequest(call_id, known)


def encode_snapshot(call_id: int, snapshot: dict[str, Any]) -> bytes:
    """The REPLY carrying ``snapshot``, or an ``EncodeError`` ERROR when it is over one frame."""
    frame = codec.encode_reply(call_id, snapshot)
    if len(frame) > codec.DEFAULT_MAX_MESSAGE_SIZE:
        return codec.encode_error(call_id, "zmqkit.EncodeError", f"the snapshot is {len(frame)} "
                                  f"bytes, over one frame's maximum")
    return frame


class SyncReply(NamedTuple):
    """A member's answer: the snapshot to merge, or the error it answered with."""

    snapshot: Any
    error: str | None


def read_sync_reply(frame: bytes, call_id: int) -> SyncReply:
    """The answer to request ``call_id`` (or an ERROR with call id 0, about the request).

    Raises:
        ProtocolError: not a valid envelope, or not an answer to that request.
    """
    message = codec.decode(frame)
    kind, answered = message[1], message[2]
    if kind == Kind.REPLY and answered == call_id:
        return SyncReply(message[3], None)
    if kind == Kind.ERROR and answered in (call_id, 0):
        return SyncReply(None, f"{message[3]}: {message[4]}")
    raise ProtocolError(f"not an answer to sync request {call_id}")

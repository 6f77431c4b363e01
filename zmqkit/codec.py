"""The wire codec: pure functions from values to bytes and back, no sockets, no clock.

Every ZeroMQ message is one frame holding one CBOR array (RFC 8949), ``[version, kind, ...]``:

    kind  name           fields after ``version, kind``
    ----  -------------  ----------------------------------------------------------------
    1     REQUEST        call_id: uint, method: tstr, args: array, kwargs: map(tstr -> any)
    2     REPLY          call_id: uint, result: any
    3     ERROR          call_id: uint, type: tstr, message: tstr, traceback: tstr
    4     STREAM_ITEM    call_id: uint, item: any
    5     STREAM_END     call_id: uint
    6     CANCEL         call_id: uint
    7     PUBLISH        topic: tstr, sender: bstr(16), seq: uint, data: any
    8     PUBLISH_BATCH  topic: tstr, sender: bstr(16), first_seq: uint, items: array
    9     CREDIT         call_id: uint, limit: uint
    10    FLOW_ITEM      call_id: uint, index: uint, item: any
    11    FLOW_END       call_id: uint, count: uint

A beacon is one UDP datagram: the 3 bytes ``ZKB``, one version byte, then the CBOR array
``[kind, name, uuid, seq, endpoints, headers]`` with kind 1 (HELLO), 2 (GOODBYE) or 3 (SOLICIT);
a peer list (peer exchange) is the array ``[4, uuid, [[host, port], ...]]`` after the same header.

CBOR tags are refused on decode except 0/1 (date/time), 2/3 (big integers), 37 (UUID) and
258 (set): no tag can build anything but those inert values (no regexes, parsed e-mail, shared
references). Values are null, booleans, integers, floats, text, bytes, arrays, maps and those
four tagged kinds. docs/protocol.md is the normative description; this module follows it.

Decoding anything malformed raises :class:`~zmqkit.errors.ProtocolError` and nothing else.
Decoded messages are plain lists (``[version, kind, ...]``), not objects, to keep the hot path to
one ``cbor2.loads`` and a few type checks.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import uuid as uuid_module
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cbor2

from . import values
from .errors import EncodeError, MessageTooLarge, ProtocolError, UnexpectedKind
from .values import ALLOWED_TAGS as ALLOWED_TAGS  # the value rules live in values
from .values import MAX_DEPTH as MAX_DEPTH
from .values import MAX_SAME_HASH as MAX_SAME_HASH
from .values import NATIVE_TAGS_REFUSED as NATIVE_TAGS_REFUSED

__all__ = [
    "BEACON_MAGIC",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_BEACON_SIZE",
    "MAX_NAME_BYTES",
    "MAX_PEER_LIST",
    "PEER_LIST_KIND",
    "VERSION",
    "BeaconFields",
    "BeaconKind",
    "Kind",
    "PeerList",
    "UnexpectedKind",
    "decode",
    "decode_beacon",
    "decode_discovery",
    "decode_peer_list",
    "decode_publish",
    "decode_publish_data",
    "dumps",
    "encode",
    "encode_beacon",
    "encode_cancel",
    "encode_credit",
    "encode_error",
    "encode_flow_end",
    "encode_flow_item",
    "encode_peer_list",
    "encode_publish",
    "encode_publish_after",
    "encode_publish_batch",
    "encode_publish_batch_from",
    "encode_publish_from",
    "encode_reply",
    "encode_reply_items",
    "encode_request",
    "encode_stream_end",
    "encode_stream_item",
    "loads",
    "publish_head",
    "publish_prefixes",
]

VERSION = 1
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

BEACON_MAGIC = b"ZKB"
BEACON_VERSION = 1
MAX_BEACON_SIZE = 1200  # fits one Ethernet frame: beacons are never fragmented
MAX_NAME_BYTES = 64
PEER_LIST_KIND = 4  # the kind of a peer list datagram, whose body is not a beacon's
MAX_PEER_LIST = 48  # addresses in one peer list: it stays well under MAX_BEACON_SIZE
UUID_BYTES = 16


class Kind(enum.IntEnum):
    """The kind of a ZeroMQ message, its second array element."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3
    STREAM_ITEM = 4
    STREAM_END = 5
    CANCEL = 6
    PUBLISH = 7
    PUBLISH_BATCH = 8
    CREDIT = 9  # a flow-controlled stream: the caller lets it run further
    FLOW_ITEM = 10  # a flow-controlled stream: one item, with its index
    FLOW_END = 11  # a flow-controlled stream: complete, with its count


class BeaconKind(enum.IntEnum):
    """The kind of a beacon datagram."""

    HELLO = 1
    GOODBYE = 2
    SOLICIT = 3  # "answer me now": receivers send their HELLO to the sender at once


_loads = values.loads
# messages: cbor2 called here, the hot path, then the application's values checked field by field
_cbor2_loads = cbor2.loads
_TAG_TABLE, _refuse_tag, _reparse = values.TAG_TABLE, values.refuse_tag, values.reparse
_check_value, _check_container, _LEAVES = values.check, values.check_container, values.LEAVES
_may_hold_simple_values = values.SIMPLE_HEAD.search
# where to look for a simple value: after the array head, version, kind and a call id (an
# unsigned integer's head tells its length), or from the fourth byte when it is no integer
_AFTER_THE_COUNTER = tuple(
    4 + (0 if head < 24 else 1 << (head - 24) if head < 28 else -1) if head < 28 else 3
    for head in range(256)
)


def loads(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Any:
    """Decode one CBOR item from ``data``, refusing what section 2 does not allow.

    Raises:
        MessageTooLarge: ``data`` is longer than ``max_size``.
        ProtocolError: ``data`` is not well-formed CBOR of section 2.
    """
    if len(data) > max_size:
        raise MessageTooLarge(f"{len(data)} bytes is over the maximum of {max_size}")
    return _loads(data)


def _load_exactly_one(data: bytes) -> Any:
    """Decode one CBOR item that must fill ``data`` exactly (for beacons, which are rare and
    small; message frames skip the check to keep their one-call decode)."""
    return values.load_exactly_one(data)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as CBOR.

    Raises:
        EncodeError: ``value`` holds something CBOR cannot carry.
    """
    try:
        return cbor2.dumps(value)
    except Exception as exc:  # CBOREncodeError and friends: the value is at fault
        raise EncodeError(f"cannot encode {type(value).__name__}: {exc}") from exc


# -- encoding ------------------------------------------------------------------------------------
#
# The hot kinds are joined from parts: the fixed head of the envelope array, then each field
# encoded by cbor2. The bytes are exactly those of ``dumps([VERSION, kind, ...])`` (a CBOR array
# is its head followed by its items), but cbor2 encodes an array far slower than the items in
# it, and a request or reply is one small payload in a small envelope.

_REQUEST_HEAD = bytes((0x86, VERSION, 1))  # array of 6, version, kind
_REPLY_HEAD = bytes((0x84, VERSION, 2))
_STREAM_ITEM_HEAD = bytes((0x84, VERSION, 4))
_FLOW_ITEM_HEAD = bytes((0x85, VERSION, 10))
_EMPTY_MAP = b"\xa0"
_BYTE_STRING, _ARRAY = 0x40, 0x80  # CBOR major types 2 and 4, in a head's top three bits


def encode(kind: Kind, *fields: Any) -> bytes:
    """Encode a message of any kind from its fields, in the order of the table above."""
    return dumps([VERSION, int(kind), *fields])


def encode_request(
    call_id: int, method: str, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """A REQUEST; ``args`` may be a tuple (CBOR has one array type, so it arrives as a list)."""
    if type(args) not in (list, tuple) or type(kwargs) is not dict:
        return encode(Kind.REQUEST, call_id, method, args, kwargs)  # as given: the server refuses
    try:
        return b"".join(
            (
                _REQUEST_HEAD,
                cbor2.dumps(call_id),
                cbor2.dumps(method),
                _head(_ARRAY, len(args)),
                *[cbor2.dumps(arg) for arg in args],
                cbor2.dumps(kwargs) if kwargs else _EMPTY_MAP,
            )
        )
    except Exception as exc:  # CBOREncodeError and friends: the value is at fault
        raise EncodeError(f"cannot encode the request: {exc}") from exc


def encode_reply(call_id: int, result: Any) -> bytes:
    """A REPLY to call ``call_id`` carrying ``result``."""
    return _with_call_id(_REPLY_HEAD, call_id, result)


def encode_reply_items(call_id: int, count: int, encoded_items: bytes) -> bytes:
    """A REPLY whose result is an array of ``count`` items, given CBOR-encoded back to back
    (by ``dumps``): the bytes ``encode_reply`` gives for the list of them."""
    return b"".join((_REPLY_HEAD, dumps(call_id), _head(_ARRAY, count), encoded_items))


def encode_error(call_id: int, type_name: str, message: str, traceback: str = "") -> bytes:
    """An ERROR for call ``call_id``: the remote type name, message and traceback."""
    return dumps([VERSION, 3, call_id, type_name, message, traceback])


def encode_stream_item(call_id: int, item: Any) -> bytes:
    """A STREAM_ITEM of call ``call_id``."""
    return _with_call_id(_STREAM_ITEM_HEAD, call_id, item)


def _with_call_id(head: bytes, call_id: int, value: Any) -> bytes:
    """A REPLY or STREAM_ITEM: ``head`` (array, version, kind), the call id, the value."""
    try:
        return b"".join((head, cbor2.dumps(call_id), *_value(value)))
    except Exception as exc:  # CBOREncodeError and friends: the value is at fault
        raise EncodeError(f"cannot encode {type(value).__name__}: {exc}") from exc


def encode_stream_end(call_id: int) -> bytes:
    """The STREAM_END of call ``call_id``."""
    return dumps([VERSION, 5, call_id])


def encode_cancel(call_id: int) -> bytes:
    """A CANCEL of call ``call_id`` (the caller stopped reading its stream)."""
    return dumps([VERSION, 6, call_id])


def encode_credit(call_id: int, limit: int) -> bytes:
    """A CREDIT: the stream of call ``call_id`` may send the items with index below ``limit``."""
    return dumps([VERSION, 9, call_id, limit])


def encode_flow_item(call_id: int, index: int, item: Any) -> bytes:
    """A FLOW_ITEM: item number ``index`` (from 0) of the flow-controlled stream of ``call_id``."""
    try:
        return b"".join((_FLOW_ITEM_HEAD, cbor2.dumps(call_id), cbor2.dumps(index), *_value(item)))
    except Exception as exc:  # CBOREncodeError and friends: the value is at fault
        raise EncodeError(f"cannot encode {type(item).__name__}: {exc}") from exc


def encode_flow_end(call_id: int, count: int) -> bytes:
    """The FLOW_END of the flow-controlled stream of ``call_id``, which sent ``count`` items."""
    return dumps([VERSION, 11, call_id, count])


def encode_publish(topic: str, sender: bytes, seq: int, data: Any) -> bytes:
    """A PUBLISH of ``data`` on ``topic``, number ``seq`` of publisher ``sender``."""
    return encode_publish_after(publish_head(topic, sender), seq, data)


def publish_head(topic: str, sender: bytes) -> bytes:
    """The bytes that start every PUBLISH on ``topic`` from ``sender``: its prefix (section 4)
    and the sender, which a publisher keeps for each topic it publishes on."""
    if type(topic) is not str:
        raise EncodeError(f"a topic is text, not {topic!r}")
    return publish_prefixes(topic)[0] + dumps(sender)


def encode_publish_after(head: bytes, seq: int, data: Any) -> bytes:
    """A PUBLISH from its ``head`` (``publish_head``): the bytes of ``encode_publish``, with one
    look-up less per message (a publisher's)."""
    try:
        if type(data) is bytes:  # ``_value``, inlined: its bytes are copied once, into the frame
            return b"".join((head, cbor2.dumps(seq), _head(_BYTE_STRING, len(data)), data))
        return b"".join((head, cbor2.dumps(seq), cbor2.dumps(data)))
    except Exception as exc:
        raise EncodeError(f"cannot encode {type(data).__name__}: {exc}") from exc


def encode_publish_batch(topic: str, sender: bytes, first_seq: int, items: list[Any]) -> bytes:
    """A PUBLISH of several items at once, numbered from ``first_seq``."""
    return dumps([VERSION, 8, topic, sender, first_seq, items])


def encode_publish_from(topic: str, sender: bytes, seq: int, encoded_data: bytes) -> bytes:
    """A PUBLISH whose data is CBOR-encoded already: the same bytes as ``encode_publish``."""
    return b"".join((publish_prefixes(topic)[0], dumps(sender), dumps(seq), encoded_data))


def encode_publish_batch_from(
    topic: str, sender: bytes, first_seq: int, encoded_items: list[bytes]
) -> bytes:
    """A PUBLISH_BATCH built from items CBOR-encoded already (by ``dumps``), without decoding
    them again: the bytes are the same as ``encode_publish_batch`` would give."""
    return b"".join(
        (
            publish_prefixes(topic)[1],
            dumps(sender),
            dumps(first_seq),
            _head(_ARRAY, len(encoded_items)),
            *encoded_items,
        )
    )


def _head(major: int, length: int) -> bytes:
    """A CBOR head: the ``major`` type (``_BYTE_STRING``, ``_ARRAY``) and its length argument."""
    if length < 24:
        return bytes((major + length,))
    if length < 256:
        return bytes((major + 24, length))
    if length < 65536:
        return bytes((major + 25,)) + length.to_bytes(2, "big")
    if length < 1 << 32:
        return bytes((major + 26,)) + length.to_bytes(4, "big")
    return bytes((major + 27,)) + length.to_bytes(8, "big")


def _value(value: Any) -> tuple[bytes, ...]:
    """``value`` encoded, as parts to join: a byte string's bytes are not copied first, so a
    large binary payload is copied once, into the frame."""
    if type(value) is bytes:
        return _head(_BYTE_STRING, len(value)), value
    return (cbor2.dumps(value),)


@functools.lru_cache(maxsize=4096)
def publish_prefixes(topic: str) -> tuple[bytes, bytes]:
    """The byte prefixes that start every PUBLISH and PUBLISH_BATCH frame on ``topic``.

    A CBOR text string carries its length before its bytes, so subscribing a ZeroMQ SUB socket
    to these prefixes matches the topic exactly: ``news`` never matches ``newsletter``.
    """
    encoded_topic = cbor2.dumps(topic)
    return (
        bytes([0x86, VERSION, Kind.PUBLISH]) + encoded_topic,
        bytes([0x86, VERSION, Kind.PUBLISH_BATCH]) + encoded_topic,
    )


# -- decoding ------------------------------------------------------------------------------------


def _is_uint(value: Any) -> bool:
    """A plain CBOR unsigned integer: 0 to 2**64 - 1 (a bignum is no call id or sequence)."""
    return type(value) is int and 0 <= value < 1 << 64


def _check_call_id(message: list[Any]) -> None:
    call_id = message[2]  # _is_uint, inlined: every reply is checked here
    if type(call_id) is not int or not 0 <= call_id < 1 << 64:
        raise ProtocolError("call id must be an unsigned integer")


def _check_request(message: list[Any]) -> None:
    _check_call_id(message)
    _, _, _, method, args, kwargs = message
    if type(method) is not str:
        raise ProtocolError("method must be a text string")
    if type(args) is not list:
        raise ProtocolError("args must be an array")
    if type(kwargs) is not dict or (kwargs and not all(type(key) is str for key in kwargs)):
        raise ProtocolError("kwargs must be a map with text keys")


def _check_error(message: list[Any]) -> None:
    _check_call_id(message)
    if not all(type(field) is str for field in message[3:]):
        raise ProtocolError("error type, message and traceback must be text strings")


def _check_counted(message: list[Any]) -> None:
    """A CREDIT or FLOW_END: a call id and a count (a credit limit, an item count)."""
    _check_call_id(message)
    if not _is_uint(message[3]):
        raise ProtocolError(f"{Kind(message[1]).name} count must be an unsigned integer")


def _check_flow_item(message: list[Any]) -> None:
    _check_call_id(message)
    if not _is_uint(message[3]):
        raise ProtocolError("FLOW_ITEM index must be an unsigned integer")


def _check_publish(message: list[Any]) -> None:
    _, kind, topic, sender, seq, data = message
    if type(topic) is not str:
        raise ProtocolError("topic must be a text string")
    if type(sender) is not bytes or len(sender) != UUID_BYTES:
        raise ProtocolError("sender must be a 16-byte UUID")
    if not _is_uint(seq):
        raise ProtocolError("sequence number must be an unsigned integer")
    if kind == Kind.PUBLISH_BATCH and (type(data) is not list or not data):
        raise ProtocolError("batch items must be a non-empty array")


# kind -> (array length, checker)
_SHAPES: dict[int, tuple[int, Callable[[list[Any]], None]]] = {
    Kind.REQUEST: (6, _check_request),
    Kind.REPLY: (4, _check_call_id),
    Kind.ERROR: (6, _check_error),
    Kind.STREAM_ITEM: (4, _check_call_id),
    Kind.STREAM_END: (3, _check_call_id),
    Kind.CANCEL: (3, _check_call_id),
    Kind.PUBLISH: (6, _check_publish),
    Kind.PUBLISH_BATCH: (6, _check_publish),
    Kind.CREDIT: (4, _check_counted),
    Kind.FLOW_ITEM: (5, _check_flow_item),
    Kind.FLOW_END: (4, _check_counted),
}


def decode(frame: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> list[Any]:
    """Decode one message frame into ``[version, kind, ...fields]``.

    Raises:
        ProtocolError: the frame is not a valid message (MessageTooLarge if over ``max_size``).
    """
    if len(frame) > max_size:
        raise MessageTooLarge(f"{len(frame)} bytes is over the maximum of {max_size}")
    try:
        message = _cbor2_loads(
            frame, semantic_decoders=_TAG_TABLE, tag_hook=_refuse_tag, max_depth=MAX_DEPTH,
            allow_duplicate_keys=False, strict_hashable_types=True,
        )
    except Exception as exc:  # cbor2 raises several types for bad input: one ProtocolError
        message = _reparse(frame, exc)
    if type(message) is not list or len(message) < 3:
        raise ProtocolError("a message must be an array of at least 3 items")
    if message[0] != VERSION or type(message[0]) is not int:
        raise ProtocolError(
            f"unsupported protocol version {message[0]!r} (this side speaks {VERSION})"
        )
    shape = _SHAPES.get(message[1]) if type(message[1]) is int else None
    if shape is None:
        raise ProtocolError(f"unknown message kind {message[1]!r}")
    length, check = shape
    if len(message) != length:
        raise ProtocolError(f"{Kind(message[1]).name} must have {length} items, not {len(message)}")
    check(message)
    # a frame this short nests 64 levels at most; a counter's bytes are no simple value
    if len(frame) > MAX_DEPTH or _may_hold_simple_values(frame, _AFTER_THE_COUNTER[frame[3]]):
        _check_container(message, 1)
    return message


def decode_publish(frame: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> list[Any]:
    """``decode`` for subscribers: the same checks, for PUBLISH and PUBLISH_BATCH only, written
    out flat because every received message goes through here.

    Raises:
        ProtocolError: the frame is not a valid publication.
    """
    if len(frame) > max_size:
        raise MessageTooLarge(f"{len(frame)} bytes is over the maximum of {max_size}")
    try:
        message = _cbor2_loads(
            frame, semantic_decoders=_TAG_TABLE, tag_hook=_refuse_tag, max_depth=MAX_DEPTH,
            allow_duplicate_keys=False, strict_hashable_types=True,
        )
    except Exception as exc:  # cbor2 raises several types for bad input: one ProtocolError
        message = _reparse(frame, exc)
    if type(message) is list and len(message) == 6:
        version, kind, topic, sender, seq, data = message
        if (
            version == VERSION
            and type(version) is int
            and (kind == 7 or (kind == 8 and type(data) is list and data))
            and type(kind) is int
            and type(topic) is str
            and type(sender) is bytes
            and len(sender) == UUID_BYTES
            and type(seq) is int
            and 0 <= seq < 1 << 64
        ):
            if type(data) is dict or type(data) is list:
                _check_container(data, 2)
            elif type(data) not in _LEAVES:
                _check_value(data, 2)
            return message
    decode(frame, max_size)  # raises the precise error for anything malformed
    raise UnexpectedKind(f"expected a publication, got a message of kind {message[1]!r}")


def decode_publish_data(data: bytes) -> Any:
    """The last field of a publication alone: a PUBLISH's data, or a PUBLISH_BATCH's items.

    For a subscriber that reads the rest of the frame itself (its head is fixed: section 4) and
    passes the bytes from that field on: they are decoded and checked as ``decode_publish``
    does it there, one level inside the envelope's array. Bytes after the item are ignored, as
    there. (A batch's items must also be a non-empty array: the caller checks that.)

    Raises:
        ProtocolError: not a value of section 2.
    """
    try:
        value = _cbor2_loads(
            data, semantic_decoders=_TAG_TABLE, tag_hook=_refuse_tag, max_depth=MAX_DEPTH - 1,
            allow_duplicate_keys=False, strict_hashable_types=True,
        )
    except Exception as exc:  # cbor2 raises several types for bad input: one ProtocolError
        value = _reparse(data, exc)
    if type(value) is dict or type(value) is list:
        _check_container(value, 2)
    elif type(value) not in _LEAVES:
        _check_value(value, 2)
    return value


# -- beacons -------------------------------------------------------------------------------------


def encode_beacon(
    kind: BeaconKind,
    name: str,
    node_uuid: uuid_module.UUID,
    seq: int,
    endpoints: Mapping[str, str],
    headers: Mapping[str, str],
) -> bytes:
    """Encode one beacon datagram.

    Raises:
        EncodeError: the beacon would be over ``MAX_BEACON_SIZE`` or the name is too long.
    """
    # surrogatepass: a name that is not valid UTF-8 is refused by dumps() below, as EncodeError
    if type(name) is not str or not 0 < len(name.encode(errors="surrogatepass")) <= MAX_NAME_BYTES:
        raise EncodeError(f"a node name is 1 to {MAX_NAME_BYTES} bytes of UTF-8, not {name!r}")
    body = dumps([int(kind), name, node_uuid.bytes, seq, dict(endpoints), dict(headers)])
    datagram = BEACON_MAGIC + bytes([BEACON_VERSION]) + body
    if len(datagram) > MAX_BEACON_SIZE:
        raise EncodeError(
            f"beacon of {len(datagram)} bytes is over {MAX_BEACON_SIZE}: fewer headers"
        )
    return datagram


def _is_text_map(value: Any) -> bool:
    return type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items())


BeaconFields = tuple[BeaconKind, str, uuid_module.UUID, int, dict[str, str], dict[str, str]]
PeerList = tuple[uuid_module.UUID, list[tuple[str, int]]]


def decode_beacon(datagram: bytes) -> BeaconFields:
    """Decode a beacon datagram into ``(kind, name, uuid, seq, endpoints, headers)``.

    Raises:
        ProtocolError: a foreign, truncated, oversized or malformed datagram, or a peer list.
    """
    decoded = decode_discovery(datagram)
    if len(decoded) != 6:
        raise ProtocolError("a peer list, not a beacon")
    return decoded


def decode_peer_list(datagram: bytes) -> PeerList:
    """Decode a peer list datagram into ``(sender uuid, [(host, port), ...])``.

    Raises:
        ProtocolError: a foreign, truncated, oversized or malformed datagram, or a beacon.
    """
    decoded = decode_discovery(datagram)
    if len(decoded) != 2:
        raise ProtocolError("a beacon, not a peer list")
    return decoded


def encode_peer_list(node_uuid: uuid_module.UUID, addresses: Sequence[tuple[str, int]]) -> bytes:
    """Encode one peer list datagram: the sender's UUID and up to MAX_PEER_LIST addresses.

    Raises:
        EncodeError: too many addresses, or one that is not ``(text host, port 1-65535)``.
    """
    if len(addresses) > MAX_PEER_LIST:
        raise EncodeError(f"{len(addresses)} addresses is over {MAX_PEER_LIST} in one peer list")
    if not all(_is_address(list(address)) for address in addresses):
        raise EncodeError(f"peer addresses are (host, port) pairs, not {addresses!r}")
    body = dumps([PEER_LIST_KIND, node_uuid.bytes, [list(address) for address in addresses]])
    return BEACON_MAGIC + bytes([BEACON_VERSION]) + body


def _is_address(value: Any) -> bool:
    """``[host, port]``: a dotted-quad IPv4 address as ``str(IPv4Address)`` writes it, a port."""
    if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
        return False
    host, port = value
    try:
        canonical = str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False
    return canonical and type(port) is int and 0 < port < 65536


def decode_discovery(datagram: bytes) -> BeaconFields | PeerList:
    """Decode any discovery datagram: a beacon (6 fields) or a peer list (2 fields).

    Raises:
        ProtocolError: a foreign, truncated, oversized or malformed datagram.
    """
    if len(datagram) > MAX_BEACON_SIZE:
        raise MessageTooLarge(f"beacon of {len(datagram)} bytes is over {MAX_BEACON_SIZE}")
    if datagram[:3] != BEACON_MAGIC:
        raise ProtocolError("not a zmqkit beacon (bad magic)")
    if datagram[3:4] != bytes([BEACON_VERSION]):
        raise ProtocolError(f"unsupported beacon version {datagram[3:4]!r}")
    body = _load_exactly_one(datagram[4:])
    if type(body) is list and len(body) == 3 and body[0] == PEER_LIST_KIND:
        return _peer_list(body)
    if type(body) is not list or len(body) != 6:
        raise ProtocolError("beacon body must be an array of 6 items")
    kind, name, raw_uuid, seq, endpoints, headers = body
    if kind not in tuple(BeaconKind) or type(kind) is not int:
        raise ProtocolError(f"unknown beacon kind {kind!r}")
    if type(name) is not str or not 0 < len(name.encode()) <= MAX_NAME_BYTES:
        raise ProtocolError(f"beacon name must be 1 to {MAX_NAME_BYTES} bytes of text")
    if type(raw_uuid) is not bytes or len(raw_uuid) != UUID_BYTES:
        raise ProtocolError("beacon uuid must be 16 bytes")
    if not _is_uint(seq):
        raise ProtocolError("beacon seq must be an unsigned integer")
    if not _is_text_map(endpoints) or not _is_text_map(headers):
        raise ProtocolError("beacon endpoints and headers must be maps of text to text")
    return BeaconKind(kind), name, uuid_module.UUID(bytes=raw_uuid), seq, endpoints, headers


def _peer_list(body: list[Any]) -> PeerList:
    kind, raw_uuid, addresses = body
    if type(kind) is not int:
        raise ProtocolError(f"unknown beacon kind {kind!r}")
    if type(raw_uuid) is not bytes or len(raw_uuid) != UUID_BYTES:
        raise ProtocolError("peer list uuid must be 16 bytes")
    if type(addresses) is not list or len(addresses) > MAX_PEER_LIST:
        raise ProtocolError(f"peer list addresses must be an array of at most {MAX_PEER_LIST}")
    if not all(_is_address(address) for address in addresses):
        raise ProtocolError("each peer address must be [IPv4 text, port 1-65535]")
    return uuid_module.UUID(bytes=raw_uuid), [(host, port) for host, port in addresses]

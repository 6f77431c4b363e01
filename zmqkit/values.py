"""The values of the wire (docs/protocol.md, section 2), and a CBOR decoder that takes no others.

cbor2 does most of the work, in native code: tags through a table (six allowed, the rest refused),
duplicate map keys, malformed input. Three rules of section 2 it cannot apply by itself are
applied here, at a small cost on the hot path:

- **No undefined or simple values.** cbor2 decodes them to objects. ``check`` walks a decoded
  value and refuses any type outside section 2. The codec walks a message only when it may hold
  one: a frame of at most 64 bytes (too short to nest 65 levels) without a byte that can start
  a simple value (``SIMPLE_HEAD``) cannot, and most frames are such; a subscriber walks a
  publication's data alone (the sender's random bytes would defeat that test).
- **Nesting depth 64, counting the outermost array; arrays, maps and tags count one level
  each.** cbor2's ``max_depth`` counts the containers around each decoded item, so an *empty*
  array or map one level too deep passes it; the same walk refuses it.
- **Decoding is linear for any map.** A Python dict built from keys that share a hash costs
  quadratic time, and integer keys can be chosen to share one. cbor2 is asked to decode only
  text and byte string keys (whose hashes are salted per process); a frame with any other key is
  decoded again through ``_flatten_maps``, which rewrites every map as a private tag around an
  array of its keys and values, so that ``_map`` checks the keys' hashes before it builds the
  dict. A map or set in which more than ``MAX_SAME_HASH`` keys share a hash is refused.

Everything wrong raises :class:`~zmqkit.errors.ProtocolError` and nothing else.
"""

from __future__ import annotations

import collections
import datetime
import io
import re
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import cbor2

from .errors import ProtocolError

__all__ = [
    "ALLOWED_TAGS",
    "LEAVES",
    "MAX_DEPTH",
    "MAX_SAME_HASH",
    "SIMPLE_HEAD",
    "check",
    "check_container",
    "load_exactly_one",
    "loads",
    "parse",
    "reparse",
]

MAX_DEPTH = 64  # levels of arrays, maps and tags, the outermost array of a message being level 1
MAX_SAME_HASH = 8  # keys of one map (or elements of one set) that may share a hash
ALLOWED_TAGS = frozenset({0, 1, 2, 3, 37, 258})
BIGNUM_TAGS = frozenset({2, 3})
SET_TAG = 258
_FLAT_MAP_TAG = 40_000  # private: a map rewritten by _flatten_maps (never allowed on the wire)
_NOT_TEXT_KEY = "must be a text string or byte string"  # cbor2's refusal under strict keys

_frozendict: type = cbor2.frozendict
LEAVES = frozenset({int, float, str, bytes, bool, type(None), datetime.datetime, uuid.UUID})
_CONTAINERS = frozenset({list, tuple, dict, _frozendict, set, frozenset})
_PLAIN = LEAVES | _CONTAINERS
# the bytes that can start a simple value (0xe0-0xf3), undefined (0xf7) or a one-byte simple
# value (0xf8): a frame without any holds none (most frames, which then skip the walk)
SIMPLE_HEAD = re.compile(b"[\xe0-\xf3\xf7\xf8]")


def _refuser(tag: int) -> Callable[..., NoReturn]:
    def refuse(*_: Any) -> NoReturn:
        raise ValueError(f"CBOR tag {tag} is not allowed on the zmqkit wire")

    return refuse


def _bignum_decoder(tag: int) -> Callable[..., int]:
    """Tags 2 and 3 only for integers that a plain CBOR integer cannot hold: a small value in a
    bignum could pass for a version, kind, call id or sequence number, which are never tagged."""

    def decode_bignum(payload: Any, *_: Any) -> int:
        if type(payload) is not bytes:
            raise ValueError(f"tag {tag} must hold a byte string")
        magnitude = int.from_bytes(payload, "big")
        if magnitude < 1 << 64:
            raise ValueError(f"tag {tag} holds {magnitude}, which fits a plain integer")
        return magnitude if tag == 2 else -1 - magnitude

    return decode_bignum


def _frozen(value: Any) -> Any:
    """``value`` made hashable as cbor2 makes a map key: arrays as tuples, maps as frozendicts."""
    kind = type(value)
    if kind in LEAVES or kind is tuple or kind is frozenset or kind is _frozendict:
        return value
    if kind is list:
        return tuple(_frozen(item) for item in value)
    if kind is dict:
        return _frozendict({key: _frozen(item) for key, item in value.items()})
    if kind is set:
        return frozenset(value)
    raise ValueError(f"{kind.__name__} is not a value of the zmqkit wire")


def _check_hashes(keys: list[Any], what: str) -> None:
    """Refuse keys of which too many share a hash: a dict or set of them costs quadratic time.
    (Counting hashes is linear: distinct hash values never collide with each other.)"""
    if len(keys) > MAX_SAME_HASH:
        counts = collections.Counter(map(hash, keys))
        if max(counts.values()) > MAX_SAME_HASH:
            raise ValueError(f"more than {MAX_SAME_HASH} {what} share one hash")


def _set(items: Any, immutable: bool = False) -> set[Any] | frozenset[Any]:
    """Tag 258: a set, refused if an element repeats (section 2: an array of distinct items)."""
    if type(items) not in (list, tuple):
        raise ValueError("tag 258 must hold an array")
    elements = [_frozen(item) for item in items]
    _check_hashes(elements, "set elements")
    result = frozenset(elements) if immutable else set(elements)
    if len(result) != len(elements):
        raise ValueError("an element of a set repeats")
    return result


def _map(items: Any, immutable: bool = False) -> Any:
    """A map that ``_flatten_maps`` rewrote: its keys and values, alternately."""
    keys = [_frozen(key) for key in items[0::2]]
    _check_hashes(keys, "map keys")
    result = dict(zip(keys, items[1::2], strict=True))
    if len(result) != len(keys):
        raise ValueError("a map key repeats")
    return _frozendict(result) if immutable else result


# The tags cbor2 decodes by itself into rich objects (regular expressions, parsed e-mail, shared
# references, decimals of any exponent...), each answered with a refusal; every other tag reaches
# ``_refuse_tag``. Only 0 and 1 (date/time), 37 (UUID), 258 (set) and, through the check above,
# 2 and 3 (big integers) get through: plain, bounded values that Python peers exchange naturally.
# A plain dict, because cbor2 reads it faster than any other mapping; tests/test_codec.py probes
# cbor2 for tags it decodes natively, so a new cbor2 cannot add one unnoticed.
NATIVE_TAGS_REFUSED = (4, 5, 25, 28, 29, 30, 35, 36, 52, 54, 100, 256, 260, 261, 1004, 43000, 55799)
TAG_TABLE: dict[int, Callable[..., Any]] = {tag: _refuser(tag) for tag in NATIVE_TAGS_REFUSED}
TAG_TABLE.update({tag: _bignum_decoder(tag) for tag in BIGNUM_TAGS})
TAG_TABLE[SET_TAG] = _set
_FLAT_TAG_TABLE = {**TAG_TABLE, _FLAT_MAP_TAG: _map}


def refuse_tag(tag: Any, *_: Any) -> NoReturn:
    """cbor2 calls this for every tag it has no decoder for: all of them are refused."""
    raise ValueError(f"CBOR tag {getattr(tag, 'tag', tag)} is not allowed on the zmqkit wire")


_cbor2_loads = cbor2.loads


def parse(data: bytes) -> Any:
    """Decode the first CBOR item of ``data`` under every rule of section 2 that cbor2 applies
    (tags, duplicate keys, linear maps, nesting with items in it). What cbor2 cannot see is left
    to ``check``, which callers run on the parts they do not type-check themselves. (The codec
    makes the same cbor2 call itself, on the hot path, and hands its failures to ``reparse``.)

    Raises:
        ProtocolError: ``data`` does not start with one well-formed item.
    """
    try:
        return _cbor2_loads(
            data, semantic_decoders=TAG_TABLE, tag_hook=refuse_tag, max_depth=MAX_DEPTH,
            allow_duplicate_keys=False, strict_hashable_types=True,
        )
    except Exception as exc:  # cbor2 raises several types for bad input; all mean the same here
        return reparse(data, exc)


def reparse(data: bytes, exc: Exception) -> Any:
    """After cbor2 refused ``data`` with ``exc``: decode it through ``_flatten_maps`` if cbor2
    only refused a map key other than text, else raise ProtocolError from ``exc``."""
    if _NOT_TEXT_KEY not in str(exc):
        raise ProtocolError(f"undecodable CBOR: {exc.__cause__ or exc}") from exc
    return _loads_flattened(data)  # checked on the way


def check(value: Any, depth: int) -> None:
    """Refuse what ``parse`` let through in ``value``, found at nesting level ``depth`` (the
    outermost item is at level 1): undefined, simple values, an empty array or map deeper than
    ``MAX_DEPTH``.

    Raises:
        ProtocolError: it holds one.
    """
    if type(value) not in LEAVES:
        check_container([value], depth - 1)


def loads(data: bytes) -> Any:
    """Decode the first CBOR item of ``data``, refusing every value section 2 does not allow.

    Raises:
        ProtocolError: ``data`` does not start with one well-formed item of section 2.
    """
    value = parse(data)
    check(value, 1)
    return value


def load_exactly_one(data: bytes) -> Any:
    """``loads`` for an item that must fill ``data`` exactly (a beacon body: rare and small, so
    read through a stream that says where the item ended)."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream, semantic_decoders=TAG_TABLE, tag_hook=refuse_tag, max_depth=MAX_DEPTH,
            allow_duplicate_keys=False, strict_hashable_types=True, read_size=1,
        ).decode()
    except Exception as exc:  # cbor2 raises several types for bad input; all mean the same here
        raise ProtocolError(f"undecodable CBOR: {exc.__cause__ or exc}") from exc
    if stream.tell() != len(data):
        raise ProtocolError(f"{len(data) - stream.tell()} bytes after the CBOR item")
    check(value, 1)
    return value


def _loads_flattened(data: bytes) -> Any:
    try:
        flat = _flatten_maps(data)
        # each map is a tag around an array now: two levels where the rules count one
        return _cbor2_loads(flat, semantic_decoders=_FLAT_TAG_TABLE, tag_hook=refuse_tag,
                            max_depth=2 * MAX_DEPTH + 1)
    except Exception as exc:  # cbor2 raises several types for bad input; all mean the same here
        raise ProtocolError(f"undecodable CBOR: {exc.__cause__ or exc}") from exc


def check_container(container: Any, depth: int) -> None:
    """Refuse what cbor2 let through in ``container``, a list, map, set or tuple at nesting level
    ``depth``: undefined, simple values, and an empty container deeper than ``MAX_DEPTH``.

    Map keys are not looked at: on this path cbor2 took only text and byte string keys (a frame
    with others went through ``_flatten_maps``, which checks everything itself).
    """
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nesting deeper than {MAX_DEPTH} levels")
    for item in container.values() if type(container) is dict else container:
        kind = type(item)
        if kind in LEAVES:
            continue
        if kind is list or kind is dict or kind is tuple:
            check_container(item, depth + 1)
        elif kind is set or kind is frozenset:  # two levels: tag 258 and its array
            check_container(item, depth + 2)
        else:
            raise ProtocolError(f"{kind.__name__} is not a value of the zmqkit wire (undefined "
                                "and simple values are never sent)")


# -- the linear path for maps with keys other than text ------------------------------------------

_MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 5, 6, 7
_INDEFINITE, _BREAK = 31, 0xFF


def _head(major: int, length: int) -> bytes:
    if length < 24:
        return bytes(((major << 5) + length,))
    size = 1 if length < 256 else 2 if length < 65536 else 4 if length < 1 << 32 else 8
    return bytes(((major << 5) + 24 + size.bit_length() - 1,)) + length.to_bytes(size, "big")


_FLAT_MAP_HEAD = _head(_MAJOR_TAG, _FLAT_MAP_TAG)


def _flatten_maps(data: bytes) -> bytes:
    """The first CBOR item of ``data`` with each map rewritten as ``_FLAT_MAP_TAG`` around an
    array of twice its length (keys and values alternately); the bytes after it are dropped.

    It reads only the heads (strings are skipped by their length) and refuses, as ValueError,
    what the wire never carries: a malformed or truncated head, a disallowed tag, a simple value
    or undefined, nesting beyond ``MAX_DEPTH``.
    """
    out: list[bytes] = []
    copied = position = 0
    end = len(data)
    # per open container: [items left to read, or -1 until a break]; the first is the frame
    stack: list[list[int]] = [[1]]
    while stack:
        open_ = stack[-1]
        if open_[0] == 0:
            stack.pop()
            continue
        if position >= end:
            raise ValueError("truncated CBOR")
        if open_[0] < 0 and data[position] == _BREAK:
            position += 1
            stack.pop()
            continue
        if open_[0] > 0:
            open_[0] -= 1
        start = position
        major, length, position = _read_head(data, position)
        if major <= 1:  # an integer
            continue
        if major <= 3:  # a byte or text string
            position = _skip_string(data, major, length, position)
            continue
        if major == _MAJOR_SIMPLE:
            if length not in (20, 21, 22, 25, 26, 27):  # false, true, null, the floats
                raise ValueError("undefined and simple values are not allowed")
            continue
        if len(stack) > MAX_DEPTH:  # an array, map or tag at level len(stack)
            raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
        if major == _MAJOR_TAG:
            if length not in ALLOWED_TAGS:
                raise ValueError(f"CBOR tag {length} is not allowed on the zmqkit wire")
            stack.append([1])
            continue
        items = length if length < 0 or major != _MAJOR_MAP else 2 * length
        if major == _MAJOR_MAP:
            array = b"\x9f" if items < 0 else _head(4, items)
            out += (data[copied:start], _FLAT_MAP_HEAD, array)
            copied = position
        if items > end - position:
            raise ValueError("more items than bytes left")
        if items != 0:
            stack.append([items])
    out.append(data[copied:position])
    return b"".join(out)


def _read_head(data: bytes, position: int) -> tuple[int, int, int]:
    """(major type, argument or -1 for an indefinite length, the position after the head).
    For major type 7 the argument is the additional information itself."""
    initial = data[position]
    major, info = initial >> 5, initial & 31
    position += 1
    if major == _MAJOR_SIMPLE:
        size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0)
        if info == _INDEFINITE or 28 <= info <= 30:
            raise ValueError(f"a break or reserved head 0x{initial:02x} where an item belongs")
        if position + size > len(data):
            raise ValueError("truncated CBOR")
        return major, info, position + size
    if info < 24:
        return major, info, position
    if info <= 27:
        size = 1 << (info - 24)
        if position + size > len(data):
            raise ValueError("truncated CBOR")
        return major, int.from_bytes(data[position:position + size], "big"), position + size
    if info == _INDEFINITE and 2 <= major <= 5:
        return major, -1, position
    raise ValueError(f"malformed CBOR head 0x{initial:02x}")


def _skip_string(data: bytes, major: int, length: int, position: int) -> int:
    """The position after a string whose head was read (an indefinite one: after its break)."""
    if length >= 0:
        if position + length > len(data):
            raise ValueError("truncated CBOR")
        return position + length
    while True:  # definite chunks of the same major type, then a break
        if position >= len(data):
            raise ValueError("truncated CBOR")
        if data[position] == _BREAK:
            return position + 1
        chunk_major, chunk_length, position = _read_head(data, position)
        if chunk_major != major or chunk_length < 0:
            raise ValueError("a chunk of an indefinite string must be a definite string")
        position = _skip_string(data, major, chunk_length, position)

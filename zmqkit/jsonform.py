"""The JSON form of wire values: what the ``zmqkit`` command reads and prints (pure).

A value that travels in CBOR can hold what JSON cannot: bytes, sets, integers beyond what a
JSON reader keeps exactly, NaN and infinities, dates, UUIDs, maps with keys that are not text.
Each gets one reversible form, an object with a single ``$`` key::

    bytes                          {"$bytes": "aGk="}             base64, with padding
    set, frozenset                 {"$set": [1, 2]}
    int beyond +-(2**53 - 1)       {"$int": "9007199254740993"}   decimal digits
    NaN, Infinity, -Infinity       {"$float": "NaN"}
    datetime                       {"$datetime": "2026-01-02T03:04:05+00:00"}   ISO 8601
    UUID                           {"$uuid": "6f1c...-..."}
    a map with a key that is not   {"$map": [[1, "one"], ["$x", 2]]}   its [key, value] pairs
    text, or that starts with "$"

``to_json`` turns a value into plain JSON data and ``from_json`` turns it back, so
``from_json(to_json(v)) == v`` for every value the wire carries (tuples come back as lists,
as CBOR arrays do; a map key that was an array comes back as a tuple, as cbor2 gives it).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_EXACT_INT", "dumps", "from_json", "loads", "to_json"]

MAX_EXACT_INT = 2**53 - 1  # the largest integer a JSON reader that uses doubles keeps exactly
_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data: dicts with text keys, lists, text, finite numbers, bools,
    None; what JSON cannot hold takes its ``$`` form.

    Raises:
        ValueError: a value that is none of the wire's kinds (an arbitrary object).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_EXACT_INT <= value <= MAX_EXACT_INT else {"$int": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        name = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return {"$float": name}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("$") for key in value):
            return {key: to_json(item) for key, item in value.items()}
        return {"$map": [[to_json(key), to_json(item)] for key, item in value.items()]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return {"$set": [to_json(item) for item in value]}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, uuid_module.UUID):
        return {"$uuid": str(value)}
    raise ValueError(f"{type(value).__name__} has no JSON form")


def from_json(data: Any) -> Any:
    """The value whose JSON form is ``data`` (the inverse of ``to_json``).

    Raises:
        ValueError: a ``$`` form with the wrong content (``{"$bytes": 5}``).
    """
    if isinstance(data, list):
        return [from_json(item) for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        [(key, content)] = data.items()
        decode = _DECODERS.get(key)
        if decode is not None:
            try:
                return decode(content)
            except (TypeError, ValueError) as exc:
                shown = json.dumps(content, ensure_ascii=False, default=repr)
                raise ValueError(f'"{key}" {exc}, not {shown}') from exc
    return {key: from_json(item) for key, item in data.items()}


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value``'s JSON form as text: one compact line, or indented with ``indent``."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(to_json(value), ensure_ascii=False, indent=indent, separators=separators)


def loads(text: str) -> Any:
    """The value that a JSON text (in the ``$`` forms) stands for.

    Raises:
        ValueError: not JSON (a ``json.JSONDecodeError``), or a malformed ``$`` form.
    """
    return from_json(json.loads(text, parse_constant=_refuse_constant))


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON: the $float form says them
    raise ValueError(f"{name} is not JSON; write {{\"$float\": \"{name}\"}}")


def _as_text(content: Any) -> str:
    if not isinstance(content, str):
        raise TypeError("needs text")
    return content


def _decode_bytes(content: Any) -> bytes:
    try:
        return base64.b64decode(_as_text(content), validate=True)
    except binascii.Error:
        raise ValueError("needs base64 text") from None


def _decode_int(content: Any) -> int:
    text = _as_text(content)
    if not text.lstrip("-").isdigit():
        raise ValueError("needs decimal digits")
    return int(text)


def _decode_float(content: Any) -> float:
    text = _as_text(content)
    if text not in _FLOATS:
        raise ValueError(f"needs one of {', '.join(_FLOATS)}")
    return _FLOATS[text]


def _decode_set(content: Any) -> frozenset[Any]:
    if not isinstance(content, list):
        raise TypeError("needs a list")
    return frozenset(_key(from_json(item)) for item in content)


def _decode_map(content: Any) -> dict[Any, Any]:
    if not isinstance(content, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in content
    ):
        raise TypeError("needs a list of [key, value] pairs")
    return {_key(from_json(key)): from_json(value) for key, value in content}


def _key(value: Any) -> Any:
    """A decoded value made hashable, as cbor2 gives map keys and set members (arrays as
    tuples); a map cannot be one."""
    if isinstance(value, list):
        return tuple(_key(item) for item in value)
    if isinstance(value, dict):
        raise TypeError("a map cannot be a key or a set member")
    return value


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$bytes": _decode_bytes,
    "$set": _decode_set,
    "$int": _decode_int,
    "$float": _decode_float,
    "$datetime": lambda content: datetime.datetime.fromisoformat(_as_text(content)),
    "$uuid": lambda content: uuid_module.UUID(_as_text(content)),
    "$map": _decode_map,
}

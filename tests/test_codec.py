"""The wire codec: round trips, exact topic prefixes, and garbage in gives ProtocolError only."""

from __future__ import annotations

import datetime
import decimal
import fractions
import ipaddress
import math
import re
import uuid
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqkit import codec
from zmqkit.codec import (
    BEACON_MAGIC,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_BEACON_SIZE,
    MAX_NAME_BYTES,
    VERSION,
    BeaconKind,
    Kind,
    decode,
    decode_beacon,
    encode,
    encode_beacon,
    encode_cancel,
    encode_credit,
    encode_error,
    encode_flow_end,
    encode_flow_item,
    encode_publish,
    encode_publish_batch,
    encode_reply,
    encode_request,
    encode_stream_end,
    encode_stream_item,
    publish_prefixes,
)
from zmqkit.errors import EncodeError, MessageTooLarge, ProtocolError
from zmqkit.peers import PeerTable

SENDER = bytes(range(16))
NODE_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_HEAVY = settings(FUZZ, max_examples=300)  # for strategies that build deep values

# The field count after ``version, kind`` for every kind (the codec docstring's table).
FIELD_COUNTS = {
    Kind.REQUEST: 4,
    Kind.REPLY: 2,
    Kind.ERROR: 4,
    Kind.STREAM_ITEM: 2,
    Kind.STREAM_END: 1,
    Kind.CANCEL: 1,
    Kind.PUBLISH: 4,
    Kind.PUBLISH_BATCH: 4,
    Kind.CREDIT: 2,
    Kind.FLOW_ITEM: 3,
    Kind.FLOW_END: 2,
}

# A payload that uses every value type the wire carries.
PAYLOAD: dict[str, Any] = {
    "none": None,
    "bools": [True, False],
    "ints": [0, 1, -1, 23, 24, 255, 256, 2**32, 2**64 - 1, -(2**64)],
    "floats": [0.0, -0.0, 1.5, 101.25, 1e300, -1e-300],
    "text": "héllo ✓",
    "bytes": b"\x00\xff" * 3,
    "nested": {"list": [[], [{}], {"a": [1, {"b": b""}]}]},
}


def raw(*items: Any) -> bytes:
    """A frame built with plain cbor2, bypassing the encode_* helpers."""
    return cbor2.dumps(list(items))


def raw_beacon(*body: Any, magic: bytes = BEACON_MAGIC, version: bytes = b"\x01") -> bytes:
    return magic + version + cbor2.dumps(list(body))


GOOD_BEACON_BODY: tuple[Any, ...] = (
    1, "calc", NODE_UUID.bytes, 7, {"rpc": "tcp://127.0.0.1:5555"}, {"v": "1"}
)


# -- round trips ---------------------------------------------------------------------------------


ROUND_TRIPS = [
    pytest.param(
        encode_request(42, "add", [1, 2], {"scale": 1.5}),
        [VERSION, Kind.REQUEST, 42, "add", [1, 2], {"scale": 1.5}],
        id="request",
    ),
    pytest.param(
        encode_request(0, "echo", (PAYLOAD,), {"x": PAYLOAD}),
        [VERSION, Kind.REQUEST, 0, "echo", [PAYLOAD], {"x": PAYLOAD}],
        id="request-tuple-args",
    ),
    pytest.param(
        encode_request(2**64 - 1, "", [], {}),
        [VERSION, Kind.REQUEST, 2**64 - 1, "", [], {}],
        id="request-largest-call-id",
    ),
    pytest.param(
        encode_reply(7, PAYLOAD), [VERSION, Kind.REPLY, 7, PAYLOAD], id="reply"
    ),
    pytest.param(encode_reply(7, None), [VERSION, Kind.REPLY, 7, None], id="reply-none"),
    pytest.param(
        encode_error(9, "ZeroDivisionError", "division by zero", "Traceback ..."),
        [VERSION, Kind.ERROR, 9, "ZeroDivisionError", "division by zero", "Traceback ..."],
        id="error",
    ),
    pytest.param(
        encode_error(9, "KeyError", "'x'"),
        [VERSION, Kind.ERROR, 9, "KeyError", "'x'", ""],
        id="error-default-traceback",
    ),
    pytest.param(
        encode_stream_item(3, [1, "two", b"3"]),
        [VERSION, Kind.STREAM_ITEM, 3, [1, "two", b"3"]],
        id="stream-item",
    ),
    pytest.param(encode_stream_end(3), [VERSION, Kind.STREAM_END, 3], id="stream-end"),
    pytest.param(encode_cancel(3), [VERSION, Kind.CANCEL, 3], id="cancel"),
    pytest.param(encode_credit(3, 512), [VERSION, Kind.CREDIT, 3, 512], id="credit"),
    pytest.param(
        encode_flow_item(3, 2**64 - 1, PAYLOAD), [VERSION, Kind.FLOW_ITEM, 3, 2**64 - 1, PAYLOAD],
        id="flow-item",
    ),
    pytest.param(encode_flow_item(3, 0, b"\x00" * 30),
                 [VERSION, Kind.FLOW_ITEM, 3, 0, b"\x00" * 30], id="flow-item-bytes"),
    pytest.param(encode_flow_end(3, 0), [VERSION, Kind.FLOW_END, 3, 0], id="flow-end"),
    pytest.param(
        encode_publish("ticks", SENDER, 0, {"seq": 1, "sym": "ABC", "px": 101.25, "qty": 100}),
        [VERSION, Kind.PUBLISH, "ticks", SENDER, 0, {"seq": 1, "sym": "ABC", "px": 101.25,
                                                      "qty": 100}],
        id="publish",
    ),
    pytest.param(
        encode_publish("", SENDER, 2**64 - 1, None),
        [VERSION, Kind.PUBLISH, "", SENDER, 2**64 - 1, None],
        id="publish-empty-topic",
    ),
    pytest.param(
        encode_publish_batch("ticks", SENDER, 10, [1, {"a": 2}, None]),
        [VERSION, Kind.PUBLISH_BATCH, "ticks", SENDER, 10, [1, {"a": 2}, None]],
        id="publish-batch",
    ),
]


@pytest.mark.parametrize(("frame", "expected"), ROUND_TRIPS)
def test_every_kind_round_trips_through_its_encoder(frame: bytes, expected: list[Any]) -> None:
    message = decode(frame)
    assert message == expected
    assert type(message) is list
    assert message[1] == expected[1]


@pytest.mark.parametrize(("frame", "expected"), ROUND_TRIPS)
def test_generic_encode_gives_the_same_bytes_as_the_specific_encoders(
    frame: bytes, expected: list[Any]
) -> None:
    kind = Kind(expected[1])
    assert encode(kind, *expected[2:]) == frame
    assert decode(encode(kind, *expected[2:])) == expected


def test_generic_encode_accepts_a_plain_int_kind() -> None:
    assert decode(encode(5, 11)) == [VERSION, Kind.STREAM_END, 11]  # type: ignore[arg-type]


def test_decoded_kind_compares_with_the_enum() -> None:
    message = decode(encode_reply(1, "x"))
    assert Kind(message[1]) is Kind.REPLY


def test_a_frame_at_exactly_max_size_is_accepted_and_one_byte_less_is_refused() -> None:
    frame = encode_reply(1, b"x" * 100)
    assert decode(frame, max_size=len(frame)) == [VERSION, Kind.REPLY, 1, b"x" * 100]
    with pytest.raises(MessageTooLarge):
        decode(frame, max_size=len(frame) - 1)


def test_oversize_input_raises_message_too_large_which_is_a_protocol_error() -> None:
    assert issubclass(MessageTooLarge, ProtocolError)
    with pytest.raises(MessageTooLarge):
        decode(bytes(DEFAULT_MAX_MESSAGE_SIZE + 1))
    with pytest.raises(MessageTooLarge):
        decode(encode_reply(1, "y" * 1000), max_size=999)


# -- encoding errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [object(), {"k": object()}, [1, lambda: 1], type, ...],
    ids=["object", "nested-object", "function", "type", "ellipsis"],
)
def test_encoding_a_value_cbor_cannot_carry_raises_encode_error(value: Any) -> None:
    with pytest.raises(EncodeError):
        encode_reply(1, value)
    with pytest.raises(EncodeError):
        encode_publish("t", SENDER, 0, value)
    assert issubclass(EncodeError, TypeError)


def test_encode_error_chains_the_cbor2_error() -> None:
    with pytest.raises(EncodeError) as info:
        encode_reply(1, object())
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset({"a"}),
        datetime.datetime(2024, 1, 1, 12, 30, tzinfo=datetime.timezone.utc),
        uuid.UUID(int=1),
        2**64,
        -(2**64) - 1,
        2**200,
        {"nested": [{3, 4}, uuid.UUID(int=2), 2**100]},
    ],
    ids=["set", "frozenset", "datetime", "uuid", "2**64", "-2**64-1", "2**200", "nested"],
)
def test_the_six_inert_tagged_kinds_round_trip(value: Any) -> None:
    # docs/protocol.md section 2: tags 0/1 (date/time), 2/3 (bignums), 37 (UUID), 258 (set)
    assert decode(encode_reply(1, value))[3] == value
    assert decode(encode_publish("t", SENDER, 1, [value]))[5] == [value]


def test_a_naive_datetime_cannot_be_encoded() -> None:
    with pytest.raises(EncodeError):
        encode_reply(1, datetime.datetime(2024, 1, 1))


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("1.5"),
        fractions.Fraction(1, 3),
        complex(1, 2),
        datetime.date(2024, 1, 1),
        re.compile("a+"),
        ipaddress.ip_address("127.0.0.1"),
    ],
    ids=["decimal", "fraction", "complex", "date", "regex", "ip-address"],
)
def test_values_outside_section_2_are_refused_by_the_receiver_naming_the_tag(value: Any) -> None:
    # The encoder does not look for them (checking every value would triple the cost of each
    # message, docs/protocol.md section 2); the receiver refuses them with a clear error.
    with pytest.raises(ProtocolError, match=r"CBOR tag \d+ is not allowed"):
        decode(encode_reply(1, value))


# -- exact topic prefixes ------------------------------------------------------------------------


def test_publish_prefixes_start_the_frames_of_their_topic() -> None:
    single, batch = publish_prefixes("news")
    assert encode_publish("news", SENDER, 5, {"a": 1}).startswith(single)
    assert encode_publish_batch("news", SENDER, 5, [1, 2]).startswith(batch)
    assert not encode_publish("news", SENDER, 5, 1).startswith(batch)
    assert not encode_publish_batch("news", SENDER, 5, [1]).startswith(single)


def test_publish_prefixes_match_the_topic_exactly() -> None:
    news = publish_prefixes("news")
    newsletter = publish_prefixes("newsletter")
    for frame in (
        encode_publish("newsletter", SENDER, 0, None),
        encode_publish_batch("newsletter", SENDER, 0, [None]),
    ):
        assert not any(frame.startswith(prefix) for prefix in news)
        assert any(frame.startswith(prefix) for prefix in newsletter)
    for frame in (
        encode_publish("news", SENDER, 0, None),
        encode_publish_batch("news", SENDER, 0, [None]),
    ):
        assert not any(frame.startswith(prefix) for prefix in newsletter)
        assert any(frame.startswith(prefix) for prefix in news)
    assert not any(encode_publish("new", SENDER, 0, None).startswith(p) for p in news)
    assert not any(encode_publish("", SENDER, 0, None).startswith(p) for p in news)


topics = st.text(max_size=300)


@FUZZ
@given(a=topics, b=topics, seq=st.integers(0, 2**64 - 1), data=st.integers() | st.text())
def test_publish_prefixes_match_a_frame_iff_the_topics_are_equal(
    a: str, b: str, seq: int, data: Any
) -> None:
    if isinstance(data, int):
        data = max(min(data, 2**63), -(2**63))
    single, batch = publish_prefixes(a)
    single_frame = encode_publish(b, SENDER, seq, data)
    batch_frame = encode_publish_batch(b, SENDER, seq, [data])
    assert single_frame.startswith(single) == (a == b)
    assert batch_frame.startswith(batch) == (a == b)
    assert not single_frame.startswith(batch)
    assert not batch_frame.startswith(single)


# -- malformed messages --------------------------------------------------------------------------


def _message(kind: Kind, **overrides: Any) -> list[Any]:
    """A valid message of ``kind`` as a list, with fields replaced by name."""
    fields: dict[Kind, dict[str, Any]] = {
        Kind.REQUEST: {"call_id": 1, "method": "add", "args": [1], "kwargs": {"k": 1}},
        Kind.REPLY: {"call_id": 1, "result": 3},
        Kind.ERROR: {"call_id": 1, "type": "E", "message": "m", "traceback": "t"},
        Kind.STREAM_ITEM: {"call_id": 1, "item": 3},
        Kind.STREAM_END: {"call_id": 1},
        Kind.CANCEL: {"call_id": 1},
        Kind.PUBLISH: {"topic": "t", "sender": SENDER, "seq": 0, "data": 1},
        Kind.PUBLISH_BATCH: {"topic": "t", "sender": SENDER, "seq": 0, "items": [1]},
        Kind.CREDIT: {"call_id": 1, "limit": 64},
        Kind.FLOW_ITEM: {"call_id": 1, "index": 0, "item": 3},
        Kind.FLOW_END: {"call_id": 1, "count": 1},
    }
    values = {**fields[kind], **overrides}
    assert values.keys() == fields[kind].keys(), "unknown field name in test"
    return [VERSION, int(kind), *values.values()]


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_the_valid_message_template_decodes(kind: Kind) -> None:
    # guards the negative tests below: each differs from an accepted message in one field only
    assert decode(raw(*_message(kind))) == _message(kind)


BAD_CALL_IDS = [True, False, -1, -(2**64), 1.0, 1.5, "1", b"\x01", None, [1], {"1": 1}]
CALL_ID_KINDS = [Kind.REQUEST, Kind.REPLY, Kind.ERROR, Kind.STREAM_ITEM, Kind.STREAM_END,
                 Kind.CANCEL, Kind.CREDIT, Kind.FLOW_ITEM, Kind.FLOW_END]


@pytest.mark.parametrize("kind", CALL_ID_KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("call_id", BAD_CALL_IDS, ids=repr)
def test_a_call_id_that_is_not_an_unsigned_int_is_refused(kind: Kind, call_id: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(raw(*_message(kind, call_id=call_id)))


MALFORMED = [
    # not an array of at least 3
    pytest.param(cbor2.dumps(1), id="int"),
    pytest.param(cbor2.dumps("x"), id="text"),
    pytest.param(cbor2.dumps({"v": 1}), id="map"),
    pytest.param(cbor2.dumps(None), id="null"),
    pytest.param(raw(), id="empty-array"),
    pytest.param(raw(1), id="array-of-1"),
    pytest.param(raw(1, 5), id="array-of-2"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param(b"\xff", id="break-code"),
    pytest.param(b"\x83\x01\x05", id="truncated-array"),
    pytest.param(b"\x61\xff", id="invalid-utf8"),
    pytest.param(b"\x81" * 100 + b"\x00", id="too-deep"),
    pytest.param(b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff", id="huge-declared-bytes"),
    pytest.param(b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff", id="huge-declared-array"),
    # version
    pytest.param(raw(2, 5, 1), id="version-2"),
    pytest.param(raw(0, 5, 1), id="version-0"),
    pytest.param(raw(-1, 5, 1), id="version-negative"),
    pytest.param(raw(True, 5, 1), id="version-bool"),
    pytest.param(raw(1.0, 5, 1), id="version-float"),
    pytest.param(raw("1", 5, 1), id="version-text"),
    pytest.param(raw(None, 5, 1), id="version-null"),
    pytest.param(raw([1], 5, 1), id="version-array"),
    # kind
    pytest.param(raw(1, 0, 1), id="kind-0"),
    pytest.param(raw(1, 12, 1, 2), id="kind-12"),
    pytest.param(raw(1, 255, 1, 2), id="kind-255"),
    pytest.param(raw(1, -5, 1), id="kind-negative"),
    pytest.param(raw(1, 2**64 - 1, 1), id="kind-huge"),
    pytest.param(raw(1, True, 1, 2), id="kind-bool"),
    pytest.param(raw(1, 5.0, 1), id="kind-float"),
    pytest.param(raw(1, "5", 1), id="kind-text"),
    pytest.param(raw(1, None, 1), id="kind-null"),
    pytest.param(raw(1, [5], 1), id="kind-array"),
    # wrong lengths, one short and one long for every kind
    *[
        pytest.param(raw(*_message(kind)[:-1]), id=f"{kind.name}-short")
        for kind in Kind
        if FIELD_COUNTS[kind] > 1
    ],
    *[pytest.param(raw(*_message(kind), None), id=f"{kind.name}-long") for kind in Kind],
    pytest.param(raw(1, 5, 1, 2, 3, 4, 5, 6, 7), id="STREAM_END-much-too-long"),
    # REQUEST fields
    pytest.param(raw(*_message(Kind.REQUEST, method=b"add")), id="method-bytes"),
    pytest.param(raw(*_message(Kind.REQUEST, method=None)), id="method-null"),
    pytest.param(raw(*_message(Kind.REQUEST, method=1)), id="method-int"),
    pytest.param(raw(*_message(Kind.REQUEST, args={"a": 1})), id="args-map"),
    pytest.param(raw(*_message(Kind.REQUEST, args="ab")), id="args-text"),
    pytest.param(raw(*_message(Kind.REQUEST, args=None)), id="args-null"),
    pytest.param(raw(*_message(Kind.REQUEST, args=b"ab")), id="args-bytes"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs=[["k", 1]])), id="kwargs-array"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs=None)), id="kwargs-null"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs={1: 1})), id="kwargs-int-key"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs={b"k": 1})), id="kwargs-bytes-key"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs={"ok": 1, 2: 2})), id="kwargs-one-bad-key"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs={None: 1})), id="kwargs-null-key"),
    pytest.param(raw(*_message(Kind.REQUEST, kwargs={(1, 2): 1})), id="kwargs-array-key"),
    # the counts of a flow-controlled stream
    *[
        pytest.param(raw(*_message(kind, **{field: bad})), id=f"{kind.name}-{field}-{bad!r}")
        for kind, field in [(Kind.CREDIT, "limit"), (Kind.FLOW_ITEM, "index"),
                            (Kind.FLOW_END, "count")]
        for bad in (-1, True, 1.0, "1", None, 2**64)
    ],
    # ERROR fields
    pytest.param(raw(*_message(Kind.ERROR, type=b"E")), id="error-type-bytes"),
    pytest.param(raw(*_message(Kind.ERROR, message=None)), id="error-message-null"),
    pytest.param(raw(*_message(Kind.ERROR, traceback=1)), id="error-traceback-int"),
    # PUBLISH and PUBLISH_BATCH fields
    *[
        pytest.param(raw(*_message(kind, **change)), id=f"{kind.name}-{label}")
        for kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH)
        for label, change in [
            ("topic-bytes", {"topic": b"t"}),
            ("topic-null", {"topic": None}),
            ("topic-int", {"topic": 1}),
            ("sender-15-bytes", {"sender": SENDER[:15]}),
            ("sender-17-bytes", {"sender": SENDER + b"!"}),
            ("sender-empty", {"sender": b""}),
            ("sender-text", {"sender": "0123456789abcdef"}),
            ("sender-array", {"sender": list(SENDER)}),
            ("seq-negative", {"seq": -1}),
            ("seq-bool", {"seq": True}),
            ("seq-float", {"seq": 1.0}),
            ("seq-text", {"seq": "1"}),
        ]
    ],
    pytest.param(raw(*_message(Kind.PUBLISH_BATCH, items=[])), id="batch-empty-items"),
    pytest.param(raw(*_message(Kind.PUBLISH_BATCH, items={"a": 1})), id="batch-items-map"),
    pytest.param(raw(*_message(Kind.PUBLISH_BATCH, items=None)), id="batch-items-null"),
    pytest.param(raw(*_message(Kind.PUBLISH_BATCH, items="ab")), id="batch-items-text"),
    pytest.param(raw(*_message(Kind.PUBLISH_BATCH, items=b"ab")), id="batch-items-bytes"),
]


@pytest.mark.parametrize("frame", MALFORMED)
def test_a_malformed_message_raises_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_limited_to_64_levels_counting_the_message_array() -> None:
    # items at level 65 (inside 64 containers) are fine; containers at level 65 are not
    deepest = _nested(codec.MAX_DEPTH - 1)
    assert decode(raw(VERSION, Kind.REPLY, 1, deepest))[3] == deepest
    with pytest.raises(ProtocolError):
        decode(raw(VERSION, Kind.REPLY, 1, _nested(codec.MAX_DEPTH)))
    with pytest.raises(ProtocolError):
        decode(b"\x84\x01\x02\x01" + b"\xa1\x61k" * 100_000 + b"\x00")  # maps, 100k deep


EMPTY_CONTAINERS = {"array": b"\x80", "map": b"\xa0", "indefinite-array": b"\x9f\xff",
                    "indefinite-map": b"\xbf\xff", "long-form-array": b"\x98\x00"}


@pytest.mark.parametrize("empty", list(EMPTY_CONTAINERS.values()), ids=list(EMPTY_CONTAINERS))
@pytest.mark.parametrize("keys", ["text", "int"], ids=["text-keys", "int-keys"])
def test_an_empty_container_at_level_65_is_refused_and_at_level_64_accepted(
    empty: bytes, keys: str
) -> None:
    # cbor2 counts the containers around each item, so an empty container one level too deep has
    # no item to trip it; section 2 counts containers. The message array is level 1, the REPLY's
    # map level 2 (its key's type picks the decoder's path), then arrays down to the empty one.
    key = b"\x61k" if keys == "text" else b"\x01"
    head = b"\x84\x01\x02\x01\xa1" + key
    assert decode(head + b"\x81" * 61 + empty)[3]  # the empty one at level 64
    with pytest.raises(ProtocolError, match="nesting"):
        decode(head + b"\x81" * 62 + empty)  # at level 65


def test_tags_count_as_a_level_of_nesting() -> None:
    # the message and 62 arrays around a set (tag 258, then its array): its array is at level 65
    with pytest.raises(ProtocolError):
        decode(b"\x84\x01\x02\x01" + b"\x81" * 62 + b"\xd9\x01\x02\x80")
    assert decode(b"\x84\x01\x02\x01" + b"\x81" * 61 + b"\xd9\x01\x02\x80")[3]
    with pytest.raises(ProtocolError):  # 64 arrays around a date: its tag is at level 65
        decode(b"\x84\x01\x02\x01" + b"\x81" * 63 + b"\xc1\x00")


SIMPLE_VALUES = {"undefined": b"\xf7", "simple-0": b"\xe0", "simple-19": b"\xf3",
                 "simple-32": b"\xf8\x20", "simple-255": b"\xf8\xff"}


def _places(value: bytes) -> dict[str, bytes]:
    """Frames that carry the encoded ``value`` where an application value goes."""
    return {
        "reply-result": b"\x84\x01\x02\x01" + value,
        "reply-in-array": b"\x84\x01\x02\x01\x82\x01" + value,
        "reply-map-value": b"\x84\x01\x02\x01\xa1\x61k" + value,
        "reply-int-map-value": b"\x84\x01\x02\x01\xa1\x01" + value,
        "reply-map-key": b"\x84\x01\x02\x01\xa1" + value + b"\x01",
        "reply-set-element": b"\x84\x01\x02\x01\xd9\x01\x02\x81" + value,
        "request-arg": b"\x86\x01\x01\x01\x61m\x81" + value + b"\xa0",
        "request-kwarg": b"\x86\x01\x01\x01\x61m\x80\xa1\x61k" + value,
        "stream-item": b"\x84\x01\x04\x01" + value,
        "flow-item": b"\x85\x01\x0a\x01\x00" + value,
        "publish-data": codec.publish_prefixes("t")[0] + b"\x50" + SENDER + b"\x01" + value,
        "batch-item": codec.publish_prefixes("t")[1] + b"\x50" + SENDER + b"\x01\x81" + value,
    }


@pytest.mark.parametrize("simple", list(SIMPLE_VALUES.values()), ids=list(SIMPLE_VALUES))
def test_undefined_and_simple_values_are_refused_wherever_a_value_goes(simple: bytes) -> None:
    for where, frame in _places(simple).items():
        with pytest.raises(ProtocolError):
            decode(frame)
            pytest.fail(f"{simple.hex()} accepted in {where}")
    with pytest.raises(ProtocolError):
        codec.decode_publish(_places(simple)["publish-data"])
    with pytest.raises(ProtocolError):
        codec.loads(simple)


def test_the_places_of_a_value_accept_a_plain_one() -> None:
    # guards the test above: null (f6) where the simple value was decodes in every place
    for where, frame in _places(b"\xf6").items():
        if where != "reply-map-key":
            assert decode(frame), where


REPEATED_KEYS = {
    "text": b"\xa2\x61a\x01\x61a\x02",
    "bytes": b"\xa2\x41a\x01\x41a\x02",
    "int": b"\xa2\x01\x01\x01\x02",
    "int-and-equal-float": b"\xa2\x01\x01\xf9\x3c\x00\x02",
    "array": b"\xa2\x81\x01\x01\x81\x01\x02",
    "indefinite-map": b"\xbf\x61a\x01\x61a\x02\xff",
    "mixed-keys": b"\xa3\x61a\x01\x02\x02\x61a\x03",
}


@pytest.mark.parametrize("frame", list(REPEATED_KEYS.values()), ids=list(REPEATED_KEYS))
def test_a_map_whose_key_repeats_is_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x84\x01\x02\x01" + frame)
    with pytest.raises(ProtocolError):
        decode(b"\x84\x01\x02\x01\x81" + frame)  # nested


def test_a_request_whose_keyword_repeats_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x86\x01\x01\x01\x61m\x80\xa2\x61k\x01\x61k\x02")


def test_a_set_whose_element_repeats_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(encode_reply(1, cbor2.CBORTag(258, [1, 1])))
    with pytest.raises(ProtocolError):
        decode(encode_reply(1, cbor2.CBORTag(258, ["a", "a"])))
    assert decode(encode_reply(1, cbor2.CBORTag(258, [1, "1", 2])))[3] == {1, "1", 2}


COLLIDE = (1 << 61) - 1  # Python hashes every multiple of 2**61 - 1 to 0


def test_keys_that_share_a_hash_are_refused_beyond_the_limit() -> None:
    same = codec.MAX_SAME_HASH
    shared = {k * COLLIDE: k for k in range(1, same + 1)}
    assert decode(encode_reply(1, shared))[3] == shared  # up to the limit: a plain map
    with pytest.raises(ProtocolError, match="share one hash"):
        decode(encode_reply(1, {k * COLLIDE: k for k in range(1, same + 2)}))
    with pytest.raises(ProtocolError, match="share one hash"):
        decode(encode_reply(1, {frozenset(k * COLLIDE for k in range(1, same + 2))}))
    assert decode(encode_reply(1, {-1: "a", -2: "b"}))[3] == {-1: "a", -2: "b"}  # hash(-1) is -2


map_keys = st.recursive(
    st.integers() | st.floats(allow_nan=False) | st.text(max_size=4) | st.binary(max_size=4)
    | st.booleans() | st.none(),
    lambda children: st.lists(children, max_size=3).map(tuple),
    max_leaves=4,
)
keyed_values = st.recursive(
    st.integers() | st.text(max_size=4) | st.none() | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(map_keys, children, max_size=4),
    max_leaves=10,
)


@FUZZ_HEAVY
@given(keyed_values)
def test_maps_with_keys_of_every_type_decode_as_cbor2_decodes_them(value: Any) -> None:
    # the linear path for keys other than text gives the very values cbor2's own path gives
    frame = encode_reply(1, value)
    try:
        expected = cbor2.loads(frame, allow_duplicate_keys=False)
    except cbor2.CBORDecodeError:  # keys Python finds equal (1 and 1.0): refused by both
        with pytest.raises(ProtocolError):
            decode(frame)
        return
    assert decode(frame) == expected


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_on_the_path_for_other_keys_give_protocol_error_or_what_cbor2_gives(
    tail: bytes,
) -> None:
    frame = b"\x84\x01\x02\x01\xa2\x01\x00" + tail  # a map with an integer key, then anything
    try:
        message = decode(frame)
    except ProtocolError:
        return
    expected = cbor2.loads(frame, semantic_decoders={258: lambda v, im: set(v)})
    assert repr(message) == repr(expected)  # repr: a NaN is never == itself, but reads the same


def test_protocol_error_is_a_value_error_and_chains_the_cbor_error() -> None:
    with pytest.raises(ValueError) as info:
        decode(b"\xff")
    assert isinstance(info.value, ProtocolError)
    assert info.value.__cause__ is not None


def test_publish_data_may_be_any_value_but_batch_items_must_be_an_array() -> None:
    for data in (None, [], {}, "x", b"", 1.5):
        assert decode(raw(*_message(Kind.PUBLISH, data=data)))[5] == data


@pytest.mark.parametrize("extra", [b"\x00", b"\xff", encode_stream_end(2)], ids=["00", "ff", "msg"])
def test_bytes_after_a_message_frame_are_ignored_as_documented(extra: bytes) -> None:
    # docs/protocol.md section 2: senders MUST NOT add them; on ZeroMQ frames receivers do not
    # look (the check would double the cost of a decode); beacons are checked.
    assert decode(encode_stream_end(1) + extra) == [VERSION, Kind.STREAM_END, 1]


# -- CBOR tags (docs/protocol.md section 2) -------------------------------------------------------

# tag number -> content that the tag's usual decoder would accept
REFUSED_TAGS: dict[int, Any] = {
    4: [-1, 15],  # decimal fraction
    5: [-1, 15],  # bigfloat
    24: cbor2.dumps(1),  # embedded CBOR
    25: 0,  # string reference
    28: [1, 2],  # shareable
    29: 0,  # shared reference
    30: [1, 3],  # rational
    32: "http://example.invalid/",  # URI
    35: "^a+$",  # regular expression
    36: "Content-Type: text/plain\r\n\r\nhi",  # MIME
    256: [1],  # string reference namespace
    260: b"\x7f\x00\x00\x01",  # network address
    261: {b"\x7f\x00\x00\x00": 8},  # network prefix
    1004: "2024-01-01",  # full date
    55799: [1, 5, 1],  # self-described CBOR (would wrap a whole valid message)
    2**32 + 7: 1,  # a big unknown one
    2**64 - 1: 1,  # the biggest tag number there is
}
# the six tags that make inert values, with the value each decodes to
ALLOWED_TAGS: dict[int, tuple[Any, Any]] = {
    0: ("2024-01-01T00:00:00Z", datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)),
    1: (1_700_000_000, datetime.datetime.fromtimestamp(1_700_000_000, datetime.timezone.utc)),
    2: (b"\x01" + bytes(8), 2**64),
    3: (b"\x01" + bytes(8), -(2**64) - 1),
    37: (uuid.UUID(int=7).bytes, uuid.UUID(int=7)),
    258: ([1, 2], {1, 2}),
}


def test_the_allowed_tags_are_the_documented_six() -> None:
    assert set(ALLOWED_TAGS) == {0, 1, 2, 3, 37, 258}
    assert frozenset(ALLOWED_TAGS) == codec.ALLOWED_TAGS
    assert not set(REFUSED_TAGS) & set(ALLOWED_TAGS)


@pytest.mark.parametrize("number", list(REFUSED_TAGS))
def test_a_refused_cbor_tag_is_refused_anywhere_in_a_message(number: int) -> None:
    tag = cbor2.CBORTag(number, REFUSED_TAGS[number])
    frames = {
        "top-level": cbor2.dumps(tag),
        "reply-result": raw(VERSION, Kind.REPLY, 1, tag),
        "nested-publish-data": raw(VERSION, Kind.PUBLISH, "t", SENDER, 0, {"a": [1, {"b": tag}]}),
        "batch-item": raw(VERSION, Kind.PUBLISH_BATCH, "t", SENDER, 0, [1, tag]),
        "call-id": raw(VERSION, Kind.CANCEL, tag),
        "kwargs-value": raw(VERSION, Kind.REQUEST, 1, "m", [], {"k": tag}),
        "inside-an-allowed-tag": raw(VERSION, Kind.REPLY, 1, cbor2.CBORTag(258, [tag])),
    }
    for where, frame in frames.items():
        with pytest.raises(ProtocolError):
            decode(frame)
            pytest.fail(f"tag {number} accepted in {where}")


@pytest.mark.parametrize("number", list(ALLOWED_TAGS))
def test_an_allowed_tag_decodes_to_its_inert_value_where_any_value_goes(number: int) -> None:
    content, value = ALLOWED_TAGS[number]
    tag = cbor2.CBORTag(number, content)
    assert decode(raw(VERSION, Kind.REPLY, 1, tag))[3] == value
    assert decode(raw(VERSION, Kind.STREAM_ITEM, 1, [tag]))[3] == [value]
    assert decode(raw(VERSION, Kind.REQUEST, 1, "m", [tag], {"k": tag}))[4:] == [[value],
                                                                               {"k": value}]
    assert decode(raw(VERSION, Kind.PUBLISH, "t", SENDER, 0, {"a": tag}))[5] == {"a": value}


@pytest.mark.parametrize("number", list(ALLOWED_TAGS))
def test_an_allowed_tag_is_still_the_wrong_type_for_text_and_bytes_fields(number: int) -> None:
    tag = cbor2.CBORTag(number, ALLOWED_TAGS[number][0])
    for frame in (
        raw(VERSION, Kind.REQUEST, 1, tag, [], {}),  # method
        raw(VERSION, Kind.ERROR, 1, tag, "m", ""),  # type
        raw(VERSION, Kind.PUBLISH, tag, SENDER, 0, None),  # topic
        raw(VERSION, Kind.PUBLISH, "t", tag, 0, None),  # sender
    ):
        with pytest.raises(ProtocolError):
            decode(frame)


@pytest.mark.parametrize(
    "bignum", [2**64, 2**70, -(2**64) - 1], ids=["2**64", "2**70", "-2**64-1"]
)
def test_a_bignum_is_no_call_id_or_sequence_number(bignum: int) -> None:
    # "uint" is CBOR major type 0: at most 2**64 - 1 (cbor2 sends anything bigger as tag 2 or 3)
    for frame in (
        encode_cancel(bignum),
        encode_reply(bignum, None),
        encode_request(bignum, "m", [], {}),
        encode_publish("t", SENDER, bignum, None),
        encode_publish_batch("t", SENDER, bignum, [None]),
    ):
        with pytest.raises(ProtocolError):
            decode(frame)
    with pytest.raises(ProtocolError):
        decode_beacon(raw_beacon(1, "calc", NODE_UUID.bytes, bignum, {}, {}))


SMALL_BIGNUM = cbor2.CBORTag(2, b"\x01")  # the integer 1, wrapped in a tag


@pytest.mark.parametrize(
    "frame",
    [
        raw(SMALL_BIGNUM, Kind.CANCEL, 1),
        raw(VERSION, cbor2.CBORTag(2, b"\x06"), 1),
        raw(VERSION, Kind.CANCEL, SMALL_BIGNUM),
        raw(VERSION, Kind.PUBLISH, "t", SENDER, SMALL_BIGNUM, None),
    ],
    ids=["version", "kind", "call-id", "seq"],
)
def test_a_tagged_envelope_field_is_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


@pytest.mark.parametrize("number", list(REFUSED_TAGS) + list(ALLOWED_TAGS))
def test_a_cbor_tag_is_refused_in_a_beacon(number: int) -> None:
    content = REFUSED_TAGS[number] if number in REFUSED_TAGS else ALLOWED_TAGS[number][0]
    tag = cbor2.CBORTag(number, content)
    for body in (
        (1, "calc", NODE_UUID.bytes, 7, {}, {"h": tag}),
        (1, "calc", NODE_UUID.bytes, 7, {"rpc": tag}, {}),
        (1, "calc", tag, 7, {}, {}),
        (1, tag, NODE_UUID.bytes, 7, {}, {}),
    ):
        with pytest.raises(ProtocolError):
            decode_beacon(raw_beacon(*body))


@pytest.mark.parametrize("position", [0, 3], ids=["kind", "seq"])
def test_a_tagged_small_int_is_refused_in_a_beacon(position: int) -> None:
    with pytest.raises(ProtocolError):
        decode_beacon(raw_beacon(*_with(position, SMALL_BIGNUM)))


def test_the_self_describe_tag_is_refused_even_around_a_valid_message() -> None:
    valid = encode_stream_end(1)
    assert decode(valid) == [VERSION, Kind.STREAM_END, 1]
    with pytest.raises(ProtocolError):
        decode(b"\xd9\xd9\xf7" + valid)


# -- beacons -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BeaconKind), ids=lambda k: k.name)
def test_beacon_round_trip(kind: BeaconKind) -> None:
    endpoints = {"rpc": "tcp://127.0.0.1:5555", "pub": "tcp://[::1]:5556"}
    headers = {"version": "0.1.0", "é": "✓"}
    datagram = encode_beacon(kind, "calc", NODE_UUID, 12, endpoints, headers)
    assert datagram.startswith(b"ZKB\x01")
    assert len(datagram) <= MAX_BEACON_SIZE
    decoded = decode_beacon(datagram)
    assert decoded == (kind, "calc", NODE_UUID, 12, endpoints, headers)
    assert decoded[0] is kind
    assert isinstance(decoded[2], uuid.UUID)


def test_beacon_round_trip_with_extreme_but_valid_fields() -> None:
    name = "é" * (MAX_NAME_BYTES // 2)  # exactly MAX_NAME_BYTES bytes of UTF-8
    assert len(name.encode()) == MAX_NAME_BYTES
    datagram = encode_beacon(BeaconKind.HELLO, name, uuid.UUID(int=0), 2**64 - 1, {}, {})
    assert decode_beacon(datagram) == (BeaconKind.HELLO, name, uuid.UUID(int=0), 2**64 - 1, {}, {})


def _beacon_of_exact_size(size: int) -> bytes:
    for padding in range(size):
        datagram = raw_beacon(1, "calc", NODE_UUID.bytes, 0, {}, {"pad": "x" * padding})
        if len(datagram) == size:
            return datagram
    raise AssertionError(f"no padding gives a beacon of {size} bytes")


def test_a_beacon_of_exactly_max_size_is_accepted_and_one_more_byte_is_not() -> None:
    datagram = _beacon_of_exact_size(MAX_BEACON_SIZE)
    assert decode_beacon(datagram)[1] == "calc"
    with pytest.raises(MessageTooLarge):
        decode_beacon(_beacon_of_exact_size(MAX_BEACON_SIZE + 1))
    with pytest.raises(MessageTooLarge):
        decode_beacon(b"ZKB\x01" + bytes(65_000))


def test_encode_beacon_refuses_a_beacon_over_the_size_limit() -> None:
    with pytest.raises(EncodeError):
        encode_beacon(BeaconKind.HELLO, "calc", NODE_UUID, 0, {}, {"pad": "x" * MAX_BEACON_SIZE})


@pytest.mark.parametrize(
    "name",
    ["", "x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 2 + 1), "\ud800", None, 5, b"calc"],
    ids=["empty", "65-ascii", "66-utf8", "lone-surrogate", "none", "int", "bytes"],
)
def test_encode_beacon_refuses_a_bad_name_with_encode_error(name: Any) -> None:
    with pytest.raises(EncodeError):
        encode_beacon(BeaconKind.HELLO, name, NODE_UUID, 0, {}, {})


def test_encode_beacon_refuses_an_unencodable_header() -> None:
    with pytest.raises(EncodeError):
        encode_beacon(BeaconKind.HELLO, "calc", NODE_UUID, 0, {}, {"h": object()})  # type: ignore


def test_the_good_beacon_template_decodes() -> None:
    # guards the negative tests below: each differs from this accepted datagram in one place
    assert decode_beacon(raw_beacon(*GOOD_BEACON_BODY))[1] == "calc"


def _with(index: int, value: Any) -> tuple[Any, ...]:
    body = list(GOOD_BEACON_BODY)
    body[index] = value
    return tuple(body)


BAD_BEACONS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"ZK", id="short-magic"),
    pytest.param(b"ZKB", id="magic-only"),
    pytest.param(b"ZKB\x01", id="no-body"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, magic=b"ZKX"), id="bad-magic"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, magic=b"zkb"), id="lowercase-magic"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, magic=b"ZRE"), id="zre-magic"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, version=b"\x00"), id="version-0"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, version=b"\x02"), id="version-2"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, version=b"1"), id="version-ascii-1"),
    pytest.param(b"ZKB\x01" + cbor2.dumps({"kind": 1}), id="body-map"),
    pytest.param(b"ZKB\x01" + cbor2.dumps(1), id="body-int"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY[:5]), id="body-5-items"),
    pytest.param(raw_beacon(*GOOD_BEACON_BODY, None), id="body-7-items"),
    pytest.param(raw_beacon(*_with(0, 0)), id="kind-0"),
    pytest.param(raw_beacon(*_with(0, 4)), id="kind-4-peer-list-with-a-beacon-body"),
    pytest.param(raw_beacon(*_with(0, 5)), id="kind-5"),
    pytest.param(raw_beacon(*_with(0, True)), id="kind-bool"),
    pytest.param(raw_beacon(*_with(0, 1.0)), id="kind-float"),
    pytest.param(raw_beacon(*_with(0, "1")), id="kind-text"),
    pytest.param(raw_beacon(*_with(1, "")), id="name-empty"),
    pytest.param(raw_beacon(*_with(1, "x" * (MAX_NAME_BYTES + 1))), id="name-too-long"),
    pytest.param(raw_beacon(*_with(1, "é" * 33)), id="name-too-many-utf8-bytes"),
    pytest.param(raw_beacon(*_with(1, b"calc")), id="name-bytes"),
    pytest.param(raw_beacon(*_with(1, None)), id="name-null"),
    pytest.param(raw_beacon(*_with(2, NODE_UUID.bytes[:15])), id="uuid-15-bytes"),
    pytest.param(raw_beacon(*_with(2, NODE_UUID.bytes + b"!")), id="uuid-17-bytes"),
    pytest.param(raw_beacon(*_with(2, str(NODE_UUID))), id="uuid-text"),
    pytest.param(raw_beacon(*_with(3, -1)), id="seq-negative"),
    pytest.param(raw_beacon(*_with(3, True)), id="seq-bool"),
    pytest.param(raw_beacon(*_with(3, 1.0)), id="seq-float"),
    pytest.param(raw_beacon(*_with(3, None)), id="seq-null"),
    pytest.param(raw_beacon(*_with(4, ["tcp://127.0.0.1:1"])), id="endpoints-array"),
    pytest.param(raw_beacon(*_with(4, {"rpc": 5555})), id="endpoints-int-value"),
    pytest.param(raw_beacon(*_with(4, {1: "tcp://127.0.0.1:1"})), id="endpoints-int-key"),
    pytest.param(raw_beacon(*_with(5, None)), id="headers-null"),
    pytest.param(raw_beacon(*_with(5, {"v": b"1"})), id="headers-bytes-value"),
    pytest.param(raw_beacon(*_with(5, {"v": {"nested": "x"}})), id="headers-nested"),
]


@pytest.mark.parametrize("datagram", BAD_BEACONS)
def test_a_bad_beacon_raises_protocol_error(datagram: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_beacon(datagram)


@pytest.mark.parametrize("extra", [b"\x00", b"\xff", b"ZKB\x01"], ids=["00", "ff", "magic"])
def test_bytes_after_the_beacon_body_are_refused(extra: bytes) -> None:
    # docs/protocol.md 5.1: one CBOR array of 6 items, "and nothing after it"
    datagram = encode_beacon(BeaconKind.HELLO, "calc", NODE_UUID, 1, {}, {})
    assert decode_beacon(datagram)[1] == "calc"
    with pytest.raises(ProtocolError):
        decode_beacon(datagram + extra)


def test_every_truncation_of_a_beacon_is_refused() -> None:
    datagram = encode_beacon(
        BeaconKind.HELLO, "calc", NODE_UUID, 3, {"rpc": "tcp://127.0.0.1:5555"}, {"v": "1"}
    )
    assert decode_beacon(datagram)[1] == "calc"
    for length in range(len(datagram)):
        with pytest.raises(ProtocolError):
            decode_beacon(datagram[:length])


# -- fuzzing: garbage in gives ProtocolError, and only ProtocolError ------------------------------


def assert_valid_message(message: Any) -> None:
    """What decode() promises about anything it returns, checked independently of the codec."""
    assert type(message) is list
    assert message[0] == VERSION and type(message[0]) is int
    kind = Kind(message[1])
    assert len(message) == 2 + FIELD_COUNTS[kind]
    if kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH):
        _, _, topic, sender, seq, data = message
        assert type(topic) is str
        assert type(sender) is bytes and len(sender) == 16
        assert type(seq) is int and 0 <= seq < 2**64
        if kind is Kind.PUBLISH_BATCH:
            assert type(data) is list and data
        return
    assert type(message[2]) is int and 0 <= message[2] < 2**64
    if kind is Kind.REQUEST:
        assert type(message[3]) is str
        assert type(message[4]) is list
        assert type(message[5]) is dict and all(type(k) is str for k in message[5])
    elif kind is Kind.ERROR:
        assert all(type(field) is str for field in message[3:])


def assert_valid_beacon(decoded: Any) -> None:
    kind, name, node_uuid, seq, endpoints, headers = decoded
    assert kind in (BeaconKind.HELLO, BeaconKind.GOODBYE, BeaconKind.SOLICIT)
    assert type(name) is str and 0 < len(name.encode()) <= MAX_NAME_BYTES
    assert isinstance(node_uuid, uuid.UUID)
    assert type(seq) is int and 0 <= seq < 2**64
    for mapping in (endpoints, headers):
        assert type(mapping) is dict
        assert all(type(k) is str and type(v) is str for k, v in mapping.items())


def decode_or_protocol_error(frame: bytes) -> None:
    try:
        message = decode(frame)
    except ProtocolError:
        return
    assert_valid_message(message)


def decode_beacon_or_protocol_error(datagram: bytes) -> None:
    try:
        decoded = decode_beacon(datagram)
    except ProtocolError:
        return
    assert_valid_beacon(decoded)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_give_protocol_error_or_a_valid_message(data: bytes) -> None:
    decode_or_protocol_error(data)
    decode_beacon_or_protocol_error(data)
    table = PeerTable(own_uuid=NODE_UUID)
    try:
        table.feed(data, "127.0.0.1", now=1.0)
    except ProtocolError:
        assert len(table) == 0 and table.version == 0


@FUZZ
@given(st.binary(max_size=MAX_BEACON_SIZE))
def test_random_bytes_after_the_beacon_header_give_protocol_error_or_a_beacon(body: bytes) -> None:
    datagram = b"ZKB\x01" + body
    decode_beacon_or_protocol_error(datagram)
    table = PeerTable()
    try:
        events = table.feed(datagram, "127.0.0.1", now=1.0)
    except ProtocolError:
        assert len(table) == 0 and table.version == 0
    else:
        assert len(events) <= 1


# Plain values that cbor2 can encode, including some the wire refuses (ints beyond 64 bits).
wire_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.sampled_from([2**64 - 1, 2**64, -(2**64), -(2**64) - 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
any_values = st.recursive(
    wire_scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.integers() | st.binary(max_size=4), children,
                      max_size=6),
    max_leaves=12,
)


@FUZZ_HEAVY
@given(any_values)
def test_random_cbor_values_give_protocol_error_or_a_valid_message(value: Any) -> None:
    frame = cbor2.dumps(value)
    decode_or_protocol_error(frame)
    decode_beacon_or_protocol_error(b"ZKB\x01" + frame)


tag_numbers = st.sampled_from([0, 1, 2, 3, 37, 258, 4, 25, 28, 29, 30, 35, 55799])
tagged_values = st.recursive(
    any_values,
    lambda children: st.builds(cbor2.CBORTag, tag_numbers, children)
    | st.lists(children, max_size=3),
    max_leaves=8,
)


@FUZZ_HEAVY
@given(tag_numbers, tagged_values)
def test_random_content_under_any_tag_gives_protocol_error_or_a_valid_message(
    number: int, content: Any
) -> None:
    # the six allowed tags run cbor2's own decoders on what the peer sent: they must not leak
    # their errors (a bad date string, a 15-byte UUID, a set of maps...)
    tag = cbor2.CBORTag(number, content)
    decode_or_protocol_error(raw(VERSION, Kind.REPLY, 1, tag))
    decode_or_protocol_error(raw(VERSION, Kind.PUBLISH_BATCH, "t", SENDER, 1, [tag, [tag]]))
    decode_beacon_or_protocol_error(raw_beacon(1, "calc", NODE_UUID.bytes, 1, {}, {"h": tag}))


@FUZZ_HEAVY
@given(
    st.sampled_from(list(Kind)).flatmap(
        lambda kind: st.lists(
            any_values, min_size=FIELD_COUNTS[kind], max_size=FIELD_COUNTS[kind]
        ).map(lambda fields: [VERSION, int(kind), *fields])
    )
)
def test_random_arrays_headed_by_version_and_kind(message: list[Any]) -> None:
    decode_or_protocol_error(cbor2.dumps(message))


# Any field value: the right type for some fields, the wrong type for most.
field_values = (
    st.integers(min_value=-3, max_value=3)
    | st.integers(min_value=0, max_value=2**64 - 1)
    | st.sampled_from([2**64, 2**70, -(2**64) - 1])  # bignums: tags 2 and 3
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(min_size=15, max_size=17)
    | st.binary(max_size=4)
    | st.lists(st.integers(0, 9), max_size=3)
    | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), st.integers(0, 9), max_size=3)
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value from ``good`` three times in four, else any field value (usually a wrong one)."""
    return st.integers(0, 3).flatmap(lambda pick: good if pick else field_values)


uints = st.integers(min_value=0, max_value=2**64 - 1) | st.sampled_from([0, 1, 2**64 - 1])
texts = st.text(max_size=10)
small = st.none() | st.integers(-5, 5) | st.text(max_size=3)
GOOD_FIELDS: dict[Kind, list[st.SearchStrategy[Any]]] = {
    Kind.REQUEST: [uints, texts, st.lists(small, max_size=3),
                   st.dictionaries(st.text(max_size=4), small, max_size=3)],
    Kind.REPLY: [uints, field_values],
    Kind.ERROR: [uints, texts, texts, texts],
    Kind.STREAM_ITEM: [uints, field_values],
    Kind.STREAM_END: [uints],
    Kind.CANCEL: [uints],
    Kind.PUBLISH: [texts, st.binary(min_size=16, max_size=16), uints, field_values],
    Kind.PUBLISH_BATCH: [texts, st.binary(min_size=16, max_size=16), uints,
                         st.lists(small, min_size=1, max_size=3)],
    Kind.CREDIT: [uints, uints],
    Kind.FLOW_ITEM: [uints, uints, field_values],
    Kind.FLOW_END: [uints, uints],
}
kinds_and_fields = st.sampled_from(list(Kind)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.tuples(*map(mostly, GOOD_FIELDS[kind])).map(list))
)


def expected_valid(kind: Kind, fields: list[Any]) -> bool:
    """The protocol's field rules, written out independently of the codec."""

    def uint(value: Any) -> bool:
        return type(value) is int and 0 <= value < 2**64

    if kind in (Kind.PUBLISH, Kind.PUBLISH_BATCH):
        topic, sender, seq, data = fields
        ok = type(topic) is str and type(sender) is bytes and len(sender) == 16 and uint(seq)
        return ok and (kind is Kind.PUBLISH or (type(data) is list and len(data) > 0))
    if not uint(fields[0]):
        return False
    if kind is Kind.REQUEST:
        _, method, args, kwargs = fields
        return (
            type(method) is str
            and type(args) is list
            and type(kwargs) is dict
            and all(type(key) is str for key in kwargs)
        )
    if kind is Kind.ERROR:
        return all(type(field) is str for field in fields[1:])
    if kind in (Kind.CREDIT, Kind.FLOW_ITEM, Kind.FLOW_END):
        return uint(fields[1])
    return True


@FUZZ
@given(kinds_and_fields)
def test_valid_shaped_arrays_are_accepted_exactly_when_their_fields_are_valid(
    kind_and_fields: tuple[Kind, list[Any]],
) -> None:
    kind, fields = kind_and_fields
    frame = encode(kind, *fields)
    if expected_valid(kind, fields):
        assert decode(frame) == [VERSION, kind, *fields]
    else:
        with pytest.raises(ProtocolError):
            decode(frame)


# Values the wire carries (docs/protocol.md section 2), without NaN so that they compare equal.
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: tags 2 and 3
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.uuids()  # tag 37
    | st.datetimes(timezones=st.just(datetime.timezone.utc)),  # tag 0
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6)
    | st.frozensets(st.integers() | st.text(max_size=4), max_size=4),  # tag 258
    max_leaves=12,
)


@FUZZ_HEAVY
@given(plain_values, st.integers(min_value=0, max_value=2**64 - 1), st.text(max_size=40))
def test_plain_values_round_trip_through_every_carrying_kind(
    value: Any, number: int, text: str
) -> None:
    assert decode(encode_reply(number, value)) == [VERSION, Kind.REPLY, number, value]
    assert decode(encode_stream_item(number, value))[3] == value
    assert decode(encode_publish(text, SENDER, number, value))[2:] == [text, SENDER, number, value]
    assert decode(encode_publish_batch(text, SENDER, number, [value]))[5] == [value]
    assert decode(encode_request(number, text, [value], {text: value}))[4:] == [
        [value],
        {text: value},
    ]


def test_a_request_with_args_not_an_array_is_encoded_as_given_for_the_server_to_refuse() -> None:
    for args, kwargs in (("abc", {}), (None, {}), ({"a": 1}, {}), ([1], None), ([1], [])):
        frame = encode_request(1, "m", args, kwargs)  # type: ignore[arg-type]
        assert cbor2.loads(frame) == [VERSION, Kind.REQUEST, 1, "m", args, kwargs]
        with pytest.raises(ProtocolError):
            decode(frame)


def test_a_topic_that_is_not_text_is_an_encode_error() -> None:
    for topic in (1, True, b"t", None):
        with pytest.raises(EncodeError, match="topic"):
            encode_publish(topic, SENDER, 1, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 23, 24, 255, 256, 65535, 65536, 1 << 20])
def test_byte_string_payloads_are_joined_as_cbor2_would_encode_them(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert encode_publish("t", SENDER, 9, data) == cbor2.dumps([VERSION, Kind.PUBLISH, "t",
                                                                SENDER, 9, data])
    assert encode_reply(3, data) == cbor2.dumps([VERSION, Kind.REPLY, 3, data])
    assert encode_stream_item(3, data) == cbor2.dumps([VERSION, Kind.STREAM_ITEM, 3, data])


@pytest.mark.parametrize("count", [0, 23, 24, 255, 256, 65535, 65536])
def test_array_heads_are_cbor2s_at_every_length_boundary(count: int) -> None:
    assert encode_request(1, "m", [None] * count, {}) == cbor2.dumps(
        [VERSION, Kind.REQUEST, 1, "m", [None] * count, {}]
    )


@FUZZ
@given(
    st.lists(plain_values, max_size=30),
    st.dictionaries(st.text(max_size=8), plain_values, max_size=3),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.text(max_size=40),
)
def test_the_joined_encoders_give_the_bytes_of_one_dumps_of_the_whole_array(
    args: list[Any], kwargs: dict[str, Any], number: int, text: str
) -> None:
    # the hot encoders join the envelope's head and fields by hand (zmqkit/codec.py)
    assert encode_request(number, text, args, kwargs) == cbor2.dumps(
        [VERSION, Kind.REQUEST, number, text, args, kwargs]
    )
    assert encode_request(number, text, tuple(args), {}) == cbor2.dumps(
        [VERSION, Kind.REQUEST, number, text, args, {}]
    )
    assert encode_reply(number, args) == cbor2.dumps([VERSION, Kind.REPLY, number, args])
    assert encode_stream_item(number, kwargs) == cbor2.dumps(
        [VERSION, Kind.STREAM_ITEM, number, kwargs]
    )
    assert encode_publish(text, SENDER, number, args) == cbor2.dumps(
        [VERSION, Kind.PUBLISH, text, SENDER, number, args]
    )


@FUZZ
@given(
    st.sampled_from(list(BeaconKind)),
    st.text(min_size=1, max_size=MAX_NAME_BYTES // 4),  # at most 4 UTF-8 bytes a character
    st.uuids(),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)
def test_beacons_round_trip(
    kind: BeaconKind,
    name: str,
    node_uuid: uuid.UUID,
    seq: int,
    endpoints: dict[str, str],
    headers: dict[str, str],
) -> None:
    datagram = encode_beacon(kind, name, node_uuid, seq, endpoints, headers)
    assert decode_beacon(datagram) == (kind, name, node_uuid, seq, endpoints, headers)


@FUZZ
@given(st.sampled_from([param.values[0] for param in ROUND_TRIPS]), st.data())
def test_mutated_valid_frames_give_protocol_error_or_a_valid_message(
    frame: bytes, data: st.DataObject
) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        operation = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        position = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if operation == "flip" and mutated:
            mutated[position] ^= data.draw(st.integers(1, 255))
        elif operation == "cut":
            del mutated[position:]
        elif operation == "insert":
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=9))
        elif mutated:
            del mutated[position]
    decode_or_protocol_error(bytes(mutated))


def test_nan_and_infinities_survive_a_round_trip() -> None:
    result = decode(encode_reply(1, [math.nan, math.inf, -math.inf]))[3]
    assert math.isnan(result[0])
    assert result[1:] == [math.inf, -math.inf]


def test_codec_all_names_exist() -> None:
    assert len(set(codec.__all__)) == len(codec.__all__)
    assert all(hasattr(codec, name) for name in codec.__all__)


def test_every_tag_cbor2_decodes_by_itself_is_allowed_or_refused_by_name() -> None:
    # codec keeps a plain table of cbor2's native tags (fast to look up); a cbor2 upgrade that
    # starts decoding another tag must fail here rather than let it through
    probe = [*range(0, 1200), 1004, 1040, 21065, 43000, 55799, 55800]
    native = set()
    for tag in probe:
        for content in (0, "2024-01-01T00:00:00Z", b"\x01" * 16, [1, 2]):
            try:
                value = cbor2.loads(cbor2.dumps(cbor2.CBORTag(tag, content)))
            except Exception:
                native.add(tag)  # a decoder of its own ran and refused this content
                continue
            if not isinstance(value, cbor2.CBORTag):
                native.add(tag)
    assert native <= set(codec.NATIVE_TAGS_REFUSED) | codec.ALLOWED_TAGS, sorted(native)
    for tag in probe:
        if tag not in codec.ALLOWED_TAGS:
            with pytest.raises(ProtocolError):
                decode(encode_reply(1, cbor2.CBORTag(tag, 0)))

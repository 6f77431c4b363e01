"""docs/protocol.md, tested from the outside: foreign peers built only from the document.

The "foreign" side of every test (beacons, DEALER callers, raw PUB and SUB sockets) uses only
pyzmq, cbor2, socket and what docs/protocol.md says: the constants below are copied from the
document, not imported. zmqkit is imported only to start the side under test (``Node``,
``rpc.serve``, ``pubsub.Publisher`` / ``Subscriber``) and, in the tests of the document's own
examples, to check that the document and the codec agree.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import cbor2
import pytest
import zmq
from test_conformance import Beacons
from zmqkit.patterns import pubsub, rpc

from zmqkit import Node

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# -- what the document says, as a foreign implementer would copy it --------------------------------

VERSION = 1
REQUEST, REPLY, ERROR, STREAM_ITEM, STREAM_END, CANCEL, PUBLISH, PUBLISH_BATCH = range(1, 9)
CREDIT, FLOW_ITEM, FLOW_END = range(9, 12)
ITEMS = {REQUEST: 6, REPLY: 4, ERROR: 6, STREAM_ITEM: 4, STREAM_END: 3, CANCEL: 3, PUBLISH: 6,
         PUBLISH_BATCH: 6, CREDIT: 4, FLOW_ITEM: 5, FLOW_END: 4}
BEACON_MAGIC = b"ZKB"
BEACON_VERSION = 1
HELLO, GOODBYE, SOLICIT = 1, 2, 3
MAX_BEACON = 1200
MAX_NAME_BYTES = 64
LOOPBACK_BROADCAST = "127.255.255.255"
DESCRIBE = "zmqkit.describe"
STREAM = "zmqkit.stream"
DESCRIBE_KEYS = {"name", "signature", "doc", "mode"}
MODES = {"inline", "blocking", "async", "stream", "async-stream"}

WAIT = 3.0  # the most any single step below may take; they normally take milliseconds
FAST = {"interval": 0.2, "expiry": 3.0}


class _RefuseEveryTag(Mapping[int, Any]):
    """cbor2 decodes well-known tags without calling tag_hook; this refuses them all."""

    def __getitem__(self, tag: int) -> NoReturn:
        raise ValueError(f"CBOR tag {tag} on the zmqkit wire")

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse_tag(_decoder: Any, tag: Any) -> NoReturn:
    raise ValueError(f"CBOR tag {tag.tag} on the zmqkit wire")


def strict_loads(data: bytes) -> Any:
    """Decode CBOR as section 2 says: no tags at all."""
    return cbor2.loads(data, semantic_decoders=_RefuseEveryTag(), tag_hook=_refuse_tag)


def envelope(frame: bytes) -> list[Any]:
    """Decode and check one message frame as section 3 says."""
    message = strict_loads(frame)
    assert type(message) is list and len(message) >= 2, message
    assert message[0] == VERSION and type(message[0]) is int, message
    assert message[1] in ITEMS and len(message) == ITEMS[message[1]], message
    return message


def topic_prefixes(topic: str) -> tuple[bytes, bytes]:
    """Section 4: 86 01 07 || cbor(topic) and 86 01 08 || cbor(topic)."""
    return (bytes([0x86, VERSION, PUBLISH]) + cbor2.dumps(topic),
            bytes([0x86, VERSION, PUBLISH_BATCH]) + cbor2.dumps(topic))


def beacon(kind: int, name: str, node_uuid: bytes, seq: int, endpoints: dict[str, str],
           headers: dict[str, str] | None = None) -> bytes:
    """Section 5.1: magic, version byte, CBOR body."""
    body = cbor2.dumps([kind, name, node_uuid, seq, endpoints, headers or {}])
    return BEACON_MAGIC + bytes([BEACON_VERSION]) + body


def parse_beacon(datagram: bytes) -> list[Any]:
    """Section 5.1, checked: the body ``[kind, name, uuid, seq, endpoints, headers]``."""
    assert len(datagram) <= MAX_BEACON
    assert datagram[:3] == BEACON_MAGIC and datagram[3] == BEACON_VERSION
    body = strict_loads(datagram[4:])
    assert type(body) is list and len(body) == 6, body
    kind, name, node_uuid, seq, endpoints, headers = body
    assert kind in (HELLO, GOODBYE, SOLICIT)
    assert type(name) is str and 0 < len(name.encode()) <= MAX_NAME_BYTES
    assert type(node_uuid) is bytes and len(node_uuid) == 16
    assert type(seq) is int and seq >= 0
    for mapping in (endpoints, headers):
        assert type(mapping) is dict
        assert all(type(k) is str and type(v) is str for k, v in mapping.items())
    return body


# -- foreign sockets -----------------------------------------------------------------------------


@pytest.fixture
def udp(beacon_port: int) -> Iterator[Beacons]:
    """The beacon port, as the foreign implementation of tests/test_conformance.py hears it."""
    port = Beacons(beacon_port)
    yield port
    port.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def open_socket(context: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
    sock = context.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = int(WAIT * 1000)
    sock.sndtimeo = int(WAIT * 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)
    return sock


@contextlib.contextmanager
def started(node: Node) -> Iterator[Node]:
    node.start()
    try:
        yield node
    finally:
        node.close()


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


# -- the document's own examples -----------------------------------------------------------------

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def doc_blocks() -> list[tuple[list[str], str]]:
    return [(info.split(), body) for info, body in FENCE.findall(DOC.read_text(encoding="utf-8"))]


def parse_hex(text: str) -> bytes:
    """Section 9: hex digits; spaces and line breaks do not count; '#' starts a comment."""
    digits = "".join(re.sub(r"#.*", "", line) for line in text.splitlines())
    return bytes.fromhex(re.sub(r"\s", "", digits))


def parse_diag(text: str) -> Any:
    """The CBOR diagnostic notation the document uses: JSON plus h'...' byte strings."""
    as_json = re.sub(r"h'([0-9a-fA-F]*)'", lambda m: json.dumps({"$bytes": m.group(1)}), text)
    return json.loads(
        as_json, object_hook=lambda o: bytes.fromhex(o["$bytes"]) if set(o) == {"$bytes"} else o
    )


def hex_examples() -> list[tuple[str, bytes, Any]]:
    """Every ``hex`` block and the value of the ``diag`` block after it: (form, bytes, value)."""
    blocks = doc_blocks()
    examples = []
    for index, (info, body) in enumerate(blocks):
        if info[:1] != ["hex"]:
            continue
        assert index + 1 < len(blocks) and blocks[index + 1][0] == ["diag"], (
            f"hex block {body!r} is not followed by a diag block"
        )
        form = info[1] if len(info) > 1 else "message"
        assert form in ("message", "beacon", "prefix"), info
        examples.append((form, parse_hex(body), parse_diag(blocks[index + 1][1])))
    return examples


def test_every_hex_example_decodes_to_what_the_document_says() -> None:
    examples = hex_examples()
    forms = [form for form, _, _ in examples]
    assert forms.count("message") >= 8 and forms.count("beacon") >= 2 and forms.count("prefix") >= 2
    kinds_seen = set()
    for form, data, value in examples:
        if form == "message":
            assert envelope(data) == value
            assert cbor2.dumps(value) == data, "zmqkit sends the preferred serialization"
            kinds_seen.add(value[1])
        elif form == "beacon":
            assert parse_beacon(data) == value
            assert data[4:] == cbor2.dumps(value)
        else:
            assert data[0] == 0x86, "a prefix starts with the head of a 6-item array"
            stream = io.BytesIO(data[1:])
            decoder = cbor2.CBORDecoder(stream)
            assert [decoder.decode() for _ in range(3)] == value
            assert stream.read() == b"", "a prefix holds exactly three items after its head"
            assert data == topic_prefixes(value[2])[value[1] - PUBLISH]
    assert kinds_seen == set(ITEMS), "every kind has an example"
    publish = next(d for f, d, v in examples if f == "message" and v[1] == PUBLISH)
    assert any(publish.startswith(d) for f, d, _ in examples if f == "prefix")
    for info, body in doc_blocks():
        if info == ["diag"]:
            parse_diag(body)  # the standalone ones (the describe reply) parse too


def test_the_document_agrees_with_the_codec() -> None:
    from zmqkit import DEFAULT_PORT, SocketOptions, codec

    for form, data, value in hex_examples():
        if form == "message":
            assert codec.decode(data) == value
        elif form == "beacon":
            kind, name, node_uuid, seq, endpoints, headers = codec.decode_beacon(data)
            assert [kind, name, node_uuid.bytes, seq, endpoints, headers] == value
        else:
            assert data in codec.publish_prefixes(value[2])
    text = DOC.read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| ([A-Z_]+) \| \d \|", text, re.MULTILINE))
    assert {int(k): v for k, v in table.items()} == {kind.value: kind.name for kind in codec.Kind}
    assert (codec.VERSION, codec.BEACON_MAGIC, codec.BEACON_VERSION) == (VERSION, b"ZKB", 1)
    assert (codec.MAX_BEACON_SIZE, codec.MAX_NAME_BYTES) == (MAX_BEACON, MAX_NAME_BYTES)
    assert DEFAULT_PORT == 47474 and "**47474**" in text
    options = SocketOptions()
    assert codec.DEFAULT_MAX_MESSAGE_SIZE == options.max_message_size == 64 * 1024 * 1024
    documented = {
        "ZMQ_LINGER": f"{options.linger * 1000:.0f} ms",
        "ZMQ_SNDTIMEO": f"{options.send_timeout * 1000:.0f} ms",
        "ZMQ_HEARTBEAT_IVL": f"{options.heartbeat_interval * 1000:.0f} ms",
        "ZMQ_HEARTBEAT_TIMEOUT": f"{options.heartbeat_timeout * 1000:.0f} ms",
        "ZMQ_RECONNECT_IVL": f"{options.reconnect_interval * 1000:.0f} ms",
        "ZMQ_RECONNECT_IVL_MAX": f"{options.reconnect_interval_max * 1000:.0f} ms",
    }
    for option, value in documented.items():
        assert re.search(rf"^\| `{option}` \| {value} \|", text, re.MULTILINE), option
    assert options.send_hwm == options.recv_hwm == 10_000


# -- discovery -----------------------------------------------------------------------------------


def test_a_hand_built_beacon_makes_a_node_see_the_peer(beacon_port: int, udp: Beacons) -> None:
    foreign = uuid.uuid4()
    endpoints = {"rpc": "tcp://127.0.0.1:5555", "pub": "tcp://127.0.0.1:5556"}
    with started(Node("watcher", port=beacon_port, **FAST)) as node:
        udp.send(beacon(HELLO, "foreign", foreign.bytes, 1, endpoints, {"zone": "a"}))
        [peer] = node.wait_for("foreign", timeout=WAIT)
        assert (peer.uuid, peer.endpoints, peer.headers) == (foreign, endpoints, {"zone": "a"})
        assert peer.seq == 1 and peer.address == "127.0.0.1"

        markers = iter(range(1, 100))

        def settle() -> None:
            """Datagrams are read in order: once a new marker peer shows, those before it were."""
            name = f"marker-{next(markers)}"
            udp.send(beacon(HELLO, name, uuid.uuid4().bytes, 1, {}))
            node.wait_for(name, timeout=WAIT)

        def seen() -> tuple[int, dict[str, str]]:
            [peer] = node.peers("foreign")
            return peer.seq, dict(peer.endpoints)

        changed = {"rpc": "tcp://127.0.0.1:6666"}
        udp.send(beacon(HELLO, "foreign", foreign.bytes, 1, changed))  # same seq: content not read
        settle()
        assert seen() == (1, endpoints)
        udp.send(beacon(HELLO, "foreign", foreign.bytes, 2, changed))  # higher seq: taken
        settle()
        assert seen() == (2, changed)
        udp.send(beacon(HELLO, "foreign", foreign.bytes, 1, endpoints))  # lower seq: ignored
        settle()
        assert seen() == (2, changed)

        udp.send(beacon(GOODBYE, "foreign", foreign.bytes, 2, changed))
        wait_until(lambda: not node.peers("foreign"), "the goodbye removes the peer")


def test_bad_datagrams_are_dropped_and_counted(beacon_port: int, udp: Beacons) -> None:
    good = cbor2.dumps([HELLO, "bad", uuid.uuid4().bytes, 1, {}, {}])
    bad = [
        b"garbage",
        b"ZKB\x02" + good,  # another beacon version
        b"ZKX\x01" + good,  # foreign magic
        beacon(HELLO, "x" * (MAX_NAME_BYTES + 1), uuid.uuid4().bytes, 1, {}),  # name too long
        beacon(HELLO, "bad", uuid.uuid4().bytes, 1, {"rpc": "x" * MAX_BEACON}),  # too large
        beacon(HELLO, "bad", uuid.uuid4().bytes, 1, {"rpc": 5}),  # type: ignore[dict-item]
        b"ZKB\x01\x86\x01\x63bad\x50" + bytes(16) + b"\xd8\x23\x61\x61\xa0\xa0",  # tag 35 (regex)
        b"ZKB\x01" + good[:-3],  # truncated
    ]
    with started(Node("watcher", port=beacon_port, **FAST)) as node:
        for datagram in bad:
            udp.send(datagram)
        udp.send(beacon(HELLO, "marker", uuid.uuid4().bytes, 1, {}))
        node.wait_for("marker", timeout=WAIT)
        assert node.stats().get("dropped-malformed") == len(bad)
        assert [peer.name for peer in node.peers()] == ["marker"]


def test_a_real_beacon_decodes_as_documented(beacon_port: int, udp: Beacons) -> None:
    node = Node("calc", port=beacon_port, headers={"zone": "a"}, interval=2.0, expiry=6.0)
    ours = node.uuid.bytes
    with started(node):
        kind, name, _, seq, endpoints, headers = udp.wait(lambda body: body[2] == ours)
        assert (kind, name, headers) == (HELLO, "calc", {"zone": "a"})
        assert set(endpoints) <= {"admin"}, "a new node serves at most its introspection"
        # a change is announced at once (not after the 2 s interval), with a higher seq
        announced = time.monotonic()
        node.advertise("rpc", "tcp://127.0.0.1:5555")
        changed = udp.wait(lambda body: body[2] == ours and "rpc" in body[4])
        assert time.monotonic() - announced < 1.0
        assert changed[3] > seq and changed[4] == {**endpoints, "rpc": "tcp://127.0.0.1:5555"}
    goodbye = udp.wait(lambda body: body[2] == ours and body[0] == GOODBYE)
    assert goodbye == [GOODBYE, "calc", ours, changed[3], changed[4], {"zone": "a"}]


def test_a_node_answers_a_newcomer_at_once(beacon_port: int, udp: Beacons) -> None:
    node = Node("old-timer", port=beacon_port, interval=5.0, expiry=15.0)
    ours = node.uuid.bytes
    with started(node):
        first = udp.wait(lambda body: body[2] == ours)  # sent at start; the next is 5 s away
        udp.send(beacon(HELLO, "newcomer", uuid.uuid4().bytes, 1, {}))
        sent = time.monotonic()
        answer = udp.wait(lambda body: body[2] == ours, timeout=1.0)
        assert time.monotonic() - sent < 0.5
        assert answer == first, "a HELLO with unchanged content repeats its seq"


# -- RPC -----------------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def div(a: float, b: float) -> float:
    return a / b


def count(n: int) -> Iterator[int]:
    """Count from 0 to n - 1."""
    yield from range(n)


def ticks(limit: int = 250) -> Iterator[int]:
    for tick in range(limit):
        time.sleep(0.02)
        yield tick


class Caller:
    """A DEALER connected to a node's "rpc" endpoint: one frame out, one frame in (section 6.2)."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.sock = open_socket(context, zmq.DEALER)
        self.sock.connect(endpoint)

    def send(self, *message: Any) -> None:
        self.sock.send(cbor2.dumps(list(message)))

    def recv(self) -> list[Any]:
        frames = self.sock.recv_multipart()
        assert len(frames) == 1, "one frame per answer, no delimiter"
        return envelope(frames[0])

    def call(self, call_id: int, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        self.send(VERSION, REQUEST, call_id, method, list(args), kwargs)
        return self.recv()


@pytest.fixture
def caller(beacon_port: int, udp: Beacons, ctx: zmq.Context[Any]) -> Iterator[Caller]:
    """A calc node serving over RPC, and a foreign caller that found it by its beacon."""
    with started(Node("calc", port=beacon_port, **FAST)) as node:
        rpc.serve(node, {"add": add, "div": div, "count": count, "ticks": ticks})
        body = udp.wait(lambda body: body[1] == "calc" and "rpc" in body[4])
        assert body[2] == node.uuid.bytes
        foreign = Caller(ctx, body[4]["rpc"])
        try:
            yield foreign
        finally:
            foreign.sock.close(linger=0)


def test_a_hand_written_dealer_calls_add(caller: Caller) -> None:
    assert caller.call(1, "add", 2, 3) == [VERSION, REPLY, 1, 5]
    assert caller.call(2, "add", 2, b=40) == [VERSION, REPLY, 2, 42]
    # many calls in flight on one DEALER, matched by call id
    for call_id in (7, 8, 9):
        caller.send(VERSION, REQUEST, call_id, "add", [call_id, 1], {})
    replies = {reply[2]: reply for reply in (caller.recv() for _ in range(3))}
    assert replies == {i: [VERSION, REPLY, i, i + 1] for i in (7, 8, 9)}


def test_errors_come_back_with_the_documented_shape(caller: Caller) -> None:
    version, kind, call_id, type_name, message, traceback = caller.call(3, "sub", 1, 2)
    assert (version, kind, call_id, traceback) == (VERSION, ERROR, 3, "")
    assert type_name == "zmqkit.MethodNotFound"
    assert "sub" in message and "add" in message, "the message names the methods the node has"

    bad_args = caller.call(4, "add", 1)
    assert bad_args[1:4] == [ERROR, 4, "zmqkit.BadArguments"] and "add(a" in bad_args[4]

    raised = caller.call(5, "div", 1, 0)
    assert raised[1:4] == [ERROR, 5, "ZeroDivisionError"]
    assert "ZeroDivisionError" in raised[5], "a raised exception carries its traceback"


@pytest.mark.parametrize(
    ("frames", "expected_call_id"),
    [
        pytest.param([b"\xff\x00garbage"], 0, id="not-cbor"),
        pytest.param([cbor2.dumps([2, REQUEST, 6, "add", [1, 2], {}])], 0, id="version-2"),
        pytest.param([cbor2.dumps([VERSION, REQUEST, 6, "add", {}, {}])], 0, id="args-not-array"),
        pytest.param([cbor2.dumps([VERSION, REQUEST, 6, "add", [1, cbor2.CBORTag(35, "a+")], {}])],
                     0, id="tag"),
        pytest.param([cbor2.dumps([VERSION, REQUEST, 6, "add", [1, 2], {}]), b"extra"], 0,
                     id="two-frames"),
        pytest.param([cbor2.dumps([VERSION, REPLY, 6, 5])], 6, id="not-a-request"),
    ],
)
def test_a_server_answers_garbage_with_a_protocol_error(
    caller: Caller, frames: list[bytes], expected_call_id: int
) -> None:
    caller.sock.send_multipart(frames)
    reply = caller.recv()
    assert reply[1:4] == [ERROR, expected_call_id, "zmqkit.ProtocolError"]
    assert caller.call(7, "add", 1, 1) == [VERSION, REPLY, 7, 2], "the server keeps serving"


def test_a_req_style_delimiter_is_answered_with_one(caller: Caller) -> None:
    caller.sock.send_multipart([b"", cbor2.dumps([VERSION, REQUEST, 8, "add", [2, 2], {}])])
    assert caller.sock.poll(5000)
    delimiter, answer = caller.sock.recv_multipart()
    assert delimiter == b""
    assert cbor2.loads(answer) == [VERSION, REPLY, 8, 4]


def test_describe_lists_the_methods(caller: Caller) -> None:
    _, kind, call_id, methods = caller.call(11, DESCRIBE)
    assert (kind, call_id) == (REPLY, 11)
    assert all(set(entry) == DESCRIBE_KEYS and entry["mode"] in MODES for entry in methods)
    by_name = {entry["name"]: entry for entry in methods}
    assert set(by_name) == {"add", "div", "count", "ticks"}
    assert by_name["add"]["signature"].startswith("add(a")
    assert by_name["count"]["mode"] == "stream"
    assert by_name["count"]["doc"] == "Count from 0 to n - 1."


def test_a_plain_request_for_a_stream_gets_every_item_in_one_reply(caller: Caller) -> None:
    assert caller.call(12, "count", 3) == [VERSION, REPLY, 12, [0, 1, 2]]
    assert caller.call(13, "count", 0) == [VERSION, REPLY, 13, []]


def test_a_flow_controlled_stream_is_items_within_credit_then_end(caller: Caller) -> None:
    first = caller.call(14, STREAM, "count", [5], {}, 2)
    assert first == [VERSION, FLOW_ITEM, 14, 0, 0]
    assert caller.recv() == [VERSION, FLOW_ITEM, 14, 1, 1]
    assert not caller.sock.poll(200), "no item beyond the window of 2"
    caller.send(VERSION, CREDIT, 14, 4)
    assert [caller.recv() for _ in range(2)] == [[VERSION, FLOW_ITEM, 14, 2, 2],
                                                 [VERSION, FLOW_ITEM, 14, 3, 3]]
    assert not caller.sock.poll(200), "no item beyond the limit of 4"
    caller.send(VERSION, CREDIT, 14, 100)
    assert caller.recv() == [VERSION, FLOW_ITEM, 14, 4, 4]
    assert caller.recv() == [VERSION, FLOW_END, 14, 5], "the end needs no credit"


def test_cancel_ends_a_stream_early(caller: Caller) -> None:
    assert caller.call(15, STREAM, "ticks", [], {}, 100) == [VERSION, FLOW_ITEM, 15, 0, 0]
    assert caller.recv() == [VERSION, FLOW_ITEM, 15, 1, 1]
    caller.send(VERSION, CANCEL, 15)
    cancelled = time.monotonic()
    count = 2
    while (message := caller.recv())[1] == FLOW_ITEM:  # items already on their way
        assert message[2:4] == [15, count]
        count += 1
    assert message == [VERSION, FLOW_END, 15, count]
    assert time.monotonic() - cancelled < 1.0, "the stream (250 ticks, 5 s) stopped early"
    assert caller.call(16, "add", 1, 2) == [VERSION, REPLY, 16, 3], "no answer to the CANCEL itself"


# -- publish/subscribe ---------------------------------------------------------------------------


def test_a_raw_sub_receives_a_zmqkit_publisher(
    beacon_port: int, udp: Beacons, ctx: zmq.Context[Any]
) -> None:
    with started(Node("ticker", port=beacon_port, **FAST)) as node:
        publisher = pubsub.Publisher(node)
        body = udp.wait(lambda body: body[2] == node.uuid.bytes and "pub" in body[4])
        sub = open_socket(ctx, zmq.SUB)
        try:
            for prefix in topic_prefixes("news"):
                sub.subscribe(prefix)
            sub.connect(body[4]["pub"])
            frames: list[bytes] = []
            deadline = time.monotonic() + WAIT
            sent = 0
            while not frames and time.monotonic() < deadline:  # until the subscription is through
                publisher.publish("newsletter", "not for us")
                sent = publisher.publish("news", {"n": sent + 1})
                if sub.poll(10):
                    frames.append(sub.recv())
            for _ in range(3):
                publisher.publish("newsletter", "not for us")
                sent = publisher.publish("news", {"n": sent + 1})
            while sub.poll(200):
                frames.append(sub.recv())
        finally:
            sub.close(linger=0)
            publisher.close()
    messages = [envelope(frame) for frame in frames]
    assert all(frame.startswith(topic_prefixes("news")[0]) for frame in frames)
    assert len(messages) == 4
    first_seq = messages[0][4]
    for offset, (version, kind, topic, sender, seq, data) in enumerate(messages):
        assert (version, kind, topic, sender) == (VERSION, PUBLISH, "news", node.uuid.bytes)
        assert seq == first_seq + offset, "seq grows by one per message on the topic"
        assert data == {"n": seq}, "the first message on a topic has seq 1"


def test_a_raw_pub_reaches_a_zmqkit_subscriber(
    beacon_port: int, udp: Beacons, ctx: zmq.Context[Any]
) -> None:
    foreign = uuid.uuid4()
    pub = open_socket(ctx, zmq.PUB)
    try:
        pub.bind("tcp://127.0.0.1:*")
        endpoint = pub.last_endpoint.decode()

        def announce(kind: int = HELLO) -> None:
            udp.send(beacon(kind, "rawpub", foreign.bytes, 1, {"pub": endpoint}))

        def publish(topic: str, seq: int, data: Any, kind: int = PUBLISH) -> None:
            pub.send(cbor2.dumps([VERSION, kind, topic, foreign.bytes, seq, data]))

        with started(Node("listener", port=beacon_port, **FAST)) as node:
            announce()
            node.wait_for("rawpub", timeout=WAIT)
            with pubsub.Subscriber(node, "news", "sport.*") as subscriber:
                seq = 0
                first = None
                deadline = time.monotonic() + WAIT
                while first is None and time.monotonic() < deadline:
                    seq += 1
                    publish("news", seq, {"px": seq})
                    with contextlib.suppress(TimeoutError):
                        first = subscriber.recv(timeout=0.01)
                assert first is not None, "the subscriber connected to the advertised PUB"
                assert (first.topic, first.publisher, first.sender, first.gap) == (
                    "news", "rawpub", foreign, 0)
                assert first.data == {"px": first.seq}
                while True:  # messages sent while the first was on its way
                    try:
                        late = subscriber.recv(timeout=0.1)
                    except TimeoutError:
                        break
                    assert late.gap == 0
                announce()
                base = seq
                publish("news", base + 1, "next")
                publish("news", base + 4, "after a gap")
                publish("news", base + 5, ["a", "b"], kind=PUBLISH_BATCH)
                publish("newsletter", 1, "not subscribed")
                pub.send(topic_prefixes("news")[0] + b"\xff")  # garbage behind a valid prefix
                publish("sport.uk", 1, "pattern")
                got = [subscriber.recv(timeout=WAIT) for _ in range(5)]
                assert [(m.topic, m.seq, m.data, m.gap) for m in got] == [
                    ("news", base + 1, "next", 0),
                    ("news", base + 4, "after a gap", 2),
                    ("news", base + 5, "a", 0),
                    ("news", base + 6, "b", 0),
                    ("sport.uk", 1, "pattern", 0),
                ]
                assert subscriber.stats()["dropped-malformed"] == 1
            announce(GOODBYE)
    finally:
        pub.close(linger=0)

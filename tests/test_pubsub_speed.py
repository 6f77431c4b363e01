"""Pub/sub's fast paths keep its behaviour: the subscriber's short path reads what the whole
decode reads, the default publisher batches a burst yet keeps the publish order and leaves an
idle message alone, ``batch=False`` sends a frame per message, and the budget script runs.

The figures themselves come from ``zmqkit bench`` and ``tests/pubsub_budget.py``
(docs/performance.md), not from here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zmqkit.patterns import pubsub
from zmqkit.patterns.pubsub import Intake, Message, core

from zmqkit import Node, ProtocolError, Socket, SocketKind, SocketOptions, Timeout, codec

SCRIPT = Path(__file__).resolve().parent / "pubsub_budget.py"
SENDER_A = uuid.UUID(int=0xA).bytes
WARM = "_warm"


def make_intake(*topics: str, peers: list[Any] | None = None) -> Intake:
    """An Intake over a stand-in node whose peer table is ``peers`` (empty: none known)."""
    known = peers if peers is not None else []
    node = SimpleNamespace(
        name="me", uuid=uuid.UUID(int=1), endpoints={}, peers=lambda name=None: list(known)
    )
    return Intake(node, topics)  # type: ignore[arg-type]


def taken(intake: Intake, *frames: bytes) -> list[Message]:
    intake.take_all(frames)
    messages = list(intake.ready)
    intake.ready.clear()
    return messages


# -- the subscriber's short path reads what decode_publish reads -----------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), inner, max_size=4),
    max_leaves=12,
)
topics = st.text(min_size=1, max_size=30) | st.text(min_size=240, max_size=300)
seqs = st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]) | (
    st.integers(0, 2**64 - 1)
)


def publication(topic: str, seq: int, data: Any, batch: bool) -> bytes:
    if batch:
        return codec.encode_publish_batch(topic, SENDER_A, seq, [data, data])
    return codec.encode_publish(topic, SENDER_A, seq, data)


@settings(max_examples=300, deadline=None)
@given(topic=topics.filter(lambda t: not t.endswith("*")), seq=seqs, data=values,
       batch=st.booleans())
def test_a_known_stream_is_read_as_decode_publish_reads_it(
    topic: str, seq: int, data: Any, batch: bool
) -> None:
    if batch and seq > 2**64 - 2:
        seq -= 1  # the batch's second item needs a number too
    frame = publication(topic, seq, data, batch)
    _, _, topic_read, sender, first, items = codec.decode_publish(frame)
    expected = [items] if not batch else items
    intake = make_intake("*")
    for _ in range(2):  # the first frame starts the stream, the second is read on the short path
        messages = taken(intake, frame)
        assert [(m.topic, m.data, m.seq, m.sender.bytes) for m in messages] == [
            (topic_read, item, first + index, sender) for index, item in enumerate(expected)
        ]
    assert intake.counts == {}


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(["t", "news.uk", "x" * 30]), seq=seqs, data=values,
       batch=st.booleans(), cut=st.integers(0, 60), byte=st.integers(0, 255),
       truncate=st.booleans())
def test_a_damaged_frame_of_a_known_stream_meets_the_fate_decode_publish_gives_it(
    topic: str, seq: int, data: Any, batch: bool, cut: int, byte: int, truncate: bool
) -> None:
    seq = min(seq, 2**64 - 2)
    frame = publication(topic, seq, data, batch)
    position = min(cut, len(frame) - 1)
    damaged = frame[:position] if truncate else (
        frame[:position] + bytes([byte]) + frame[position + 1:]
    )
    intake = make_intake("*")
    taken(intake, frame)  # the stream is known
    try:
        _, _, topic_read, _, first, items = codec.decode_publish(damaged)
    except codec.UnexpectedKind:
        fate = "dropped-not-publish"
    except ProtocolError:
        fate = "dropped-malformed"
    else:
        fate = "delivered"
    messages = taken(intake, damaged)
    if fate != "delivered":
        assert messages == [] and intake.counts == {fate: 1}
        return
    expected = items if damaged[2] == codec.Kind.PUBLISH_BATCH else [items]
    assert [(m.topic, m.data, m.seq) for m in messages] == [
        (topic_read, item, first + index) for index, item in enumerate(expected)
    ]


def test_frames_of_a_known_stream_are_not_decoded_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    wholes: list[bytes] = []
    decode = core._decode

    def counted(frame: bytes) -> list[Any]:
        wholes.append(frame)
        return decode(frame)

    monkeypatch.setattr(core, "_decode", counted)
    intake = make_intake("t")
    frames = [codec.encode_publish("t", SENDER_A, seq, {"seq": seq}) for seq in range(1, 301)]
    frames.append(codec.encode_publish_batch("t", SENDER_A, 301, [1, 2, 3]))
    messages = taken(intake, *frames)
    assert [m.seq for m in messages] == list(range(1, 304))
    assert wholes == frames[:1], "only the stream's first frame is decoded whole"


def test_a_batch_after_a_gap_and_messages_after_it_count_gaps_on_the_short_path() -> None:
    intake = make_intake("t")
    messages = taken(
        intake,
        codec.encode_publish("t", SENDER_A, 1, "a"),
        codec.encode_publish("t", SENDER_A, 2, "b"),  # short path from here on
        codec.encode_publish_batch("t", SENDER_A, 5, ["e", "f", "g"]),  # 3 and 4 missed
        codec.encode_publish("t", SENDER_A, 8, "h"),
        codec.encode_publish("t", SENDER_A, 70000, "far"),  # a 4-byte number: 69991 missed
        codec.encode_publish("t", SENDER_A, 3, "late"),  # below the last: delivered, no gap
    )
    assert [(m.seq, m.gap, m.data) for m in messages] == [
        (1, 0, "a"), (2, 0, "b"), (5, 2, "e"), (6, 0, "f"), (7, 0, "g"), (8, 0, "h"),
        (70000, 69991, "far"), (3, 0, "late"),
    ]
    assert intake.gaps == 2 + 69991 and intake.received == 8


def test_names_are_looked_up_again_when_discovery_changes() -> None:
    peers: list[Any] = []
    intake = make_intake("t", peers=peers)
    [first] = taken(intake, codec.encode_publish("t", SENDER_A, 1, "x"))
    assert first.publisher == f"?{uuid.UUID(bytes=SENDER_A).hex[:8]}"  # not known yet
    peers.append(SimpleNamespace(name="alpha", uuid=uuid.UUID(bytes=SENDER_A)))
    intake.forget_names()
    [second] = taken(intake, codec.encode_publish("t", SENDER_A, 2, "y"))
    assert (second.publisher, second.gap) == ("alpha", 0)


# -- the publisher on the wire ----------------------------------------------------------------


@pytest.fixture
def nodes(beacon_port: int) -> Iterator[tuple[Node, Node]]:
    """A publishing node, and a subscribing node that knows it."""
    with Node("pub-node", port=beacon_port) as pub, Node("sub-node", port=beacon_port) as sub:
        sub.wait_for("pub-node", timeout=5.0)
        yield pub, sub


class Wire:
    """A plain SUB socket on a publisher's endpoint: the frames as they travel."""

    def __init__(self, publisher: pubsub.Publisher) -> None:
        self.publisher = publisher
        self.sock = Socket(SocketKind.SUB)
        self.sock.subscribe(b"")
        self.sock.connect(publisher.endpoint)
        deadline = time.monotonic() + 5.0
        while not self.frames(0.02):  # past the slow joiner
            assert time.monotonic() < deadline, "the SUB socket heard nothing"
            publisher.publish(WARM, "warm")
        self.frames(0.2)

    def frames(self, idle: float = 0.3) -> list[list[Any]]:
        """Every frame until ``idle`` seconds pass without one, decoded."""
        frames = []
        while True:
            try:
                frames.append(codec.decode_publish(self.sock.recv(idle)))
            except Timeout:
                return frames

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire_of() -> Iterator[Any]:
    opened: list[Wire] = []

    def make(publisher: pubsub.Publisher) -> Wire:
        opened.append(Wire(publisher))
        return opened[-1]

    yield make
    for each in opened:
        each.close()


def messages_in(frames: list[list[Any]]) -> list[tuple[str, int, Any]]:
    """(topic, seq, data) of every message the frames carry, in order."""
    out = []
    for _, kind, topic, _, seq, data in frames:
        items = data if kind == codec.Kind.PUBLISH_BATCH else [data]
        out += [(topic, seq + index, item) for index, item in enumerate(items)]
    return out


def test_the_default_publisher_batches_a_burst_in_the_order_published(
    nodes: tuple[Node, Node], wire_of: Any
) -> None:
    with pubsub.Publisher(nodes[0]) as publisher:
        wire = wire_of(publisher)
        published = []
        for n in range(3000):  # one topic for long runs, then three in turn
            topic = "a" if n < 2000 else "abc"[n % 3]
            published.append((topic, publisher.publish(topic, n), n))
        frames = wire.frames()
    assert messages_in(frames) == published, "every message, in the order published"
    assert any(frame[1] == codec.Kind.PUBLISH_BATCH for frame in frames)
    assert all(len(frame[5]) <= pubsub.BATCH_COUNT for frame in frames
               if frame[1] == codec.Kind.PUBLISH_BATCH)


def test_a_message_on_an_idle_default_publisher_leaves_alone(
    nodes: tuple[Node, Node], wire_of: Any
) -> None:
    with pubsub.Publisher(nodes[0]) as publisher:
        wire = wire_of(publisher)
        for n in range(5):
            time.sleep(0.01)  # idle between messages
            publisher.publish("t", n)
        frames = wire.frames()
    assert [(kind, data) for _, kind, _, _, _, data in frames] == [
        (codec.Kind.PUBLISH, n) for n in range(5)
    ]


def test_batch_false_sends_a_frame_per_message(
    nodes: tuple[Node, Node], wire_of: Any
) -> None:
    with pubsub.Publisher(nodes[0], batch=False) as publisher:
        wire = wire_of(publisher)
        published = [("t", publisher.publish("t", n), n) for n in range(2000)]
        frames = wire.frames()
    assert {frame[1] for frame in frames} == {codec.Kind.PUBLISH}
    assert messages_in(frames) == published


def test_large_messages_keep_their_place_among_small_ones(
    nodes: tuple[Node, Node], wire_of: Any
) -> None:
    big = b"\x07" * pubsub.BATCH_BYTES
    with pubsub.Publisher(nodes[0]) as publisher:
        wire = wire_of(publisher)
        published = []
        for n in range(40):
            data: Any = big + bytes([n]) if n % 7 == 3 else n
            topic = "t" if n % 5 else "u"
            published.append((topic, publisher.publish(topic, data), data))
        frames = wire.frames()
    assert messages_in(frames) == published
    assert all(frame[1] == codec.Kind.PUBLISH for frame in frames if type(frame[5]) is bytes)


def test_a_run_with_a_dropped_message_or_too_many_bytes_is_split(
    nodes: tuple[Node, Node]
) -> None:
    with pubsub.Publisher(nodes[0]) as publisher:
        sent: list[bytes] = []
        small = [("t", seq, codec.dumps(seq)) for seq in (1, 2, 3, 5, 6)]  # 4 was dropped
        assert publisher._frame_run(sent, "t", small) == 5
        third = codec.dumps(b"x" * (pubsub.BATCH_BYTES // 3))
        publisher._frame_run(sent, "t", [("t", seq, third) for seq in (7, 8, 9)])
    frames = [codec.decode_publish(frame) for frame in sent]
    assert [(seq, len(items)) for _, _, _, _, seq, items in frames[:2]] == [(1, 3), (5, 2)]
    assert [seq for *_, seq, _ in frames[2:]] == [7, 9]  # two thirds (and heads) fit a frame
    assert all(len(frame) <= pubsub.BATCH_BYTES + 64 for frame in sent)


def test_a_slow_subscriber_of_a_batching_publisher_stays_bounded_and_counts_the_gaps(
    nodes: tuple[Node, Node]
) -> None:
    pub_node, sub_node = nodes
    total, payload, hwm = 150_000, b"x" * 1024, 50
    small = SocketOptions(send_hwm=hwm, recv_hwm=hwm)
    with pubsub.Publisher(pub_node, options=small) as publisher, \
            pubsub.Subscriber(sub_node, "flood", WARM, options=small) as subscriber:
        subscriber.wait_for_publishers(timeout=5.0)
        deadline = time.monotonic() + 5.0
        while not [m for m in subscriber.messages(0.05) if m.topic == WARM]:
            assert time.monotonic() < deadline, "nothing arrived"
            publisher.publish(WARM, "warm")
        for i in range(total):  # the subscriber does not read meanwhile
            publisher.publish("flood", [i, payload])
        received = list(subscriber.messages(0.5))
        publisher.publish("flood", [total, b"last"])  # a loss at the end shows once one follows
        received += list(subscriber.messages(0.5))
    flood = [m for m in received if m.topic == "flood"]
    # what the publisher's queue holds when the flood ends (its thread sends that later), and
    # frames of at most BATCH_BYTES to the high-water marks of both sides (libzmq runs past them
    # by up to half again); the kernel's loopback buffers hold megabytes more
    bound = pubsub.MAX_QUEUED_BATCHED + (4 * hwm * pubsub.BATCH_BYTES + 32 * 2**20) // len(payload)
    assert len(flood) <= bound < total
    assert [m.data[0] for m in flood] == [m.seq - 1 for m in flood]
    assert flood[-1].data == [total, b"last"]
    missed = sum(m.gap for m in flood)
    assert missed > 0 and len(flood) + missed == flood[-1].seq - flood[0].seq + 1


def test_a_subscriber_receives_what_either_publisher_sends(nodes: tuple[Node, Node]) -> None:
    pub_node, sub_node = nodes
    for batch in (False, True):
        with pubsub.Publisher(pub_node, batch=batch) as publisher, \
                pubsub.Subscriber(sub_node, "t", WARM) as subscriber:
            subscriber.wait_for_publishers(timeout=5.0)
            deadline = time.monotonic() + 5.0
            while not [m for m in subscriber.messages(0.05) if m.topic == WARM]:
                assert time.monotonic() < deadline, "nothing arrived"
                publisher.publish(WARM, "warm")
            sent = [publisher.publish("t", {"n": n}) for n in range(5000)]
            got = [m for m in subscriber.messages(0.5) if m.topic == "t"]
        assert [(m.seq, m.data, m.gap) for m in got] == [
            (seq, {"n": n}, 0) for n, seq in enumerate(sent)
        ], f"batch={batch}"


# -- the budget script ------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["cpu", "idle"])
def test_the_budget_script_runs(what: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), what, "--messages", "300", "--runs", "1"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["figures"]) == {"raw", "per-message", "default"}
    for figures in report["figures"].values():
        if what == "cpu":
            assert figures["rate"] > 0 and figures["subscriber: main"] > 0
        else:
            assert figures["messages"] == 290 and 0 < figures["p50"] <= figures["p99"]


def test_the_budget_script_times_each_step() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "steps"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)["figures"]
    assert len(figures) >= 10 and all(nanoseconds > 0 for nanoseconds in figures.values())


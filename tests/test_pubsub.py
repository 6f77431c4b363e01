"""Pub/sub by topic: exact and wildcard matching, sequence gaps, discovery of publishers, the
sync, asyncio and callback front-ends, publishing from any thread (RPC handlers of each kind
included), and a subscriber that falls behind.

Network tests run two nodes on a private beacon port. ZeroMQ's slow joiner means a subscriber
only sees what is published after its connection is up, so each such test first calls
``warm_up``: it publishes on ``WARM`` until the subscriber has received one, then runs the real
check and ignores what is left of the warm-up. The gap logic is tested on ``Intake`` alone,
fed hand-made frames, with no socket at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zmqkit.patterns import pubsub, rpc
from zmqkit.patterns.pubsub import Intake, Message

import zmqkit
from zmqkit import ClosedError, ConfigError, Node, PeerNotFound, Timeout, WrongThread, codec

WARM = "_warm"
WARM_TIMEOUT = 5.0
REPO = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------------------------------


def warm_up(publisher: pubsub.Publisher, subscriber: pubsub.Subscriber) -> Message:
    """Publish on ``WARM`` until ``subscriber`` receives one: its connection is then up."""
    subscriber.subscribe(WARM)
    deadline = time.monotonic() + WARM_TIMEOUT
    while time.monotonic() < deadline:
        publisher.publish(WARM, "warm")
        try:
            message = subscriber.recv(0.02)
        except Timeout:
            continue
        assert message.topic == WARM, f"{message} arrived before any warm-up message"
        return message
    raise AssertionError(f"{subscriber!r} received nothing from {publisher!r} in {WARM_TIMEOUT} s")


def collect(subscriber: pubsub.Subscriber, idle: float = 0.3) -> list[Message]:
    """Every message until ``idle`` seconds pass without one, warm-up leftovers removed."""
    return [message for message in subscriber.messages(idle) if message.topic != WARM]


def recv_real(subscriber: pubsub.Subscriber, timeout: float) -> Message:
    """The next message that is not a warm-up leftover."""
    deadline = time.monotonic() + timeout
    while True:
        message = subscriber.recv(max(0.0, deadline - time.monotonic()))
        if message.topic != WARM:
            return message


def wait_until(condition: Any, subscriber: pubsub.Subscriber, timeout: float = 3.0) -> None:
    """Keep ``subscriber`` receiving (that is when it looks at discovery) until ``condition()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{subscriber!r}: condition not met in {timeout} s"
        with contextlib.suppress(Timeout):
            subscriber.recv(0.05)


@pytest.fixture
def pub_node(beacon_port: int) -> Iterator[Node]:
    with Node("pub-node", port=beacon_port) as node:
        yield node


@pytest.fixture
def sub_node(beacon_port: int, pub_node: Node) -> Iterator[Node]:
    with Node("sub-node", port=beacon_port) as node:
        node.wait_for("pub-node", timeout=5.0)
        yield node


@pytest.fixture
def publisher(pub_node: Node) -> Iterator[pubsub.Publisher]:
    with pubsub.Publisher(pub_node) as publisher:
        yield publisher


# -- topic matching -----------------------------------------------------------------------------


def test_exact_topics_never_match_longer_or_shorter_topics(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    with (
        pubsub.Subscriber(sub_node, "news") as news,
        pubsub.Subscriber(sub_node, "newsletter") as newsletter,
        pubsub.Subscriber(sub_node, "new") as new,
    ):
        for subscriber in (news, newsletter, new):
            warm_up(publisher, subscriber)
        for topic in ("newsletter", "new", "newsx", "news", "news.uk", "ne"):
            publisher.publish(topic, topic)
        assert [(m.topic, m.data) for m in collect(news)] == [("news", "news")]
        assert [(m.topic, m.data) for m in collect(newsletter)] == [("newsletter", "newsletter")]
        assert [(m.topic, m.data) for m in collect(new)] == [("new", "new")]


def test_wildcard_matches_the_prefix_and_deeper_topics_only(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    with pubsub.Subscriber(sub_node, "news.*") as subscriber:
        warm_up(publisher, subscriber)
        for topic in ("news", "newsx", "news.uk", "new", "news.uk.sport", "sport.news.uk"):
            publisher.publish(topic, topic)
        assert [m.topic for m in collect(subscriber)] == ["news.uk", "news.uk.sport"]
        assert "news.*" in repr(subscriber)


def test_empty_or_non_text_topics_are_refused(sub_node: Node) -> None:
    with pubsub.Subscriber(sub_node) as subscriber:
        for bad in ("", None, b"news"):
            with pytest.raises(ConfigError):
                subscriber.subscribe(bad)  # type: ignore[arg-type]


def test_a_bad_topic_in_the_constructor_leaves_no_socket_open(sub_node: Node) -> None:
    # the autouse leak check fails this test if the SUB socket made before the check stays open
    with pytest.raises(ConfigError):
        pubsub.Subscriber(sub_node, "news", "")


# -- what a message carries ---------------------------------------------------------------------


def test_messages_carry_topic_data_publisher_sender_and_seq_from_1(
    pub_node: Node, publisher: pubsub.Publisher, sub_node: Node
) -> None:
    with pubsub.Subscriber(sub_node, "ticks", "quotes") as subscriber:
        warm_up(publisher, subscriber)
        sent = [
            publisher.publish("ticks", {"sym": "ABC", "px": 101.25}),
            publisher.publish("quotes", [1, 2.5, "x", None, b"\x00\xff"]),
            publisher.publish("ticks", {"sym": "XYZ", "px": 9}),
        ]
        assert sent == [1, 1, 2]
        received = collect(subscriber)
    assert received == [
        Message("ticks", {"sym": "ABC", "px": 101.25}, "pub-node", pub_node.uuid, 1, 0),
        Message("quotes", [1, 2.5, "x", None, b"\x00\xff"], "pub-node", pub_node.uuid, 1, 0),
        Message("ticks", {"sym": "XYZ", "px": 9}, "pub-node", pub_node.uuid, 2, 0),
    ]
    assert subscriber.gaps == 0


def test_a_nodes_own_publisher_reaches_its_own_subscriber(beacon_port: int) -> None:
    with Node("solo", port=beacon_port) as node:
        publisher = pubsub.Publisher(node)
        with pubsub.Subscriber(node, "self") as subscriber:
            warm_up(publisher, subscriber)
            publisher.publish("self", "hello me")
            message = recv_real(subscriber, 2.0)
            assert subscriber.stats()["publishers"] == 1
    assert (message.topic, message.data, message.publisher, message.sender, message.seq) == (
        "self", "hello me", "solo", node.uuid, 1,
    )


def test_a_publisher_on_a_closed_node_is_refused_and_leaves_nothing_open(beacon_port: int) -> None:
    node = Node("closed", port=beacon_port)
    node.close()
    with pytest.raises(ClosedError):
        pubsub.Publisher(node)
    assert "pub" not in node.endpoints  # and the leak check finds no PUB socket open


def test_a_second_publisher_on_one_node_is_refused(pub_node: Node) -> None:
    first = pubsub.Publisher(pub_node)
    endpoint = pub_node.endpoints["pub"]
    with pytest.raises(ConfigError):
        pubsub.Publisher(pub_node)
    assert pub_node.endpoints["pub"] == endpoint  # the first one is still what is advertised
    first.close()
    assert "pub" not in pub_node.endpoints
    with pubsub.Publisher(pub_node) as second:  # once closed, the role is free again
        assert pub_node.endpoints["pub"] == second.endpoint


# -- Intake: gaps, batches and garbage, without sockets -----------------------------------------

SENDER_A = uuid.UUID(int=0xA).bytes
SENDER_B = uuid.UUID(int=0xB).bytes


def make_intake(*topics: str) -> Intake:
    """An Intake over a stand-in node that knows publisher A by name (B stays unknown)."""
    peer_a = SimpleNamespace(name="alpha", uuid=uuid.UUID(bytes=SENDER_A), endpoints={})
    node = SimpleNamespace(
        name="me", uuid=uuid.UUID(int=1), endpoints={}, peers=lambda name=None: [peer_a]
    )
    return Intake(node, topics)  # type: ignore[arg-type]


def take_all(intake: Intake, *frames: bytes) -> list[Message]:
    for frame in frames:
        intake.take(frame)
    taken = list(intake.ready)
    intake.ready.clear()
    return taken


def test_intake_counts_skipped_sequence_numbers_as_gaps() -> None:
    intake = make_intake("t")
    frames = [codec.encode_publish("t", SENDER_A, seq, seq) for seq in (1, 2, 5, 6, 10)]
    messages = take_all(intake, *frames)
    assert [(m.seq, m.gap, m.data) for m in messages] == [
        (1, 0, 1), (2, 0, 2), (5, 2, 5), (6, 0, 6), (10, 3, 10),
    ]
    assert intake.gaps == 5
    assert intake.received == 5
    assert {m.publisher for m in messages} == {"alpha"}
    assert {m.sender for m in messages} == {uuid.UUID(bytes=SENDER_A)}


def test_intake_tables_stay_bounded_when_every_message_claims_a_new_sender(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pubsub.core, "MAX_STREAMS", 50)
    intake = make_intake("t")
    take_all(intake, codec.encode_publish("t", SENDER_A, 1, "real"))
    for seq in range(3, 23, 2):  # a real stream that keeps talking through a flood of made-up ones
        take_all(intake, *(codec.encode_publish("t", uuid.uuid4().bytes, 1, n) for n in range(40)))
        [message] = take_all(intake, codec.encode_publish("t", SENDER_A, seq, "real"))
        assert message.gap == 1  # still tracked: the one skipped each time is seen as a gap
    assert intake.received == 1 + 10 * 41  # every one delivered
    assert len(intake.names) <= 50 and len(intake._streams) <= 50


def test_intake_counts_gaps_per_publisher_and_per_topic_independently() -> None:
    intake = make_intake("t", "u")
    messages = take_all(
        intake,
        codec.encode_publish("t", SENDER_A, 1, "a-t"),
        codec.encode_publish("u", SENDER_A, 1, "a-u"),  # another topic: its own count, no gap
        codec.encode_publish("t", SENDER_B, 7, "b-t"),  # first seen mid-stream: not a gap
        codec.encode_publish("t", SENDER_A, 2, "a-t"),  # follows A/t 1, not B/t 7
        codec.encode_publish("u", SENDER_A, 4, "a-u"),  # A/u missed 2 and 3
        codec.encode_publish("t", SENDER_B, 9, "b-t"),  # B/t missed 8
        codec.encode_publish("t", SENDER_A, 3, "a-t"),
    )
    assert [(m.topic, m.sender.bytes, m.seq, m.gap) for m in messages] == [
        ("t", SENDER_A, 1, 0),
        ("u", SENDER_A, 1, 0),
        ("t", SENDER_B, 7, 0),
        ("t", SENDER_A, 2, 0),
        ("u", SENDER_A, 4, 2),
        ("t", SENDER_B, 9, 1),
        ("t", SENDER_A, 3, 0),
    ]
    assert intake.gaps == 3
    assert messages[2].publisher.startswith("?")  # B is not a known peer: unnamed, not dropped


def test_intake_unpacks_a_batch_into_consecutive_messages_in_order() -> None:
    intake = make_intake("t")
    messages = take_all(
        intake,
        codec.encode_publish("t", SENDER_A, 1, "first"),
        codec.encode_publish_batch("t", SENDER_A, 4, ["d", "e", {"f": 6}]),  # 2 and 3 missed
        codec.encode_publish("t", SENDER_A, 7, "g"),  # right after the batch: no gap
        codec.encode_publish_batch("t", SENDER_A, 8, ["h"]),
    )
    assert [(m.seq, m.gap, m.data) for m in messages] == [
        (1, 0, "first"), (4, 2, "d"), (5, 0, "e"), (6, 0, {"f": 6}), (7, 0, "g"), (8, 0, "h"),
    ]
    assert intake.gaps == 2
    assert intake.received == 6


def test_intake_filters_topics_exactly_and_by_pattern() -> None:
    intake = make_intake("news", "sport.*")
    topics = ["news", "newsletter", "sport", "sport.uk", "sports", "sport.uk.football", "new"]
    messages = take_all(intake, *(codec.encode_publish(t, SENDER_A, 1, t) for t in topics))
    assert [m.topic for m in messages] == ["news", "sport.uk", "sport.uk.football"]


GARBAGE = [
    b"",
    b"\xff",
    b"\x00" * 40,
    b"\x86\x01\x07",  # a PUBLISH prefix, then nothing
    codec.encode_publish("t", SENDER_A, 1, "x")[:-1],  # truncated
    codec.dumps([1, 7, "t", b"short", 1, "x"]),  # sender not 16 bytes
    codec.dumps([1, 7, "t", SENDER_A, -1, "x"]),  # negative seq
    codec.dumps([1, 8, "t", SENDER_A, 1, []]),  # empty batch
    codec.dumps([1, 8, "t", SENDER_A, 1, "not a list"]),
    codec.dumps([2, 7, "t", SENDER_A, 1, "x"]),  # another protocol version
    codec.dumps([1, 99, "t", SENDER_A, 1, "x"]),  # unknown kind
    codec.dumps({"t": 1}),
    bytes([0xC1, 0x00]) + codec.encode_publish("t", SENDER_A, 1, "x"),  # a CBOR tag in front
]


def test_intake_counts_garbage_as_dropped_and_never_raises() -> None:
    intake = make_intake("t")
    assert take_all(intake, *GARBAGE) == []
    assert intake.counts["dropped-malformed"] == len(GARBAGE)
    not_publish = [codec.encode_request(1, "add", [1, 2], {}), codec.encode_reply(1, 3)]
    assert take_all(intake, *not_publish) == []
    assert intake.counts["dropped-not-publish"] == 2
    assert intake.received == 0
    # and a good frame after all that is still taken
    good = codec.encode_publish("t", SENDER_A, 1, "ok")
    assert [m.data for m in take_all(intake, good)] == ["ok"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_intake_never_raises_on_random_bytes(frame: bytes) -> None:
    intake = make_intake("*")  # every topic: a frame is either taken whole or dropped
    intake.take(frame)
    dropped = sum(n for key, n in intake.stats().items() if key.startswith("dropped"))
    assert intake.received == len(intake.ready)
    assert dropped + (len(intake.ready) > 0) == 1


# -- publishers that come and go ----------------------------------------------------------------


def test_a_publisher_that_joins_late_is_connected(beacon_port: int) -> None:
    with (
        Node("early-sub", port=beacon_port) as sub_node,
        pubsub.Subscriber(sub_node, "late") as subscriber,
    ):
        assert subscriber.stats()["publishers"] == 0
        with pytest.raises(Timeout):
            subscriber.recv(0.1)
        with Node("late-pub", port=beacon_port) as late_node:
            publisher = pubsub.Publisher(late_node)
            warm_up(publisher, subscriber)
            publisher.publish("late", "better late")
            message = recv_real(subscriber, 2.0)
            assert subscriber.stats()["publishers"] == 1
    assert (message.data, message.publisher, message.sender) == (
        "better late", "late-pub", late_node.uuid,
    )


def test_a_publisher_that_leaves_is_disconnected(beacon_port: int, sub_node: Node) -> None:
    with pubsub.Subscriber(sub_node, "bye") as subscriber:
        with Node("leaving", port=beacon_port) as leaving:
            publisher = pubsub.Publisher(leaving)
            sub_node.wait_for("leaving", timeout=5.0)
            warm_up(publisher, subscriber)
            assert subscriber.stats()["publishers"] == 1
        wait_until(lambda: subscriber.stats()["publishers"] == 0, subscriber)
        assert "from 0 publishers" in repr(subscriber)


TICKER_SCRIPT = r"""
import sys, time
from zmqkit import Node
from zmqkit.patterns import pubsub

port, name = int(sys.argv[1]), sys.argv[2]
with Node(name, port=port) as node:
    publisher = pubsub.Publisher(node)
    end = time.monotonic() + 15
    while time.monotonic() < end:
        publisher.publish("ticks", {"from": name, "at": time.monotonic()})
        time.sleep(0.01)
"""


def test_a_subscriber_hears_publishers_in_several_processes(beacon_port: int) -> None:
    names = ["ticker-a", "ticker-b"]
    children: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            children.append(subprocess.Popen(
                [sys.executable, "-c", TICKER_SCRIPT, str(beacon_port), name],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ))
        with (
            Node("listener", port=beacon_port) as node,
            pubsub.Subscriber(node, "ticks") as subscriber,
        ):
            seen: dict[str, Message] = {}
            deadline = time.monotonic() + 10.0
            while set(seen) != set(names):
                assert time.monotonic() < deadline, f"heard only {sorted(seen)}"
                assert all(child.poll() is None for child in children), "a ticker died"
                try:
                    message = subscriber.recv(0.2)
                except Timeout:
                    continue
                seen[message.publisher] = message
            assert subscriber.stats()["publishers"] == 2
        for name, message in seen.items():
            assert message.topic == "ticks"
            assert message.data["from"] == name
        assert seen["ticker-a"].sender != seen["ticker-b"].sender
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait(5)
            assert child.stderr is not None
            child.stderr.close()


def test_wait_for_publishers_connects_before_returning(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    with pubsub.Subscriber(sub_node, "now") as subscriber:
        assert subscriber.wait_for_publishers(1, timeout=5.0) == 1
        publisher.publish("now", "right away")  # no warm-up: that is what the wait is for
        assert recv_real(subscriber, 2.0).data == "right away"
        start = time.monotonic()
        with pytest.raises(PeerNotFound):
            subscriber.wait_for_publishers(2, timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 1.0


# -- the sync front-end: timeouts and iteration -------------------------------------------------


def test_recv_raises_timeout_in_about_its_timeout(sub_node: Node) -> None:
    with pubsub.Subscriber(sub_node, "silence") as subscriber:
        start = time.monotonic()
        with pytest.raises(Timeout) as raised:
            subscriber.recv(0.4)
        elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 0.4 + 0.25
    assert isinstance(raised.value, TimeoutError)


def test_messages_ends_after_the_idle_timeout(publisher: pubsub.Publisher, sub_node: Node) -> None:
    with pubsub.Subscriber(sub_node, "it") as subscriber:
        warm_up(publisher, subscriber)
        for i in range(3):
            publisher.publish("it", i)
        start = time.monotonic()
        received = collect(subscriber, idle=0.3)
        elapsed = time.monotonic() - start
    assert [m.data for m in received] == [0, 1, 2]
    assert 0.3 <= elapsed < 0.3 + 0.5


# -- the asyncio front-end ----------------------------------------------------------------------


def test_async_subscriber_with_recv_and_messages(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    async def main() -> tuple[Message, list[Message], float]:
        async with pubsub.AsyncSubscriber(sub_node, "aio", WARM) as subscriber:
            deadline = time.monotonic() + WARM_TIMEOUT
            while True:  # the async warm-up
                assert time.monotonic() < deadline, "nothing received in the async warm-up"
                publisher.publish(WARM, "warm")
                try:
                    await subscriber.recv(0.02)
                    break
                except Timeout:
                    pass
            publisher.publish("aio", "one")
            while (first := await subscriber.recv(2.0)).topic == WARM:
                pass
            for i in range(5):
                publisher.publish("aio", i)

            async def five() -> list[Message]:
                got = []
                async for message in subscriber.messages():
                    if message.topic != WARM:
                        got.append(message)
                    if len(got) == 5:
                        return got
                raise AssertionError("messages() ended")

            many = await asyncio.wait_for(five(), 3.0)
            start = time.monotonic()
            leftovers = [m async for m in subscriber.messages(idle_timeout=0.3)]
            assert all(m.topic == WARM for m in leftovers)
            return first, many, time.monotonic() - start

    first, many, waited = asyncio.run(main())
    assert (first.topic, first.data, first.publisher, first.seq) == ("aio", "one", "pub-node", 1)
    assert [(m.data, m.seq) for m in many] == [(i, i + 2) for i in range(5)]
    assert 0.3 <= waited < 2.0


def test_async_messages_is_bounded_by_wait_for(sub_node: Node) -> None:
    async def main() -> None:
        async with pubsub.AsyncSubscriber(sub_node, "nothing") as subscriber:

            async def drain() -> None:
                async for _ in subscriber.messages():
                    raise AssertionError("no message was published")

            start = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(drain(), 0.3)
            assert time.monotonic() - start < 1.5

    asyncio.run(main())


def test_async_wait_for_publishers(publisher: pubsub.Publisher, sub_node: Node) -> None:
    async def main() -> Message:
        async with pubsub.AsyncSubscriber(sub_node, "now") as subscriber:
            assert await subscriber.wait_for_publishers(1, timeout=5.0) == 1
            publisher.publish("now", "right away")
            with pytest.raises(PeerNotFound):
                await subscriber.wait_for_publishers(2, timeout=0.1)
            return await subscriber.recv(2.0)

    assert asyncio.run(main()).data == "right away"


def test_a_subscriber_made_inside_a_running_loop_stays_sync(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    async def main() -> Message:
        with pubsub.Subscriber(sub_node, "sync") as subscriber:
            assert not hasattr(subscriber, "recv_async")
            subscriber.wait_for_publishers(timeout=5.0)
            warm_up(publisher, subscriber)
            publisher.publish("sync", "blocking, inside a loop")
            return recv_real(subscriber, 2.0)  # a plain blocking call, no coroutine

    assert asyncio.run(main()).data == "blocking, inside a loop"


def test_an_async_subscriber_needs_a_running_loop(sub_node: Node) -> None:
    with pytest.raises(WrongThread, match=r"pubsub\.Subscriber"):
        pubsub.AsyncSubscriber(sub_node, "x")
    assert not sub_node.parts  # nothing attached, and the leak check: no socket open


def test_an_async_subscriber_used_off_its_loop_raises_wrong_thread(sub_node: Node) -> None:
    made: queue.Queue[pubsub.AsyncSubscriber] = queue.Queue()
    release = threading.Event()

    async def own_loop() -> None:
        async with pubsub.AsyncSubscriber(sub_node, "x") as subscriber:
            made.put(subscriber)
            while not release.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(own_loop(),))
    thread.start()
    try:
        subscriber = made.get(timeout=5.0)
        with pytest.raises(WrongThread, match="run_coroutine_threadsafe"):
            asyncio.run(subscriber.recv(0.1))  # another thread, another loop
        with pytest.raises(WrongThread, match=r"pubsub\.Subscriber"):
            subscriber.subscribe("y")
    finally:
        release.set()
        thread.join(5.0)


def test_an_async_subscriber_closed_from_another_thread_ends_a_waiting_recv(
    sub_node: Node,
) -> None:
    async def main() -> float:
        subscriber = pubsub.AsyncSubscriber(sub_node, "quiet")
        closer = threading.Thread(target=subscriber.close)
        asyncio.get_running_loop().call_later(0.2, closer.start)
        start = time.monotonic()
        with pytest.raises(ClosedError):
            await subscriber.recv(5.0)
        waited = time.monotonic() - start
        subscriber.close()  # idempotent
        await asyncio.to_thread(closer.join, 5.0)
        assert subscriber.closed and subscriber not in sub_node.parts
        return waited

    assert asyncio.run(main()) < 2.0


def test_node_close_from_another_thread_closes_an_async_subscriber_on_its_loop(
    beacon_port: int,
) -> None:
    async def main() -> None:
        node = Node("aio-owner", port=beacon_port).start()
        subscriber = pubsub.AsyncSubscriber(node, "x")
        closer = threading.Thread(target=node.close)
        closer.start()
        with pytest.raises(ClosedError):
            await subscriber.recv(5.0)
        closer.join(5.0)
        assert subscriber.closed

    asyncio.run(main())


# -- the blocking subscriber, closed from elsewhere ---------------------------------------------


def test_a_subscriber_closed_from_another_thread_ends_a_waiting_recv(sub_node: Node) -> None:
    subscriber = pubsub.Subscriber(sub_node, "quiet")
    closer = threading.Timer(0.2, subscriber.close)
    closer.start()
    start = time.monotonic()
    with pytest.raises(ClosedError):
        subscriber.recv(5.0)
    assert time.monotonic() - start < 2.0
    closer.join()
    subscriber.close()  # idempotent
    assert subscriber.closed and subscriber not in sub_node.parts
    with pytest.raises(ClosedError):
        subscriber.recv(0.1)


# -- the callback front-end ---------------------------------------------------------------------


def subscription_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("zmqkit-sub")]


def test_callback_runs_in_its_own_thread_and_stops_when_the_node_closes(
    beacon_port: int, publisher: pubsub.Publisher
) -> None:
    arrived: queue.Queue[tuple[Message, threading.Thread]] = queue.Queue()
    with Node("cb-node", port=beacon_port) as node:
        node.wait_for("pub-node", timeout=5.0)
        subscription = pubsub.subscribe(
            node, "cb", WARM, callback=lambda m: arrived.put((m, threading.current_thread()))
        )
        assert isinstance(subscription, pubsub.Subscription)
        [thread] = subscription_threads()
        assert thread.name == f"zmqkit-sub:cb,{WARM}"
        deadline = time.monotonic() + WARM_TIMEOUT
        while arrived.empty():
            assert time.monotonic() < deadline, "the callback was never called"
            publisher.publish(WARM, "warm")
            time.sleep(0.02)
        publisher.publish("cb", "to the callback")
        while (item := arrived.get(timeout=2.0))[0].topic == WARM:
            pass
        assert subscription.stats()["received"] >= 2
    assert not thread.is_alive(), "the subscription thread outlived its node"
    message, called_from = item
    assert (message.topic, message.data, message.publisher) == ("cb", "to the callback", "pub-node")
    assert called_from is thread and called_from is not threading.current_thread()


def test_a_callback_that_raises_does_not_end_the_subscription(
    beacon_port: int, publisher: pubsub.Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    arrived: queue.Queue[Message] = queue.Queue()

    def callback(message: Message) -> None:
        if message.data == "boom":
            raise ValueError("boom")
        arrived.put(message)

    caplog.set_level(logging.ERROR, logger="zmqkit.pubsub")
    with Node("cb-node", port=beacon_port) as node:
        node.wait_for("pub-node", timeout=5.0)
        subscription = pubsub.subscribe(node, "cb", WARM, callback=callback)
        deadline = time.monotonic() + WARM_TIMEOUT
        while arrived.empty():
            assert time.monotonic() < deadline, "the callback was never called"
            publisher.publish(WARM, "warm")
            time.sleep(0.02)
        publisher.publish("cb", "boom")
        publisher.publish("cb", "after")
        while (message := arrived.get(timeout=2.0)).topic == WARM:
            pass
        assert all(t.is_alive() for t in subscription_threads())
        assert subscription.stats()["callback-failures"] == 1
    assert (message.data, message.seq) == ("after", 2)
    assert any("boom" in (r.exc_text or "") for r in caplog.records), "the failure was not logged"


def test_a_callback_subscription_to_a_bad_topic_raises_at_once(pub_node: Node) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError):
        pubsub.subscribe(pub_node, "ok", "", callback=lambda m: None)
    assert time.monotonic() - start < 1.0
    assert not pub_node.parts


def test_a_callback_subscription_on_a_closed_node_starts_no_thread(beacon_port: int) -> None:
    node = Node("closed", port=beacon_port)
    node.close()
    with pytest.raises(ClosedError):
        pubsub.subscribe(node, "x", callback=lambda m: None)  # the leak check: no thread left


def test_closing_a_subscription_early_stops_its_thread(pub_node: Node) -> None:
    with pubsub.Subscription(pub_node, "x", callback=lambda m: None) as subscription:
        [thread] = subscription_threads()
    assert not thread.is_alive()
    subscription.close()  # idempotent
    assert not pub_node.parts


def test_a_callback_may_close_its_own_subscription(
    beacon_port: int, publisher: pubsub.Publisher
) -> None:
    seen: list[Message] = []
    with Node("cb-node", port=beacon_port) as node:
        node.wait_for("pub-node", timeout=5.0)

        def once(message: Message) -> None:
            seen.append(message)
            subscription.close()  # from its own thread: no deadlock, the thread then ends

        subscription = pubsub.subscribe(node, WARM, callback=once)
        [thread] = subscription_threads()
        deadline = time.monotonic() + WARM_TIMEOUT
        while thread.is_alive():
            assert time.monotonic() < deadline, "the callback never closed its subscription"
            publisher.publish(WARM, "warm")
            time.sleep(0.02)
        assert len(seen) == 1 and node.parts == []


# -- publishing from any thread -----------------------------------------------------------------


def test_a_publisher_made_in_main_publishes_from_another_thread_while_main_does_too(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    count = 2000
    with pubsub.Subscriber(sub_node, "both") as subscriber:
        warm_up(publisher, subscriber)

        def other() -> None:
            for i in range(count):
                publisher.publish("both", ["other", i])

        thread = threading.Thread(target=other)
        thread.start()
        for i in range(count):
            publisher.publish("both", ["main", i])
        thread.join(10.0)
        received = collect(subscriber, idle=0.5)
    by_thread = {name: [m.data[1] for m in received if m.data[0] == name]
                 for name in ("main", "other")}
    assert by_thread == {"main": list(range(count)), "other": list(range(count))}
    # one order for every thread: the topic's numbers arrive in order, and no gap is invented
    assert [m.seq for m in received] == list(range(1, 2 * count + 1))
    assert subscriber.gaps == 0
    assert publisher.stats()["published"] >= 2 * count


def test_several_threads_publish_at_once_while_the_publisher_closes(pub_node: Node) -> None:
    publisher = pubsub.Publisher(pub_node)
    outcomes: queue.Queue[str] = queue.Queue()

    def keep_publishing() -> None:
        try:
            while True:
                publisher.publish("t", "x")
        except ClosedError:
            outcomes.put("closed")

    threads = [threading.Thread(target=keep_publishing) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5.0
    while publisher.stats()["published"] < 1000:  # they are all publishing
        assert time.monotonic() < deadline, "the threads did not publish"
        time.sleep(0.01)
    closer = threading.Thread(target=publisher.close)
    closer.start()
    for thread in [*threads, closer]:
        thread.join(5.0)
    assert [outcomes.get(timeout=1.0) for _ in threads] == ["closed"] * 4
    assert "pub" not in pub_node.endpoints


class Events:
    """An RPC service whose handlers of each kind publish with a Publisher made in main."""

    def __init__(self, publisher: pubsub.Publisher) -> None:
        self.publisher = publisher

    def plain(self, n: int) -> int:
        return self.publisher.publish("events", ["plain", n])

    @rpc.blocking
    def waits(self, n: int) -> int:
        time.sleep(0.001)
        return self.publisher.publish("events", ["blocking", n])

    async def later(self, n: int) -> int:
        await asyncio.sleep(0.001)
        return self.publisher.publish("events", ["async", n])


def test_rpc_handlers_of_each_kind_publish_with_a_publisher_made_in_main(
    pub_node: Node, sub_node: Node
) -> None:
    publisher = pubsub.Publisher(pub_node)
    rpc.serve(pub_node, Events(publisher))
    with (
        pubsub.Subscriber(sub_node, "events", WARM) as subscriber,
        rpc.Client(sub_node, "pub-node") as client,
    ):
        warm_up(publisher, subscriber)
        seqs = [client.call(method, n) for n in range(3) for method in ("plain", "waits", "later")]
        received = collect(subscriber)
    assert seqs == list(range(1, 10))
    assert [m.data for m in received] == [
        [kind, n] for n in range(3) for kind in ("plain", "blocking", "async")
    ]
    assert [m.seq for m in received] == seqs


# -- a subscriber that falls behind -------------------------------------------------------------


def test_a_slow_subscriber_has_bounded_memory_and_counts_what_it_missed(
    pub_node: Node, sub_node: Node
) -> None:
    total, payload, hwm = 50_000, b"x" * 1024, 10_000
    # a frame per message: the high-water marks count frames (batches: test_pubsub_speed.py)
    with pubsub.Publisher(pub_node, batch=False) as publisher, \
            pubsub.Subscriber(sub_node, "flood") as subscriber:
        warm_up(publisher, subscriber)
        for i in range(total):  # the subscriber does not read meanwhile
            publisher.publish("flood", [i, payload])
        received = list(subscriber.messages(0.5))
        # a loss at the very end shows only when something follows it
        publisher.publish("flood", [total, b"last"])
        received += list(subscriber.messages(0.5))
    flood = [m for m in received if m.topic == "flood"]
    # both HWM queues, plus what ZeroMQ's batching and the kernel's TCP buffers hold (1 KiB
    # messages keep that small; with tiny ones the kernel alone can hold all 50,000)
    assert len(flood) <= 2 * hwm + hwm, f"{len(flood)} of {total} queued: the HWM was not honoured"
    assert [m.data[0] for m in flood] == [m.seq - 1 for m in flood]
    assert flood[-1].data == [total, b"last"]
    assert all(a.seq < b.seq for a, b in itertools.pairwise(flood))
    missed = sum(m.gap for m in flood)
    assert missed > 0
    assert len(flood) + missed == flood[-1].seq - flood[0].seq + 1
    assert subscriber.gaps == sum(m.gap for m in received)
    assert subscriber.stats()["gaps"] == subscriber.gaps


# -- a publication over the subscriber's maximum size -------------------------------------------


SMALL = zmqkit.SocketOptions(max_message_size=1000)


def test_a_subscriber_connects_again_after_a_publication_over_its_maximum_size(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    # libzmq drops the connection on a frame over MAXMSGSIZE and, as that is a protocol error,
    # never reconnects it by itself: the subscriber sees the drop and connects again
    with pubsub.Subscriber(sub_node, "big", options=SMALL) as subscriber:
        warm_up(publisher, subscriber)
        for round_ in range(2):
            publisher.publish("big", "x" * 2000)  # over this subscriber's maximum: dropped
            heard = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and f"after {round_}" not in heard:
                publisher.publish("big", f"after {round_}")
                with contextlib.suppress(Timeout):
                    heard.append(subscriber.recv(0.1).data)
            assert f"after {round_}" in heard, "the subscriber never heard the publisher again"
            assert "x" * 2000 not in heard
        assert subscriber.stats()["reconnected"] == 2


def test_an_async_subscriber_connects_again_after_a_publication_over_its_maximum_size(
    publisher: pubsub.Publisher, sub_node: Node
) -> None:
    async def main() -> list[Any]:
        async with pubsub.AsyncSubscriber(sub_node, "big", WARM, options=SMALL) as subscriber:
            await subscriber.wait_for_publishers(timeout=5)
            heard: list[Any] = []
            deadline = time.monotonic() + 5
            while "warm" not in heard:
                assert time.monotonic() < deadline, "nothing received in the async warm-up"
                publisher.publish(WARM, "warm")
                with contextlib.suppress(Timeout):
                    heard.append((await subscriber.recv(0.05)).data)
            publisher.publish("big", "x" * 2000)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and "after" not in heard:
                publisher.publish("big", "after")
                with contextlib.suppress(Timeout):
                    heard.append((await subscriber.recv(0.1)).data)
            assert subscriber.stats()["reconnected"] == 1
            return heard

    assert "after" in asyncio.run(main())

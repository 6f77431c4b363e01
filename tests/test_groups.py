"""Groups: the pure core (membership from beacons, whisper correlation, shout intake) without
sockets, then nodes joining, leaving, shouting and whispering over real sockets, and a member in a
child process SIGKILLed: the others must see it leave its groups and go, and whispers to it must
fail within their deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import doc_section
from hypothesis import given
from hypothesis import strategies as st
from zmqkit.patterns import groups
from zmqkit.patterns.groups import AsyncGroups, GroupEvent, GroupEventKind, Groups, GroupsCore
from zmqkit.patterns.groups.core import JOIN_GRACE, MAX_SENDERS

from zmqkit import (
    BrokenError,
    ClosedError,
    ConfigError,
    EncodeError,
    EventKind,
    Keypair,
    Keyring,
    Node,
    Peer,
    PeerEvent,
    PeerNotFound,
    SecurityError,
    Socket,
    SocketKind,
    Timeout,
    WrongThread,
    codec,
)
from zmqkit.codec import Kind

ROOT = Path(__file__).resolve().parent.parent
FAST = {"interval": 0.2, "expiry": 0.6}
ME, P1, P2 = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
Join, Leave, Gone = GroupEventKind.JOIN, GroupEventKind.LEAVE, GroupEventKind.GONE


def peer(peer_uuid: uuid.UUID, name: str, seq: int, groups_header: str | None = None,
         *, serves: bool = True) -> Peer:
    endpoints = {"groups": "tcp://127.0.0.1:1", "groups-pub": "tcp://127.0.0.1:2"} if serves else {}
    headers = {} if groups_header is None else {"groups": groups_header}
    return Peer(name, peer_uuid, endpoints, headers, seq, "127.0.0.1", 0.0, 0.0)


def kinds(events: list[GroupEvent]) -> list[tuple[GroupEventKind, str | None]]:
    return [(event.kind, event.group) for event in events]


# -- the core --------------------------------------------------------------------------------------


def marked(core: GroupsCore[Any], member: uuid.UUID, *names: str) -> GroupsCore[Any]:
    """``core`` with ``member``'s marks for ``names`` read already (its subscriptions are in)."""
    for name in names:
        assert core.mark(member, name, True) == []  # before its beacon: no event yet
    return core


def test_groups_core_membership_from_beacon_headers() -> None:
    core = marked(GroupsCore(ME), P1, "ops", "dev", "qa")
    marked(core, P2, "ops")
    assert kinds(core.update(peer(P1, "p1", 1, "ops,dev"), 0)) == [(Join, "dev"), (Join, "ops")]
    assert core.update(peer(P1, "p1", 1, "ops,dev"), 0) == []  # the same beacon again
    assert kinds(core.update(peer(P1, "p1", 2, "ops,qa"), 0)) == [(Join, "qa"), (Leave, "dev")]
    assert core.update(peer(P1, "p1", 1, ""), 0) == []  # older than what we know: ignored
    assert core.update(peer(ME, "me", 5, "ops"), 0) == []  # ourselves
    assert core.update(peer(P2, "p2", 1, "ops", serves=False), 0) == []  # no groups endpoint
    assert kinds(core.update(peer(P2, "p2", 2, ",bad*,ops, x"), 0)) == [(Join, "ops")]
    assert core.stats["dropped-bad-group"] == 3
    assert core.members("ops") == [groups.Member("p1", P1), groups.Member("p2", P2)]
    assert list(core.groups()) == ["ops", "qa"]
    gone = core.presence(PeerEvent(EventKind.EXPIRED, peer(P1, "p1", 2, "ops,qa")), 0)
    assert kinds(gone) == [(Leave, "ops"), (Leave, "qa"), (Gone, None)]
    assert gone[-1].body == "expired"
    closed = core.update(peer(P2, "p2", 3, "ops", serves=False), 0)  # its Groups closed
    assert kinds(closed) == [(Leave, "ops"), (Gone, None)] and closed[-1].body == "closed"
    assert core.remove(P2, "left") == [] and core.groups() == {}
    assert core.marks == {}  # a peer gone takes its marks along


def test_groups_core_reports_a_join_once_the_member_can_hear_shouts() -> None:
    """A member's JOIN waits for its mark (its subscription reached our publisher), or for
    JOIN_GRACE when none comes (a peer that sends no mark); until then it is not a member."""
    core = GroupsCore(ME)
    assert core.update(peer(P1, "p1", 1, "dev,ops"), now=10.0) == []
    assert core.members("ops") == [] and core.groups() == {} and core.next_join() == 12.0
    assert kinds(core.mark(P1, "ops", True)) == [(Join, "ops")]
    assert core.members("ops") == [groups.Member("p1", P1)] and list(core.groups()) == ["ops"]
    assert core.mark(P1, "ops", True) == []  # once
    assert core.due(11.9) == [] and kinds(core.due(12.0)) == [(Join, "dev")]
    assert core.stats["joins-unmarked"] == 1 and core.next_join() is None
    assert core.update(peer(P2, "p2", 1, "ops"), now=20.0) == []
    assert core.update(peer(P2, "p2", 2, ""), now=20.5) == []  # left before it joined: silent
    assert core.update(peer(P2, "p2", 3, "ops"), now=21.0) == []
    gone = core.remove(P2, "expired")
    assert kinds(gone) == [(Gone, None)] and core.due(99.0) == []
    assert core.mark(P1, "ops", False) == [] and (P1, "ops") not in core.marks
    assert kinds(core.update(peer(P1, "p1", 2, "dev"), now=30.0)) == [(Leave, "ops")]


def test_groups_join_marks_are_subscriptions_that_match_no_publication() -> None:
    mark = groups.wire.join_mark(P1, "ops")
    for prefix in codec.publish_prefixes("zmqkit.group.ops"):
        assert not mark.startswith(prefix) and not prefix.startswith(mark[:1])
    assert groups.wire.read_join_mark(b"\x01" + mark) == (P1, "ops", True)
    assert groups.wire.read_join_mark(b"\x00" + mark) == (P1, "ops", False)
    for other in (b"\x01" + codec.publish_prefixes("zmqkit.group.ops")[0], b"\x02" + mark,
                  b"\x01" + mark[:-3], b"\x01" + groups.wire.JOIN_MARK + P1.bytes + b"\xff",
                  b"\x01" + groups.wire.JOIN_MARK + P1.bytes + b"bad*", b""):
        assert groups.wire.read_join_mark(other) is None


@given(st.lists(st.text(min_size=1, max_size=10), max_size=8))
def test_groups_header_round_trips_valid_names(names: list[str]) -> None:
    valid = {name for name in names if groups.wire.valid_group(name)}
    header = groups.format_groups(valid)
    assert groups.parse_groups(header) == (frozenset(valid), 0)
    assert (header is None) == (not valid)


def test_groups_core_ignores_an_older_description_without_the_groups_role() -> None:
    """The groups thread reads the peer table, then the events queued while it started: an
    event from before the peer's Groups advertised its ROUTER is stale, not a Groups closing."""
    core = marked(GroupsCore(ME), P1, "ops")
    assert kinds(core.update(peer(P1, "p1", 3, "ops"), 0)) == [(GroupEventKind.JOIN, "ops")]
    older = PeerEvent(EventKind.UPDATED, peer(P1, "p1", 2, serves=False))
    assert core.presence(older, 0) == []
    assert core.members("ops") == [groups.Member("p1", P1)]
    newer = PeerEvent(EventKind.UPDATED, peer(P1, "p1", 4, serves=False))
    assert kinds(core.presence(newer, 0)) == [(GroupEventKind.LEAVE, "ops"),
                                              (GroupEventKind.GONE, None)]


def test_groups_core_whisper_deadlines_and_peers_gone() -> None:
    core = GroupsCore(ME)
    first = core.start_whisper(P1, deadline=10.0, waiter="w1")
    second = core.start_whisper(P1, deadline=5.0, waiter="w2")
    third = core.start_whisper(P2, deadline=20.0, waiter="w3")
    assert len({first, second, third}) == 3 and core.next_deadline() == 5.0
    assert core.answered(first) == "w1" and core.answered(first) is None  # a late second answer
    assert core.expired(now=6.0) == [("w2", P1)] and core.expired(now=6.0) == []
    assert core.abandoned([P2]) == [("w3", P2)] and core.next_deadline() is None


def test_groups_core_a_peer_gone_still_answers_within_its_grace() -> None:
    """Discovery may say a peer went before the acks it sent arrive: its whispers wait for
    them until the grace ends (never past their own deadline), then expire."""
    core = GroupsCore(ME)
    early = core.start_whisper(P1, deadline=3.0, waiter="early")
    late = core.start_whisper(P1, deadline=30.0, waiter="late")
    other = core.start_whisper(P2, deadline=30.0, waiter="other")
    core.went(P1, until=5.0)
    assert core.waiting_on(P1) and core.next_deadline() == 3.0
    assert core.take_ack(codec.encode_reply(late, None)) == ("late", None)
    assert core.expired(now=5.0) == [("early", P1)] and not core.waiting_on(P1)
    assert core.answered(early) is None  # an ack after the grace is late
    assert core.waiting_on(P2) and core.answered(other) == "other"


def test_groups_core_shout_intake_counts_gaps_and_drops_what_is_not_for_us() -> None:
    core = GroupsCore(ME)
    sender = P1.bytes

    def shout(group: str, seq: int, data: Any) -> list[GroupEvent]:
        message = codec.decode(codec.encode_publish("zmqkit.group." + group, sender, seq, data))
        return core.take_shout(message, {"ops"})

    assert shout("ops", 1, ["p1", {"x": 1}]) == [
        GroupEvent(GroupEventKind.SHOUT, "p1", P1, "ops", {"x": 1})]
    assert len(shout("ops", 4, ["p1", "after two lost"])) == 1 and core.stats["gaps"] == 2
    assert shout("dev", 1, ["p1", "not joined"]) == []
    assert shout("ops", 5, "not [name, body]") == []
    assert shout("ops", 6, [7, "name is not text"]) == []
    batch = codec.decode(codec.encode_publish_batch("zmqkit.group.ops", sender, 7, [["p1", 1],
                                                                                     ["p1", 2]]))
    assert [e.body for e in core.take_shout(batch, {"ops"})] == [1, 2]
    bad_batch = codec.decode(codec.encode_publish_batch("zmqkit.group.ops", sender, 9, [1]))
    assert core.take_shout(bad_batch, {"ops"}) == []
    assert len(shout("ops", 10, ["p1", "next"])) == 1
    # missed: 2 and 3 (lost), 5 and 6 (malformed, dropped), 9 (the bad batch)
    assert core.stats["gaps"] == 5 and core.stats["shouts"] == 5
    assert core.stats["dropped-malformed"] == 3 and core.stats["dropped-not-joined"] == 1
    assert core.take_whisper([b"short", "p1", "hi"]) is None
    assert core.take_whisper([P1.bytes, "p1", "hi"]) == GroupEvent(
        GroupEventKind.WHISPER, "p1", P1, None, "hi")


def test_groups_core_per_sender_table_is_bounded() -> None:
    """Each (sender, topic) keeps its last shout number, to count gaps; the table keeps the
    MAX_SENDERS heard most lately, however many senders (or forged sender ids) come."""
    core = GroupsCore(ME)
    first = codec.decode(codec.encode_publish("zmqkit.group.ops", P1.bytes, 1, ["p1", 0]))
    core.take_shout(first, {"ops"})
    for n in range(MAX_SENDERS + 10):
        sender = uuid.UUID(int=1000 + n).bytes
        message = codec.decode(codec.encode_publish("zmqkit.group.ops", sender, 5, ["x", n]))
        assert len(core.take_shout(message, {"ops"})) == 1
        if n == MAX_SENDERS // 2:
            core.take_shout(codec.decode(codec.encode_publish(
                "zmqkit.group.ops", P1.bytes, 2, ["p1", 1])), {"ops"})  # P1 heard again
    assert len(core._last_seq) == MAX_SENDERS and (P1.bytes, "zmqkit.group.ops") in core._last_seq
    assert core.stats["gaps"] == 0  # a sender heard first (at 5) counts no gap


def test_groups_join_waits_for_the_members_subscription_or_its_grace(
    make_node: Callable[[str], Node],
) -> None:
    """A member announced by its beacon whose subscription has not reached us is no member
    yet: its JOIN comes with its mark, and a shout sent then reaches it. A member that sends no
    mark (an implementation without one) is reported JOIN_GRACE seconds after its beacon."""
    raw = make_node("raw")  # a member written from the wire doc, slow to connect
    router, publisher = raw.server_socket(SocketKind.ROUTER), raw.server_socket(SocketKind.PUB)
    sub = raw.client_socket(SocketKind.SUB)
    try:
        with Groups(make_node("old")) as old:
            raw.advertise(groups.ROLE, router.endpoint)
            raw.advertise(groups.PUB_ROLE, publisher.endpoint)
            raw.set_header(groups.GROUPS_HEADER, "quiet,room")
            old_peer = raw.wait_for("old", role=groups.PUB_ROLE, timeout=5)[0]
            with pytest.raises(Timeout):  # announced, but it cannot hear shouts yet
                next_event(old, GroupEventKind.JOIN, 0.5)
            assert old.members("room") == []
            for prefix in groups.wire.subscription("room"):
                sub.subscribe(prefix)
            sub.subscribe(groups.wire.join_mark(raw.uuid, "room"))
            sub.connect_peer(old_peer, groups.PUB_ROLE)
            joined = next_event(old, GroupEventKind.JOIN)
            assert (joined.uuid, joined.group) == (raw.uuid, "room")
            old.shout("room", "at once")
            message = codec.decode(sub.recv(timeout=5))
            assert message[2] == "zmqkit.group.room" and message[5] == ["old", "at once"]
            late = next_event(old, GroupEventKind.JOIN, 2 * JOIN_GRACE)  # no mark: the grace
            assert late.group == "quiet" and old.stats()["joins-unmarked"] == 1
    finally:
        for sock in (router, publisher, sub):
            sock.close()


def test_groups_a_shout_sent_as_the_join_is_seen_reaches_the_newcomer(
    make_node: Callable[[str], Node],
) -> None:
    """No pause: a JOIN is reported once the newcomer's subscription has reached the shouter,
    even when the newcomer joins the instant it starts (before it has connected to anyone)."""
    with Groups(make_node("old")) as old:
        heard = []
        for round_ in range(6):
            with Groups(make_node(f"new-{round_}")) as new:
                new.join("room")
                joined = next_event(old, GroupEventKind.JOIN)
                assert (joined.peer, joined.group) == (f"new-{round_}", "room")
                assert groups.Member(joined.peer, joined.uuid) in old.members("room")
                old.shout("room", round_)  # at once
                heard.append(next_event(new, GroupEventKind.SHOUT, 5.0).body)
        assert heard == list(range(6))
        assert old.stats().get("joins-unmarked", 0) == 0


# -- nodes over the network ------------------------------------------------------------------------


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[Callable[[str], Node]]:
    nodes: list[Node] = []

    def make(name: str) -> Node:
        node = Node(name, port=beacon_port, **FAST)
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.close()


def next_event(member: Groups, kind: GroupEventKind, timeout: float = 5.0) -> GroupEvent:
    """The next event of ``kind``, skipping others (membership news of other tests' steps)."""
    deadline = time.monotonic() + timeout
    while True:
        event = member.recv(max(0.0, deadline - time.monotonic()))
        if event.kind is kind:
            return event


def shout_until_heard(sender: Groups, group: str, receiver: Groups, timeout: float = 5.0) -> None:
    """Shout a warm-up until ``receiver`` hears one: its connection to ``sender`` is up.

    Then shout an end marker and read up to it, so that no late warm-up is left for the test
    to mistake for its own shout (one sender's shouts arrive in order).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.shout(group, "warm-up")
        try:
            next_event(receiver, GroupEventKind.SHOUT, 0.05)
            break
        except Timeout:
            continue
    else:
        raise AssertionError(f"{receiver!r} never heard {sender!r} on {group!r}")
    sender.shout(group, "warm-up over")
    while next_event(receiver, GroupEventKind.SHOUT).body != "warm-up over":
        pass


def test_groups_join_shout_whisper_leave(make_node: Callable[[str], Node]) -> None:
    with Groups(make_node("a")) as a, Groups(make_node("b")) as b, Groups(make_node("c")) as c:
        a.join("ops")
        b.join("ops")
        c.join("dev")
        seen = next_event(c, Join)
        assert (seen.peer, seen.uuid) in {("a", a.node.uuid), ("b", b.node.uuid)}
        for member in (a, b):
            while len(member.members("ops")) < 1 or not member.members("dev"):
                next_event(member, Join)
        assert a.members("ops") == [groups.Member("b", b.node.uuid)]
        assert b.groups() == {"dev": [groups.Member("c", c.node.uuid)],
                              "ops": [groups.Member("a", a.node.uuid)]}
        assert a.joined == frozenset({"ops"})
        shout_until_heard(a, "ops", b)
        assert a.shout("ops", {"n": 1}) >= 2
        for n in range(2, 200):  # a burst: queued together, sent as batches, received in order
            a.shout("ops", {"n": n})
        shout = next_event(b, GroupEventKind.SHOUT)
        assert (shout.peer, shout.uuid, shout.group) == ("a", a.node.uuid, "ops")
        assert shout.body == {"n": 1}
        burst = [next_event(b, GroupEventKind.SHOUT).body["n"] for _ in range(2, 200)]
        assert burst == list(range(2, 200)) and b.stats().get("gaps", 0) == 0
        c.whisper(b.node.uuid, ["to", "b"], timeout=5.0)
        whisper = next_event(b, GroupEventKind.WHISPER)
        assert (whisper.peer, whisper.uuid, whisper.body) == ("c", c.node.uuid, ["to", "b"])
        b.leave("ops")
        left = next_event(a, Leave)
        assert (left.peer, left.group) == ("b", "ops")
        a.shout("ops", "nobody hears this")
        with pytest.raises(Timeout):
            next_event(b, GroupEventKind.SHOUT, 0.3)
        with pytest.raises(Timeout):
            next_event(c, GroupEventKind.SHOUT, 0.1)  # never in ops
        assert b.stats()["whispers"] == 1 and b.stats()["shouts"] >= 2


def test_groups_asyncio_front_end_and_callbacks(make_node: Callable[[str], Node]) -> None:
    a_node, b_node = make_node("a"), make_node("b")

    async def main() -> tuple[GroupEvent, GroupEvent, list[GroupEvent]]:
        async with AsyncGroups(a_node) as a, AsyncGroups(b_node) as b:
            heard: list[GroupEvent] = []
            replies: list[asyncio.Task[None]] = []

            def reply(event: GroupEvent) -> None:  # on the loop: must not wait
                heard.append(event)
                if event.kind is GroupEventKind.WHISPER and event.body == "ping":
                    replies.append(asyncio.create_task(b.whisper(event.uuid, "pong")))

            b.on_event(reply)
            await a.join("room")
            assert a.joined == frozenset({"room"})
            joined = await next_async(b, Join)
            assert b.members("room") == [groups.Member("a", a_node.uuid)]
            await a.whisper(b_node.uuid, "ping", timeout=5.0)
            pong = await next_async(a, GroupEventKind.WHISPER)
            await asyncio.gather(*replies)
            assert b.stats()["whispers"] == 1 and a.stats()["whispers"] == 1
            return joined, pong, heard

    async def next_async(member: AsyncGroups, kind: GroupEventKind) -> GroupEvent:
        async def first() -> GroupEvent:
            async for event in member.events():
                if event.kind is kind:
                    return event
            raise AssertionError("the events ended")

        return await asyncio.wait_for(first(), 5.0)

    joined, pong, heard = asyncio.run(main())
    assert (joined.peer, joined.group) == ("a", "room")
    assert (pong.peer, pong.body) == ("b", "pong")
    assert [e.kind for e in heard] == [Join, GroupEventKind.WHISPER]


def test_async_groups_off_its_loop_say_what_to_use_instead(
        make_node: Callable[[str], Node]) -> None:
    node = make_node("a")
    with pytest.raises(WrongThread, match=r"groups\.Groups"):
        AsyncGroups(node)  # no running loop

    async def make() -> AsyncGroups:
        return AsyncGroups(node)

    loop = asyncio.new_event_loop()
    try:
        member = loop.run_until_complete(make())
        with pytest.raises(WrongThread, match="run_coroutine_threadsafe"):
            member.shout("ops", "from a thread without its loop")
        with pytest.raises(WrongThread, match=r"groups\.Groups"):
            asyncio.run(member.whisper(uuid.uuid4(), "from another loop"))
        with pytest.raises(WrongThread):
            asyncio.run(member.join("ops"))
        assert member.joined == frozenset()
        assert node.parts == [member]
        member.close()  # from outside its loop: fine
        member.close()
        assert node.parts == []
    finally:
        loop.close()


def test_groups_write_paths_work_from_any_thread_and_from_callbacks(
        make_node: Callable[[str], Node]) -> None:
    """join, leave, shout and whisper from a user's thread while the owner shouts too, and
    from an event callback (which runs in the groups thread); the sockets never leave it."""
    a_node, b_node = make_node("a"), make_node("b")
    with Groups(a_node) as a, Groups(b_node) as b:  # usable once made: no start()
        assert a_node.parts == [a] and b_node.parts == [b]
        a.join("ops")
        b.join("ops")
        while not a.members("ops"):
            next_event(a, Join)
        shout_until_heard(a, "ops", b)
        failures: list[BaseException] = []

        def user_thread() -> None:
            try:
                a.join("side")
                for n in range(50):
                    a.shout("ops", ["thread", n])
                a.whisper(b_node.uuid, "from a thread", timeout=5.0)
                a.leave("side")
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)

        worker = threading.Thread(target=user_thread, name="test-user-thread")
        worker.start()
        for n in range(50):
            a.shout("ops", ["main", n])
        worker.join(10.0)
        assert not worker.is_alive() and failures == []
        heard: dict[str, list[int]] = {"thread": [], "main": []}
        whispers: list[Any] = []
        while len(heard["thread"]) < 50 or len(heard["main"]) < 50 or not whispers:
            event = b.recv(5.0)
            if event.kind is GroupEventKind.SHOUT and event.body != "warm-up over":
                heard[event.body[0]].append(event.body[1])
            elif event.kind is GroupEventKind.WHISPER:
                whispers.append(event.body)
        assert heard == {"thread": list(range(50)), "main": list(range(50))}  # each in order
        assert whispers == ["from a thread"]

        acks: list[concurrent.futures.Future[None]] = []

        def answer(event: GroupEvent) -> None:  # in b's groups thread
            if event.kind is GroupEventKind.WHISPER and event.body == "ping":
                b.join("answered")
                b.shout("ops", "pong shout")
                acks.append(b.submit_whisper(event.uuid, "pong whisper"))

        b.on_event(answer)
        a.whisper(b_node.uuid, "ping", timeout=5.0)
        wanted = {(GroupEventKind.JOIN, "answered"), (GroupEventKind.SHOUT, "pong shout"),
                  (GroupEventKind.WHISPER, "pong whisper")}
        seen: set[tuple[GroupEventKind, Any]] = set()
        while not wanted <= seen:
            event = a.recv(5.0)
            seen.add((event.kind, event.group if event.kind is Join else event.body))
        assert acks[0].result(5.0) is None and "answered" in b.joined

        def close_from_callback(event: GroupEvent) -> None:
            if event.kind is GroupEventKind.WHISPER and event.body == "bye":
                b.close()

        b.on_event(close_from_callback)
        a.whisper(b_node.uuid, "bye", timeout=5.0)  # acknowledged, then b closes itself
        gone = next_event(a, Gone)
        assert (gone.peer, gone.body) == ("b", "closed")
        assert b_node.parts == [] and set(b_node.endpoints) == {"admin"}
        with pytest.raises(ClosedError):
            b.shout("ops", "after close")
        stats = a.stats()
        assert isinstance(stats, dict) and stats is not a.stats() and stats["shouts"] >= 1


def test_groups_close_from_another_thread_and_by_the_node(
        make_node: Callable[[str], Node]) -> None:
    node = make_node("a")
    member = Groups(node)
    member.join("ops")
    waiting: list[BaseException] = []

    def reader() -> None:
        try:
            member.recv(10.0)
        except ClosedError as exc:
            waiting.append(exc)

    thread = threading.Thread(target=reader, name="test-reader")
    thread.start()
    time.sleep(0.1)
    closer = threading.Thread(target=member.close, name="test-closer")
    closer.start()
    closer.join(5.0)
    thread.join(5.0)
    assert len(waiting) == 1 and node.parts == [] and "groups" not in node.headers
    member.close()  # again: nothing
    second = Groups(node)  # its roles were withdrawn: the node may have groups again
    node.close()  # closes its parts
    with pytest.raises(ClosedError):
        second.join("ops")


def test_groups_whisper_failures_are_clear_errors(make_node: Callable[[str], Node]) -> None:
    a_node = make_node("a")
    with Groups(a_node) as a, Groups(make_node("b")) as b:
        started = time.monotonic()
        with pytest.raises(PeerNotFound):  # waited for, in case it is just not discovered yet
            a.whisper(uuid.uuid4(), "to nobody", timeout=0.5)
        assert 0.45 < time.monotonic() - started < 0.5 + 1.0
        with pytest.raises(ConfigError):
            a.whisper(a_node.uuid, "to myself")
        with pytest.raises(EncodeError):
            a.whisper(b.node.uuid, object())
        with pytest.raises(ConfigError):
            a.join("no,commas")
        with pytest.raises(ConfigError):
            Groups(a_node)  # one per node
        failures: list[BaseException] = []

        def whisper_from_callback(event: GroupEvent) -> None:
            try:
                b.whisper(event.uuid, "would wait for itself")
            except WrongThread as exc:
                failures.append(exc)

        b.on_event(whisper_from_callback)
        a.join("x")
        next_event(b, Join)
        assert len(failures) == 1 and "submit_whisper" in str(failures[0])
    with pytest.raises(ClosedError):
        a.shout("x", "after close")
    with pytest.raises(ClosedError):
        a.whisper(uuid.uuid4(), "after close")


def test_groups_with_curve_talk_only_within_the_keyring(beacon_port: int) -> None:
    alice_keys, bob_keys = Keypair.generate(), Keypair.generate()
    ring = Keyring([alice_keys.public, bob_keys.public])
    with Node("alice", port=beacon_port, keys=alice_keys, keyring=ring, **FAST) as alice_node, \
            Node("bob", port=beacon_port, keys=bob_keys, keyring=ring, **FAST) as bob_node, \
            Node("mallory", port=beacon_port, **FAST) as mallory_node, \
            Groups(alice_node) as alice, Groups(bob_node) as bob, Groups(mallory_node) as mallory:
        for member in (alice, bob, mallory):
            member.join("ops")
        while len(alice.members("ops")) < 2:
            next_event(alice, Join)
        bob.whisper(alice_node.uuid, "encrypted", timeout=5.0)
        assert next_event(alice, GroupEventKind.WHISPER).body == "encrypted"
        with pytest.raises(SecurityError):  # a plain node, and we have keys
            alice.whisper(mallory_node.uuid, "not for you", timeout=2.0)
        with pytest.raises(SecurityError):  # the other way round, too
            mallory.whisper(alice_node.uuid, "let me in", timeout=2.0)
        shout_until_heard(alice, "ops", bob)
        mallory.shout("ops", "spoofed")
        with pytest.raises(Timeout):
            next_event(alice, GroupEventKind.SHOUT, 0.3)
        assert alice.stats()["refused-peers"] == 1


def test_groups_whisper_endpoint_answers_bad_requests_and_keeps_serving(
        make_node: Callable[[str], Node]) -> None:
    with Groups(make_node("a")) as a, Socket(SocketKind.DEALER) as dealer:
        dealer.connect(a.endpoint)

        def ask(frame: bytes) -> list[Any]:
            dealer.send(frame)
            return codec.decode(dealer.recv(timeout=3.0))

        assert ask(b"\x00 not cbor")[3] == "zmqkit.ProtocolError"
        assert ask(codec.encode_request(1, "other", [], {}))[3] == "zmqkit.MethodNotFound"
        bad_arguments = codec.encode_request(2, groups.WHISPER_METHOD, ["x"], {})
        assert ask(bad_arguments)[3] == "zmqkit.BadArguments"
        assert ask(codec.encode_publish("t", bytes(16), 1, None))[:3] == [1, Kind.ERROR, 0]
        sender = uuid.uuid4()
        reply = ask(codec.encode_request(3, groups.WHISPER_METHOD, [sender.bytes, "raw", "hi"], {}))
        assert reply == [1, Kind.REPLY, 3, None]
        event = a.recv(timeout=3.0)
        assert (event.kind, event.peer, event.uuid, event.body) == (
            GroupEventKind.WHISPER, "raw", sender, "hi")
        assert a.stats()["bad-requests"] == 2


# -- a member SIGKILLed ----------------------------------------------------------------------------

CHILD_SCRIPT = r"""
import sys
import zmqkit
from zmqkit.patterns import groups

with zmqkit.Node("doomed", port=int(sys.argv[1]), interval=0.2, expiry=0.6) as node:
    with groups.Groups(node) as member:
        member.join("ops")
        member.join("dev")
        print("ready", node.uuid, flush=True)
        for event in member.events(idle_timeout=60):
            if event.kind is groups.GroupEventKind.WHISPER:
                print("whisper", event.body, flush=True)
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the child said nothing in {timeout} s (exit {proc.poll()})"
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(proc.stdout.fileno(), 1)
        assert chunk, "the child exited"
        line += chunk
    return line.decode().strip()


def test_groups_sigkilled_member_leaves_its_groups_and_is_gone(
        make_node: Callable[[str], Node], beacon_port: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, str(beacon_port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        with Groups(make_node("watcher")) as watcher:
            head, _, child_uuid_text = read_line(proc, 10.0).partition(" ")
            assert head == "ready"
            child = uuid.UUID(child_uuid_text)
            doomed = groups.Member("doomed", child)
            deadline = time.monotonic() + 5.0
            while {g for g, ms in watcher.groups().items() if doomed in ms} != {"dev", "ops"}:
                assert time.monotonic() < deadline, "the child's groups never showed"
                watcher.recv(max(0.0, deadline - time.monotonic()))
            watcher.whisper(child, "are you there", timeout=5.0)
            assert read_line(proc, 5.0) == "whisper are you there"

            proc.kill()  # SIGKILL: no goodbye
            proc.wait(5)
            killed_at = time.monotonic()
            # before expiry: a whisper is not acknowledged, and fails at its deadline
            with pytest.raises((Timeout, BrokenError, PeerNotFound)):
                watcher.whisper(child, "hello?", timeout=0.3)
            assert time.monotonic() - killed_at < 0.3 + 1.0
            events: list[GroupEvent] = []
            while not events or events[-1].kind is not Gone:
                events.append(watcher.recv(timeout=5.0))
            assert time.monotonic() - killed_at < 0.6 + 2.0  # expiry, plus a loaded host's slack
            mine = [(e.kind, e.group, e.body) for e in events
                    if e.uuid == child and e.kind is not Join]  # JOINs left unread before the kill
            assert mine == [(Leave, "dev", None), (Leave, "ops", None), (Gone, None, "expired")]
            assert watcher.groups() == {}
            with pytest.raises(PeerNotFound):  # after: at once, no waiting
                watcher.whisper(child, "hello?", timeout=5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# -- the wire, as docs/protocol.md section 9.3 tells it ----------------------------------------


def doc_examples() -> list[tuple[bytes, Any]]:
    """Each ``hex`` block of the fragment with the value of the ``diag`` block after it, read the
    way tests/test_protocol_doc.py reads docs/protocol.md."""
    text = doc_section("docs/protocol.md", "9.3 ")
    blocks = re.findall(r"```(hex|diag)\n(.*?)```", text, re.S)
    examples = []
    for (kind, body), (next_kind, diag) in itertools.pairwise(blocks):
        if kind == "hex":
            assert next_kind == "diag", body
            digits = "".join(re.sub(r"#.*", "", line) for line in body.splitlines())
            as_json = re.sub(r"h'([0-9a-fA-F]*)'", lambda m: json.dumps({"$b": m.group(1)}), diag)
            value = json.loads(as_json, object_hook=lambda o: bytes.fromhex(o["$b"])
                               if set(o) == {"$b"} else o)
            examples.append((bytes.fromhex(re.sub(r"\s", "", digits)), value))
    return examples


def test_groups_protocol_doc_examples_are_what_the_code_sends(beacon_port: int) -> None:
    shout, batch, whisper, ack = doc_examples()
    for frame, value in (shout, batch, whisper, ack):
        assert codec.decode(frame) == value
    alice = uuid.UUID("12345678-1234-5678-1234-567812345678")
    core = GroupsCore(ME)
    [event] = core.take_shout(codec.decode(shout[0]), {"ops"})
    assert (event.peer, event.uuid, event.group) == ("alice", alice, "ops")
    assert event.body == "deploying v2"
    assert [e.body for e in core.take_shout(codec.decode(batch[0]), {"ops"})] == [
        {"step": 1}, {"step": 2}]
    assert core.stats["gaps"] == 0
    # what a real node sends: the same bytes, but for its own UUID and name
    with Node("alice", port=beacon_port, **FAST) as node, Groups(node) as member, \
            Socket(SocketKind.SUB) as sub:
        sub.subscribe(b"")
        sub.connect(member.pub_endpoint)
        sent = b""
        deadline = time.monotonic() + 5.0
        while not sent and time.monotonic() < deadline:  # until the SUB's connection is up
            member.shout("ops", "deploying v2")
            with contextlib.suppress(Timeout):
                sent = sub.recv(timeout=0.05)
        seq = codec.decode(sent)[4]
        assert sent == codec.encode_publish("zmqkit.group.ops", node.uuid.bytes, seq,
                                            ["alice", "deploying v2"])
    assert shout[0] == codec.encode_publish("zmqkit.group.ops", alice.bytes, 1,
                                            ["alice", "deploying v2"])
    frame = codec.encode_request(7, groups.WHISPER_METHOD, [alice.bytes, "alice", "good luck"], {})
    assert frame == whisper[0] and codec.encode_reply(7, None) == ack[0]


# -- the documentation example ---------------------------------------------------------------------


def test_groups_doc_example_prints_what_it_promises(tmp_path: Path) -> None:
    text = doc_section("README.md", "Groups:")
    [code] = re.findall(r"```python\n(.*?)```", text, re.S)
    promised = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+#\s*(.+)$", code, re.M)]
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == promised


def test_groups_thread_sleeps_when_idle(beacon_port: int) -> None:
    # a regression guard, not a benchmark: the wake-up byte of a join must be drained, or the
    # groups thread spins on its poller (it did, at 50-100 % of a core)
    import resource

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with Node("idle-member", port=beacon_port) as node, groups.Groups(node) as member:
        member.join("lobby")
        time.sleep(0.3)
        before, started = cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        share = (cpu_seconds() - before) / (time.monotonic() - started)
    assert share < 0.3, f"an idle groups node used {share:.0%} of a core"

"""Replicated state: the pure core and planner without sockets, then replicas over real sockets.

The core tests feed ``StateCore`` hand-made writes and a fake wall clock: last writer wins in any
order, tombstones and TTLs, gaps held until a merge, snapshots as deltas, bad input counted. The
planner tests drive ``SyncPlanner`` with a fake monotonic clock. The network tests run replicas
on a private beacon port with short intervals; the convergence test runs one replica in a child
process, SIGKILLs it mid-burst and starts a new one, which must rejoin through a snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import doc_section, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from zmqkit.patterns import state
from zmqkit.patterns.state import (
    AsyncState,
    Change,
    ChangeKind,
    State,
    StateCore,
    SyncPlanner,
    wire,
)

from zmqkit import (
    ClosedError,
    ConfigError,
    EncodeError,
    Node,
    ProtocolError,
    Socket,
    SocketKind,
    Timeout,
    WrongThread,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.security import Keypair, Keyring

ROOT = Path(__file__).resolve().parent.parent
FAST = {"interval": 0.2, "expiry": 0.6}
REPLICA = {"heartbeat": 0.2, "sync_timeout": 1.0, "join_wait": 0.3, "give_up": 2.0}
NS = 1_000_000_000
W1, W2, W3 = (bytes([n]) * 16 for n in (1, 2, 3))


def op_set(key: str, stamp: int, value: Any, expires_at: int | None = None) -> list[Any]:
    return [wire.OP_SET, key, stamp, value, expires_at]


def op_delete(key: str, stamp: int) -> list[Any]:
    return [wire.OP_DELETE, key, stamp, None, None]



# -- the core --------------------------------------------------------------------------------------


WRITES = [  # (writer, seq, op): three writers on two keys, with a tie on stamps
    (W1, 1, op_set("a", 100, "w1-a")),
    (W1, 2, op_set("b", 150, "w1-b")),
    (W2, 1, op_set("a", 120, "w2-a")),
    (W2, 2, op_delete("b", 150)),  # same stamp as W1's write of b: the higher writer id wins
    (W3, 1, op_set("a", 110, "w3-a")),
    (W3, 2, op_set("c", 90, "w3-c")),
]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_state_core_last_writer_wins_whatever_the_order(rand: random.Random) -> None:
    """Each writer's stream stays in order, but the streams interleave at random: every replica
    ends with the same map and the same versions."""
    streams = {w: [(seq, op) for writer, seq, op in WRITES if writer == w] for w in (W1, W2, W3)}
    core = StateCore(bytes(16))
    while any(streams.values()):
        writer = rand.choice([w for w, ops in streams.items() if ops])
        seq, op = streams[writer].pop(0)
        core.receive(writer, seq, [op], wall=0)
    assert core.visible(0) == {"a": "w2-a", "c": "w3-c"}
    assert core.entries["b"].deleted and core.entries["b"].writer == W2
    assert core.progress == {W1: 2, W2: 2, W3: 2}
    assert core.retired == {W1: 2}  # every write of W1 lost: it holds no key, so it is retired


def test_state_core_tombstones_and_local_stamps() -> None:
    core = StateCore(W1)
    core.receive(W2, 1, [op_delete("k", 200)], wall=0)
    assert core.receive(W3, 1, [op_set("k", 150, "late and older")], wall=0) == []
    assert core.lookup("k", 0) is None  # the tombstone held
    # a remote write stamped far in the future: a local write still wins here, stamped past it
    core.receive(W3, 2, [op_set("j", 10**18, "from a fast clock")], wall=0)
    op, change = core.write("j", "mine", wall=5)
    assert op[2] == 10**18 + 1 and change.kind is ChangeKind.SET and change.local
    assert core.lookup("j", 5).value == "mine"  # type: ignore[union-attr]
    _, removed = core.remove("absent", wall=6)
    assert removed is None and core.entries["absent"].deleted


def test_state_core_ttl_expires_by_wall_clock() -> None:
    writer = StateCore(W1)
    op, _ = writer.write("lease", "x", wall=10 * NS, ttl_ns=2 * NS)
    assert op[4] == 12 * NS
    assert writer.lookup("lease", 11 * NS) is not None
    assert writer.lookup("lease", 12 * NS) is None  # absent from its time on, before any sweep
    assert writer.next_expiry() == 12 * NS
    [expired] = writer.expire(12 * NS)
    assert expired.kind is ChangeKind.EXPIRED and writer.entries["lease"].deleted
    assert writer.expire(13 * NS) == []
    # a replica that gets the write after its time stores a tombstone and sees no change
    late = StateCore(W2)
    assert late.receive(W1, 1, [op], wall=13 * NS) == []
    assert late.entries["lease"].deleted and late.visible(13 * NS) == {}


def test_state_core_gap_is_held_and_a_delta_fills_it_with_no_duplicate() -> None:
    source, replica = StateCore(W1), StateCore(W2)
    ops = [source.write(f"k{i}", i, wall=i + 1)[0] for i in range(6)]
    assert len(replica.receive(W1, 2, ops[:2], wall=0)) == 2
    assert replica.receive(W1, 5, ops[3:5], wall=0) == []  # seq 3 was lost: held back
    assert replica.missing() == {W1: 3}
    snapshot = source.snapshot(replica.applied)
    assert [entry[1] for entry in snapshot["entries"]] == [3, 4, 5, 6]  # only what it lacks
    changes = replica.merge(snapshot, wall=0)
    assert sorted(c.key for c in changes) == ["k2", "k3", "k4", "k5"]  # each change once
    assert replica.applied[W1] == 6 and not replica.held and replica.missing() == {}
    assert replica.receive(W1, 6, ops[3:6], wall=0) == []  # already applied: dropped
    assert replica.stats()["duplicates"] == 2 + 3  # the held message, replayed, and this one
    assert replica.visible(0) == source.visible(0)


def test_state_core_late_joiner_merges_snapshot_then_held_updates() -> None:
    member, joiner = StateCore(W1), StateCore(W2)
    for i in range(3):
        member.write("x", i, wall=i + 1)
    snapshot = member.snapshot({})
    op, _ = member.write("x", "after the snapshot", wall=10)
    joiner.receive(W1, 4, [op], wall=0)  # arrives while the snapshot is on its way: held
    assert joiner.visible(0) == {} and joiner.missing() == {W1: 1}
    changes = joiner.merge(snapshot, wall=0)
    assert [c.value for c in changes] == [2, "after the snapshot"]
    assert joiner.visible(0) == {"x": "after the snapshot"} and joiner.synced


def test_state_core_skips_a_gap_nobody_can_fill() -> None:
    core = StateCore(W2)
    core.receive(W1, 1, [op_set("a", 1, 1)], wall=0)
    core.receive(W1, 4, [op_set("b", 4, 4)], wall=0)  # 2 and 3 lost with their dead writer
    assert [c.key for c in core.skip_gap(W1, wall=0)] == ["b"]
    assert core.stats()["lost"] == 2 and core.applied[W1] == 4


def test_state_core_drops_and_counts_bad_input() -> None:
    core = StateCore(W1)
    assert core.receive(W2, 1, [["not", "an", "op"]], wall=0) == []
    assert core.receive(W2, 1, [op_set("k", -1, "negative stamp")], wall=0) == []
    assert core.receive(W2, 0, [op_set("k", 1, "seq 0")], wall=0) == []
    assert core.receive(W1, 9, [op_set("k", 1, "our own id")], wall=0) == []
    assert core.stats()["dropped-malformed"] == 3 and core.stats()["dropped-own"] == 1
    for garbage in (None, [], {"writers": 1, "entries": []}, {"writers": [], "entries": [[1]]}):
        with pytest.raises(ProtocolError):
            core.merge(garbage, wall=0)
    assert core.entries == {} and core.applied == {} and not core.synced
    with pytest.raises(ConfigError):
        StateCore(b"short")


# -- the planner -----------------------------------------------------------------------------------

M1, M2 = uuid.UUID(int=1), uuid.UUID(int=2)


def test_state_planner_starts_alone_or_asks_a_member() -> None:
    planner = SyncPlanner(join_wait=0.5, timeout=1.0)
    planner.start(now=0.0)
    assert planner.plan(0.1, synced=False, applied={}, missing={}) == state.Plan()
    assert planner.plan(0.6, synced=False, applied={}, missing={}).alone
    planner = SyncPlanner(join_wait=0.5, timeout=1.0)
    planner.start(now=0.0)
    planner.set_members({M1: "tcp://m1"})
    assert planner.plan(0.0, synced=False, applied={}, missing={}).ask == M1
    assert planner.plan(0.5, synced=False, applied={}, missing={}) == state.Plan()  # one at a time
    assert planner.plan(1.0, synced=False, applied={}, missing={}).timed_out == M1
    planner.set_members({M1: "tcp://m1", M2: "tcp://m2"})
    assert planner.plan(1.5, synced=False, applied={}, missing={}).ask == M2  # M1 failed lately


def test_state_planner_asks_whoever_has_the_gap_then_gives_up() -> None:
    planner = SyncPlanner(grace=1.0, give_up=5.0)
    planner.start(now=0.0)
    planner.set_members({M1: "tcp://m1", M2: "tcp://m2"})
    planner.digest_from(M2, {W3: 9}, applied={W3: 4}, now=0.0)
    # a gap in W3's stream: M2's digest covers it, so M2 is asked first
    assert planner.plan(0.0, synced=True, applied={W3: 4}, missing={W3: 5}).ask == M2
    planner.succeeded(0.1)
    # still missing (M2 did not have it after all): each other member once, then wait, then give up
    assert planner.plan(0.2, synced=True, applied={W3: 4}, missing={W3: 5}).ask == M1
    planner.succeeded(0.3)
    assert planner.plan(0.4, synced=True, applied={W3: 4}, missing={W3: 5}) == state.Plan()
    assert planner.plan(5.1, synced=True, applied={W3: 4}, missing={W3: 5}).give_up == (W3,)


def test_state_planner_digest_ahead_for_a_heartbeat_means_ask() -> None:
    planner = SyncPlanner(grace=1.0)
    planner.start(now=0.0)
    planner.set_members({M1: "tcp://m1", M2: "tcp://m2"})
    planner.digest_from(M1, {W3: 7}, applied={W3: 6}, now=0.0)
    assert planner.plan(0.5, synced=True, applied={W3: 6}, missing={}) == state.Plan()  # in flight?
    assert planner.plan(0.6, synced=True, applied={W3: 7}, missing={}) == state.Plan()  # it came
    planner.digest_from(M1, {W3: 8}, applied={W3: 7}, now=1.0)
    assert planner.plan(2.1, synced=True, applied={W3: 7}, missing={}).ask == M1
    planner.succeeded(2.2)
    # a claim from a member that then dies is dropped with it: no waking up for it forever
    planner.digest_from(M2, {W3: 9}, applied={W3: 8}, now=3.0)
    assert planner.next_wake(3.0, synced=True, gaps=False) < 1.0
    planner.set_members({M1: "tcp://m1"})
    assert planner.next_wake(3.0, synced=True, gaps=False) > 60
    assert planner.plan(9.0, synced=True, applied={W3: 8}, missing={}) == state.Plan()


def test_state_wire_frames_decode_as_documented() -> None:
    ops = [[1, "k", 5, [1, 2], None], [2, "j", 6, None, None]]
    frame = wire.encode_updates("g", W1, 3, 12, ops)
    assert codec.decode(frame) == [
        1,
        Kind.PUBLISH,
        "zmqkit.state.g",
        W1,
        3,
        [1, 12, [[1, "k", 5, [1, 2], None], [2, "j", 6, None, None]]],
    ]
    assert frame.startswith(codec.publish_prefixes("zmqkit.state.g")[0])
    assert wire.read_publication(frame) == wire.Updates(W1, 12, codec.decode(frame)[5][2])
    digest = wire.encode_digest("g", W1, 4, uuid.UUID(int=7), [[W2, 9]])
    assert wire.read_publication(digest) == wire.Digest(uuid.UUID(int=7), {W2: 9})
    for data in ([3, 1, []], [1, -1, []], [2, b"short", []], [True, 1, []], "x"):
        with pytest.raises(ProtocolError):
            wire.read_publication(codec.encode_publish("zmqkit.state.g", W1, 1, data))
    with pytest.raises(ProtocolError):
        wire.read_publication(codec.encode_publish_batch("zmqkit.state.g", W1, 1, [[1, 1, []]]))
    # one UPDATES carries at most 1000 ops or about 1 MiB; an op alone may be bigger
    assert list(wire.batches([1] * 2500)) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert list(wire.batches([2 << 20, 10, 600_000, 600_000])) == [(0, 1), (1, 4)]
    # a sync reply answers its request; an ERROR with call id 0 is about the request, too
    answer = wire.read_sync_reply(codec.encode_reply(4, {"x": 1}), 4)
    assert answer == wire.SyncReply({"x": 1}, None)
    assert wire.read_sync_reply(codec.encode_error(0, "T", "m"), 4).error == "T: m"
    for stray in (codec.encode_reply(3, None), codec.encode_reply(0, None), codec.encode_cancel(4)):
        with pytest.raises(ProtocolError):
            wire.read_sync_reply(stray, 4)


# -- replicas over the network ---------------------------------------------------------------------


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


def test_state_replicas_set_delete_ttl_and_watch_changes(make_node: Callable[[str], Node]) -> None:
    a, b = make_node("a"), make_node("b")
    with State(a, "inv", **REPLICA) as left:
        left.wait_synced(timeout=5.0)
        left.set("apples", 12)
        left.set("pears", (1, 2))  # comes back as a list, on every node
        with State(b, "inv", **REPLICA) as right:
            right.wait_synced(timeout=5.0)
            assert right.items() == {"apples": 12, "pears": [1, 2]} == left.items()
            seen: list[Change] = []
            right.on_change(seen.append)
            left.set("lease", "me", ttl=1.5)
            left.delete("pears")
            assert right.wait_for("lease", timeout=3.0) == "me"
            lease_changes = []
            for change in right.changes(idle_timeout=3.0):
                if change.key == "lease":
                    lease_changes.append(change.kind)
                    break
            assert lease_changes == [ChangeKind.EXPIRED]  # the SET came before we listened
            assert "lease" not in left and "lease" not in right
            wait_until(lambda: "pears" not in right, 3.0, "pears deleted on the right")
            assert right.items() == left.items() == {"apples": 12}
            kinds = {(c.key, c.kind) for c in seen}
            assert {
                ("lease", ChangeKind.SET),
                ("pears", ChangeKind.DELETED),
                ("lease", ChangeKind.EXPIRED),
            } <= kinds
            assert all(not c.local and c.writer == left.writer for c in seen)
            assert right.stats()["merged"] >= 1 and left.stats()["served"] >= 1
    with pytest.raises(ClosedError):
        left.set("after", "close")


def test_state_asyncio_front_end(make_node: Callable[[str], Node]) -> None:
    a, b = make_node("a"), make_node("b")

    async def main() -> tuple[Any, Change, list[str]]:
        async with (
            AsyncState(a, "inv", **REPLICA) as left,
            AsyncState(b, "inv", **REPLICA) as right,
        ):
            await left.wait_synced(timeout=5.0)
            await right.wait_synced(timeout=5.0)
            left.set("n", 1)
            first = await right.wait_for("n", timeout=3.0)
            assert await right.wait_for("n", timeout=3.0, value=1) == 1 and right.get("n") == 1

            async def first_change() -> Change:
                async for change in right.changes(idle_timeout=5.0):
                    return change
                raise AssertionError("the changes ended")

            listening = asyncio.ensure_future(first_change())
            await asyncio.sleep(0.05)  # the iterator is listening now
            left.set("n", 2)
            change = await asyncio.wait_for(listening, 5.0)
            # off its loop, an AsyncState says what to use instead
            refusals = []
            for call in (lambda: right.set("x", 1), lambda: right.get("n"), lambda: right.items()):
                with pytest.raises(WrongThread, match=r"state\.State") as refused:
                    await asyncio.to_thread(call)
                refusals.append(str(refused.value))
            with pytest.raises(Timeout, match="did not appear"):
                await right.wait_for("never", timeout=0.05)
            assert [c async for c in right.changes(idle_timeout=0.05)] == []
            # a change iterator ends when its replica closes, from whatever thread
            ending = asyncio.ensure_future(first_change())
            await asyncio.sleep(0.05)
            await asyncio.to_thread(right.close)
            with pytest.raises(AssertionError, match="the changes ended"):
                await asyncio.wait_for(ending, 5.0)
            return first, change, refusals

    with pytest.raises(ConfigError):
        State(a, "bad*")
    with pytest.raises(WrongThread, match=r"state\.State"):
        AsyncState(a, "inv")  # made outside a coroutine: no loop to belong to
    assert a.parts == [] and "state:inv" not in a.endpoints
    first, change, refusals = asyncio.run(main())
    assert first == 1 and (change.key, change.kind, change.value) == ("n", ChangeKind.SET, 2)
    assert all("run_coroutine_threadsafe" in refusal for refusal in refusals)
    assert a.parts == [] == b.parts  # closed and detached


def test_state_is_usable_once_constructed_and_closed_by_its_node(beacon_port: int) -> None:
    node = Node("a", port=beacon_port, **FAST).start()
    try:
        replica = State(node, "inv", **REPLICA)  # no start(), no with
        replica.wait_synced(timeout=5.0)
        replica.set("k", 1)
        assert node.parts == [replica] and node.endpoints["state:inv"] == replica.endpoint
        stats = replica.stats()
        stats["published"] = -1  # a fresh dict each time
        assert replica.stats()["started-alone"] == 1
        closer = threading.Thread(target=node.close)  # the node closes its parts, any thread
        closer.start()
        closer.join(5)
        with pytest.raises(ClosedError):
            replica.set("k", 2)
        with pytest.raises(ClosedError):
            replica.wait_for("absent", timeout=1.0)
        replica.close()  # idempotent
        assert "closed" in repr(replica) and node.parts == []
    finally:
        node.close()
    with pytest.raises(ClosedError):
        State(node, "inv")  # a closed node starts nothing


def test_state_writes_from_any_thread_and_from_a_change_callback(
    make_node: Callable[[str], Node],
) -> None:
    """The replica's sockets stay in its own thread; writes come from anywhere: the test's
    thread and a user thread at once, and a change callback (which runs in the replica's
    thread) answering every ping with a pong."""
    a, b = make_node("a"), make_node("b")
    with State(a, "inv", **REPLICA) as left, State(b, "inv", **REPLICA) as right:
        left.wait_synced(timeout=5.0)
        right.wait_synced(timeout=5.0)

        def answer(change: Change) -> None:
            if change.key == "ping":
                right.set("pong", change.value)  # from the replica's own thread
                right.delete(f"t{change.value}")

        right.on_change(answer)
        errors: list[BaseException] = []

        def user_thread() -> None:
            try:
                for i in range(200):
                    left.set(f"t{i}", i)
            except BaseException as exc:  # handed to the test's thread
                errors.append(exc)

        writer = threading.Thread(target=user_thread)
        writer.start()
        for i in range(200):
            left.set(f"m{i}", i)
        writer.join(10)
        assert not errors
        left.set("ping", 7)
        assert left.wait_for("pong", timeout=5.0, value=7) == 7
        wait_until(lambda: "t7" not in left, 5.0, "the callback's delete reached the left")
        expected = {**{f"m{i}": i for i in range(200)}, **{f"t{i}": i for i in range(200)},
                    "ping": 7, "pong": 7}
        del expected["t7"]
        wait_until(lambda: right.items() == expected == left.items(), 5.0, "both alike")
        assert right.stats()["published"] == 2


def test_state_closes_from_its_own_callback(make_node: Callable[[str], Node]) -> None:
    node = make_node("a")
    replica = State(node, "inv", **REPLICA)
    closed = threading.Event()

    def close_on_stop(change: Change) -> None:
        if change.key == "stop":
            replica.close()  # in the replica's own thread: it ends when this returns
            closed.set()

    replica.on_change(close_on_stop)
    replica.set("stop", True)
    assert closed.wait(5.0)
    with pytest.raises(ClosedError):
        replica.set("after", 1)
    assert node.parts == [] and "state:inv" not in node.endpoints
    # its thread ends and its sockets close: the leak check after the test looks


def test_state_digests_spread_what_one_replica_alone_received(
    make_node: Callable[[str], Node],
) -> None:
    """A write that reached only the left (its writer died before sending it to the right) gets
    to the right through the left's digest; a gap that nobody can fill is given up after
    ``give_up`` seconds, counted as lost, and the write after it spreads the same way."""
    a, b = make_node("a"), make_node("b")
    ghost = uuid.uuid4().bytes  # a writer that is no node: as if SIGKILLed after two sends

    def inject(replica: State, seq: int, key: str) -> None:
        """Hand ``replica`` a message of the ghost writer as if its SUB socket had received it."""
        wall = time.time_ns()
        replica._replica.receive(ghost, seq, [op_set(key, wall, key)], wall)

    with State(a, "inv", **REPLICA) as left, State(b, "inv", **REPLICA) as right:
        left.wait_synced(timeout=5.0)
        right.wait_synced(timeout=5.0)
        inject(left, 1, "ghost1")
        assert right.wait_for("ghost1", timeout=5.0) == "ghost1"
        inject(right, 3, "ghost3")  # seq 2 never reached anyone
        assert "ghost3" not in right  # held back behind the gap
        assert left.wait_for("ghost3", timeout=10.0) == "ghost3"
        assert right.items() == left.items() == {"ghost1": "ghost1", "ghost3": "ghost3"}
        assert right.stats()["lost"] == 1 and "lost" not in left.stats()
        assert right.stats()["syncs"] >= 2 and left.stats()["syncs"] >= 2


def test_state_with_curve_replicates_only_within_the_keyring(beacon_port: int) -> None:
    left_keys, right_keys, stranger_keys = (Keypair.generate() for _ in range(3))
    ring = Keyring([left_keys.public, right_keys.public])
    with (
        Node("left", port=beacon_port, keys=left_keys, keyring=ring, **FAST) as a,
        Node("right", port=beacon_port, keys=right_keys, keyring=ring, **FAST) as b,
        Node(
            "stranger",
            port=beacon_port,
            keys=stranger_keys,
            keyring=Keyring([stranger_keys.public]),
            **FAST,
        ) as c,
        State(a, "inv", **REPLICA) as left,
        State(b, "inv", **REPLICA) as right,
        State(c, "inv", **REPLICA) as stranger,
    ):
        for replica in (left, right, stranger):
            replica.wait_synced(timeout=5.0)
        left.set("secret", 1)
        stranger.set("intruder", 2)
        assert right.wait_for("secret", timeout=5.0) == 1
        time.sleep(0.5)  # a few heartbeats: the stranger's digests would have pulled it over
        assert right.items() == left.items() == {"secret": 1}
        assert stranger.items() == {"intruder": 2}
        assert left.stats()["refused-members"] == 1 and stranger.stats()["refused-members"] == 2


def test_state_refuses_unencodable_values_and_bad_options(make_node: Callable[[str], Node]) -> None:
    node = make_node("a")
    with State(node, "inv", **REPLICA) as replica:
        with pytest.raises(EncodeError):
            replica.set("k", object())
        with pytest.raises(EncodeError):
            replica.set("k", Decimal("1.5"))  # cbor2 can encode it; a replica would refuse it
        with pytest.raises(ConfigError):
            replica.set("k", 1, ttl=-1)
        with pytest.raises(ConfigError):
            State(node, "inv")  # one replica of a group per node
        assert replica.items() == {} and replica.stats().get("published", 0) == 0
    with pytest.raises(ConfigError):
        State(node, "inv", heartbeat=0)


def test_state_sync_server_answers_bad_requests_and_keeps_serving(
    make_node: Callable[[str], Node],
) -> None:
    node = make_node("a")
    with State(node, "inv", **REPLICA) as replica, Socket(SocketKind.DEALER) as dealer:
        replica.set("k", "v")
        dealer.connect(replica.endpoint)

        def ask(frame: bytes) -> list[Any]:
            dealer.send(frame)
            return codec.decode(dealer.recv(timeout=3.0))

        assert ask(b"\xff garbage")[3] == "zmqkit.ProtocolError"
        assert ask(codec.encode_request(1, "nope", [], {}))[3] == "zmqkit.MethodNotFound"
        assert (
            ask(codec.encode_request(2, state.SYNC_METHOD, ["other", []], {}))[3]
            == "zmqkit.BadArguments"
        )
        assert ask(codec.encode_reply(3, None))[:4] == [1, Kind.ERROR, 3, "zmqkit.ProtocolError"]
        reply = ask(codec.encode_request(4, state.SYNC_METHOD, ["inv", []], {}))
        assert reply[1] == Kind.REPLY and reply[2] == 4
        [[writer, seq, code, key, _, value, expires]] = reply[3]["entries"]
        assert writer == replica.writer.bytes
        assert (seq, code, key, value, expires) == (1, wire.OP_SET, "k", "v", None)
        assert reply[3]["writers"] == [[replica.writer.bytes, 1]]
        # it knows everything already: an empty delta
        known = [[replica.writer.bytes, 1]]
        reply = ask(codec.encode_request(5, state.SYNC_METHOD, ["inv", known], {}))
        assert reply[3]["entries"] == []
        assert replica.stats()["bad-requests"] == 2


# -- three replicas, one SIGKILLed -----------------------------------------------------------------

CHILD_SCRIPT = r"""
import json, sys, time
import zmqkit
from zmqkit.patterns import state

port, replica_options = int(sys.argv[1]), json.loads(sys.argv[2])
with zmqkit.Node("child", port=port, interval=0.2, expiry=0.6) as node:
    with state.State(node, "conv", **replica_options) as replica:
        replica.wait_synced(timeout=10)
        print("ready", node.uuid, flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[0] == "burst":
                count, pause, prefix = int(words[1]), float(words[2]), words[3]
                for i in range(count):
                    replica.set(f"k{i % 20}", f"child-{i}")
                    replica.set(f"{prefix}{i}", i)  # only the child writes these
                    if i % 7 == 0:
                        replica.delete(f"k{(i + 3) % 20}")
                    if i % 10 == 0:
                        replica.set("lease", "child", ttl=0.3)
                        time.sleep(pause)
                print("burst-done", flush=True)
            elif words[0] == "items":
                print("items", json.dumps(replica.items(), sort_keys=True), flush=True)
"""


class Child:
    """A replica in a child process, driven over stdin/stdout; SIGKILLed or reaped on exit."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, str(port), json.dumps(REPLICA)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            bufsize=0,
        )
        self._buffer = b""

    def expect(self, word: str, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                head, _, rest = line.decode().partition(" ")
                if head == word:
                    return rest
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
                raise AssertionError(f"child: no {word!r} in {timeout} s (exit {self.proc.poll()})")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                assert self.proc.stderr is not None
                raise AssertionError(f"child exited: {self.proc.stderr.read().decode()[-2000:]}")
            self._buffer += chunk

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def items(self) -> dict[str, Any]:
        self.send("items")
        return json.loads(self.expect("items", 5.0))  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no goodbye, no flush, no close
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def write_burst(replica: State, name: str, count: int) -> None:
    for i in range(count):
        replica.set(f"k{i % 20}", f"{name}-{i}")
        if i % 5 == 0:
            replica.delete(f"k{(i + 11) % 20}")
        if i % 10 == 0:
            time.sleep(0.002)


def after_burst(name: str, count: int) -> dict[str, str]:
    """The ``k`` keys as ``write_burst(replica, name, count)`` leaves them, when its writes are
    the newest (every one of the 20 keys is written at least once in 20 writes)."""
    keys: dict[str, str] = {}
    for i in range(count):
        keys[f"k{i % 20}"] = f"{name}-{i}"
        if i % 5 == 0:
            keys.pop(f"k{(i + 11) % 20}", None)
    return keys


def only(prefix: str, items: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in items.items() if key.startswith(prefix)}


def converged(replicas: list[Callable[[], dict[str, Any]]], timeout: float) -> dict[str, Any]:
    """Wait until every replica shows the same map, twice in a row; return it."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        views = [items() for items in replicas]
        if all(view == views[0] for view in views) and last == views:
            return views[0]
        last = views
        time.sleep(0.2)
    raise AssertionError(f"no convergence in {timeout} s: {last}")


def test_state_three_replicas_converge_through_concurrent_writes_and_a_sigkill(
    make_node: Callable[[str], Node], beacon_port: int
) -> None:
    a, b = make_node("a"), make_node("b")
    children: list[Child] = []
    try:
        with State(a, "conv", **REPLICA) as left, State(b, "conv", **REPLICA) as right:
            left.wait_synced(timeout=5.0)
            right.wait_synced(timeout=5.0)
            child = Child(beacon_port)
            children.append(child)
            child.expect("ready")
            # all three write the same 20 keys at once (the left from two threads)
            child.send("burst 300 0.002 a")
            writers = [
                threading.Thread(target=write_burst, args=(left, "left", 300)),
                threading.Thread(target=write_burst, args=(left, "left2", 200)),
                threading.Thread(target=write_burst, args=(right, "right", 300)),
            ]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(10)
            child.expect("burst-done")
            wait_until(
                lambda: all(
                    "lease" not in items() for items in (left.items, right.items, child.items)
                ),
                5.0,
                "the child's TTL key expired on every node",
            )
            first = converged([left.items, right.items, child.items], timeout=10.0)
            assert "lease" not in first
            assert only("a", first) == {f"a{i}": i for i in range(300)}
            assert len(only("k", first)) > 0

            # SIGKILL the child in the middle of a burst: its last writes may reach one replica
            # and not the other; the digests must even that out
            child.send("burst 5000 0.001 b")
            wait_until(lambda: len(only("b", left.items())) > 50, 5.0, "the burst under way")
            child.kill()
            write_burst(right, "right-after", 100)
            survivors = converged([left.items, right.items], timeout=10.0)
            written = len(only("b", survivors))
            assert 50 < written < 5000
            # what arrived of the dead writer is a prefix of what it wrote: no gap anywhere
            assert only("b", survivors) == {f"b{i}": i for i in range(written)}
            assert only("k", survivors) == after_burst("right-after", 100)

            # a new replica joins through a snapshot while the others keep writing
            reborn = Child(beacon_port)
            children.append(reborn)
            writer = threading.Thread(target=write_burst, args=(left, "left-rejoin", 300))
            writer.start()
            reborn.expect("ready")
            writer.join(10)
            final = converged([left.items, right.items, reborn.items], timeout=10.0)
            assert only("k", final) == after_burst("left-rejoin", 300)
            assert only("b", final) == only("b", survivors)
            assert only("a", final) == only("a", first)
            assert left.stats()["served"] + right.stats()["served"] >= 3  # three joins
    finally:
        for child in children:
            child.kill()


# -- the wire, as docs/protocol.md section 9.2 tells it -------------------------------------------


def doc_examples(heading: str) -> list[tuple[bytes, Any]]:
    """Each ``hex`` block of a docs/protocol.md section with the value of the ``diag`` block
    after it, read the way tests/test_protocol_doc.py reads the whole document."""
    text = doc_section("docs/protocol.md", heading)
    blocks = re.findall(r"```(hex|diag)\n(.*?)```", text, re.S)
    examples = []
    for (kind, body), (next_kind, diag) in itertools.pairwise(blocks):
        if kind == "hex":
            assert next_kind == "diag", body
            digits = "".join(re.sub(r"#.*", "", line) for line in body.splitlines())
            as_json = re.sub(r"h'([0-9a-fA-F]*)'", lambda m: json.dumps({"$b": m.group(1)}), diag)
            value = json.loads(
                as_json, object_hook=lambda o: bytes.fromhex(o["$b"]) if set(o) == {"$b"} else o
            )
            examples.append((bytes.fromhex(re.sub(r"\s", "", digits)), value))
    return examples


def test_state_protocol_doc_examples_are_what_the_code_sends() -> None:
    updates, digest, request, reply = doc_examples("9.2 ")
    for frame, value in (updates, digest, request, reply):
        assert codec.decode(frame) == value
    writer, node_uuid = bytes(range(16)), bytes.fromhex("12345678" * 4)
    stamp, ttl = 1_800_000_000_000_000_000, 30 * NS
    ops = [
        [wire.OP_SET, "apples", stamp, 12, stamp + ttl],
        [wire.OP_DELETE, "pears", stamp + 1, None, None],
    ]
    assert updates[0] == wire.encode_updates("inv", writer, 5, 3, ops)
    assert digest[0] == wire.encode_digest("inv", writer, 6, uuid.UUID(bytes=node_uuid),
                                           [[writer, 3]])
    assert request[0] == wire.encode_sync_request(1, "inv", {writer: 1})
    core = StateCore(writer)
    core.write("apples", 11, stamp - 5)  # write 1, which the asker has
    core.write("apples", 12, stamp, ttl)
    core.remove("pears", stamp + 1)
    assert reply[0] == wire.encode_snapshot(1, core.snapshot({writer: 1}))
    # and a replica takes the UPDATES example as the document says
    replica = StateCore(bytes(16))
    replica.merge({"writers": [[writer, 1]], "entries": []}, wall=stamp)
    changes = replica.receive(writer, *codec.decode(updates[0])[5][1:], wall=stamp)
    assert [(c.key, c.kind) for c in changes] == [("apples", ChangeKind.SET)]
    assert replica.lookup("apples", stamp + ttl - 1) is not None
    assert replica.lookup("apples", stamp + ttl) is None
    assert replica.applied[writer] == 3


# -- the documentation example ---------------------------------------------------------------------


def test_state_doc_examples_print_what_they_promise(tmp_path: Path) -> None:
    text = doc_section("README.md", "Replicated state:")
    examples = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(examples) == 2  # in memory, then durable
    for number, code in enumerate(examples):
        promised = [m.group(1).strip()
                    for m in re.finditer(r"print\(.*\)\s+#\s*(.+)$", code, re.M)]
        assert promised
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / "example.py").write_text(code)
        result = subprocess.run(
            [sys.executable, "example.py"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            cwd=folder,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == promised

"""Durable state, bounded tables, and a sync that backs off.

The core and the planner first, without sockets: writers that hold no key are retired (the table
stays bounded), a store's content comes back, a failing sync waits longer each time, up to a
limit, and says so. Then replicas: reopened on their stores, one SIGKILLed right after 100 writes
returned (it comes back with all 100), a whole group SIGKILLed and restarted (it keeps its data),
and one whose only member never answers.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_state
from conftest import wait_until
from test_partition import STATE_REPLICA, Child
from zmqkit.patterns import state
from zmqkit.patterns.farm.journal import Journal
from zmqkit.patterns.state import StateCore, SyncPlanner
from zmqkit.patterns.state.core import Entry
from zmqkit.patterns.state.store import Changes, Store

from zmqkit import ConfigError, Node, SocketKind, Timeout

make_node = test_state.make_node  # the fixture: nodes on a private beacon port

FAST = {"interval": 0.2, "expiry": 0.6}
REPLICA = {"heartbeat": 0.2, "sync_timeout": 1.0, "join_wait": 0.3, "give_up": 2.0}
W1, W2, W3, W4 = (bytes([n]) * 16 for n in (1, 2, 3, 4))


def op_set(key: str, stamp: int, value: Any) -> list[Any]:
    return [state.wire.OP_SET, key, stamp, value, None]


# -- the core: bounded per-writer table, what changed, what comes back ----------------------------


def test_state_core_retires_writers_that_hold_no_key_and_knows_their_late_writes() -> None:
    core = StateCore(W4, max_retired=2)
    core.receive(W1, 1, [op_set("k", 10, "w1")], wall=0)
    core.receive(W2, 1, [op_set("k", 20, "w2")], wall=0)  # W1 holds nothing now: retired
    assert core.applied == {W2: 1} and core.retired == {W1: 1} and core.digest() == [[W2, 1]]
    assert core.receive(W1, 1, [op_set("k", 10, "w1")], wall=0) == []  # known: a duplicate
    assert core.stats()["duplicates"] == 1
    [change] = core.receive(W1, 2, [op_set("j", 30, "back")], wall=0)  # follows on: live again
    assert change.key == "j" and core.applied[W1] == 2 and W1 not in core.retired
    core.receive(W3, 1, [op_set("k", 40, "w3")], wall=0)  # W2 retired
    core.receive(W3, 2, [op_set("j", 50, "w3")], wall=0)  # W1 retired
    assert list(core.applied) == [W3] and list(core.retired) == [W2, W1]
    core.write("k", "mine", wall=60)
    core.write("j", "mine too", wall=70)  # W3 retired: the oldest retired writer is forgotten
    assert list(core.retired) == [W1, W3] and list(core.applied) == [W4]
    snapshot = core.snapshot({})
    assert sorted(w for w, _ in snapshot["writers"]) == [W1, W3, W4]  # retired ones go too
    held = StateCore(W4)
    held.receive(W1, 1, [op_set("k", 10, "w1")], wall=0)
    held.receive(W1, 3, [op_set("x", 1, "after a gap")], wall=0)
    held.receive(W2, 1, [op_set("k", 20, "w2")], wall=0)
    assert held.applied == {W1: 1, W2: 1}  # a writer with a gap to fill stays


def test_state_core_notes_what_changed_and_takes_a_store_back() -> None:
    core = StateCore(W4, durable=True)
    core.write("a", 1, wall=10)
    core.receive(W1, 2, [op_set("b", 20, 2), op_set("a", 5, "older")], wall=0)
    core.remove("b", wall=30)
    dirty = core.take_dirty()
    assert dirty.keys == {"a", "b"} and dirty.writers == {W1, W4}
    assert core.take_dirty().keys == set()
    entries = {key: Entry.from_wire(entry.as_wire(key), 0) for key, entry in core.entries.items()}
    restored = StateCore(W2, durable=True)
    restored.restore(entries, dict(core.progress))
    assert restored.visible(0) == {"a": 1} and restored.entries["b"].deleted
    assert restored.applied == {W4: 2} and restored.retired == {W1: 2}  # W1: superseded
    assert restored.take_dirty().keys == set()  # what came from the store is not dirty
    with pytest.raises(ConfigError, match="new replica"):
        restored.restore({}, {})
    assert StateCore(W1).take_dirty().keys == set()  # not durable: nothing noted


def test_state_store_keeps_entries_tombstones_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "map.db"
    store = Store(path, "inventory")
    big = 2**64 - 1  # a sequence number past SQLite's integers
    store.write(Changes([[W1, big, 1, "a", 10, {"n": [1, 2]}, None],
                         [W2, 1, 2, "b", 20, None, None],
                         [W2, 2, 1, "lease", 30, "x", 40]], [(W1, big), (W2, 2), (W3, 5)]))
    store.write(Changes([], [(W3, None)]))
    store.close()
    store = Store(path, "inventory")
    entries, progress = store.load(wall=35)
    assert entries["a"].value == {"n": [1, 2]} and entries["a"].seq == big
    assert entries["b"].deleted and not entries["lease"].deleted
    assert progress == {W1: big, W2: 2}
    assert store.load(wall=40)[0]["lease"].deleted  # its TTL passed while the replica was down
    with pytest.raises(ConfigError, match="in use"):
        Store(path, "inventory", timeout=0.2)
    store.close()
    with pytest.raises(ConfigError, match="'inventory'"):
        Store(path, "other-group")
    journal = Journal(tmp_path / "tasks.db", "inventory")
    journal.close()
    with pytest.raises(ConfigError, match="zmqkit farm journal"):
        Store(tmp_path / "tasks.db", "inventory")
    raw = sqlite3.connect(path)
    raw.execute("UPDATE entries SET entry = x'ff' WHERE key = 'a'")
    raw.commit()
    raw.close()
    store = Store(path, "inventory")
    with pytest.raises(ConfigError, match="cannot be read back"):
        store.load(wall=0)
    store.close()


# -- the planner: a sync that backs off, and says where it stands ---------------------------------

M1, M2 = uuid.UUID(int=1), uuid.UUID(int=2)


def test_state_planner_backs_off_after_failures_up_to_a_limit_and_reports_them() -> None:
    planner = SyncPlanner(timeout=1.0, retry=0.2, max_backoff=2.0)
    planner.start(now=0.0)
    planner.set_members({M1: "tcp://m1"})
    now, asked = 0.0, []
    while now < 30.0:
        plan = planner.plan(now, synced=False, applied={}, missing={})
        if plan.ask is not None:
            asked.append(now)
        now = round(now + 0.1, 1)
    waits = [round(b - a - 1.0, 1) for a, b in itertools.pairwise(asked)]  # less the 1 s timeout
    assert waits[:5] == [0.2, 0.4, 0.8, 1.6, 2.0] and set(waits[5:]) == {2.0}, waits
    status = planner.status(now, synced=False)
    assert status.failures == len(asked) - (status.asking is not None)
    assert status.last_error == f"{M1} did not answer in 1 s"
    assert "syncs failed in a row" in str(status)
    planner.set_members({M1: "tcp://m1", M2: "tcp://m2"})
    while (plan := planner.plan(now, synced=False, applied={}, missing={})).ask is None:
        now += 0.1
    assert plan.ask == M2  # M1 failed lately
    planner.succeeded(now)
    assert planner.status(now, synced=True) == state.SyncStatus(True, 2, None, 0, None, 0.0)
    planner.set_members({M2: "tcp://m2"})
    assert M1 not in planner._failed_at  # a member gone is forgotten: the table stays bounded


# -- replicas on their stores ---------------------------------------------------------------------


def test_state_replica_reopened_on_its_store_has_its_map(
    make_node: Callable[[str], Node], tmp_path: Path
) -> None:
    node = make_node("left")
    store = tmp_path / "map.db"
    with state.State(node, "inventory", store=store, **REPLICA) as replica:
        replica.set("apples", 12)
        replica.set("pears", [1, 2])
        replica.set("lease", "me", ttl=60)
        replica.delete("pears")
        with pytest.raises(ConfigError, match="in use"):
            state.State(make_node("right"), "inventory", store=store)
    with state.State(node, "inventory", store=store, **REPLICA) as replica:
        assert replica.items() == {"apples": 12, "lease": "me"}
        assert replica.stats().get("store-writes", 0) == 0  # nothing new to write yet
        replica.wait_synced(timeout=5)

    async def reopen() -> dict[str, Any]:
        async with state.AsyncState(node, "inventory", store=store, **REPLICA) as replica:
            replica.set("plums", 3)
            return replica.items()

    assert asyncio.run(reopen()) == {"apples": 12, "lease": "me", "plums": 3}
    with state.State(node, "inventory", store=store, **REPLICA) as replica:
        assert replica.get("plums") == 3


def test_state_durable_write_from_a_change_callback_is_stored_at_once(
    make_node: Callable[[str], Node], tmp_path: Path
) -> None:
    """A callback runs in the replica's thread, which alone writes the store: a write made
    there is stored there, not waited for (which would wait for itself)."""
    node = make_node("left")
    store = tmp_path / "map.db"
    with state.State(node, "inventory", store=store, **REPLICA) as replica:
        replica.on_change(lambda change: change.key == "order" and replica.set("echo", 1))
        replica.set("order", "go")
        assert replica.wait_for("echo", timeout=2) == 1  # well before STORE_WAIT (10 s)
    with state.State(node, "inventory", store=store, **REPLICA) as replica:
        assert replica.items() == {"order": "go", "echo": 1}


def replica_child(port: int, name: str, store: Path) -> Child:
    return Child(STATE_REPLICA, name, prefix=[], port=port, store=str(store), **FAST)


def items(child: Child) -> dict[str, Any]:
    child.command({"op": "items"})
    found: dict[str, Any] = child.answer("items", 5)
    return found


def test_state_replica_sigkilled_right_after_100_writes_has_all_100_on_restart(
    beacon_port: int, tmp_path: Path
) -> None:
    store = tmp_path / "map.db"
    alone = replica_child(beacon_port, "alone", store)
    again: Child | None = None
    try:
        assert alone.answer("ready", 15)["keys"] == 0
        alone.command({"op": "write", "prefix": "k", "count": 100, "pause": 0})
        alone.expect("wrote", 15)  # every set() has returned...
        alone.sigkill()  # ... and at once, nothing more
        again = replica_child(beacon_port, "again", store)
        assert again.answer("ready", 15)["keys"] == 100  # no member: all of it from its store
        assert items(again) == {f"k{n}": n for n in range(100)}
    finally:
        alone.kill()
        if again is not None:
            again.kill()


def test_state_whole_group_sigkilled_and_restarted_keeps_its_data(
    beacon_port: int, tmp_path: Path
) -> None:
    names = ["a", "b", "c"]
    expected = {f"{name}-{n}": n for name in names for n in range(30)}
    children: list[Child] = []
    try:
        for name in names:
            child = replica_child(beacon_port, name, tmp_path / f"{name}.db")
            children.append(child)
            child.answer("ready", 15)
        for name, child in zip(names, children, strict=True):
            child.command({"op": "write", "prefix": f"{name}-", "count": 30, "pause": 0})
        for child in children:
            child.expect("wrote", 15)
        wait_until(lambda: all(items(child) == expected for child in children), 15,
                   "the group agrees")
        for child in children:
            child.sigkill()
        restarted = [replica_child(beacon_port, f"{name}-2", tmp_path / f"{name}.db")
                     for name in names]
        children += restarted
        for child in restarted:
            assert child.answer("ready", 15)["keys"] == len(expected)
        wait_until(lambda: all(items(child) == expected for child in restarted), 15,
                   "the restarted group has every write")
    finally:
        for child in children:
            child.kill()


def test_state_sync_with_a_member_that_never_answers_backs_off_and_says_so(
    make_node: Callable[[str], Node],
) -> None:
    mute, node = make_node("mute"), make_node("asker")
    router = mute.server_socket(SocketKind.ROUTER)  # takes sync requests, answers none
    publisher = mute.server_socket(SocketKind.PUB)
    try:
        mute.advertise(state.sync_role("inventory"), router.endpoint)
        mute.advertise(state.pub_role("inventory"), publisher.endpoint)
        node.wait_for("mute", role=state.sync_role("inventory"), timeout=5)
        with state.State(node, "inventory", heartbeat=0.2, sync_timeout=0.2) as replica:
            with pytest.raises(Timeout, match="syncs failed in a row"):
                replica.wait_synced(timeout=2.5)
            status = replica.sync_status()
            assert not status.synced and status.members == 1 and status.failures >= 3
            assert "did not answer in 0.2 s" in (status.last_error or "")
            timeouts = replica.stats()["sync-timeouts"]
            assert timeouts <= 5  # 0.2, 0.4, 0.8 s... apart: 4 in 2.5 s (6 without backing off)
            replica.set("still", "works")  # writes go on meanwhile
            assert replica.get("still") == "works"
            mute.withdraw(state.sync_role("inventory"))
            replica.wait_synced(timeout=5)  # the member went: it starts alone
            assert replica.sync_status().synced
    finally:
        router.close()
        publisher.close()


def test_state_tables_stay_bounded_while_writers_come_and_go(
    make_node: Callable[[str], Node],
) -> None:
    node = make_node("keeper")
    with state.State(node, "inventory", **REPLICA) as keeper:
        for n in range(12):  # a dozen writers that each write one key, then are overwritten
            with state.State(make_node(f"w{n}"), "inventory", **REPLICA) as writer:
                writer.wait_synced(timeout=5)
                writer.set("shared", n)
                keeper.wait_for("shared", value=n, timeout=5)
        stats = keeper.stats()
        assert stats["writers"] == 1 and stats["retired"] == 11, stats

"""Discovery on loopback: the UDP beacon, the peer table behind it, and Node's ways to wait.

Every test uses its own beacon port (the ``beacon_port`` fixture), so tests never hear each
other. Nodes run with ``interval=0.2, expiry=0.6`` to keep expiry tests short; waits are
conditions with deadlines, not sleeps. Processes are ``NodeProcess`` children, always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import cbor2
import pytest
import zmq
from conftest import wait_until
from nodeproc import NodeProcess, kill_all

from zmqkit import (
    DEFAULT_PORT,
    ClosedError,
    ConfigError,
    EncodeError,
    EventKind,
    Node,
    PeerEvent,
    PeerNotFound,
    PeerTable,
    ProtocolError,
)
from zmqkit.codec import BeaconKind, encode_beacon
from zmqkit.introspect import ADMIN_ROLE

FAST: dict[str, Any] = {"interval": 0.2, "expiry": 0.6}


def served(endpoints: Mapping[str, str]) -> dict[str, str]:
    """What a node serves, less the admin endpoint that every announcing node has."""
    return {role: endpoint for role, endpoint in endpoints.items() if role != ADMIN_ROLE}


@pytest.fixture(autouse=True)
def no_fd_leaks() -> Iterator[None]:
    """Fail a test that leaves a file descriptor open (a beacon socket, a pipe to a child)."""
    zmq.Context.instance().socket(zmq.PAIR).close()  # the context's own threads and descriptors
    before = len(os.listdir("/proc/self/fd"))
    yield
    # libzmq frees a closed socket's descriptors on its reaper thread, a moment later
    wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before, 2.0,
               "the test's file descriptors are closed")


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[Callable[..., Node]]:
    """Start nodes on the test's private port; every one is closed after the test."""
    nodes: list[Node] = []

    def make(name: str, *, start: bool = True, **options: Any) -> Node:
        node = Node(name, port=beacon_port, **{**FAST, **options})
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in reversed(nodes):
        node.close()



class Recorder:
    """Collects presence events (from the beacon thread) with their arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, PeerEvent]] = []
        self._arrived = threading.Condition()

    def __call__(self, event: PeerEvent) -> None:
        with self._arrived:
            self.events.append((time.monotonic(), event))
            self._arrived.notify_all()

    def wait(self, kind: EventKind, peer_uuid: str, timeout: float) -> tuple[float, PeerEvent]:
        """The first ``kind`` event about ``peer_uuid``: (arrival time, event)."""
        with self._arrived:
            found = self._arrived.wait_for(lambda: self.find(kind, peer_uuid), timeout)
        assert found, f"no {kind.value} event for {peer_uuid} in {timeout} s: {self.kinds()}"
        return found

    def find(self, kind: EventKind, peer_uuid: str) -> tuple[float, PeerEvent] | None:
        for when, event in self.events:
            if event.kind is kind and str(event.peer.uuid) == peer_uuid:
                return when, event
        return None

    def kinds(self, peer_uuid: str | None = None) -> list[EventKind]:
        return [e.kind for _, e in self.events if peer_uuid in (None, str(e.peer.uuid))]


# -- in one process ------------------------------------------------------------------------------


def test_nodes_in_one_process_see_each_other_by_name(make_node: Callable[..., Node]) -> None:
    workers = [make_node("worker") for _ in range(3)]
    other = make_node("other")
    found = other.wait_for("worker", timeout=3, count=3)
    assert {peer.uuid for peer in found} == {worker.uuid for worker in workers}
    assert {peer.name for peer in other.peers()} == {"worker"}
    for worker in workers:
        assert [peer.uuid for peer in worker.wait_for("other", timeout=3)] == [other.uuid]
        mates = worker.wait_for("worker", timeout=3, count=2)
        assert worker.uuid not in {peer.uuid for peer in mates}, "a node must not list itself"
    assert all(peer.address == "127.0.0.1" for peer in other.peers())
    assert other.peers("nobody") == []


def test_wait_for_raises_peer_not_found_within_its_timeout(make_node: Callable[..., Node]) -> None:
    node = make_node("lonely")
    make_node("worker")
    node.wait_for("worker", timeout=3)
    for name, count in (("nobody", 1), ("worker", 2)):
        started = time.monotonic()
        with pytest.raises(PeerNotFound, match=repr(name)):
            node.wait_for(name, timeout=0.3, count=count)
        assert 0.3 <= time.monotonic() - started < 0.8


def test_wait_for_on_a_node_closed_meanwhile_raises_closed(make_node: Callable[..., Node]) -> None:
    node = make_node("soon-closed")
    closer = threading.Timer(0.1, node.close)
    closer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ClosedError):
            node.wait_for("nobody", timeout=5)
        assert time.monotonic() - started < 1.0, "close must wake a waiter at once"
    finally:
        closer.join()
    with pytest.raises(ClosedError):
        node.start()


def test_clean_stop_is_seen_as_left_at_once(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    recorder = Recorder()
    watcher.on_event(recorder)
    leaving = make_node("leaving")
    watcher.wait_for("leaving", timeout=3)
    stopped = time.monotonic()
    leaving.close()
    seen, _ = recorder.wait(EventKind.LEFT, str(leaving.uuid), timeout=2)
    assert seen - stopped < 0.5, f"LEFT seen after {seen - stopped:.3f} s"
    assert watcher.peers("leaving") == []
    assert EventKind.EXPIRED not in recorder.kinds()


def test_advertise_is_seen_as_updated_with_the_new_endpoint(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    recorder = Recorder()
    watcher.on_event(recorder)
    server = make_node("server")
    watcher.wait_for("server", timeout=3)
    server.advertise("rpc", "tcp://127.0.0.1:5555")
    _, event = recorder.wait(EventKind.UPDATED, str(server.uuid), timeout=2)
    assert served(event.peer.endpoints) == {"rpc": "tcp://127.0.0.1:5555"}
    assert served(watcher.peers("server")[0].endpoints) == {"rpc": "tcp://127.0.0.1:5555"}

    server.set_header("load", "0.5")
    wait_until(lambda: watcher.peers("server")[0].headers == {"load": "0.5"}, 2, "header seen")
    server.withdraw("rpc")
    wait_until(lambda: served(watcher.peers("server")[0].endpoints) == {}, 2, "withdrawal seen")
    assert recorder.kinds(str(server.uuid)) == [EventKind.JOINED] + [EventKind.UPDATED] * 3


def test_on_event_delivers_and_unsubscribes(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    recorder = Recorder()
    unsubscribe = watcher.on_event(recorder)
    first = make_node("first")
    recorder.wait(EventKind.JOINED, str(first.uuid), timeout=2)
    unsubscribe()
    second = make_node("second")
    watcher.wait_for("second", timeout=3)
    assert recorder.find(EventKind.JOINED, str(second.uuid)) is None


def test_events_iterator_delivers_joined_updated_left(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    ticker = make_node("ticker")
    watcher.wait_for("ticker", timeout=3)
    # The iterator subscribes when first advanced, and advancing blocks until an event: a
    # ticking header supplies the first one, whenever that is.
    stop_ticking = threading.Event()

    def tick() -> None:
        for count in range(1000):
            if stop_ticking.wait(0.02):
                return
            ticker.set_header("tick", str(count))

    ticking = threading.Thread(target=tick, name="test-ticker")
    ticking.start()
    seen: list[tuple[EventKind, str]] = []
    newcomer: Node | None = None
    try:
        with contextlib.closing(watcher.events(5.0)) as events:
            for event in events:
                if event.peer.name == "ticker":
                    if newcomer is None:
                        stop_ticking.set()
                        newcomer = make_node("newcomer")
                    continue
                seen.append((event.kind, event.peer.name))
                assert newcomer is not None
                if event.kind is EventKind.JOINED:
                    newcomer.advertise("pub", "tcp://127.0.0.1:6000")
                elif event.kind is EventKind.UPDATED:
                    assert served(event.peer.endpoints) == {"pub": "tcp://127.0.0.1:6000"}
                    newcomer.close()
                elif event.kind is EventKind.LEFT:
                    break
    finally:
        stop_ticking.set()
        ticking.join()
    kinds = (EventKind.JOINED, EventKind.UPDATED, EventKind.LEFT)
    assert seen == [(kind, "newcomer") for kind in kinds]


def test_events_iterator_ends_after_its_duration(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    started = time.monotonic()
    assert list(watcher.events(0.3)) == []
    assert 0.3 <= time.monotonic() - started < 0.8


def test_events_async_and_wait_for_async_deliver(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    newcomer = make_node("newcomer", start=False)

    async def main() -> list[tuple[EventKind, str]]:
        with pytest.raises(PeerNotFound):
            await watcher.wait_for_async("newcomer", timeout=0.2)
        seen = []
        async with contextlib.aclosing(watcher.events_async()) as events:
            first = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0)  # the generator runs up to its queue: it has subscribed
            asyncio.get_running_loop().call_later(0.05, newcomer.start)
            [peer] = await watcher.wait_for_async("newcomer", timeout=3)
            assert peer.uuid == newcomer.uuid
            event = await asyncio.wait_for(first, 3)
            seen.append((event.kind, event.peer.name))
            newcomer.close()
            while seen[-1][0] is not EventKind.LEFT:
                event = await asyncio.wait_for(events.__anext__(), 3)
                seen.append((event.kind, event.peer.name))
        return seen

    assert asyncio.run(main()) == [(EventKind.JOINED, "newcomer"), (EventKind.LEFT, "newcomer")]


def test_a_listen_only_node_sees_others_and_is_not_seen(make_node: Callable[..., Node]) -> None:
    speaker = make_node("speaker")
    listener = make_node("listener", announce=False)
    [heard] = listener.wait_for("speaker", timeout=3)
    # By the time the listener has heard two periodic beacons, the speaker has had every
    # chance to hear the listener, had it said anything.
    wait_until(
        lambda: listener.peers("speaker")[0].last_seen > heard.last_seen + FAST["interval"] / 2,
        3, "a second periodic beacon",
    )
    assert speaker.peers() == []
    # it solicited once, when it started, and sent nothing else: no HELLO, no GOODBYE
    assert listener.stats().get("sent", 0) == listener.stats()["solicits"] == 1


def test_config_errors_are_config_errors_and_leak_nothing(beacon_port: int) -> None:
    with pytest.raises(ConfigError, match="interface"):
        Node("x", port=beacon_port, scope="subnet")
    with pytest.raises(ConfigError, match="zk-nope0"):
        Node("x", port=beacon_port, scope="subnet", interface="zk-nope0")
    with pytest.raises(ConfigError, match="galaxy"):
        Node("x", port=beacon_port, scope="galaxy")
    for seed in ("127.0.0.1:notaport", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:", ":9", ""):
        with pytest.raises(ConfigError, match="seed"):
            Node("x", port=beacon_port, seeds=[seed])
    with pytest.raises(ConfigError):
        Node("x", port=beacon_port, interval=1.0, expiry=0.5)
    for name in ("", "n" * 65, "\udc80", b"bytes"):
        with pytest.raises(ConfigError):
            Node(name, port=beacon_port)  # type: ignore[arg-type]


def test_the_default_port_is_zmqkit_port_if_set_and_47474_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZMQKIT_PORT")
    assert Node("x").port == DEFAULT_PORT == 47474
    monkeypatch.setenv("ZMQKIT_PORT", " 50123 ")
    assert Node("x").port == 50123
    assert Node("x", port=40000).port == 40000  # an explicit port wins
    for bad in ("abc", "0", "70000", "-5", "1e3"):
        monkeypatch.setenv("ZMQKIT_PORT", bad)
        with pytest.raises(ConfigError, match="ZMQKIT_PORT"):
            Node("x")


def test_nodes_without_a_port_meet_on_zmqkit_port(beacon_port: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMQKIT_PORT", str(beacon_port))
    with Node("here", **FAST) as here, Node("there", port=beacon_port, **FAST):
        assert [peer.name for peer in here.wait_for("there", timeout=3)] == ["there"]


def test_what_a_beacon_cannot_carry_fails_loudly(make_node: Callable[..., Node]) -> None:
    """Peers drop a beacon with a non-text endpoint: refusing it early beats silent invisibility."""
    for headers in ({"load": 1}, {"big": "x" * 2000}):
        node = make_node("bad-headers", start=False, headers=headers)
        with pytest.raises(EncodeError):
            node.start()
        assert not node.running
    server = make_node("server")
    server.advertise("rpc", "tcp://127.0.0.1:5555")
    with pytest.raises(EncodeError):
        server.advertise("pub", 5556)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        server.set_header("load", 0.5)  # type: ignore[arg-type]
    assert served(server.endpoints) == {"rpc": "tcp://127.0.0.1:5555"}
    assert server.headers == {}
    watcher = make_node("watcher")
    [peer] = watcher.wait_for("server", timeout=3)
    assert served(peer.endpoints) == {"rpc": "tcp://127.0.0.1:5555"}
    assert "dropped-malformed" not in watcher.stats()


# -- across processes ----------------------------------------------------------------------------


def test_nodes_in_separate_processes_see_each_other(make_node: Callable[..., Node]) -> None:
    names = [f"proc-{i}" for i in range(3)]

    def others(name: str) -> list[str]:
        return [other for other in names if other != name]

    parent = make_node("parent")
    children = [
        NodeProcess(name, port=parent.port, **FAST, wait_for=[*others(name), "parent"])
        for name in names
    ]
    try:
        for child in children:
            child.wait_ready()
        for child in children:
            for other in [*others(child.name), "parent"]:
                assert child.expect("saw") == other
        for child in children:
            [peer] = parent.wait_for(child.name, timeout=3)
            assert str(peer.uuid) == child.uuid
        recorder = Recorder()
        parent.on_event(recorder)
        for child in children:
            child.stop()
            recorder.wait(EventKind.LEFT, child.uuid, timeout=2)
    finally:
        kill_all(children)


@pytest.mark.parametrize(
    "observer",
    [
        pytest.param(FAST, id="announcing"),
        # A listener alone on the port wakes only when it must, since it sends nothing and
        # hears nothing once the child is dead: an expiry event that waited for the next wake
        # would come a whole (long) interval late.
        pytest.param({"announce": False, "interval": 0.5, "expiry": 0.6}, id="listening"),
    ],
)
def test_a_killed_process_expires_within_its_expiry(
    make_node: Callable[..., Node], observer: dict[str, Any]
) -> None:
    watcher = make_node("watcher", **observer)
    recorder = Recorder()
    watcher.on_event(recorder)
    with NodeProcess("doomed", port=watcher.port, **FAST) as child:
        child.wait_ready()
        watcher.wait_for("doomed", timeout=3)
        killed = time.monotonic()
        child.sigkill()
    seen, event = recorder.wait(EventKind.EXPIRED, child.uuid, timeout=3)
    # It was last heard at most one interval before the kill, so it expires between
    # (expiry - interval) and expiry after it; the margins absorb a loaded machine.
    assert 0.3 <= seen - killed <= FAST["expiry"] + 0.3, f"expired after {seen - killed:.3f} s"
    silence = seen - event.peer.last_seen
    assert FAST["expiry"] <= silence < FAST["expiry"] + 0.25, f"{silence:.3f} s of silence"
    assert recorder.kinds(child.uuid) == [EventKind.JOINED, EventKind.EXPIRED]


def test_a_node_busy_computing_is_not_expired(make_node: Callable[..., Node]) -> None:
    watcher = make_node("watcher")
    recorder = Recorder()
    watcher.on_event(recorder)
    with NodeProcess("busy", port=watcher.port, **FAST, busy=3.0) as child:
        child.wait_ready()
        child.expect("busy-done", timeout=10)
        assert [str(p.uuid) for p in watcher.peers("busy")] == [child.uuid]
        assert recorder.kinds(child.uuid) == [EventKind.JOINED], "expired while computing"
        assert [p["name"] for p in child.ask("peers")] == ["watcher"]
        child.stop()


# -- garbage on the beacon port ------------------------------------------------------------------


def garbage_datagrams(rng: random.Random, count: int) -> list[bytes]:
    """Random, foreign, truncated, oversized and wrongly shaped datagrams: none a valid beacon."""
    valid = encode_beacon(
        BeaconKind.HELLO, "garbage", uuid.UUID(int=rng.getrandbits(128)), 7,
        {"rpc": "tcp://127.0.0.1:1"}, {"k": "v"},
    )
    uuid_bytes = bytes(16)
    shapes: list[Any] = [
        [], [1], {"a": 1}, "text", 1, None, [1, "x", uuid_bytes, 1, {}],
        [5, "x", uuid_bytes, 1, {}, {}], [True, "x", uuid_bytes, 1, {}, {}],
        [4, uuid_bytes, [["example.org", 1]]], [4, uuid_bytes, [["127.0.0.1", 0]]],
        [1, "", uuid_bytes, 1, {}, {}], [1, "x" * 65, uuid_bytes, 1, {}, {}],
        [1, "x", b"short", 1, {}, {}], [1, "x", "not bytes" * 2, 1, {}, {}],
        [1, "x", uuid_bytes, -1, {}, {}], [1, "x", uuid_bytes, 1.5, {}, {}],
        [1, "x", uuid_bytes, 1, {"a": 1}, {}],
        [1, "x", uuid_bytes, 1, {}, {1: "v"}], [1, "x", uuid_bytes, 1, [], {}],
        [1, "x", cbor2.CBORTag(37, uuid_bytes), 1, {}, {}],
    ]
    bodies = [cbor2.dumps(shape) for shape in shapes] + [b"\x81" * 1000, b"\x9f\x01"]
    makers: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randrange(0, 300)),
        lambda: b"",
        lambda: b"XYZ\x01" + valid[4:],
        lambda: b"ZKB\x02" + valid[4:],
        lambda: valid[: rng.randrange(0, len(valid) - 1)],
        lambda: rng.randbytes(rng.randrange(1500, 9000)),
        lambda: valid + rng.randbytes(rng.randrange(1200, 2000)),
        lambda: b"ZKB\x01" + rng.choice(bodies),
    ]
    return [rng.choice(makers)() for _ in range(count)]


def test_garbage_is_dropped_counted_and_logged_once(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    nodes = [make_node("steady-a"), make_node("steady-b")]
    nodes[0].wait_for("steady-b", timeout=3)
    port = nodes[0].port
    rng = random.Random(20240607)
    to_all = garbage_datagrams(rng, 2000)  # broadcast: every node gets each one
    to_one = garbage_datagrams(rng, 1000)  # unicast: one socket of the port, the process's

    def dropped() -> int:
        return sum(node.stats().get("dropped-malformed", 0) for node in nodes)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # in small bursts that the receive buffers absorb even on a busy machine, so that the
        # kernel drops none and every datagram is counted by the nodes
        for burst in range(100):
            for datagram in to_all[burst * 20 : (burst + 1) * 20]:
                sender.sendto(datagram, ("127.255.255.255", port))
            for datagram in to_one[burst * 10 : (burst + 1) * 10]:
                sender.sendto(datagram, ("127.0.0.1", port))
            expected = (burst + 1) * len(nodes) * 30
            wait_until(lambda: dropped() >= expected, 5, f"{expected} drops")  # noqa: B023

    # the nodes of one process share its beacon socket: each datagram is read once and
    # counted by every node of the process
    assert dropped() == len(nodes) * (len(to_all) + len(to_one))
    for node in nodes:
        stats = node.stats()
        assert stats["dropped-malformed"] == len(to_all) + len(to_one)
        assert stats["received"] >= stats["dropped-malformed"]
    newcomer = make_node("newcomer")
    for node in nodes:
        node.wait_for("newcomer", timeout=3)
    for node in nodes:
        assert [p.uuid for p in newcomer.wait_for(node.name, timeout=3)] == [node.uuid]
    assert all(len(node.peers()) == 2 for node in nodes), "garbage must not make phantom peers"
    loud = [r for r in caplog.records if r.name == "zmqkit.beacon" and r.levelno >= logging.WARNING]
    assert len(loud) == len(nodes), "each node warns once, then logs drops at debug level"


def _beacon_with(seq: object = 1, after: bytes = b"") -> bytes:
    body = cbor2.dumps([1, "x", bytes(16), seq, {}, {}])
    return b"ZKB\x01" + body + after


@pytest.mark.parametrize(
    "datagram",
    [_beacon_with(seq=2**70), _beacon_with(seq=2**64), _beacon_with(after=b"\xffjunk")],
    ids=["seq-bignum-2**70", "seq-bignum-2**64", "bytes-after-the-body"],
)
def test_beacons_that_break_the_wire_rules_are_dropped(datagram: bytes) -> None:
    with pytest.raises(ProtocolError):
        PeerTable().feed(datagram, "127.0.0.1", now=0.0)


# -- the command ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqkit", *args],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )


def test_cli_peers_json_lists_a_running_node(make_node: Callable[..., Node]) -> None:
    node = make_node("cli-target")
    node.advertise("rpc", "tcp://127.0.0.1:5555")
    result = run_cli("peers", "--json", "--wait", "1", "--port", str(node.port))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    [row] = [row for row in rows if row["uuid"] == str(node.uuid)]
    assert {"name", "uuid", "endpoints", "age"} <= row.keys()
    assert row["name"] == "cli-target"
    assert served(row["endpoints"]) == {"rpc": "tcp://127.0.0.1:5555"}
    assert 0 <= row["age"] < 0.5, "age counts from the last beacon, sent every 0.2 s"
    assert node.peers() == [], "the CLI only listens"


def test_cli_names_an_unknown_interface(beacon_port: int) -> None:
    result = run_cli(
        "peers", "--scope", "subnet", "--interface", "zk-nope0", "--port", str(beacon_port)
    )
    assert result.returncode == 2  # a usage error: the option cannot work as given
    assert "zk-nope0" in result.stderr
    assert "Traceback" not in result.stderr

"""Hostile input on every surface: the beacon port, an RPC server's ROUTER, a subscriber.

Each surface gets Hypothesis-generated input (random bytes, valid CBOR of the wrong shape,
near misses of the real messages) and hand-picked nasties (pickles, CBOR tags, deep nesting,
declared lengths of 2**64, frames over the maximum size, wrong frame counts), then a flood of
thousands. The rules checked every time: the surface keeps serving correct requests during and
after, drops what it rejects and counts it (exactly, where the count is knowable), logs only
the first drop loudly, and never unpickles or evaluates anything (a pickle whose loading would
create a file is sent everywhere; the file never appears).

The garbage sent and survived is written to the test output (``pytest -rP``) as ``figures:``
lines, for the issue's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq
from conftest import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmqkit.patterns import pubsub, rpc

import zmqkit
from zmqkit import Node, ProtocolError, Socket, Timeout, codec
from zmqkit.codec import DEFAULT_MAX_MESSAGE_SIZE, MAX_BEACON_SIZE, BeaconKind, Kind

FAST = {"interval": 0.2, "expiry": 0.6}
MakeNode = Callable[..., Node]
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Service:
    def add(self, a: float, b: float) -> float:
        return a + b

    def echo(self, x: Any) -> Any:
        return x

    @rpc.blocking
    def sleep(self, seconds: float) -> float:
        time.sleep(min(seconds, 1.0))
        return seconds

    async def aecho(self, x: Any) -> Any:
        return x


class Touch:
    """A pickle whose loading creates ``path``: if the file appears, something unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[MakeNode]:
    nodes: list[Node] = []

    def make(name: str, **options: Any) -> Node:
        node = Node(name, port=beacon_port, **{**FAST, **options})
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.close()


@pytest.fixture
def server(make_node: MakeNode) -> rpc.Server:
    return rpc.serve(make_node("calc"), Service())


@pytest.fixture
def me(make_node: MakeNode, server: rpc.Server) -> Node:
    node = make_node("caller")
    wait_until(lambda: any("rpc" in p.endpoints for p in node.peers("calc")), 5, "calc serving")
    return node


@pytest.fixture
def pickle_bomb(tmp_path: Path) -> Iterator[tuple[bytes, Path]]:
    """A pickle that would create a file if anything loaded it; the file must never appear."""
    marker = tmp_path / "unpickled"
    yield pickle.dumps(Touch(marker)), marker
    assert not marker.exists(), "something unpickled a frame"



def figures(surface: str, **counts: int) -> None:
    print(f"figures: {surface}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


class Broadcaster:
    """A UDP socket that sends datagrams to every node on the loopback beacon port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, ("127.255.255.255", self.port))
        self.sent += 1

    def __enter__(self) -> Broadcaster:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()


class SpoofedBeacon:
    """Hand-made HELLOs every 0.1 s from a thread (joined on exit): advertises anything."""

    def __init__(self, port: int, name: str, endpoints: dict[str, str],
                 headers: dict[str, str] | None = None) -> None:
        self.uuid = uuid.uuid4()
        self.datagram = codec.encode_beacon(BeaconKind.HELLO, name, self.uuid, 1, endpoints,
                                            headers or {})
        self.broadcaster = Broadcaster(port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spoofed-beacon", daemon=True)

    def __enter__(self) -> SpoofedBeacon:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.broadcaster.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.broadcaster.send(self.datagram)
            self._stop.wait(0.1)


def loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "zmqkit.beacon"]


def dropped(stats: dict[str, int]) -> int:
    return sum(count for key, count in stats.items() if key.startswith("dropped"))


# -- strategies ------------------------------------------------------------------------------------

# any value cbor2 can encode that zmqkit might meet: nested, with integer and text keys
cbor_leaves = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats()
               | st.text(max_size=20) | st.binary(max_size=20))
cbor_values = st.recursive(
    cbor_leaves,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4),
    max_leaves=15,
)
junk = (st.none() | st.booleans() | st.floats() | st.binary(max_size=20)
        | st.lists(st.integers(), max_size=3))


def near_miss(kind: int) -> st.SearchStrategy[list[Any]]:
    """Envelopes of ``kind`` whose fields are right or wrong at random, and counts off by one."""
    uint = st.integers(0, 2**64 - 1) | st.integers(-3, -1) | junk
    text = st.text(max_size=10) | junk
    field = {
        Kind.REQUEST: [uint, st.sampled_from(["add", "echo", "nope", "__class__"]) | text,
                       st.lists(cbor_leaves, max_size=3) | junk,
                       st.dictionaries(st.text(max_size=3), cbor_leaves, max_size=2) | junk],
        Kind.REPLY: [uint, cbor_values],
        Kind.ERROR: [uint, text, text, text],
        Kind.STREAM_ITEM: [uint, cbor_values],
        Kind.STREAM_END: [uint],
        Kind.CANCEL: [uint],
        Kind.CREDIT: [uint, uint],
        Kind.FLOW_ITEM: [uint, uint, cbor_values],
        Kind.FLOW_END: [uint, uint],
        Kind.PUBLISH: [text, st.binary(min_size=15, max_size=17) | junk, uint, cbor_values],
        Kind.PUBLISH_BATCH: [text, st.binary(min_size=16, max_size=16) | junk, uint,
                             st.lists(cbor_leaves, max_size=3) | junk],
    }[Kind(kind)]
    version = st.sampled_from([1, 1, 1, 0, 2, True]) | junk
    return st.tuples(version, st.just(kind) | junk, st.tuples(*field),
                     st.lists(cbor_leaves, max_size=1), st.booleans()).map(
        lambda parts: [parts[0], parts[1], *parts[2][: len(parts[2]) - parts[4]], *parts[3]]
    )


envelopes = st.sampled_from(list(Kind)).flatmap(near_miss)
wrong_shapes = st.one_of(cbor_values, envelopes).map(cbor2.dumps)

beacon_bodies = st.one_of(
    cbor_values,
    st.tuples(
        st.sampled_from([1, 2, 0, 3]) | junk,
        st.text(min_size=1, max_size=70) | junk,
        st.binary(min_size=15, max_size=17) | junk,
        st.integers(-2, 2**64) | junk,
        st.dictionaries(st.text(max_size=5), st.text(max_size=30) | st.integers(), max_size=3)
        | junk,
        st.dictionaries(st.text(max_size=5) | st.integers(), st.text(max_size=5), max_size=3)
        | junk,
    ).map(list),
)
beacon_datagrams = st.one_of(
    st.binary(max_size=1500),
    st.tuples(st.sampled_from([b"ZKB\x01", b"ZKB\x01", b"ZKB\x02", b"ZKX\x01", b""]),
              beacon_bodies.map(cbor2.dumps), st.binary(max_size=2)).map(b"".join),
)


def is_valid_beacon(datagram: bytes) -> bool:
    """Whether a node takes ``datagram``: a beacon of any kind, or a peer list."""
    try:
        codec.decode_discovery(datagram)
    except ProtocolError:
        return False
    return True


# -- the beacon port -------------------------------------------------------------------------------


def test_fuzz_beacon_port_random_datagrams_and_wrong_shapes_are_dropped_and_counted(
    make_node: MakeNode, beacon_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zmqkit.beacon")
    watcher = make_node("watcher")
    make_node("peer")
    wait_until(lambda: watcher.peers("peer"), 3, "the peer discovered")
    before = watcher.stats().get("dropped-malformed", 0)
    bad = Counter[str]()
    with Broadcaster(beacon_port) as udp:

        def counted() -> bool:
            return watcher.stats().get("dropped-malformed", 0) - before >= bad["invalid"]

        @FUZZ
        @given(beacon_datagrams)
        def send(datagram: bytes) -> None:
            udp.send(datagram)
            bad["valid" if is_valid_beacon(datagram) else "invalid"] += 1
            if bad["invalid"] % 32 == 0:  # paced: a full receive buffer would drop datagrams
                wait_until(counted, 3, f"{bad['invalid']} malformed datagrams counted")

        send()
    wait_until(counted, 3, f"{bad['invalid']} malformed datagrams counted")
    assert watcher.stats()["dropped-malformed"] - before == bad["invalid"]
    assert bad["invalid"] >= 250
    assert len(loud(caplog)) <= 2, "more than one loud drop per node"  # (watcher and peer)
    # discovery goes on: the old peer is still fresh, a newcomer is seen at once
    assert watcher.peers("peer")
    make_node("newcomer")
    wait_until(lambda: watcher.peers("newcomer"), 1.0, "a newcomer seen after the fuzzing")
    figures("beacon fuzz", datagrams=sum(bad.values()), malformed=bad["invalid"],
            valid_by_chance=bad["valid"])


def beacon(kind: int, name: Any, node_uuid: Any, seq: Any, endpoints: Any, headers: Any) -> bytes:
    return b"ZKB\x01" + cbor2.dumps([kind, name, node_uuid, seq, endpoints, headers])


GOOD_BEACON = codec.encode_beacon(BeaconKind.HELLO, "fake", uuid.uuid4(), 1, {"rpc": "tcp://x:1"},
                                  {})
HOSTILE_DATAGRAMS = {
    "empty": b"",
    "magic only": b"ZKB",
    "wrong version": b"ZKB\x02" + GOOD_BEACON[4:],
    "trailing byte": GOOD_BEACON + b"\x00",
    "oversize": beacon(1, "big", uuid.uuid4().bytes, 1, {}, {"pad": "x" * 60_000}),
    "just over the limit": beacon(1, "big", uuid.uuid4().bytes, 1, {},
                                  {"pad": "x" * (MAX_BEACON_SIZE - 34)}),
    "pickle": b"ZKB\x01" + b"PICKLE",  # replaced by the real pickle in the test
    "pickle in a header": beacon(1, "pickled", uuid.uuid4().bytes, 1, {}, {"p": b"PICKLE"}),
    "tag 28/29 shared ref": b"ZKB\x01\xd8\x1c\x86\x01dname" + b"\xd8\x1d\x00" * 4,
    "tag 4 decimal": beacon(1, cbor2.CBORTag(4, [1, 1]), uuid.uuid4().bytes, 1, {}, {}),
    "tag 55799 self-describe": b"ZKB\x01\xd9\xd9\xf7" + GOOD_BEACON[4:],
    "small bignum seq": beacon(1, "x", uuid.uuid4().bytes, cbor2.CBORTag(2, b"\x01"), {}, {}),
    "tag 37 uuid": beacon(1, "x", cbor2.CBORTag(37, uuid.uuid4().bytes), 1, {}, {}),
    "deep nesting": b"ZKB\x01" + b"\x81" * 1100 + b"\x00",
    "indefinite nesting": b"ZKB\x01" + b"\x9f" * 1000,
    "declared 2**64 array": b"ZKB\x01\x9b" + b"\xff" * 8,
    "declared 2**64 text": b"ZKB\x01\x7b" + b"\xff" * 8 + b"abc",
    "name too long": beacon(1, "n" * 65, uuid.uuid4().bytes, 1, {}, {}),
    "empty name": beacon(1, "", uuid.uuid4().bytes, 1, {}, {}),
    "uuid of 15 bytes": beacon(1, "x", b"\x01" * 15, 1, {}, {}),
    "negative seq": beacon(1, "x", uuid.uuid4().bytes, -1, {}, {}),
    "seq of 2**64": beacon(1, "x", uuid.uuid4().bytes, 2**64, {}, {}),
    "endpoint not text": beacon(1, "x", uuid.uuid4().bytes, 1, {"rpc": 5}, {}),
    "header key not text": beacon(1, "x", uuid.uuid4().bytes, 1, {}, {1: "a"}),
    "kind 5": beacon(5, "x", uuid.uuid4().bytes, 1, {}, {}),
    "kind 4 with a beacon body": beacon(4, "x", uuid.uuid4().bytes, 1, {}, {}),
    "kind true": beacon(True, "x", uuid.uuid4().bytes, 1, {}, {}),  # type: ignore[arg-type]
    "five items": b"ZKB\x01" + cbor2.dumps([1, "x", uuid.uuid4().bytes, 1, {}]),
    "invalid utf-8 name": b"ZKB\x01\x86\x01\x62\xff\xfe" + GOOD_BEACON[10:],
}


def test_hostile_beacon_datagrams_are_dropped_counted_and_never_unpickled(
    make_node: MakeNode, beacon_port: int, pickle_bomb: tuple[bytes, Path]
) -> None:
    payload, _ = pickle_bomb
    datagrams = {name: d.replace(b"PICKLE", payload) for name, d in HOSTILE_DATAGRAMS.items()}
    assert not any(is_valid_beacon(d) for d in datagrams.values())
    watcher = make_node("watcher")
    with Broadcaster(beacon_port) as udp:
        for _ in range(3):
            for datagram in datagrams.values():
                udp.send(datagram)
                sent = udp.sent  # one at a time: 60 kB datagrams fill a socket buffer fast
                wait_until(lambda: watcher.stats().get("dropped-malformed", 0) >= sent,  # noqa: B023
                           3, f"{sent} counted")
        udp.send(pickle.dumps(Touch(Path("/nonexistent/also-never"))))
        expected = udp.sent
    wait_until(lambda: watcher.stats().get("dropped-malformed", 0) >= expected, 3, "all counted")
    assert watcher.stats()["dropped-malformed"] == expected
    assert not [p for p in watcher.peers() if p.name in ("big", "pickled", "x", "fake")]
    make_node("newcomer")
    wait_until(lambda: watcher.peers("newcomer"), 1.0, "discovery after the hostile datagrams")
    figures("beacon hand-picked", datagrams=expected, kinds=len(datagrams))


def test_hostile_beacon_flood_of_thousands_does_not_stop_discovery(
    make_node: MakeNode, beacon_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zmqkit.beacon")
    watcher = make_node("watcher")
    rng = random.Random(9)
    garbage = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 1400))) for _ in range(200)]
    garbage += [d for d in HOSTILE_DATAGRAMS.values() if len(d) < 65_000]
    flood_size = 20_000
    started = threading.Event()

    def flood() -> None:
        with Broadcaster(beacon_port) as udp:
            started.set()
            for index in range(flood_size):
                udp.send(garbage[index % len(garbage)])
                if index % 100 == 99:
                    time.sleep(0.01)  # about 10,000 a second for 2 s, not one burst

    flooder = threading.Thread(target=flood, name="beacon-flood")
    flooder.start()
    try:
        started.wait(2)
        joined_at = time.monotonic()
        make_node("during-the-flood")
        wait_until(lambda: watcher.peers("during-the-flood"), 2.0, "discovery during a flood")
        seen_after = time.monotonic() - joined_at
        flooding = flooder.is_alive()
    finally:
        flooder.join(30)
    time.sleep(0.2)  # what is still in the socket buffer is read and counted
    stats = watcher.stats()
    # what the beacon thread cannot read in time the kernel drops: memory stays bounded
    assert stats["dropped-malformed"] >= flood_size // 2, stats
    warnings = loud(caplog)
    assert len(warnings) <= 2, f"{len(warnings)} loud log lines for {flood_size} bad datagrams"
    make_node("after-the-flood")
    wait_until(lambda: watcher.peers("after-the-flood"), 1.0, "discovery after a flood")
    assert watcher.peers("during-the-flood")
    figures("beacon flood", datagrams=flood_size, counted=stats["dropped-malformed"],
            lost_in_kernel=flood_size - stats["dropped-malformed"],
            seen_newcomer_ms=int(seen_after * 1000), newcomer_joined_while_flooding=int(flooding))


def test_hostile_beacon_flood_of_fake_peers_expires_and_real_peers_stay(
    make_node: MakeNode, beacon_port: int
) -> None:
    """Valid beacons under thousands of made-up UUIDs: the table grows (discovery cannot tell
    them from real nodes; docs/security.md), then every fake expires; real peers are unharmed."""
    watcher, real = make_node("watcher"), make_node("real")
    wait_until(lambda: watcher.peers("real"), 2, "the real peer")
    fakes = 3000
    with Broadcaster(beacon_port) as udp:
        for index in range(fakes):
            udp.send(codec.encode_beacon(BeaconKind.HELLO, f"fake-{index % 50}", uuid.uuid4(), 1,
                                         {"rpc": "tcp://127.0.0.1:9"}, {}))
            if index % 200 == 0:
                time.sleep(0.002)
    wait_until(lambda: len(watcher.peers()) > fakes // 2, 2, "fake peers listed")
    most = len(watcher.peers())
    wait_until(lambda: [p.name for p in watcher.peers()] == ["real"], 3, "every fake expired")
    assert real.peers("watcher")
    figures("beacon fake peers", datagrams=fakes, listed_at_most=most, left_after_expiry=0)


# -- an RPC server's ROUTER ------------------------------------------------------------------------


ANSWERED = ("protocol-error", "none", "answer")  # the Prober's counts of frames by expectation


def expected_answer(frame: bytes) -> str:
    """What the server must do with a one-frame message: "protocol-error", "none" or "answer"."""
    try:
        message = codec.decode(frame)
    except ProtocolError:
        return "protocol-error"
    if message[1] in (Kind.CANCEL, Kind.CREDIT):  # a stream's controls get no answer
        return "none"
    return "answer" if message[1] == Kind.REQUEST else "protocol-error"


class Prober:
    """A raw DEALER that sends one frame at a time and checks what the server answers."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sock = Socket(zmq.DEALER)
        self.sock.connect(server.endpoint)
        self.counts = Counter[str]()

    def close(self) -> None:
        self.sock.close()

    def probe(self, frame: bytes) -> None:
        expected = expected_answer(frame)
        self.counts[expected] += 1
        self.sock.send(frame)
        if expected == "none":
            return
        reply = codec.decode(self.sock.recv(2.0))
        assert reply[1] in (Kind.REPLY, Kind.ERROR), reply
        if expected == "protocol-error":
            assert reply[1] == Kind.ERROR and reply[3] == "zmqkit.ProtocolError", reply
        else:
            assert reply[2] == codec.decode(frame)[2]
            self.counts["replied" if reply[1] == Kind.REPLY else reply[3]] += 1

    def check_still_serving(self) -> None:
        self.sock.send(codec.encode_request(2**64 - 1, "add", [20, 22], {}))
        assert codec.decode(self.sock.recv(2.0)) == [1, Kind.REPLY, 2**64 - 1, 42]


@pytest.fixture
def prober(server: rpc.Server) -> Iterator[Prober]:
    prober = Prober(server)
    yield prober
    prober.close()


def test_fuzz_rpc_random_bytes_get_protocol_errors_and_are_counted(
    server: rpc.Server, prober: Prober, me: Node
) -> None:
    before = server.stats()["bad-requests"]

    @FUZZ
    @given(st.binary(max_size=600))
    def fuzz(frame: bytes) -> None:
        prober.probe(frame)

    fuzz()
    prober.check_still_serving()
    assert server.stats()["bad-requests"] - before == prober.counts["protocol-error"]
    with rpc.Client(me, "calc", timeout=2) as client:
        assert client.add(1, 2) == 3
    figures("rpc random frames", frames=sum(prober.counts.values()), **prober.counts)


def test_fuzz_rpc_valid_cbor_of_the_wrong_shape(
    server: rpc.Server, prober: Prober, me: Node
) -> None:
    before = server.stats()["bad-requests"]

    @settings(FUZZ, max_examples=500)
    @given(wrong_shapes)
    def fuzz(frame: bytes) -> None:
        prober.probe(frame)

    fuzz()
    prober.check_still_serving()
    assert server.stats()["bad-requests"] - before == prober.counts["protocol-error"]
    assert prober.counts["protocol-error"] >= 300
    with rpc.Client(me, "calc", timeout=2) as client:
        assert client.echo("still here") == "still here"
    figures("rpc wrong-shape cbor", frames=sum(prober.counts.values()), **prober.counts)


def test_hostile_rpc_wrong_frame_counts_are_refused_and_the_server_keeps_serving(
    server: rpc.Server, prober: Prober
) -> None:
    good = codec.encode_request(5, "add", [1, 2], {})
    before = server.stats()["bad-requests"]
    cases: list[tuple[list[bytes], str]] = [
        ([b"two", b"frames"], "zmqkit.ProtocolError"),
        ([good, good], "zmqkit.ProtocolError"),  # two good requests glued: still one message
        ([b"", b"", good], "zmqkit.ProtocolError"),  # a delimiter too many
        ([b"x"] * 6, "zmqkit.ProtocolError"),
        ([b"", good], "reply"),  # a REQ caller's shape: served, delimiter kept
        ([b"", b"garbage"], "zmqkit.ProtocolError"),
    ]
    for frames, outcome in cases:
        prober.sock.send_multipart(frames)
        answer = prober.sock.recv_multipart(2.0)
        reply = codec.decode(answer[-1])
        if outcome == "reply":
            assert answer[0] == b"" and reply == [1, Kind.REPLY, 5, 3]
        else:
            assert reply[1] == Kind.ERROR and reply[3] == outcome and reply[2] == 0
    # a real REQ socket sending garbage gets its error, and can go on
    req = Socket(zmq.REQ)
    try:
        req.connect(server.endpoint)
        req.send(b"\xff\x00garbage")
        assert codec.decode(req.recv(2.0))[3] == "zmqkit.ProtocolError"
        req.send(good)
        assert codec.decode(req.recv(2.0)) == [1, Kind.REPLY, 5, 3]
    finally:
        req.close()
    prober.check_still_serving()
    assert server.stats()["bad-requests"] - before == len(cases) - 1 + 1  # (+ the REQ's garbage)


def test_hostile_rpc_frames_over_the_maximum_size_drop_only_that_connection(
    server: rpc.Server, prober: Prober, me: Node
) -> None:
    with rpc.Client(me, "calc", timeout=3) as client:
        assert client.add(1, 1) == 2
        oversize = b"\0" * (DEFAULT_MAX_MESSAGE_SIZE + 1)
        prober.sock.raw.send(oversize, copy=True)  # (copied: no pyzmq garbage-collector thread)
        prober.sock.raw.send_multipart([b"x", oversize], copy=True)
        assert client.add(2, 2) == 4  # another caller is not disturbed
        time.sleep(0.3)  # the DEALER reconnects by itself
        prober.check_still_serving()
        assert client.add(3, 3) == 6
    figures("rpc oversize", frames=2, bytes_each=DEFAULT_MAX_MESSAGE_SIZE + 1)


def test_hostile_rpc_flood_while_correct_calls_keep_being_answered(
    server: rpc.Server, me: Node
) -> None:
    rng = random.Random(77)
    garbage = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    garbage += [cbor2.dumps(v) for v in ({"a": 1}, [1], [1, 1, 1], [1, 9, 9], [1, 2, 5, 3],
                                         [2, 1, 1, "add", [], {}], [1, 7, "t", b"x" * 16, 1, None])]
    garbage = [frame for frame in garbage if expected_answer(frame) == "protocol-error"]
    senders, per_sender = 4, 5000
    before = server.stats()["bad-requests"]
    finished = threading.Barrier(senders + 1)
    failures: list[BaseException] = []

    def flood(seed: int) -> None:
        dealer = Socket(zmq.DEALER)
        try:
            dealer.connect(server.endpoint)
            for index in range(per_sender):
                if index % 100 == 99:
                    dealer.send_multipart([b"multi", b"part"])
                else:
                    dealer.send(garbage[(seed * 7919 + index) % len(garbage)])
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
        finally:
            finished.wait(30)
            dealer.close()

    threads = [threading.Thread(target=flood, args=(n,), name=f"rpc-flood-{n}")
               for n in range(senders)]
    latencies: list[float] = []
    with rpc.Client(me, "calc", timeout=2.0) as client:
        assert client.add(0, 0) == 0
        for thread in threads:
            thread.start()
        try:
            while finished.n_waiting < senders or len(latencies) < 20:
                start = time.monotonic()
                assert client.add(len(latencies), 1) == len(latencies) + 1
                latencies.append(time.monotonic() - start)
        finally:
            finished.wait(30)
            for thread in threads:
                thread.join(10)
        assert not failures, failures
        sent = senders * per_sender
        wait_until(lambda: server.stats()["bad-requests"] - before >= sent, 10,
                   "every frame counted")
        assert server.stats()["bad-requests"] - before == sent
        assert client.echo("after") == "after"
    assert max(latencies) < 2.0
    figures("rpc flood", frames=sent, calls_answered_meanwhile=len(latencies),
            slowest_call_ms=int(max(latencies) * 1000))


def test_hostile_rpc_nothing_is_unpickled_or_evaluated(
    server: rpc.Server, prober: Prober, pickle_bomb: tuple[bytes, Path]
) -> None:
    payload, _ = pickle_bomb
    prober.probe(payload)  # a pickle as the whole frame: just bytes that are not CBOR
    prober.probe(cbor2.dumps([1, 1, 3, "echo", [cbor2.CBORTag(28, payload)], {}]))
    prober.sock.send(codec.encode_request(4, "echo", [payload], {}))
    assert codec.decode(prober.sock.recv(2.0)) == [1, Kind.REPLY, 4, payload]  # bytes, untouched
    for method in ("__class__", "__init__", "__reduce__", "__getattribute__", "_private",
                   "__import__", "eval", "os.system", "sleep.__globals__"):
        prober.sock.send(codec.encode_request(5, method, ["print(1)"], {}))
        reply = codec.decode(prober.sock.recv(2.0))
        assert reply[1] == Kind.ERROR and reply[3] == "zmqkit.MethodNotFound", (method, reply)
    for tagged in (b"\xc4\x82\x3a\x3b\x9a\xc9\xff\x01",  # decimal 1e-1000000000
                   b"\xd8\x23\x62.*",  # regular expression
                   b"\xd8\x24\x62hi",  # MIME message
                   b"\xd8\x1e\x82\x01\x03",  # rational
                   b"\xd9\x01\x04\x44\x7f\x00\x00\x01"):  # IPv4 address
        frame = b"\x86\x01\x01\x06\x64echo\x81" + tagged + b"\xa0"
        prober.probe(frame)
        assert expected_answer(frame) == "protocol-error"
    prober.check_still_serving()


def test_hostile_rpc_colliding_map_keys_decode_as_fast_as_other_keys() -> None:
    def frame(keys: list[int]) -> bytes:
        pairs = b"".join(cbor2.dumps(key) + b"\x00" for key in keys)
        return b"\x86\x01\x01\x01\x64echo\x81\xba" + struct.pack(">I", len(keys)) + pairs + b"\xa0"

    def cost(data: bytes) -> float:
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            with contextlib.suppress(ProtocolError):
                codec.decode(data)
            best = min(best, time.perf_counter() - start)
        return best

    count, collide = 5000, (1 << 61) - 1  # Python hashes every k * (2**61 - 1) to 0
    plain = cost(frame([k * (collide - 2) for k in range(1, count + 1)]))  # same sizes, spread
    colliding = cost(frame([k * collide for k in range(1, count + 1)]))
    figures("rpc colliding keys", keys=count, frame_bytes=len(frame([collide] * count)),
            decode_ms=int(colliding * 1000), plain_keys_ms=int(plain * 1000))
    assert colliding < 10 * plain + 0.01  # linear: about 1; quadratic: about 25 at this size


class Big:
    def big(self, size: int) -> bytes:
        return b"x" * size

    def add(self, a: float, b: float) -> float:
        return a + b


def test_hostile_rpc_client_recovers_after_a_reply_over_the_maximum_size(
    make_node: MakeNode,
) -> None:
    rpc.serve(make_node("big"), Big())
    caller = make_node("caller")
    wait_until(lambda: any("rpc" in p.endpoints for p in caller.peers("big")), 5, "big serving")
    with rpc.Client(caller, "big", timeout=1.0) as client:
        assert client.add(1, 2) == 3
        with pytest.raises(Exception):  # noqa: B017 (any clear error would do; a hang would not)
            client.big(DEFAULT_MAX_MESSAGE_SIZE + 1)
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(client.add(1, 2))
            except Timeout:
                outcomes.append("timeout")
        assert outcomes[-1] == 3, outcomes


def test_hostile_rpc_async_client_recovers_after_a_reply_over_the_maximum_size(
    make_node: MakeNode,
) -> None:
    rpc.serve(make_node("big"), Big())
    caller = make_node("caller")
    wait_until(lambda: any("rpc" in p.endpoints for p in caller.peers("big")), 5, "big serving")

    async def main() -> list[Any]:
        async with rpc.AsyncClient(caller, "big", timeout=1.0) as client:
            assert await client.add(1, 2) == 3
            with pytest.raises(Exception):  # noqa: B017 (any clear error would do; a hang would not)
                await client.big(DEFAULT_MAX_MESSAGE_SIZE + 1)
            outcomes: list[Any] = []
            for _ in range(3):
                try:
                    outcomes.append(await client.add(1, 2))
                except Timeout:
                    outcomes.append("timeout")
            return outcomes

    outcomes = asyncio.run(main())
    assert outcomes[-1] == 3, outcomes


# -- a subscriber ---------------------------------------------------------------------------------


TOPIC = "ticks"
PREFIXES = codec.publish_prefixes(TOPIC)


def publication_fate(frame: bytes) -> str:
    """What a subscriber to TOPIC must do with a frame that matched its prefix."""
    try:
        message = codec.decode_publish(frame)
    except codec.UnexpectedKind:
        return "dropped"
    except ProtocolError:
        return "dropped"
    return "delivered" if message[2] == TOPIC else "ignored"


class HostilePublisher:
    """A raw PUB socket, advertised by a hand-made beacon as node "evil"."""

    def __init__(self, port: int) -> None:
        self.sock = Socket(zmq.PUB)
        self.endpoint = self.sock.bind("127.0.0.1")
        self.beacon = SpoofedBeacon(port, "evil", {"pub": self.endpoint})
        self.sender = self.beacon.uuid.bytes  # its publications name it as their sender
        self.fates = Counter[str]()

    def __enter__(self) -> HostilePublisher:
        self.beacon.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self.beacon.__exit__()
        self.sock.close()

    def send(self, frame: bytes) -> None:
        self.fates[publication_fate(frame)] += 1
        self.sock.send(frame)


@pytest.fixture
def hostile_setup(make_node: MakeNode, beacon_port: int
                  ) -> Iterator[tuple[pubsub.Publisher, HostilePublisher, pubsub.Subscriber]]:
    publisher = pubsub.Publisher(make_node("ticker"))
    with HostilePublisher(beacon_port) as evil, \
            pubsub.Subscriber(make_node("screen"), TOPIC) as subscriber:
        subscriber.wait_for_publishers(count=2, timeout=5)
        # past the slow joiner: both publishers' messages arrive from here on
        for source in ("ticker", "evil"):
            deadline = time.monotonic() + 5
            while True:
                assert time.monotonic() < deadline, f"nothing from {source}"
                if source == "ticker":
                    publisher.publish(TOPIC, "warm")
                else:
                    evil.sock.send(codec.encode_publish(TOPIC, evil.sender, 1, "warm"))
                with contextlib.suppress(Timeout):
                    if subscriber.recv(0.05).publisher == source:
                        break
        while True:  # drain the rest of the warm-up
            try:
                subscriber.recv(0.2)
            except Timeout:
                break
        yield publisher, evil, subscriber


def drain(subscriber: pubsub.Subscriber, idle: float = 0.5) -> list[pubsub.Message]:
    return list(subscriber.messages(idle))


def test_fuzz_subscriber_garbage_behind_its_topic_prefix_is_dropped_and_counted(
    hostile_setup: tuple[pubsub.Publisher, HostilePublisher, pubsub.Subscriber],
) -> None:
    publisher, evil, subscriber = hostile_setup
    dropped_before = dropped(subscriber.stats())
    good_sent = 0

    @settings(FUZZ, max_examples=400)
    @given(st.sampled_from(PREFIXES), st.binary(max_size=200) | wrong_shapes.map(lambda f: f[1:]))
    def fuzz(prefix: bytes, rest: bytes) -> None:
        nonlocal good_sent
        evil.send(prefix + rest)
        good_sent += 1
        publisher.publish(TOPIC, {"n": good_sent})

    fuzz()
    messages = drain(subscriber)
    good = [m for m in messages if m.publisher == "ticker"]
    assert [m.data for m in good] == [{"n": n} for n in range(1, good_sent + 1)]
    assert all(m.gap == 0 for m in good)
    assert len(messages) - len(good) == evil.fates["delivered"]  # valid by chance: delivered
    assert dropped(subscriber.stats()) - dropped_before == evil.fates["dropped"]
    assert evil.fates["dropped"] >= 300
    figures("subscriber fuzz", frames=sum(evil.fates.values()), **evil.fates, good=good_sent)


def test_hostile_subscriber_flood_oversize_and_pickles(
    hostile_setup: tuple[pubsub.Publisher, HostilePublisher, pubsub.Subscriber],
    pickle_bomb: tuple[bytes, Path],
) -> None:
    publisher, evil, subscriber = hostile_setup
    payload, _ = pickle_bomb
    sender = evil.sender
    nasties = [
        PREFIXES[0] + payload,  # a pickle after the prefix
        PREFIXES[0] + b"\x45short\x01\x61x",  # a sender of 5 bytes
        cbor2.dumps([1, 7, TOPIC, sender, -1, "negative seq"]),
        cbor2.dumps([1, 7, TOPIC, sender, 2**64, "seq too big"]),
        cbor2.dumps([1, 8, TOPIC, sender, 1, []]),  # an empty batch
        cbor2.dumps([1, 8, TOPIC, sender, 1, "not a list"]),
        PREFIXES[0] + b"\x50" + sender + b"\x01",  # the data item missing
        cbor2.dumps([1, 7, TOPIC, sender, 1, cbor2.CBORTag(28, payload)]),
        PREFIXES[1] + b"\x50" + sender + b"\x01\x9b" + b"\xff" * 8,  # a batch of 2**64 items
        PREFIXES[0] + b"\x50" + sender + b"\x01" + b"\x81" * 5000,  # nesting beyond 64
    ]
    assert all(frame.startswith(PREFIXES) for frame in nasties)
    assert all(publication_fate(frame) == "dropped" for frame in nasties)
    flood, good_every = 5000, 5
    good_sent = 0
    for index in range(flood):
        evil.send(nasties[index % len(nasties)])
        if index % good_every == 0:
            good_sent += 1
            publisher.publish(TOPIC, good_sent)
        if index % 1000 == 999:
            time.sleep(0.01)  # below the high-water marks: every frame is delivered and counted
    # the pickle as data of a valid publication is delivered as the bytes it is
    evil.send(codec.encode_publish(TOPIC, sender, 10, payload))
    messages = drain(subscriber)
    assert [m.data for m in messages if m.publisher == "ticker"] == list(range(1, good_sent + 1))
    assert [m.data for m in messages if m.publisher == "evil"] == [payload]
    assert subscriber.stats()["dropped-malformed"] >= flood  # (and the fuzz warm-up: none)
    # a frame over the maximum: libzmq drops that connection (and does not reconnect it by
    # itself: the subscriber does); the others flow on
    evil.sock.raw.send(PREFIXES[0] + b"\0" * DEFAULT_MAX_MESSAGE_SIZE, copy=True)
    for index in range(3):
        publisher.publish(TOPIC, f"still flowing {index}")
        assert subscriber.recv(2.0).data == f"still flowing {index}"
    figures("subscriber flood", frames=flood + 2, oversize=1, good=good_sent,
            dropped=subscriber.stats()["dropped-malformed"])


def test_hostile_subscriber_hears_a_publisher_again_after_one_oversized_message(
    make_node: MakeNode,
) -> None:
    publisher = pubsub.Publisher(make_node("ticker"))
    small = zmqkit.SocketOptions(max_message_size=1000)
    with pubsub.Subscriber(make_node("screen"), TOPIC, options=small) as subscriber:
        subscriber.wait_for_publishers(timeout=5)
        deadline = time.monotonic() + 5
        while True:
            publisher.publish(TOPIC, "warm")
            with contextlib.suppress(Timeout):
                subscriber.recv(0.05)
                break
            assert time.monotonic() < deadline, "nothing received"
        publisher.publish(TOPIC, "x" * 2000)  # over this subscriber's maximum: dropped
        heard = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "after" not in heard:
            publisher.publish(TOPIC, "after")
            with contextlib.suppress(Timeout):
                heard.append(subscriber.recv(0.1).data)
        assert "after" in heard, "the subscriber never heard the publisher again"


# -- the control messages of replicated state and groups -------------------------------------------


def reserved_requests(method: str) -> st.SearchStrategy[bytes]:
    """REQUESTs for a pattern's reserved method whose args are right or wrong at random."""
    writer = st.binary(min_size=16, max_size=16)
    args = st.one_of(
        st.lists(cbor_values, max_size=4),
        st.tuples(st.sampled_from(["inventory", "other"]) | junk,
                  st.lists(st.tuples(writer | junk, st.integers(-1, 2**64) | junk).map(list),
                           max_size=3) | junk).map(list),
        st.tuples(writer | junk, st.text(max_size=8) | junk, cbor_values).map(list),
    )
    return st.tuples(st.integers(1, 2**64 - 1), st.sampled_from([method, method, "nope"]),
                     args).map(lambda t: cbor2.dumps([1, 1, t[0], t[1], t[2], {}]))


def test_fuzz_state_sync_router_and_update_stream_keep_the_replica_right(
    make_node: MakeNode, beacon_port: int, pickle_bomb: tuple[bytes, Path]
) -> None:
    from zmqkit.patterns import state

    payload, _ = pickle_bomb
    group, topic = "inventory", "zmqkit.state.inventory"
    hostile_pub, hostile_router = Socket(zmq.PUB), Socket(zmq.ROUTER)  # the router never answers
    try:
        endpoints = {state.pub_role(group): hostile_pub.bind("127.0.0.1"),
                     state.sync_role(group): hostile_router.bind("127.0.0.1")}
        with state.State(make_node("a"), group, heartbeat=0.2) as a, \
                SpoofedBeacon(beacon_port, "evil", endpoints), \
                state.State(make_node("b"), group, heartbeat=0.2) as b:
            a.wait_synced(5)
            b.wait_synced(5)
            a.set("apples", 12)
            b.wait_for("apples", timeout=3, value=12)
            # the sync ROUTER: every kind of bad request gets its error, the good one its answer
            prober = Prober(a)
            try:

                @settings(FUZZ, max_examples=400)
                @given(st.binary(max_size=300) | wrong_shapes
                       | reserved_requests(state.SYNC_METHOD))
                def fuzz(frame: bytes) -> None:
                    prober.probe(frame)

                fuzz()
                prober.sock.send(cbor2.dumps([1, 1, 7, state.SYNC_METHOD, [group, []], {}]))
                reply = codec.decode(prober.sock.recv(2.0))
                assert reply[1] == Kind.REPLY and "apples" in [e[3] for e in reply[3]["entries"]]
            finally:
                prober.close()
            assert a.stats()["bad-requests"] == prober.counts["protocol-error"]
            # the update stream: garbage on the group's topic from a "member" (a spoofed beacon)
            until_connected = time.monotonic() + 5
            while a.stats().get("dropped-malformed", 0) == 0:  # its SUB has connected to evil
                hostile_pub.send(codec.encode_publish(topic, uuid.uuid4().bytes, 1, "warm"))
                time.sleep(0.02)
                assert time.monotonic() < until_connected, "the replica never heard evil"
            before = a.stats()["dropped-malformed"]
            writer = uuid.uuid4().bytes
            garbage = [
                codec.encode_publish(topic, writer, 1, payload),  # a pickle as the data
                codec.encode_publish(topic, writer, 1, [1, 1, [[1, "k", 1, payload]]]),  # 4 items
                codec.encode_publish(topic, writer, 1, [1, 0, [[1, "k", 1, 2, None]]]),  # seq 0
                codec.encode_publish(topic, writer, 1, [1, 1, [[3, "k", 1, 2, None]]]),  # op 3
                codec.encode_publish(topic, writer, 1, [1, 1, [[1, 5, 1, 2, None]]]),  # key 5
                codec.encode_publish(topic, writer, 1, [1, 1, []]),  # no ops
                codec.encode_publish(topic, writer, 1, [2, b"short", []]),  # a bad digest
                codec.encode_publish(topic, writer, 1, [2, writer, [[writer, -1]]]),
                codec.encode_publish(topic, writer, 1, [9]),
                codec.encode_publish_batch(topic, writer, 1, [[1, 1, [[1, "k", 1, 2, None]]]]),
                codec.publish_prefixes(topic)[0] + b"\xff\x00garbage",
            ]
            rounds = 200
            for index in range(rounds):
                for frame in garbage:
                    hostile_pub.send(frame)
                b.set(f"b-{index}", index)
            b.wait_for(f"b-{rounds - 1}", timeout=3)
            a.wait_for(f"b-{rounds - 1}", timeout=5, value=rounds - 1)
            expected = {"apples": 12, **{f"b-{n}": n for n in range(rounds)}}
            assert a.items() == expected == b.items()  # no garbage write got in, none was lost
            wait_until(lambda: a.stats()["dropped-malformed"] - before >= rounds * len(garbage),
                       3, "every bad update counted")  # (evil's stream is not ordered with b's)
            assert a.stats()["dropped-malformed"] - before == rounds * len(garbage)
    finally:
        hostile_pub.close()
        hostile_router.close()
    figures("state control messages", sync_frames=sum(prober.counts[k] for k in ANSWERED),
            update_frames=rounds * len(garbage), **prober.counts)


def test_fuzz_groups_whispers_and_shouts_keep_the_node_right(
    make_node: MakeNode, beacon_port: int, pickle_bomb: tuple[bytes, Path]
) -> None:
    from zmqkit.patterns import groups

    payload, _ = pickle_bomb
    topic = groups.TOPIC_PREFIX + "ops"
    hostile_pub, hostile_router = Socket(zmq.PUB), Socket(zmq.ROUTER)
    try:
        endpoints = {groups.PUB_ROLE: hostile_pub.bind("127.0.0.1"),
                     groups.ROLE: hostile_router.bind("127.0.0.1")}
        header = {groups.GROUPS_HEADER: "ops"}
        with groups.Groups(make_node("alice")) as alice, groups.Groups(make_node("bob")) as bob, \
                SpoofedBeacon(beacon_port, "evil", endpoints, header) as evil:
            alice.join("ops")
            bob.join("ops")
            wait_until(lambda: {m.name for m in alice.members("ops")} >= {"bob", "evil"}, 3,
                       "bob and evil in ops")
            # whispers: each request gets its answer; only well-formed whispers reach the inbox
            prober = Prober(alice)
            try:

                @settings(FUZZ, max_examples=400)
                @given(st.binary(max_size=300) | wrong_shapes
                       | reserved_requests(groups.WHISPER_METHOD))
                def fuzz(frame: bytes) -> None:
                    prober.probe(frame)

                fuzz()
                prober.sock.send(cbor2.dumps([1, 1, 9, groups.WHISPER_METHOD,
                                              [evil.uuid.bytes, "evil", payload], {}]))
                assert codec.decode(prober.sock.recv(2.0)) == [1, Kind.REPLY, 9, None]
            finally:
                prober.close()
            whispers = [e for e in alice.events(0.3) if e.kind is groups.GroupEventKind.WHISPER]
            assert len(whispers) == prober.counts["replied"] + 1
            assert whispers[-1].body == payload  # a pickle is delivered as the bytes it is
            assert alice.stats()["bad-requests"] == prober.counts["protocol-error"]
            # shouts: garbage on the group's topic from evil; bob's shouts all arrive, in order
            deadline = time.monotonic() + 5
            while not any(e.kind is groups.GroupEventKind.SHOUT and e.peer == "bob"
                          for e in alice.events(0.05)):
                bob.shout("ops", "warm")
                assert time.monotonic() < deadline, "no shout from bob"
            while True:
                hostile_pub.send(codec.encode_publish(topic, evil.uuid.bytes, 1, ["evil", "warm"]))
                if any(e.peer == "evil" for e in alice.events(0.05)):
                    break
                assert time.monotonic() < deadline, "no shout from evil"
            list(alice.events(0.3))
            before = alice.stats().get("dropped-malformed", 0)
            sender = evil.uuid.bytes
            garbage = [
                codec.encode_publish(topic, sender, 2, payload),  # not [name, body]
                codec.encode_publish(topic, sender, 2, [5, "name not text"]),
                codec.encode_publish(topic, sender, 2, ["one item"]),
                codec.encode_publish_batch(topic, sender, 2, [["ok", 1], "not a shout"]),
                codec.publish_prefixes(topic)[0] + b"\xff\x00garbage",
                codec.publish_prefixes(topic)[1] + b"\x50" + sender + b"\x01\x9b" + b"\xff" * 8,
            ]
            rounds = 300
            for index in range(rounds):
                for frame in garbage:
                    hostile_pub.send(frame)
                bob.shout("ops", index)
            shouts = [e.body for e in alice.events(0.5) if e.kind is groups.GroupEventKind.SHOUT]
            assert [body for body in shouts if body != "warm"] == list(range(rounds))
            assert alice.stats()["dropped-malformed"] - before == rounds * len(garbage)
    finally:
        hostile_pub.close()
        hostile_router.close()
    figures("groups control messages", whisper_frames=sum(prober.counts[k] for k in ANSWERED),
            shout_frames=rounds * len(garbage), **prober.counts)

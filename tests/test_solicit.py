"""Solicit: a node that needs its peers now asks, and gets answers within a round trip.

The nodes under test beacon every 30 s, so a peer found within a few seconds was found through
an answer to a solicit, never through a periodic beacon. The foreign side builds datagrams from
docs/protocol.md (section 5) with cbor2 and a raw UDP socket only.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import pytest
from conftest import wait_until

from zmqkit import Node, PeerNotFound

SLOW: dict[str, Any] = {"interval": 30.0, "expiry": 90.0}  # no periodic beacon during a test
HELLO, SOLICIT, PEER_LIST_KIND = 1, 3, 4  # docs/protocol.md section 5
ANSWER_BURST = 32  # docs/protocol.md 5.3: answered at once, then as many per interval


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(name: str, **options: Any) -> Node:
        node = Node(name, port=beacon_port, **{**SLOW, **options})
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.close()


class Asker:
    """A foreign program on a port of its own: sends hand-built SOLICITs, reads the answers."""

    def __init__(self, beacon_port: int) -> None:
        self.beacon_port = beacon_port
        self.uuid = uuid.uuid4()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.bind(("127.0.0.1", 0))

    def solicit(self, to: str = "127.255.255.255") -> None:
        body = cbor2.dumps([SOLICIT, "asker", self.uuid.bytes, 0, {}, {}])
        self.sock.sendto(b"ZKB\x01" + body, (to, self.beacon_port))

    def answers(self, quiet: float = 0.5, first: float = 5.0) -> list[list[Any]]:
        """Every datagram that comes back (the first within ``first`` seconds) until ``quiet``
        seconds pass without one."""
        bodies = []
        self.sock.settimeout(first)
        while True:
            try:
                datagram, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                return bodies
            assert datagram[:4] == b"ZKB\x01"
            bodies.append(cbor2.loads(datagram[4:]))
            self.sock.settimeout(quiet)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def asker(beacon_port: int) -> Iterator[Asker]:
    foreign = Asker(beacon_port)
    yield foreign
    foreign.close()


def test_a_listening_node_finds_running_nodes_at_once(make_node: Callable[..., Node]) -> None:
    servers = [make_node(f"server-{i}") for i in range(3)]
    listener = make_node("listener", announce=False)
    found = listener.wait_for("server-2", timeout=5)  # 30 s to the servers' next beacon
    assert [peer.uuid for peer in found] == [servers[2].uuid]
    assert {peer.name for peer in listener.peers()} == {"server-0", "server-1", "server-2"}
    assert all(server.peers("listener") == [] for server in servers), "a solicit is no HELLO"
    assert listener.stats()["solicits"] == 1


def test_wait_for_solicits_when_the_peer_is_not_known_yet(make_node: Callable[..., Node]) -> None:
    listener = make_node("listener", announce=False)
    server = make_node("server")
    listener.wait_for("server", timeout=5)  # its start-up HELLO
    before = listener.stats()["solicits"]
    listener.wait_for("server", timeout=5)
    assert listener.stats()["solicits"] == before, "a known peer needs no solicit"
    with pytest.raises(PeerNotFound):
        listener.wait_for("nobody", timeout=0.3)
    wait_until(lambda: listener.stats()["solicits"] == before + 1, 2, "one solicit for nobody")
    assert server.stats().get("solicits-unanswered", 0) == 0


def test_gather_returns_every_answer_before_its_timeout(make_node: Callable[..., Node]) -> None:
    names = {f"server-{i}" for i in range(4)}
    for name in sorted(names):
        make_node(name)
    listener = make_node("listener", announce=False)
    started = time.monotonic()
    peers = listener.gather(timeout=20)
    took = time.monotonic() - started
    assert {peer.name for peer in peers} == names
    assert took < 20, "gather returns once the answers stop, not at its timeout"


def test_a_foreign_solicit_gets_each_nodes_hello_by_unicast(
    make_node: Callable[..., Node], asker: Asker
) -> None:
    nodes = [make_node(f"calc-{i}", headers={"zone": "a"}) for i in range(2)]
    make_node("listener", announce=False)  # listens only: answers nothing
    asker.solicit()
    received = asker.answers()
    # besides the HELLOs, a solicitor may be sent peer lists (kind 4: docs/protocol.md 5.3),
    # when a node counts a neighbour as heard by unicast only (its answer came before its
    # broadcast, on a busy machine)
    answers = [body for body in received if body[0] == HELLO]
    assert all(body[0] == PEER_LIST_KIND for body in received if body[0] != HELLO), received
    assert sorted((body[0], body[1], body[5]["zone"]) for body in answers) == [
        (HELLO, "calc-0", "a"), (HELLO, "calc-1", "a")
    ]
    assert {bytes(body[2]) for body in answers} == {node.uuid.bytes for node in nodes}
    assert all(node.peers("asker") == [] for node in nodes)


def test_a_flood_of_solicits_gets_a_bounded_number_of_answers(
    make_node: Callable[..., Node], asker: Asker
) -> None:
    interval = 2.0
    node = make_node("calc", interval=interval, expiry=6.0)
    started = time.monotonic()
    for _ in range(500):
        asker.solicit(to="127.0.0.1")
    answers = asker.answers()
    elapsed = time.monotonic() - started
    # the bucket: ANSWER_BURST at once, refilled at ANSWER_BURST per interval; plus the
    # node's own periodic beacons, which do not come here (they go to the broadcast address)
    assert ANSWER_BURST <= len(answers) <= ANSWER_BURST * (1 + elapsed / interval) + 1
    assert node.stats()["solicits-unanswered"] == 500 - len(answers)


def test_solicit_from_any_thread_is_rate_limited(make_node: Callable[..., Node]) -> None:
    node = make_node("asker")
    started = time.monotonic()
    for _ in range(200):
        node.solicit()
        time.sleep(0.001)
    elapsed = time.monotonic() - started
    wait_until(lambda: node.stats().get("solicits", 0) >= 1, 2, "a solicit sent")
    time.sleep(0.15)  # the last call's solicit, due 0.1 s after the one before
    assert 1 <= node.stats()["solicits"] <= elapsed / 0.1 + 2


def test_solicit_on_a_node_not_running_does_nothing(beacon_port: int) -> None:
    node = Node("idle", port=beacon_port)
    node.solicit()
    with node:
        pass
    node.solicit()
    assert node.stats().get("solicits", 0) == 0


def test_a_forked_child_gets_a_beacon_thread_of_its_own(beacon_port: int) -> None:
    """The parent's nodes share a beacon thread that a forked child does not have: a node made
    in the child must still be discovered (multiprocessing's fork start method)."""
    import multiprocessing

    with Node("parent", port=beacon_port, interval=0.2, expiry=1.0) as parent:
        context = multiprocessing.get_context("fork")
        child = context.Process(target=_child_node, args=(beacon_port,))
        # Python 3.12 warns that forking a process with threads may deadlock: this test does
        # so on purpose, with nothing held (the child only makes a node of its own)
        expected = pytest.warns(DeprecationWarning) if sys.version_info >= (3, 12) else (
            contextlib.nullcontext())
        with expected:
            child.start()
        try:
            parent.wait_for("child", timeout=5)
        finally:
            child.join(10)
        assert child.exitcode == 0


def _child_node(port: int) -> None:
    with Node("child", port=port, interval=0.2, expiry=1.0) as node:
        node.wait_for("parent", timeout=5)
        time.sleep(0.5)

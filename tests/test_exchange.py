"""Peer exchange under attack, on loopback: what a stranger's datagrams can make a node send.

A foreign program (a raw UDP socket, datagrams built with the codec) plays the stranger and
the spoofed peer; the bounds are those of ``zmqkit.contacts`` and docs/security.md.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import wait_until

from zmqkit import Node
from zmqkit.codec import MAX_PEER_LIST, BeaconKind, encode_beacon, encode_peer_list
from zmqkit.contacts import MAX_CANDIDATES, PROBE_BURST, PROBES


class Stranger:
    """A raw socket on a port of its own: what it sends comes from one address."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.uuid = uuid.uuid4()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def hello(self) -> None:
        self.sock.sendto(encode_beacon(BeaconKind.HELLO, "stranger", self.uuid, 1, {}, {}),
                         ("127.255.255.255", self.port))

    def peer_lists(self, addresses: list[tuple[str, int]]) -> None:
        for first in range(0, len(addresses), MAX_PEER_LIST):
            chunk = addresses[first : first + MAX_PEER_LIST]
            self.sock.sendto(encode_peer_list(self.uuid, chunk), ("127.0.0.1", self.port))


@pytest.fixture
def stranger(beacon_port: int) -> Iterator[Stranger]:
    foreign = Stranger(beacon_port)
    foreign.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    yield foreign
    foreign.sock.close()


def made_up(count: int) -> list[tuple[str, int]]:
    """Loopback addresses where nothing listens (probes to them go nowhere)."""
    return [(f"127.77.{n // 250}.{n % 250 + 1}", 9) for n in range(count)]


def test_a_peer_list_from_a_stranger_makes_a_node_send_nothing(
    beacon_port: int, stranger: Stranger
) -> None:
    with Node("target", port=beacon_port, interval=0.2, expiry=0.6) as node:
        stranger.peer_lists(made_up(200))
        wait_until(lambda: node.stats().get("peer-lists-ignored", 0) == 5, 3, "lists ignored")
        time.sleep(0.3)
        assert node.stats().get("probes", 0) == 0
        assert node.peers() == []


def test_a_spoofed_peer_can_make_a_node_probe_only_within_its_budget(
    beacon_port: int, stranger: Stranger
) -> None:
    interval = 0.5
    with Node("target", port=beacon_port, interval=interval, expiry=3.0) as node:
        stranger.hello()  # now a "peer", heard from its address
        node.wait_for("stranger", timeout=3)
        started = time.monotonic()
        stranger.peer_lists(made_up(5000))
        wait_until(lambda: node.stats().get("peer-lists", 0) >= 100, 5, "lists taken")
        time.sleep(2 * interval)
        elapsed = time.monotonic() - started
        probes = node.stats().get("probes", 0)
        # at most MAX_CANDIDATES addresses are tried, each at most PROBES times, and no faster
        # than the bucket: PROBE_BURST at once, then PROBE_BURST per interval
        assert PROBE_BURST <= probes <= PROBE_BURST * (1 + elapsed / interval) + 1
        assert probes <= MAX_CANDIDATES * PROBES

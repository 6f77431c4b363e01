"""The peer table: who is out there, by name. Pure: fed datagrams and ``now``, returns events.

No sockets and no clock of its own, so joins, updates, goodbyes and expiry are tested with a fake
clock and no sleeping. The beacon thread owns one table and feeds it what the network brings.
"""

from __future__ import annotations

import enum
import uuid as uuid_module
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .codec import BeaconFields, BeaconKind, decode_beacon

__all__ = ["EXPIRY_INTERVALS", "INTERVAL_HEADER", "EventKind", "Peer", "PeerEvent", "PeerTable"]

INTERVAL_HEADER = "interval"  # a node beaconing slower than its base says so: milliseconds
EXPIRY_INTERVALS = 3  # a peer that says its interval is kept for this many of them at least
MAX_INTERVAL_MS = 86_400_000  # a day: a larger claim is read as this


def announced_interval(headers: Mapping[str, str]) -> float:
    """The interval in seconds that a peer's ``interval`` header announces; 0 when none."""
    text = headers.get(INTERVAL_HEADER, "")
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        return 0.0
    return min(int(text), MAX_INTERVAL_MS) / 1000


class EventKind(enum.Enum):
    """What happened to a peer."""

    JOINED = "joined"
    UPDATED = "updated"  # same peer, new endpoints or headers
    LEFT = "left"  # it said goodbye
    EXPIRED = "expired"  # unheard for the expiry time


@dataclass(frozen=True, slots=True)
class Peer:
    """One discovered node, as its latest beacon described it."""

    name: str
    uuid: uuid_module.UUID
    endpoints: Mapping[str, str]
    headers: Mapping[str, str]
    seq: int
    address: str
    first_seen: float
    last_seen: float
    port: int = 0  # the UDP port its beacons come from: where unicast beacons reach it

    def age(self, now: float) -> float:
        """Seconds since its last beacon."""
        return now - self.last_seen

    def lifetime(self, expiry: float) -> float:
        """How long it lives unheard for a receiver whose expiry is ``expiry``: longer when it
        announces a longer interval (a node in a large mesh beacons less often)."""
        return max(expiry, EXPIRY_INTERVALS * announced_interval(self.headers))


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: EventKind
    peer: Peer

    def __str__(self) -> str:
        return f"{self.peer.name} {self.kind.value} ({self.peer.uuid.hex[:8]})"


class PeerTable:
    """Peers keyed by UUID, built from beacon datagrams.

    ``version`` grows on every join, update, leave and expiry, so a client can tell cheaply
    whether its connections need another look.
    """

    def __init__(self, own_uuid: uuid_module.UUID | None = None, expiry: float = 3.0) -> None:
        self.own_uuid = own_uuid
        self.expiry = expiry
        self.version = 0
        self._peers: dict[uuid_module.UUID, Peer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, node_uuid: uuid_module.UUID) -> Peer | None:
        """The peer with this UUID, if known."""
        return self._peers.get(node_uuid)

    def peers(self, name: str | None = None) -> list[Peer]:
        """Known peers, all or only those called ``name``, oldest first."""
        return [peer for peer in self._peers.values() if name is None or peer.name == name]

    def feed(self, datagram: bytes, address: str, now: float, port: int = 0) -> list[PeerEvent]:
        """Take one datagram from ``address`` (and ``port``) at time ``now``; return what it
        changed.

        Raises:
            ProtocolError: the datagram is not a valid beacon.
        """
        return self.apply(decode_beacon(datagram), address, now, port)

    def apply(
        self, beacon: BeaconFields, address: str, now: float, port: int = 0
    ) -> list[PeerEvent]:
        """``feed`` for a beacon decoded already (one decode serves every node of a process)."""
        kind, name, node_uuid, seq, endpoints, headers = beacon
        if node_uuid == self.own_uuid or kind is BeaconKind.SOLICIT:
            return []  # a solicit asks for an answer; it says nothing about who is alive
        known = self._peers.get(node_uuid)
        if kind is BeaconKind.GOODBYE:
            if known is None:
                return []
            del self._peers[node_uuid]
            self.version += 1
            return [PeerEvent(EventKind.LEFT, known)]
        if known is None:
            peer = Peer(name, node_uuid, endpoints, headers, seq, address, now, now, port)
            self._peers[node_uuid] = peer
            self.version += 1
            return [PeerEvent(EventKind.JOINED, peer)]
        if seq < known.seq:
            return []  # late or replayed: the peer has said something newer since
        if seq == known.seq:
            self._peers[node_uuid] = replace(known, last_seen=now, address=address, port=port)
            return []
        peer = replace(
            known,
            name=name,
            endpoints=endpoints,
            headers=headers,
            seq=seq,
            address=address,
            port=port,
            last_seen=now,
        )
        self._peers[node_uuid] = peer
        if endpoints == known.endpoints and headers == known.headers and name == known.name:
            return []
        self.version += 1
        return [PeerEvent(EventKind.UPDATED, peer)]

    def expire(self, now: float) -> list[PeerEvent]:
        """Drop the peers unheard for ``expiry`` seconds; return an EXPIRED event for each."""
        gone = [p for p in self._peers.values() if now - p.last_seen >= p.lifetime(self.expiry)]
        for peer in gone:
            del self._peers[peer.uuid]
        if gone:
            self.version += 1
        return [PeerEvent(EventKind.EXPIRED, peer) for peer in gone]

    def next_expiry(self) -> float | None:
        """The earliest time at which ``expire`` will find something to drop, if any peer."""
        if not self._peers:
            return None
        return min(peer.last_seen + peer.lifetime(self.expiry) for peer in self._peers.values())

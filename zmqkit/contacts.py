"""Who a node beacons to by unicast, and the limits that keep that bounded. Pure: fed ``now``.

Broadcast reaches the peers of one segment. Beyond it a node beacons by unicast to:

- its **seeds**: every address their names resolve to now;
- its **unicast peers**: the live peers it hears by unicast and not by broadcast (lately), or
  that live outside the network its broadcasts reach: what it does not hear by broadcast does
  not hear its broadcasts either. A seed thus answers whoever seeds it, and keeps beaconing to
  it until it leaves or expires: liveness still comes only from a peer's own beacons;
- **candidates**: addresses passed on in peer lists by its unicast peers (peer exchange). A
  candidate is only a place to try: it is probed at most ``PROBES`` times and forgotten unless a
  node there answers, which makes it a peer like any other.

Everything a datagram from elsewhere can make a node send is bounded here: answers (to solicits
and newcomers, by unicast; early broadcasts for newcomers on its segment, which one datagram
answers all at once) and probes each draw on a ``RateLimit``, peer lists are taken only from live
peers and sent within a budget, and candidates are capped in number.
"""

from __future__ import annotations

import ipaddress
import uuid as uuid_module
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ANSWER_BURST",
    "EARLY_ANSWERERS",
    "EARLY_BURST",
    "EXCHANGE_BURST",
    "EXCHANGE_EVERY",
    "MAX_CANDIDATES",
    "PEERS_PER_INTERVAL",
    "PROBES",
    "PROBE_BURST",
    "Address",
    "Contacts",
    "RateLimit",
    "answers_early",
    "scaled_interval",
]

Address = tuple[str, int]  # (IPv4 address, UDP port)

ANSWER_BURST = 32  # unicast answers (to solicits and newcomers) at once; then as many per interval
EARLY_BURST = 2  # early broadcasts for newcomers at once; then as many per (stretched) interval
EARLY_ANSWERERS = 64  # about this many nodes of a segment answer a newcomer by early broadcast
PROBE_BURST = 32  # probes of second-hand addresses at once; then as many per interval
PROBES = 3  # a candidate unanswered after this many probes is dropped
FAILED_MEMORY = 1024  # dropped candidates remembered, so a peer list cannot make us retry them
FAILED_FOR = 30  # intervals before a dropped candidate may be tried again
MAX_CANDIDATES = 256  # candidates waiting to be probed; more offered are ignored
EXCHANGE_BURST = 16  # peer lists sent at once; then as many per interval
EXCHANGE_EVERY = 10  # intervals between two peer lists to the same unicast peers
MAX_LIST = 48  # addresses in one peer list (codec.MAX_PEER_LIST)
PEERS_PER_INTERVAL = 256  # the interval doubles for each doubling of the peers beyond this


def answers_early(peers: int, draw: float) -> bool:
    """Whether a node that knows ``peers`` peers answers a newcomer of its segment by an early
    broadcast, for a uniform ``draw`` in [0, 1): each does with probability
    ``EARLY_ANSWERERS / peers``, so that about that many answer however large the segment (one
    broadcast reaches every node: a newcomer in a mesh of 10,000 must not cost 10,000 of them).
    The others reach it with their next periodic beacon."""
    return draw * peers < EARLY_ANSWERERS


def scaled_interval(base: float, peers: int, current: float) -> float:
    """The beacon interval for a node that knows ``peers`` peers: ``base`` times a power of two,
    so that it hears at most about ``PEERS_PER_INTERVAL`` beacons per ``base`` seconds.

    It doubles as soon as ``peers`` exceeds ``PEERS_PER_INTERVAL`` times the current factor and
    halves only once ``peers`` is under 3/8 of that (hysteresis), so a mesh near a step does not
    flap between two intervals.
    """
    factor = max(1, round(current / base))
    while peers > PEERS_PER_INTERVAL * factor:
        factor *= 2
    while factor > 1 and peers < PEERS_PER_INTERVAL * factor * 3 // 8:
        factor //= 2
    return base * factor


@dataclass(slots=True)
class RateLimit:
    """A token bucket: at most ``burst`` at once, refilled at ``rate`` per second."""

    burst: float
    rate: float
    _tokens: float = -1.0
    _updated: float = 0.0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are enough at ``now``; whether they were taken."""
        if self._tokens < 0:  # first use: a full bucket
            self._tokens, self._updated = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True


@dataclass(slots=True)
class _Candidate:
    probes_left: int
    next_probe: float


@dataclass
class Contacts:
    """One node's unicast contacts. The beacon thread owns it and tells it what it hears.

    Args:
        interval: the node's beacon interval (budgets refill per interval).
        window: how long a peer heard by broadcast counts as reached by broadcast (the
            node's expiry).
        network: the network its broadcasts reach; None when it has no broadcast.
        accept: the network it takes datagrams from (None: any); addresses outside it are
            never candidates, since their answers would be dropped.
        own: addresses that are this node's own (never probed).
    """

    interval: float
    window: float = 3.0
    network: ipaddress.IPv4Network | None = None
    accept: ipaddress.IPv4Network | None = None
    own: set[Address] = field(default_factory=set)
    seeds: dict[str, set[Address]] = field(default_factory=dict)
    heard_unicast: dict[uuid_module.UUID, Address] = field(default_factory=dict)
    heard_broadcast: dict[uuid_module.UUID, float] = field(default_factory=dict)
    candidates: OrderedDict[Address, _Candidate] = field(default_factory=OrderedDict)
    failed: OrderedDict[Address, float] = field(default_factory=OrderedDict)
    answers: RateLimit = field(init=False)
    early: RateLimit = field(init=False)
    probes: RateLimit = field(init=False)
    lists: RateLimit = field(init=False)
    exchange_at: float = float("inf")
    _fresh: list[Address] = field(default_factory=list)
    _rotation: int = 0

    def __post_init__(self) -> None:
        self.answers = RateLimit(ANSWER_BURST, ANSWER_BURST / self.interval)
        self.early = RateLimit(EARLY_BURST, EARLY_BURST / self.interval)
        self.probes = RateLimit(PROBE_BURST, PROBE_BURST / self.interval)
        self.lists = RateLimit(EXCHANGE_BURST, EXCHANGE_BURST / self.interval)

    def stretch(self, interval: float) -> None:
        """The node's interval is now ``interval``: early broadcasts, which every node of the
        segment hears, slow down with it, so that a segment's newcomers cost each node a
        bounded number of them per second however many nodes answer."""
        self.early.rate = EARLY_BURST / interval

    # -- seeds -----------------------------------------------------------------------------------

    def set_seed(self, name: str, addresses: Iterable[Address]) -> list[Address]:
        """What seed ``name`` resolves to now; returns the addresses that are new."""
        before = self.seeds.get(name, set())
        self.seeds[name] = set(addresses)
        return sorted(self.seeds[name] - before)

    def seed_addresses(self) -> set[Address]:
        """Every address of every seed, as last resolved."""
        return set().union(*self.seeds.values()) if self.seeds else set()

    def is_seed_host(self, host: str) -> bool:
        """Whether ``host`` is a seed's address (datagrams from seeds pass any scope)."""
        return any(address[0] == host for address in self.seed_addresses())

    # -- unicast peers ---------------------------------------------------------------------------

    def heard(self, peer: uuid_module.UUID, address: Address, *, broadcast: bool,
              now: float) -> bool:
        """A beacon of ``peer`` from ``address``, sent to a broadcast address or not. Returns
        True when ``peer`` has just become a unicast peer.

        A beacon from a candidate's address settles that candidate: someone lives there.
        """
        self.candidates.pop(address, None)
        was = self.is_unicast(peer, now)
        if broadcast:
            self.heard_broadcast[peer] = now
        else:
            self.heard_unicast[peer] = address
        if was or not self.is_unicast(peer, now):
            return False
        self.exchange_at = -1.0  # a new unicast peer gets a peer list at once
        return True

    def is_unicast(self, peer: uuid_module.UUID, now: float) -> bool:
        """Whether ``peer`` gets unicast beacons: heard by unicast, and not by broadcast lately
        or from outside the network that this node's broadcasts reach."""
        address = self.heard_unicast.get(peer)
        if address is None:
            return False
        heard = self.heard_broadcast.get(peer)
        return heard is None or now - heard > self.window or not self.reached_by_broadcast(
            address[0]
        )

    def unicast(self, now: float) -> dict[uuid_module.UUID, Address]:
        """The unicast peers now, and where their beacons come from."""
        return {p: a for p, a in self.heard_unicast.items() if self.is_unicast(p, now)}

    def forget(self, peer: uuid_module.UUID) -> None:
        """``peer`` left or expired: no more unicast beacons to it."""
        self.heard_unicast.pop(peer, None)
        self.heard_broadcast.pop(peer, None)

    def joined(self, address: Address) -> None:
        """A new peer at ``address``: passed on to the unicast peers soon."""
        self._fresh.append(address)
        if self.heard_unicast:
            self.exchange_at = min(self.exchange_at, -1.0)

    def targets(self, now: float) -> list[Address]:
        """Where every periodic beacon goes by unicast: seeds and unicast peers, once each."""
        return sorted(self.seed_addresses() | set(self.unicast(now).values()))

    def reached_by_broadcast(self, host: str) -> bool:
        """Whether ``host`` is in the network this node's broadcasts reach."""
        if self.network is None:
            return False
        try:
            return ipaddress.IPv4Address(host) in self.network
        except ValueError:
            return False

    # -- peer exchange ---------------------------------------------------------------------------

    def offer(self, addresses: Sequence[Address], known: set[Address], now: float) -> int:
        """Addresses from a unicast peer's list; returns how many became candidates.

        Known peers, this node's own addresses, candidates already waiting, addresses dropped
        lately and addresses outside ``accept`` are skipped; so is everything past
        ``MAX_CANDIDATES``.
        """
        taken = 0
        for address in addresses:
            if len(self.candidates) >= MAX_CANDIDATES:
                break
            if address in known or address in self.own or address in self.candidates:
                continue
            if self.failed.get(address, -1e300) + FAILED_FOR * self.interval > now:
                continue
            if not self._accepted(address[0]):
                continue
            self.candidates[address] = _Candidate(PROBES, now)
            taken += 1
        return taken

    def _accepted(self, host: str) -> bool:
        """Whether answers from ``host`` would be read (the beacon's own rule: the scope's
        network, or anywhere but loopback when it has none, or a seed's host)."""
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return False
        if self.is_seed_host(host):
            return True
        return not address.is_loopback if self.accept is None else address in self.accept

    def probes_due(self, now: float) -> list[Address]:
        """Candidates to probe now, within the probe budget; the unanswered are dropped."""
        due = []
        for address, candidate in list(self.candidates.items()):
            if candidate.next_probe > now:
                continue
            if candidate.probes_left <= 0:
                del self.candidates[address]
                self.failed[address] = now
                while len(self.failed) > FAILED_MEMORY:
                    self.failed.popitem(last=False)
                continue
            if not self.probes.allow(now):
                break
            candidate.probes_left -= 1
            candidate.next_probe = now + self.interval
            due.append(address)
        return due

    def next_probe(self) -> float:
        """When ``probes_due`` next has something to do (inf: no candidate)."""
        return min((c.next_probe for c in self.candidates.values()), default=float("inf"))

    def exchange(self, known: Sequence[Address], now: float) -> list[tuple[Address, list[Address]]]:
        """The peer lists due now: ``(unicast peer, addresses)`` pairs, within the budget.

        Each list carries the peers that joined since the last exchange first, then a window
        that rotates over the rest, so that every known address reaches every unicast peer
        within a few exchanges however large the mesh. Never the recipient's own address.
        """
        if now < self.exchange_at:
            return []
        self.exchange_at = now + EXCHANGE_EVERY * self.interval
        fresh = [a for a in dict.fromkeys(self._fresh) if a in known]
        self._fresh.clear()
        rest = [a for a in known if a not in fresh]
        if rest:
            start = self._rotation % len(rest)
            rest = rest[start:] + rest[:start]
            self._rotation += MAX_LIST
        lists = []
        targets = sorted(set(self.unicast(now).values()))
        if targets:  # who is served first rotates too, so a spent budget starves no one
            start = self._rotation % len(targets)
            targets = targets[start:] + targets[:start]
        for target in targets:
            addresses = [a for a in fresh + rest if a != target][:MAX_LIST]
            if not addresses:
                continue
            if not self.lists.allow(now):
                self.exchange_at = now + self.interval  # the rest next interval
                break
            lists.append((target, addresses))
        return lists

"""One node's presence: what it says, whom it tells, and what it hears.

A ``Beacon`` announces its node at once, then every ``interval``; answers a newcomer's first
beacon, and a SOLICIT, at once by unicast (within a budget); passes on the addresses it knows to
the nodes it reaches by unicast (peer exchange); and says goodbye on close. Its I/O runs on the
process's ``BeaconHub`` (one thread and one pair of sockets per port, shared by every node of the
process), beside user code, so that a node busy computing is not declared dead by its peers.

Scopes decide where beacons go and where endpoints are bound:

- ``localhost``: the loopback broadcast 127.255.255.255; endpoints on 127.0.0.1. Datagrams from
  outside 127.0.0.0/8 are dropped (but a seed's), so nothing from the network gets in either.
- ``subnet``: one named interface's broadcast address; endpoints on that interface's address.
- ``seeds`` (with either scope): unicast beacons to every address of each ``HOST[:PORT]`` too,
  names looked up again every few intervals (``zmqkit.resolver``).

Whom it beacons to by unicast, and the limits on it, is ``zmqkit.contacts``; as the mesh grows,
its interval grows (``contacts.scaled_interval``) and it says so in its ``interval`` header, so
that its peers' expiry follows. Bad datagrams are dropped and counted in ``stats``; the first is
logged as a warning, the rest at debug level, so a noisy network cannot flood the log.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import os
import random
import threading
import time
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import ifaddr

from .codec import (
    MAX_PEER_LIST,
    BeaconFields,
    BeaconKind,
    PeerList,
    encode_beacon,
    encode_peer_list,
)
from .contacts import Address, Contacts, answers_early, scaled_interval
from .errors import ConfigError, EncodeError
from .hub import BeaconHub
from .peers import INTERVAL_HEADER, EventKind, Peer, PeerEvent, PeerTable

__all__ = [
    "DEFAULT_PORT",
    "PORT_VARIABLE",
    "Beacon",
    "Scope",
    "Seed",
    "default_port",
    "interface_addresses",
    "parse_seed",
]

log = logging.getLogger("zmqkit.beacon")

DEFAULT_PORT = 47474
PORT_VARIABLE = "ZMQKIT_PORT"
LOOPBACK_BROADCAST = "127.255.255.255"
LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
ANSWER_DELAY = 0.02  # a broadcast answer comes within this, jittered, so a crowd is spread
SOLICIT_GAP = 0.1  # a node solicits at most this often; calls in between share the next one
RESOLVE_EVERY = 5  # intervals between two lookups of a seed name
EXPIRY_TICK = 0.25  # expiry is checked at most this often (a quarter interval, if shorter)


class Scope(enum.Enum):
    """Where beacons go and endpoints bind: this host only, or one interface's subnet."""
    LOCALHOST = "localhost"
    SUBNET = "subnet"


@dataclass(frozen=True, slots=True)
class Seed:
    """A host (an IPv4 address or a name, looked up again every few intervals) that gets
    unicast beacons."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def default_port() -> int:
    """The beacon port of a node given none: ``$ZMQKIT_PORT`` if set, else 47474.

    Nodes on other ports never see each other, so the variable keeps a set of nodes (a test run,
    a team's staging mesh) apart from others on the same hosts without a change to their code.

    Raises:
        ConfigError: the variable is set to something that is not a port number.
    """
    text = os.environ.get(PORT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{PORT_VARIABLE} must be a port number from 1 to 65535, not {text!r}")
    return int(text)


def parse_seed(text: str, default_port: int = DEFAULT_PORT) -> Seed:
    """``HOST`` or ``HOST:PORT`` as a Seed. A name is not looked up here: the beacon looks it
    up (again and again), and a name that does not resolve yet is retried, never fatal.

    Raises:
        ConfigError: a malformed seed: no host, a port out of 1..65535, a host that is no
            IPv4 address and no host name.
    """
    if not isinstance(text, str):
        raise ConfigError(f"a seed is HOST or HOST:PORT, not {text!r}")
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        port = int(port_text) if colon else default_port
        if not 0 < port < 65536:
            raise ValueError(f"port {port}")
        if not _is_host(host):
            raise ValueError("no host" if not host.strip() else f"bad host {host!r}")
    except ValueError as exc:
        raise ConfigError(f"a seed is HOST or HOST:PORT, not {text!r} ({exc})") from exc
    return Seed(host, port)


def _is_host(host: str) -> bool:
    """An IPv4 address, or a DNS name (letters, digits, hyphens, dots; labels of 1-63)."""
    if _is_ipv4(host):
        return True
    labels = host.rstrip(".").split(".")
    return 0 < len(host) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
        and label.isascii() and not label.startswith("-") for label in labels
    ) and not host.replace(".", "").isdigit()


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def interface_addresses(name: str) -> tuple[str, str, ipaddress.IPv4Network]:
    """The IPv4 address and broadcast address of the interface called ``name``.

    Raises:
        ConfigError: no such interface, or it has no IPv4 address.
    """
    known = []
    for adapter in ifaddr.get_adapters():
        known.append(adapter.nice_name)
        if adapter.nice_name != name:
            continue
        for ip in adapter.ips:
            if ip.is_IPv4:
                network = ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                broadcast = LOOPBACK_BROADCAST if network.is_loopback else network.broadcast_address
                return str(ip.ip), str(broadcast), network
        raise ConfigError(f"interface {name!r} has no IPv4 address")
    raise ConfigError(f"no interface called {name!r} (this host has: {', '.join(sorted(known))})")


class Beacon:
    """Announces one node and tracks its peers, on the process's beacon thread from ``start``.

    ``on_events`` is called from the beacon thread with each batch of presence events, after
    what ``snapshot`` returns has been updated. ``network`` is what its broadcasts reach (a peer
    outside it is beaconed by unicast); ``accept_from`` is where datagrams may come from (None:
    anywhere but loopback; seeds always may).
    """

    def __init__(
        self,
        name: str,
        node_uuid: uuid_module.UUID,
        *,
        port: int = DEFAULT_PORT,
        broadcast: str | None = LOOPBACK_BROADCAST,
        seeds: Sequence[Seed] = (),
        network: ipaddress.IPv4Network | None = LOOPBACK_NETWORK,
        accept_from: ipaddress.IPv4Network | None = LOOPBACK_NETWORK,
        announce: bool = True,
        interval: float = 1.0,
        expiry: float = 3.0,
        on_events: Callable[[list[PeerEvent]], None] = lambda events: None,
    ) -> None:
        if interval <= 0 or expiry <= interval:
            raise ConfigError(f"need 0 < interval < expiry, not {interval} and {expiry}")
        self.name = name
        self.uuid = node_uuid
        self.port = port
        self.broadcast: list[Address] = [(broadcast, port)] if broadcast else []
        self.accept_from = accept_from
        self.announce = announce
        self.base_interval = self.interval = interval
        self.resolve_every = RESOLVE_EVERY * interval
        self.on_events = on_events
        self.stats: Counter[str] = Counter()
        self.table = PeerTable(node_uuid, expiry)
        self.contacts = Contacts(interval, expiry, network=network, accept=accept_from)
        self._names = {(s.host, s.port) for s in seeds if not _is_ipv4(s.host)}
        for seed in seeds:
            if _is_ipv4(seed.host):
                self.contacts.set_seed(str(seed), {(seed.host, seed.port)})
        self._endpoints: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        self._seq = 0
        self._saying = threading.Lock()  # what it says changes from user threads and the hub
        self._warned = False
        self._solicit_wanted = False
        self._last_solicit = -SOLICIT_GAP
        self._next_announce = 0.0
        self._announced_seq = -1
        self._next_expiry_check = 0.0
        self._heard = 0  # beacons taken: the snapshot is rebuilt when this or the version moves
        self._snapshot: tuple[int, int, tuple[Peer, ...]] = (0, 0, ())
        self._hub: BeaconHub | None = None
        self._lock: threading.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
        self.leaving = False
        self.gone = threading.Event()
        self.due = 0.0

    # -- called from any thread ------------------------------------------------------------------

    def start(self) -> None:
        """Join the process's beacon thread for this port (started by the first node).

        Raises:
            ConfigError: the port cannot be opened.
        """
        self._hub = BeaconHub.join(self)
        self._lock = self._hub.lock

    def close(self, timeout: float = 2.0) -> None:
        """Say goodbye and leave the beacon thread (the last node's close joins it). Safe to
        call twice. From an event callback (the beacon thread itself) it only asks."""
        if self._hub is not None and not self.leaving:
            self._hub.leave(self, timeout)

    def advertise(self, endpoints: Mapping[str, str], headers: Mapping[str, str]) -> None:
        """Change what the beacon says; peers hear it at once.

        Checked before anything changes, so that a bad value fails here, loudly, instead of
        making every later beacon one that all peers drop.

        Raises:
            EncodeError: a key or value that is not text, or a beacon over MAX_BEACON_SIZE.
        """
        for what, mapping in (("endpoints", endpoints), ("headers", headers)):
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
                raise EncodeError(f"beacon {what} map text to text, not {dict(mapping)!r}")
        with self._saying:
            encode_beacon(BeaconKind.HELLO, self.name, self.uuid, self._seq + 1, endpoints,
                          self._with_interval(headers))
            self._endpoints = dict(endpoints)
            self._headers = dict(headers)
            self._seq += 1
        self._wake()

    def solicit(self) -> None:
        """Ask every node the beacon reaches to answer now (from any thread; rate-limited).

        Sent by the beacon thread at once, or SOLICIT_GAP after the last solicit: calls in
        between share that one.
        """
        self._solicit_wanted = True
        self._wake()

    @property
    def version(self) -> int:
        """Grows whenever a peer joins, changes or goes."""
        return self.table.version

    @property
    def snapshot(self) -> tuple[int, tuple[Peer, ...]]:
        """``(version, peers)``, consistent with each other and fresh to the last beacon."""
        with self._lock:
            version, heard, peers = self._snapshot
            if (version, heard) != (self.table.version, self._heard):
                peers = tuple(self.table.peers())
                self._snapshot = (self.table.version, self._heard, peers)
            return self.table.version, peers

    def _wake(self) -> None:
        hub = self._hub
        if hub is not None and not self.gone.is_set():
            self.due = 0.0
            hub.wake()

    def _with_interval(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers it sends: the node's, and its interval when the mesh has stretched it."""
        if self.interval == self.base_interval:
            return dict(headers)
        return {**headers, INTERVAL_HEADER: str(round(self.interval * 1000))}

    # -- called by the hub, in its thread, under its lock ---------------------------------------

    def seed_names(self) -> set[Address]:
        """The seeds given by name, for the resolver."""
        return self._names

    def accepts(self, host: str) -> bool:
        """Whether a datagram from ``host`` may be read: from the scope's network (with no
        network, from anywhere but loopback, which is the localhost scope's), or from a seed."""
        if self.contacts.is_seed_host(host):
            return True
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return False
        if self.accept_from is None:
            return not address.is_loopback
        return address in self.accept_from

    def count(self, key: str) -> None:
        """Count one more ``key`` in ``stats``."""
        self.stats[key] += 1

    def drop(self, reason: str, detail: str) -> None:
        """Count a dropped datagram; log the first loudly, the rest at debug level."""
        self.stats[f"dropped-{reason}"] += 1
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(
            level, "beacon %s dropped %s (later drops are logged at debug level)", self.name, detail
        )

    def begin(self, now: float, hub: BeaconHub) -> None:
        """Joined: announce now, and ask the seeds to answer."""
        self.contacts.own = {(host, hub.own_port) for host in hub.local_hosts}
        self._next_announce = now
        self._next_expiry_check = now
        if self.contacts.seeds:
            self._solicit_wanted = True
        self.due = now

    def resolved(self, name: Address, addresses: set[Address], now: float) -> None:
        """A seed name's addresses now: new ones get a HELLO and a solicit at once."""
        fresh = self.contacts.set_seed(f"{name[0]}:{name[1]}", addresses)
        if self.announce:
            self._send(self._hello(), fresh)
        self._send(self._solicit_datagram(), fresh)

    def receive(self, decoded: BeaconFields | PeerList, source: Address, broadcast: bool,
                now: float) -> list[PeerEvent]:
        """One datagram from ``source``, sent to a broadcast address or not; its events."""
        if len(decoded) == 2:
            self._take_peer_list(decoded, source, now)
            return []
        kind, _, node_uuid = decoded[0], decoded[1], decoded[2]
        if node_uuid == self.uuid:
            return []
        if kind is BeaconKind.SOLICIT:
            self._answer(source, now, solicited=True, broadcast=broadcast)
            return []
        self._heard += 1
        events = self.table.apply(decoded, source[0], now, source[1])
        if kind is BeaconKind.GOODBYE:
            self.contacts.forget(node_uuid)
            return events
        if events:  # a newcomer (or a peer that shortened its interval) may expire first
            self._next_expiry_check = min(self._next_expiry_check, now + self.table.expiry)
            self.due = min(self.due, self._next_expiry_check)
        became_unicast = self.contacts.heard(node_uuid, source, broadcast=broadcast, now=now)
        joined = any(event.kind is EventKind.JOINED for event in events)
        if joined:
            self.contacts.joined(source)
        if joined or became_unicast:
            self._answer(source, now, solicited=False, broadcast=broadcast)
        if became_unicast:
            self.due = 0.0  # its peer list is due
        return events

    def tick(self, now: float) -> list[PeerEvent]:
        """Whatever is due now: expiry, announce, solicit, peer lists, probes; sets ``due``."""
        events: list[PeerEvent] = []
        if now >= self._next_expiry_check:
            events = self.table.expire(now)
            for event in events:
                self.contacts.forget(event.peer.uuid)
            tick = min(EXPIRY_TICK, self.base_interval / 4)
            self._next_expiry_check = max(self.table.next_expiry() or now + 60.0, now + tick)
        if self.announce:
            self._rescale()
            if now >= self._next_announce or self._announced_seq != self._seq:
                self._announce(now)
        if self._solicit_wanted and now >= self._last_solicit + SOLICIT_GAP:
            self._solicit_wanted = False
            self._last_solicit = now
            seeds = sorted(self.contacts.seed_addresses())
            self._send(self._solicit_datagram(), self.broadcast + seeds)
            self.stats["solicits"] += 1
        if self.announce and now >= self.contacts.exchange_at:  # a listener only asks
            known = self._known_addresses()
            for target, addresses in self.contacts.exchange(known, now):
                self._send(encode_peer_list(self.uuid, addresses), [target])
                self.stats["peer-lists-sent"] += 1
        if self.contacts.candidates:
            probe = self._hello() if self.announce else self._solicit_datagram()
            for address in self.contacts.probes_due(now):
                self._send(probe, [address])
                self.stats["probes"] += 1
        self._schedule(now)
        return events

    def end(self) -> None:
        """Leaving: one GOODBYE to everyone it beacons to."""
        if self.announce:
            with self._saying:
                datagram = encode_beacon(BeaconKind.GOODBYE, self.name, self.uuid, self._seq,
                                         self._endpoints, self._with_interval(self._headers))
            self._send(datagram, self.broadcast + self.contacts.targets(time.monotonic()))

    def deliver(self, events: list[PeerEvent]) -> None:
        """Hand a batch of events to the node (outside the hub's lock)."""
        self.on_events(events)

    # -- the parts of a turn ---------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        due = [self._next_expiry_check, self.contacts.next_probe()]
        if self.announce:
            due += [self._next_announce, self.contacts.exchange_at]
        if self._solicit_wanted:
            due.append(self._last_solicit + SOLICIT_GAP)
        self.due = max(now, min(due))

    def _announce(self, now: float) -> None:
        """A HELLO to every target; a solicit to the seeds that no live peer answers from."""
        self._announced_seq = self._seq
        self._next_announce = now + self.interval
        self._send(self._hello(), self.broadcast + self.contacts.targets(now))
        live_hosts = {peer.address for peer in self.table.peers()}
        silent = [a for a in sorted(self.contacts.seed_addresses()) if a[0] not in live_hosts]
        if silent:
            self._send(self._solicit_datagram(), silent)

    def _rescale(self) -> None:
        """Stretch (or shrink) the interval with the mesh; a change is announced (new seq)."""
        interval = scaled_interval(self.base_interval, len(self.table), self.interval)
        if interval != self.interval:
            with self._saying:
                self.interval = interval
                self._seq += 1
            self.contacts.stretch(interval)
            self._next_announce = min(self._next_announce, 0.0)

    def _answer(self, source: Address, now: float, *, solicited: bool, broadcast: bool) -> None:
        """This node's HELLO for ``source``, at once, within the answer budgets.

        A solicitor gets it by unicast (it alone asked), with the addresses it may not hear
        itself. A newcomer on this node's segment (heard by broadcast, or from the shared port:
        a sender without a port of its own) gets an early broadcast, which answers every
        newcomer of a crowd at once, from about ``EARLY_ANSWERERS`` nodes of a large segment;
        one from elsewhere gets it by unicast.
        """
        if not self.announce:
            if solicited:
                self.stats["solicits-unanswered"] += 1
            return
        if not solicited and (broadcast or source[1] == self.port):
            if answers_early(len(self.table), random.random()) and self.contacts.early.allow(now):
                self._next_announce = min(self._next_announce,
                                          now + random.uniform(0, ANSWER_DELAY))
                self.due = min(self.due, self._next_announce)
            return
        if not self.contacts.answers.allow(now):
            self.stats["solicits-unanswered" if solicited else "answers-deferred"] += 1
            return
        self._send(self._hello(), [source])
        if solicited:
            self._send_list_to_solicitor(source, now, broadcast=broadcast)

    def _send_list_to_solicitor(self, source: Address, now: float, *, broadcast: bool) -> None:
        """A solicitor that broadcast hears this node's neighbours itself: it gets the peers
        known by unicast only; one that solicited by unicast gets every known address."""
        if broadcast:
            addresses = sorted(set(self.contacts.unicast(now).values()))
        else:
            addresses = self._known_addresses()
        addresses = [a for a in addresses if a != source][:MAX_PEER_LIST]
        if addresses and self.contacts.lists.allow(now):
            self._send(encode_peer_list(self.uuid, addresses), [source])
            self.stats["peer-lists-sent"] += 1

    def _take_peer_list(self, decoded: PeerList, source: Address, now: float) -> None:
        """Addresses from a live peer that sent them from where it beacons: candidates. From
        anyone else (a stranger, a spoofed source) they are ignored."""
        sender, addresses = decoded
        peer = self.table.get(sender)
        if peer is None or (peer.address, peer.port) != source:
            self.stats["peer-lists-ignored"] += 1
            return
        self.stats["peer-lists"] += 1
        known = set(self._known_addresses())
        if self.contacts.offer(addresses, known, now):
            self.due = 0.0

    def _known_addresses(self) -> list[Address]:
        return sorted({(peer.address, peer.port) for peer in self.table.peers()})

    def _hello(self) -> bytes:
        with self._saying:
            return encode_beacon(BeaconKind.HELLO, self.name, self.uuid, self._seq,
                                 self._endpoints, self._with_interval(self._headers))

    def _solicit_datagram(self) -> bytes:
        return encode_beacon(BeaconKind.SOLICIT, self.name, self.uuid, 0, {}, {})

    def _send(self, datagram: bytes, targets: Sequence[Address]) -> None:
        hub = self._hub
        if hub is None:
            return
        for target in targets:
            error = hub.send(datagram, target)
            if error is None:
                self.stats["sent"] += 1
            else:
                self.drop("send-error", f"to {target[0]}:{target[1]}: {error}")

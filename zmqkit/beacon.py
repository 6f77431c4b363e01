"""The discovery beacon: UDP I/O around a PeerTable, in one named thread.

The thread announces the node at once, then every ``interval``; answers a newcomer's first beacon
within a few milliseconds so that discovery does not wait a whole interval; answers a SOLICIT at
once, by unicast to its sender (rate-limited); says goodbye on close. It runs beside user code so
that a node busy computing is not declared dead by its peers.

Two UDP sockets: the shared beacon port (every node of the host binds it, so each hears every
broadcast) and a port of the node's own, from which it sends everything. Unicast to the shared
port reaches one socket of the host only (``SO_REUSEPORT``); unicast to the sender's own port,
where answers go, reaches exactly that node.

Scopes decide where beacons go and where endpoints are bound:

- ``localhost``: the loopback broadcast 127.255.255.255; endpoints on 127.0.0.1. Datagrams from
  outside 127.0.0.0/8 are dropped, so nothing from the network gets in either.
- ``subnet``: one named interface's broadcast address; endpoints on that interface's address.
- ``seeds`` (with either scope): unicast beacons to each listed ``HOST[:PORT]`` too.

Bad datagrams are dropped and counted in ``stats``; the first is logged as a warning, the rest
at debug level, so a noisy network cannot flood the log.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import random
import select
import socket
import time
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import ifaddr

from .codec import BeaconKind, decode_discovery, encode_beacon
from .contacts import RateLimit
from .errors import ConfigError, EncodeError, ProtocolError
from .peers import EventKind, Peer, PeerEvent, PeerTable
from .service import ServiceThread

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
MAX_DATAGRAMS_PER_WAKE = 1000  # under a flood, still get back to announcing and expiring
ANSWER_DELAY = 0.02  # answer newcomers within this, jittered, so a crowd is not answered at once
SOLICIT_GAP = 0.1  # a node solicits at most this often; calls in between share the next one
ANSWER_BURST = 32  # solicits answered at once; then ANSWER_BURST per interval


class Scope(enum.Enum):
    """Where beacons go and endpoints bind: this host only, or one interface's subnet."""
    LOCALHOST = "localhost"
    SUBNET = "subnet"


@dataclass(frozen=True, slots=True)
class Seed:
    """A host that gets unicast beacons."""

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
    """``HOST`` or ``HOST:PORT`` as a Seed with a numeric IPv4 host.

    Raises:
        ConfigError: a malformed seed or a host name that does not resolve.
    """
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        port = int(port_text) if colon else default_port
        if not 0 < port < 65536:
            raise ValueError(port)
        if not host.strip():
            raise ValueError("no host")  # "" resolves to 0.0.0.0: this host, not a seed
        address = socket.gethostbyname(host)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"a seed is HOST or HOST:PORT, not {text!r} ({exc})") from exc
    return Seed(address, port)


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
    """Announces one node and tracks its peers, from a thread started by ``start``.

    ``on_events`` is called from the beacon thread with each batch of presence events, after the
    snapshot returned by ``peers`` has been updated.
    """

    def __init__(
        self,
        name: str,
        node_uuid: uuid_module.UUID,
        *,
        port: int = DEFAULT_PORT,
        broadcast: str | None = LOOPBACK_BROADCAST,
        seeds: Sequence[Seed] = (),
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
        self.targets = [(broadcast, port)] if broadcast else []
        self.targets += [(seed.host, seed.port) for seed in seeds]
        self.accept_from = accept_from
        self.seed_hosts = frozenset(seed.host for seed in seeds)  # answers from seeds get in too
        self.announce = announce
        self.interval = interval
        self.on_events = on_events
        self.stats: Counter[str] = Counter()
        self.table = PeerTable(node_uuid, expiry)
        # (table version, peers) replaced as one tuple, so a reader never pairs a version with
        # a peer list older than it
        self.snapshot: tuple[int, tuple[Peer, ...]] = (0, ())
        self._endpoints: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        self._seq = 0
        self._warned = False
        self._solicit_wanted = False
        self._last_solicit = -SOLICIT_GAP
        self._answers = RateLimit(ANSWER_BURST, ANSWER_BURST / interval)
        # the beacon thread opens, uses and closes the UDP socket: it has one owner
        self._service = ServiceThread(f"zmqkit-beacon:{name}", self._run)

    # -- called from the owner's thread ----------------------------------------------------------

    _sock: socket.socket  # the shared port: opened, used and closed by the beacon thread only
    _own: socket.socket  # the node's own port, which sends everything and gets the answers

    def start(self) -> None:
        """Start the thread, which opens the beacon port (shared with the host's other nodes).

        Raises:
            ConfigError: the port cannot be opened.
        """
        self._service.start()

    def _open(self, port: int, *, shared: bool) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(("", port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot open the beacon port {port}: {exc}") from exc
        return sock

    def solicit(self) -> None:
        """Ask every node the beacon reaches to answer now (from any thread; rate-limited).

        Sent by the beacon thread at once, or SOLICIT_GAP after the last solicit: calls in
        between share that one.
        """
        self._solicit_wanted = True
        self._wake()

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
        encode_beacon(BeaconKind.HELLO, self.name, self.uuid, self._seq + 1, endpoints, headers)
        self._endpoints = dict(endpoints)
        self._headers = dict(headers)
        self._seq += 1
        self._wake()

    def close(self, timeout: float = 2.0) -> None:
        """Say goodbye, stop the thread and join it (it closes its socket). Safe to call twice.

        From an event callback (the beacon thread itself) it only asks: the thread ends when
        the callback returns.
        """
        self._service.stop(timeout)

    def _wake(self) -> None:
        self._service.wake()  # before start: the thread reads the latest state when it starts

    # -- the beacon thread -----------------------------------------------------------------------

    def _run(self, service: ServiceThread) -> None:
        """Open the ports, then read, expire, announce, sleep until the next thing is due."""
        self._sock = self._open(self.port, shared=True)
        try:
            self._own = self._open(0, shared=False)
        except BaseException:
            self._sock.close()
            raise
        try:
            service.ready()
            self._serve(service)
        finally:
            self._own.close()
            self._sock.close()

    def _serve(self, service: ServiceThread) -> None:
        next_announce = time.monotonic()
        announced_seq = -1
        sockets = [self._sock.fileno(), self._own.fileno()]
        while not service.stopping:
            now = time.monotonic()
            # read what is waiting before expiring anyone: after this thread was starved of CPU,
            # a peer's fresh beacon may be sitting in the buffer
            read, received = self._receive(now)
            if self.announce and any(event.kind is EventKind.JOINED for event in received):
                next_announce = min(next_announce, now + random.uniform(0, ANSWER_DELAY))
            expired = self.table.expire(now)
            if read or expired:
                # even without events: every beacon moves a peer's last_seen, and the snapshot
                # must follow, or ages read from it go stale
                self._publish(received + expired)
            if self.announce and (now >= next_announce or announced_seq != self._seq):
                announced_seq = self._seq
                self._send(BeaconKind.HELLO)
                next_announce = now + self.interval
            next_expiry = self.table.next_expiry() or now + self.interval
            wake_at = min(next_announce if self.announce else next_expiry, next_expiry)
            if self._solicit_wanted:
                if now >= self._last_solicit + SOLICIT_GAP:
                    self._solicit_wanted = False
                    self._last_solicit = now
                    self._send(BeaconKind.SOLICIT)
                    self.stats["solicits"] += 1
                else:
                    wake_at = min(wake_at, self._last_solicit + SOLICIT_GAP)
            wakeup = service.wakeup.fileno()
            readable, _, _ = select.select(
                [*sockets, wakeup], [], [], max(0.0, wake_at - now)
            )
            if wakeup in readable:
                service.wakeup.take()
        if self.announce:
            self._send(BeaconKind.GOODBYE)

    def _publish(self, events: list[PeerEvent]) -> None:
        """Refresh the snapshot that ``peers`` reads, then hand the events to ``on_events``."""
        self.snapshot = (self.table.version, tuple(self.table.peers()))
        if events:
            self.on_events(events)

    def _receive(self, now: float) -> tuple[bool, list[PeerEvent]]:
        """Read the datagrams waiting (up to a batch on each socket); return whether any came,
        and the events."""
        events: list[PeerEvent] = []
        read = False
        for sock in (self._sock, self._own):
            for _ in range(MAX_DATAGRAMS_PER_WAKE):
                try:
                    datagram, (address, port) = sock.recvfrom(65536)
                    read = True
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP errors surfacing from an earlier send
                    self._drop("socket-error", f"{exc}")
                    continue
                events += self._take(datagram, address, port, now)
        return read, events

    def _take(self, datagram: bytes, address: str, port: int, now: float) -> list[PeerEvent]:
        """One datagram: checked, decoded, answered if it solicits, fed to the table."""
        self.stats["received"] += 1
        if not self._accepts(address):
            self._drop("foreign", f"a datagram from {address}, outside loopback")
            return []
        try:
            decoded = decode_discovery(datagram)
        except ProtocolError as exc:
            self._drop("malformed", f"{len(datagram)} bytes from {address}: {exc}")
            return []
        if len(decoded) == 2:
            return []  # a peer list: not taken yet
        kind, _, node_uuid = decoded[:3]
        if kind is BeaconKind.SOLICIT and node_uuid != self.uuid:
            self._answer(address, port, now)
        return self.table.apply(decoded, address, now, port)

    def _answer(self, address: str, port: int, now: float) -> None:
        """Send this node's HELLO to a solicitor's own port, within the answer budget."""
        if not self.announce or not self._answers.allow(now):
            self.stats["solicits-unanswered"] += 1
            return
        self._send(BeaconKind.HELLO, [(address, port)])

    def _accepts(self, address: str) -> bool:
        """Whether a datagram from ``address`` may be read: the scope's network or a seed."""
        if self.accept_from is None or address in self.seed_hosts:
            return True
        try:
            return ipaddress.IPv4Address(address) in self.accept_from
        except ValueError:
            return False

    def _send(self, kind: BeaconKind, targets: Sequence[tuple[str, int]] | None = None) -> None:
        if kind is BeaconKind.SOLICIT:  # only who asks: the answers carry the rest
            datagram = encode_beacon(kind, self.name, self.uuid, 0, {}, {})
        else:
            datagram = encode_beacon(
                kind, self.name, self.uuid, self._seq, self._endpoints, self._headers
            )
        for target in self.targets if targets is None else targets:
            try:
                self._own.sendto(datagram, target)
                self.stats["sent"] += 1
            except OSError as exc:
                self._drop("send-error", f"to {target[0]}:{target[1]}: {exc}")

    def _drop(self, reason: str, detail: str) -> None:
        self.stats[f"dropped-{reason}"] += 1
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(
            level, "beacon %s dropped %s (later drops are logged at debug level)", self.name, detail
        )

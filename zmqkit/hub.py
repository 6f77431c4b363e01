"""One beacon thread and one pair of UDP sockets per process and port, shared by its nodes.

Every node of a host binds the shared beacon port, so that each hears every broadcast; when
each node had sockets of its own, a host running 200 nodes read every datagram 200 times and
ran out of CPU. Here the nodes of one process share one ``BeaconHub``: it reads each datagram
once, decodes it once, and hands it to each of its nodes (``Member``), whose own logic (peer
table, contacts, what it says) stays per node.

Two sockets: the shared port, and a port of the process's own from which everything is sent.
Answers go to a datagram's source, so they reach exactly this process (unicast to the shared
port would reach only one socket of the host: ``SO_REUSEPORT`` hands each unicast datagram to
one). On the shared port the hub asks the kernel for each datagram's destination
(``IP_PKTINFO``, Linux), so that a node knows which peers it hears by broadcast and which only
by unicast. The hub's thread starts with its first node and ends with its last; it is named
``zmqkit-beacon:PORT`` and joined by the ``close`` of the last node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Protocol

import ifaddr

from .codec import BeaconFields, PeerList, decode_discovery
from .errors import ConfigError, ProtocolError
from .peers import PeerEvent
from .resolver import Resolver
from .service import ServiceThread

__all__ = ["BeaconHub", "Member", "Send"]

log = logging.getLogger("zmqkit.beacon")

MAX_DATAGRAMS_PER_WAKE = 1000  # under a flood, still get back to announcing and expiring
RECEIVE_BUFFER = 4 * 1024 * 1024  # asked for; the kernel caps it (net.core.rmem_max)
IP_PKTINFO = 8  # Linux: each datagram comes with its destination address (struct in_pktinfo)
PKTINFO_SPACE = socket.CMSG_SPACE(12)

Address = tuple[str, int]
Send = Callable[[bytes, Address], bool]


class Member(Protocol):
    """What the hub needs of a node's beacon (``zmqkit.beacon.Beacon``)."""

    port: int
    leaving: bool
    gone: threading.Event  # set by the hub once the node's goodbye is sent
    due: float  # when its next turn is due (monotonic)
    resolve_every: float  # seconds between two lookups of its seed names

    def accepts(self, host: str) -> bool:
        """Whether a datagram from ``host`` is for it (its scope, its seeds)."""

    def drop(self, reason: str, detail: str) -> None:
        """Count (and log, the first loudly) a datagram dropped for ``reason``."""

    def count(self, key: str) -> None:
        """Count one more ``key`` in its stats."""

    def seed_names(self) -> set[Address]:
        """Its seeds given by name, for the resolver."""

    def begin(self, now: float, hub: BeaconHub) -> None:
        """It has joined ``hub``: its first turn is due."""

    def receive(self, decoded: BeaconFields | PeerList, source: Address, broadcast: bool,
                now: float) -> list[PeerEvent]:
        """Take one decoded datagram from ``source``; return its presence events."""

    def resolved(self, name: Address, addresses: set[Address], now: float) -> None:
        """Seed ``name`` resolves to ``addresses`` now."""

    def tick(self, now: float) -> list[PeerEvent]:
        """Do what is due (announce, expire, solicit, exchange, probe); set ``due``."""

    def end(self) -> None:
        """It is leaving: say goodbye."""

    def deliver(self, events: list[PeerEvent]) -> None:
        """Hand events to its node, outside the hub's lock."""


class BeaconHub:
    """The beacon thread and sockets of this process on one port (see the module docstring).

    Nodes ``join`` and ``leave``; the hub's ``lock`` guards every member's state, which only
    the hub's thread changes (readers such as ``Node.peers`` take it for a moment).
    """

    _hubs: ClassVar[dict[int, BeaconHub]] = {}
    _registry: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.own_port = 0
        self.local_hosts, self.broadcasts = _local_addresses()
        self._members: list[Member] = []
        # handed to the thread under a lock of their own, so that a node joining (or a name
        # resolved) never waits for the thread's turn under ``lock``
        self._inbox = threading.Lock()
        self._joined: list[Member] = []  # added by join, begun by the thread
        self._resolved: list[tuple[Address, set[Address]]] = []  # from the resolver's thread
        self._resolver: Resolver | None = None
        self._closing = False
        self._service = ServiceThread(f"zmqkit-beacon:{port}", self._run)
        self._shared: socket.socket  # opened, used and closed by the hub's thread only
        self._own: socket.socket

    def __repr__(self) -> str:
        return f"<zmqkit.BeaconHub port {self.port}, {len(self._members)} nodes>"

    # -- nodes join and leave (any thread) -------------------------------------------------------

    @classmethod
    def join(cls, member: Member) -> BeaconHub:
        """The hub of ``member.port`` (started if it is the first), with ``member`` in it.

        Raises:
            ConfigError: the beacon port cannot be opened.
        """
        with cls._registry:
            hub = cls._hubs.get(member.port)
            if hub is None:
                hub = cls(member.port)
                hub._service.start()
                cls._hubs[member.port] = hub
            with hub._inbox:
                hub._joined.append(member)
            names = member.seed_names()
        if names:
            hub._resolve(names, every=member.resolve_every)
        hub.wake()
        return hub

    def leave(self, member: Member, timeout: float = 2.0) -> None:
        """Say ``member``'s goodbye and drop it; the last node's leave stops the thread.

        From the hub's own thread (an event callback closing its node) it only asks: the
        thread does it once the callback returns.
        """
        member.leaving = True
        self.wake()
        if self._service.is_current:
            return
        deadline = time.monotonic() + timeout
        if self._service.alive:
            member.gone.wait(timeout)
        if self._close_if_empty():
            self._service.stop(max(0.0, deadline - time.monotonic()))

    def _close_if_empty(self) -> bool:
        """With no node left, leave the registry (a node joining meanwhile keeps the hub)."""
        with BeaconHub._registry, self.lock, self._inbox:
            if not self._members and not self._joined:
                self._closing = True
                if BeaconHub._hubs.get(self.port) is self:
                    del BeaconHub._hubs[self.port]
            return self._closing

    def wake(self) -> None:
        """Wake the thread (something is due: a change to announce, a solicit)."""
        self._service.wake()

    def send(self, datagram: bytes, target: Address) -> str | None:
        """Send from the hub's own port (in the hub's thread); the error, if it failed."""
        try:
            self._own.sendto(datagram, target)
        except OSError as exc:
            return str(exc)
        return None

    def _resolve(self, names: set[Address], every: float) -> None:
        with self.lock:
            if self._resolver is None:
                self._resolver = Resolver(f"zmqkit-resolve:{self.port}", self._on_resolved)
                self._resolver.start()
        for host, port in names:
            self._resolver.add(host, port, every)

    def _on_resolved(self, host: str, port: int, addresses: set[Address]) -> None:
        with self._inbox:
            self._resolved.append(((host, port), addresses))
        self.wake()

    # -- the hub's thread ------------------------------------------------------------------------

    def _run(self, service: ServiceThread) -> None:
        self._shared = _open(self.port, shared=True)
        try:
            self._own = _open(0, shared=False)
        except BaseException:
            self._shared.close()
            raise
        self.own_port = self._own.getsockname()[1]
        try:
            service.ready()
            self._serve(service)
        finally:
            self._own.close()
            self._shared.close()
            if self._resolver is not None:
                self._resolver.close()

    def _serve(self, service: ServiceThread) -> None:
        sockets = [self._shared.fileno(), self._own.fileno(), service.wakeup.fileno()]
        while not service.stopping and not self._closing:
            now = time.monotonic()
            with self.lock:
                events = self._step(now)
                wake_at = min((member.due for member in self._members), default=now + 60.0)
                empty = not self._members
            for member, batch in events:
                member.deliver(batch)  # outside the lock: a callback may read the peers
            if empty and self._close_if_empty():
                break
            readable, _, _ = select.select(sockets, [], [], max(0.0, wake_at - time.monotonic()))
            if sockets[2] in readable:
                service.wakeup.take()

    def _step(self, now: float) -> list[tuple[Member, list[PeerEvent]]]:
        """One turn, under the lock: joins, datagrams, resolutions, timers, leaves."""
        self._absorb_joins(now)
        with self._inbox:
            resolved, self._resolved = self._resolved, []
        events: dict[int, list[PeerEvent]] = {}

        def add(member: Member, batch: list[PeerEvent]) -> None:
            if batch:
                events.setdefault(id(member), []).extend(batch)

        for sock in (self._shared, self._own):
            self._read(sock, now, add)
        for name, addresses in resolved:
            for member in self._members:
                if name in member.seed_names():
                    member.resolved(name, addresses, now)
        for member in self._members:
            if now >= member.due:
                add(member, member.tick(now))
        for member in [m for m in self._members if m.leaving]:
            member.end()
            self._members.remove(member)
            member.gone.set()
        by_id = {id(member): member for member in self._members}
        return [(by_id[key], batch) for key, batch in events.items() if key in by_id]

    def _absorb_joins(self, now: float) -> None:
        """Make the nodes that joined members, before the next datagram is read: one sent
        right after a node's start must reach it."""
        with self._inbox:
            joined, self._joined = self._joined, []
        for member in joined:
            self._members.append(member)
            member.begin(now, self)

    def _read(self, sock: socket.socket, now: float,
              add: Callable[[Member, list[PeerEvent]], None]) -> None:
        """Read what waits on ``sock`` (up to a batch); decode each datagram once for all."""
        shared = sock is self._shared
        for _ in range(MAX_DATAGRAMS_PER_WAKE):
            try:
                datagram, ancillary, _, (host, port) = sock.recvmsg(65536, PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing from an earlier send
                for member in self._members:
                    member.drop("socket-error", str(exc))
                continue
            if self._joined:  # looked at after the read: a node that joined before it was sent
                self._absorb_joins(now)
            takers = []
            for member in self._members:
                member.count("received")
                if member.accepts(host):
                    takers.append(member)
                else:
                    member.drop("foreign", f"a datagram from {host}, outside its scope")
            if not takers:
                continue
            try:
                decoded = decode_discovery(datagram)
            except ProtocolError as exc:
                for member in takers:
                    member.drop("malformed", f"{len(datagram)} bytes from {host}: {exc}")
                continue
            broadcast = shared and self._to_broadcast(ancillary)
            for member in takers:
                add(member, member.receive(decoded, (host, port), broadcast, now))

    def _to_broadcast(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        """Whether a datagram of the shared port was sent to a broadcast address. Without
        ``IP_PKTINFO`` (not Linux), every datagram of the shared port counts as broadcast."""
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
                return socket.inet_ntoa(data[8:12]) in self.broadcasts
        return True


def _forget_hubs_in_a_forked_child() -> None:
    """A forked child has none of its parent's threads: its nodes need hubs of their own."""
    BeaconHub._hubs = {}
    BeaconHub._registry = threading.Lock()


os.register_at_fork(after_in_child=_forget_hubs_in_a_forked_child)


def _open(port: int, *, shared: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):  # not Linux: no destination addresses
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(("", port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot open the beacon port {port}: {exc}") from exc
    return sock


def _local_addresses() -> tuple[frozenset[str], frozenset[str]]:
    """This host's IPv4 addresses (a peer list naming one with our port names us) and the
    broadcast addresses of its networks."""
    hosts, broadcasts = {"127.0.0.1"}, {"255.255.255.255", "127.255.255.255"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4:
                network = ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                hosts.add(str(ip.ip))
                if network.prefixlen < 31:
                    broadcasts.add(str(network.broadcast_address))
    return frozenset(hosts), frozenset(broadcasts)

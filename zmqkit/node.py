"""Node: a named identity on the network, its beacon, its endpoints and what it serves.

A node is a context manager, like a zenoh session: ``start`` (or ``with``) starts its beacon
thread; ``close`` (from any thread) closes every part still attached to it, newest first, each on
its own thread or loop, says goodbye and joins every thread it started. Nothing runs before
``start`` and nothing is left running after ``close``.

Parts get their sockets from the node: ``server_socket`` (bound on ``node.host``, a CURVE server
whenever the node has keys) and ``client_socket`` (whose ``connect_peer`` applies the node's keys
to each peer), so no pattern can forget security. They ``advertise`` what they serve by role
("rpc", "pub", ...); peers read it from ``node.peers(name)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid as uuid_module
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from typing import Any, Protocol

from .beacon import (
    LOOPBACK_BROADCAST,
    LOOPBACK_HOST,
    LOOPBACK_NETWORK,
    Beacon,
    Scope,
    Seed,
    default_port,
    interface_addresses,
    parse_seed,
)
from .codec import MAX_NAME_BYTES
from .deadline import Deadline
from .errors import ClosedError, ConfigError, PeerNotFound
from .introspect import Introspection, describe_part, identity, peer_rows
from .peers import Peer, PeerEvent
from .security import CURVE_HEADER, Keypair, Keyring, Security
from .sockets import DEFAULT_OPTIONS, AsyncSocket, Socket, SocketKind, SocketOptions
from .zap import ZapHandler

__all__ = ["Closeable", "Node"]

log = logging.getLogger("zmqkit.node")

EVENT_BACKLOG = 10_000  # a consumer that never reads loses the oldest events, not memory
QUIET = 0.2  # gather: answers to a solicit come within milliseconds; this long without one ends it


def _utf8_size(name: object) -> int:
    """The UTF-8 size of ``name``; 0 for what is not text or has no UTF-8 form (lone surrogates)."""
    if not isinstance(name, str):
        return 0
    try:
        return len(name.encode())
    except UnicodeEncodeError:
        return 0


class Closeable(Protocol):
    """What a node can close: every part attached to it."""

    def close(self) -> None:
        """Close the part; idempotent, and callable from any thread."""


class Node:
    """A named node: ``with Node("calc") as node: ...``.

    Args:
        name: the service name peers find this node by; several nodes may share it.
        port: the UDP beacon port shared by every node of one network (default:
            ``$ZMQKIT_PORT`` if set, else 47474; nodes on other ports never meet).
        scope: ``"localhost"`` (default: nothing leaves this host) or ``"subnet"``.
        interface: the network interface for ``subnet`` scope.
        seeds: ``HOST[:PORT]`` strings that also get unicast beacons: every address a name
            resolves to, looked up again every few intervals (a name that does not resolve
            yet is retried, never an error). Nodes that hear a unicast beacon answer it and
            pass on the peers they know, so one seed is enough (docs/discovery.md).
        interval: seconds between beacons.
        expiry: seconds of silence after which a peer is declared gone.
        headers: small text map carried in every beacon.
        announce: False for a node that only listens (a CLI looking around) and serves nothing.
        host: the address to bind endpoints on, overriding what the scope implies.
        keys: this node's CURVE keypair (or the path given to ``zmqkit keys new``): everything
            it serves is encrypted and admits only peers in ``keyring``.
        keyring: the public keys this node accepts (a directory of ``*.pub`` files or a list);
            needed with ``keys``.
    """

    def __init__(
        self,
        name: str,
        *,
        port: int | None = None,
        scope: str | Scope = Scope.LOCALHOST,
        interface: str | None = None,
        seeds: Iterable[str | Seed] = (),
        interval: float = 1.0,
        expiry: float = 3.0,
        headers: Mapping[str, str] | None = None,
        announce: bool = True,
        host: str | None = None,
        keys: Keypair | str | os.PathLike[str] | None = None,
        keyring: Keyring | str | os.PathLike[str] | Iterable[str] | None = None,
    ) -> None:
        if not 0 < _utf8_size(name) <= MAX_NAME_BYTES:
            raise ConfigError(f"a node name is 1 to {MAX_NAME_BYTES} bytes of text, not {name!r}")
        try:
            self.scope = Scope(scope)
        except ValueError as exc:
            raise ConfigError(f"scope is 'localhost' or 'subnet', not {scope!r}") from exc
        if self.scope is Scope.SUBNET:
            if not interface:
                raise ConfigError("subnet scope needs an interface, e.g. interface='eth0'")
            address, broadcast, network = interface_addresses(interface)
            accept_from = None  # a subnet node hears nodes from anywhere: seeds, routed peers
        else:
            address, broadcast, network = LOOPBACK_HOST, LOOPBACK_BROADCAST, LOOPBACK_NETWORK
            accept_from = LOOPBACK_NETWORK
        self.name = name
        self.uuid = uuid_module.uuid4()
        self.host = host or address
        self.port = port = default_port() if port is None else port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"a beacon port is a number from 1 to 65535, not {port!r}")
        self.headers = dict(headers or {})
        self.security: Security | None = None
        if keys is not None or keyring is not None:
            if keys is None or keyring is None:
                raise ConfigError("CURVE needs both keys and a keyring (zmqkit keys new PATH)")
            keypair = keys if isinstance(keys, Keypair) else Keypair.load(keys)
            ring = keyring if isinstance(keyring, Keyring) else Keyring.load(keyring)
            self.security = Security(keypair, ring)
            self.headers[CURVE_HEADER] = keypair.public
        self.endpoints: dict[str, str] = {}
        self._attached: list[Closeable] = []
        self._attaching = threading.Lock()  # parts attach and detach from any thread
        self._listeners: list[Callable[[list[PeerEvent]], None]] = []
        self._changed = threading.Condition()
        self._announcing = threading.Lock()  # parts in several threads advertise on one node
        self._state = "new"
        self._announce = announce
        self._started = 0.0
        self._introspection: Introspection | None = None  # answers zmqkit.introspect
        self._beacon = Beacon(
            name,
            self.uuid,
            port=port,
            broadcast=broadcast,
            seeds=[s if isinstance(s, Seed) else parse_seed(s, port) for s in seeds],
            network=network,
            accept_from=accept_from,
            announce=announce,
            interval=interval,
            expiry=expiry,
            on_events=self._dispatch,
        )

    def __repr__(self) -> str:
        return f"<zmqkit.Node {self.name!r} {self.uuid.hex[:8]} {self._state}>"

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Node:
        """Start the beacon thread: announce now, then every interval.

        Raises:
            EncodeError: the headers cannot go in a beacon (not text, or too large); the node
                stays unstarted.
        """
        if self._state != "new":
            raise ClosedError(f"{self!r} cannot start twice")
        self._beacon.advertise(self.endpoints, self.headers)
        if self.security is not None:
            self.security.domain = f"zmqkit:{self.uuid.hex}"
            own = Keyring([self.security.keypair.public])  # a node may always talk to itself
            ZapHandler.acquire(self.security.domain, self.security.keyring | own)
        self._state = "starting"  # parts may make sockets now; nothing is announced yet
        self._started = time.monotonic()
        try:
            if self._announce:  # first, so that the first beacon names its endpoint
                self._introspection = Introspection(self)
            self._beacon.start()
        except BaseException:
            if self._introspection is not None:
                self._introspection.close()
                self._introspection = None
            if self.security is not None:
                ZapHandler.release(self.security.domain)
            self._state = "new"
            raise
        self._state = "running"
        if not self._beacon.announce:
            self.solicit()  # a node that only looks around wants to see the mesh now
        return self

    def close(self) -> None:
        """Close every part still attached (newest first), say goodbye, join the beacon thread.

        Callable from any thread: each part closes itself on its own thread or loop.
        """
        with self._attaching:
            if self._state == "closed":
                return
            self._state = "closed"
        while True:
            with self._attaching:
                if not self._attached:
                    break
                part = self._attached.pop()
            try:
                part.close()
            except Exception:  # one broken part must not keep the rest open; logged, not hidden
                log.exception("closing %r failed", part)
        if self._introspection is not None:
            self._introspection.close()
        self._beacon.close()
        if self.security is not None:
            ZapHandler.release(self.security.domain)
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> Node:
        return self.start()

    async def __aexit__(self, *_: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """True between ``start`` and ``close``."""
        return self._state == "running"

    def attach(self, part: Closeable) -> None:
        """Close ``part`` when the node closes (every pattern's parts attach themselves).

        Raises:
            ClosedError: the node is closed (or closing).
        """
        with self._attaching:
            if self._state == "closed":
                raise ClosedError(f"{self!r} is closed")
            self._attached.append(part)

    def detach(self, part: Closeable) -> None:
        """Forget ``part`` (it closed by itself)."""
        with self._attaching, contextlib.suppress(ValueError):
            self._attached.remove(part)

    @property
    def parts(self) -> list[Closeable]:
        """The parts attached now, oldest first."""
        with self._attaching:
            return list(self._attached)

    # -- sockets for the parts ------------------------------------------------------------------

    def server_socket(self, kind: SocketKind, *, options: SocketOptions = DEFAULT_OPTIONS,
                      asyncio: bool = False) -> Socket:
        """A socket bound on ``node.host`` (a port the kernel picks) for peers to connect to.

        It is a CURVE server admitting only the keyring whenever the node has keys. The socket
        belongs to the calling thread (``asyncio``: to the calling thread's event loop);
        ``sock.endpoint`` is what to ``advertise``.

        Raises:
            ClosedError: the node is not running (its keys are registered by ``start``).
            ConfigError: ``node.host`` cannot be bound.
        """
        if self._state not in ("starting", "running"):
            raise ClosedError(f"{self!r} is not running; start it first")
        sock = self.client_socket(kind, options=options, asyncio=asyncio)
        try:
            if self.security is not None:
                sock.serve_curve(self.security)
            sock.bind(self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def client_socket(self, kind: SocketKind, *, options: SocketOptions = DEFAULT_OPTIONS,
                      routing_id: bytes | None = None, asyncio: bool = False) -> Socket:
        """A socket that connects to peers with ``sock.connect_peer(peer, role)``.

        ``connect_peer`` applies this node's keys: with keys, a peer must present a key from
        the keyring; without, a peer that requires CURVE is refused at once. The socket belongs
        to the calling thread (``asyncio``: to the calling thread's event loop).
        """
        make = AsyncSocket if asyncio else Socket
        return make(kind, options=options, routing_id=routing_id, security=self.security)

    # -- what this node says about itself ------------------------------------------------------

    def advertise(self, role: str, endpoint: str) -> None:
        """Announce that this node serves ``role`` (e.g. "rpc") at ``endpoint``.

        Raises:
            EncodeError: ``role`` or ``endpoint`` is not text, or the beacon would be too large;
                what the node announces is then unchanged.
        """
        with self._announcing:
            self._beacon.advertise({**self.endpoints, role: endpoint}, self.headers)
            self.endpoints[role] = endpoint

    def withdraw(self, role: str) -> None:
        """Stop announcing ``role``."""
        with self._announcing:
            if self.endpoints.pop(role, None) is not None:
                self._beacon.advertise(self.endpoints, self.headers)

    def set_header(self, key: str, value: str | None) -> None:
        """Set (or with None, remove) one beacon header; peers see an UPDATED event.

        Raises:
            EncodeError: ``key`` or ``value`` is not text, or the beacon would be too large;
                the headers are then unchanged.
        """
        with self._announcing:
            headers = {k: v for k, v in self.headers.items() if k != key}
            if value is not None:
                headers[key] = value
            self._beacon.advertise(self.endpoints, headers)
            self.headers.clear()
            self.headers.update(headers)

    # -- what this node knows about others -----------------------------------------------------

    @property
    def peers_version(self) -> int:
        """Grows whenever a peer joins, changes or goes: a cheap "look again" signal."""
        return self._beacon.version

    def peers(self, name: str | None = None, *, role: str | None = None) -> list[Peer]:
        """The peers discovered so far: all, or those called ``name``, or serving ``role``."""
        return [
            peer
            for peer in self._beacon.snapshot[1]
            if (name is None or peer.name == name) and (role is None or role in peer.endpoints)
        ]

    def stats(self) -> dict[str, int]:
        """Beacon counters: sent, received, and dropped-* by reason."""
        return dict(self._beacon.stats)

    def report(self) -> dict[str, Any]:
        """How this node is doing, as it answers ``zmqkit.introspect`` (docs/protocol.md): who
        and where it is, each part's ``describe()``, its peers and its beacon counters. Any
        thread may call it."""
        introspection = self._introspection
        return {
            **identity(self.name, self.uuid.hex, self._started),
            "endpoints": dict(self.endpoints),
            "parts": [describe_part(part) for part in self.parts],
            "peers": peer_rows(self.peers(), time.monotonic()),
            "beacon": self.stats(),
            "introspection": dict(introspection.stats) if introspection is not None else {},
        }

    def solicit(self) -> None:
        """Ask every node this one's beacon reaches to answer now, instead of at its next beacon.

        Answers (their HELLOs, by unicast) arrive within a round trip. Safe from any thread and
        cheap to call often: the node sends at most one solicit per 0.1 s, and calls in between
        share the next one. ``wait_for`` and ``gather`` solicit by themselves.
        """
        if self.running:
            self._beacon.solicit()

    def gather(self, timeout: float = 1.0, *, quiet: float = QUIET) -> list[Peer]:
        """Solicit answers and return the peers once the answers stop arriving.

        Returns when ``quiet`` seconds have passed without a new peer (counted from the
        solicit, so at least ``quiet``), or at ``timeout`` at the latest: for a command that
        lists the mesh, ``timeout`` is a maximum, not a wait.

        Raises:
            ClosedError: the node is not running.
        """
        deadline = Deadline.after(timeout)
        self._check_running()
        self.solicit()
        last_change, seen = Deadline.after(quiet), self.peers_version
        with self._changed:
            while not deadline.expired() and not last_change.expired():
                self._check_running()
                self._changed.wait(min(deadline.remaining(), last_change.remaining()))
                if self.peers_version != seen:
                    last_change, seen = Deadline.after(quiet), self.peers_version
        return self.peers()

    def _check_running(self) -> None:
        if not self.running:
            raise ClosedError(f"{self!r} is not running")

    def wait_for(
        self, name: str, timeout: float = 5.0, *, count: int = 1, role: str | None = None
    ) -> list[Peer]:
        """Wait until ``count`` peers called ``name`` (and serving ``role``) are known; return them.

        Solicits answers first when they are not known yet, so that a peer already running is
        found within a round trip rather than at its next beacon.

        Raises:
            PeerNotFound: fewer than ``count`` appeared within ``timeout`` seconds.
        """
        deadline = Deadline.after(timeout)
        if len(self.peers(name, role=role)) < count:
            self.solicit()
        with self._changed:
            while len(found := self.peers(name, role=role)) < count:
                if not self.running:
                    raise ClosedError(f"{self!r} is not running")
                if deadline.expired():
                    raise PeerNotFound(self._not_found(name, role, count, len(found), timeout))
                self._changed.wait(deadline.remaining())
        return found

    async def wait_for_async(
        self, name: str, timeout: float = 5.0, *, count: int = 1, role: str | None = None
    ) -> list[Peer]:
        """``wait_for`` for asyncio code: waits without blocking the loop."""
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_events(_: list[PeerEvent]) -> None:
            loop.call_soon_threadsafe(changed.set)

        deadline = Deadline.after(timeout)
        self._listeners.append(on_events)
        if len(self.peers(name, role=role)) < count:
            self.solicit()
        try:
            while len(found := self.peers(name, role=role)) < count:
                if not self.running:
                    raise ClosedError(f"{self!r} is not running")
                try:
                    await asyncio.wait_for(changed.wait(), deadline.remaining())
                except asyncio.TimeoutError:
                    raise PeerNotFound(
                        self._not_found(name, role, count, len(found), timeout)
                    ) from None
                changed.clear()
            return found
        finally:
            self._listeners.remove(on_events)

    def _not_found(
        self, name: str, role: str | None, count: int, found: int, timeout: float
    ) -> str:
        wanted = f"{count} peers called {name!r}" if count > 1 else f"a peer called {name!r}"
        wanted += f" serving {role!r}" if role else ""
        return f"{wanted} not found in {timeout:g} s (found {found}; beacon port {self.port})"

    def on_event(self, callback: Callable[[PeerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every presence event; returns a function that unsubscribes.

        The callback runs in the beacon thread: keep it short and do not block in it.
        """

        def listener(events: list[PeerEvent]) -> None:
            for event in events:
                callback(event)

        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def events(self, duration: float) -> Generator[PeerEvent, None, None]:
        """Yield presence events as they happen, for ``duration`` seconds, then stop."""
        deadline = Deadline.after(duration)
        backlog: deque[PeerEvent] = deque(maxlen=EVENT_BACKLOG)
        arrived = threading.Condition()

        def listener(events: list[PeerEvent]) -> None:
            with arrived:
                backlog.extend(events)
                arrived.notify()

        self._listeners.append(listener)
        try:
            while True:
                with arrived:
                    arrived.wait_for(lambda: backlog or deadline.expired(), deadline.remaining())
                    pending = list(backlog)
                    backlog.clear()
                yield from pending
                if deadline.expired() and not pending:
                    return
        finally:
            self._listeners.remove(listener)

    async def events_async(self) -> AsyncGenerator[PeerEvent, None]:
        """Presence events for asyncio code, until the consumer stops iterating.

        Bound it with ``asyncio.timeout`` (or break out); events a slow consumer has not taken
        beyond a backlog of 10,000 are dropped, oldest first.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[PeerEvent] = asyncio.Queue()

        def put(events: list[PeerEvent]) -> None:
            for event in events:
                if queue.qsize() >= EVENT_BACKLOG:
                    queue.get_nowait()
                queue.put_nowait(event)

        def listener(events: list[PeerEvent]) -> None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop is closed
                loop.call_soon_threadsafe(put, events)

        self._listeners.append(listener)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(listener)

    def _dispatch(self, events: list[PeerEvent]) -> None:
        """Called in the beacon thread with each batch of events."""
        with self._changed:
            self._changed.notify_all()
        for listener in list(self._listeners):
            try:
                listener(events)
            except Exception:  # a user's callback must not stop discovery
                log.exception("presence event callback %r failed", listener)

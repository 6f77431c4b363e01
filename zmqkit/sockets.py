"""Socket blocks: the one place that creates ZeroMQ sockets and sets their options.

``Socket`` is for threads (REQ/REP, DEALER/ROUTER, PUB/SUB alike) and ``AsyncSocket`` for an
asyncio loop. Both apply ``SocketOptions`` (short linger, a maximum message size, high-water
marks, heartbeats), both take a timeout on every receive, and both belong to the thread that
made them: a second thread gets ``WrongThread`` instead of corrupting the socket. ``Poller``
waits on several sockets (and ``Wakeup``s) at once.

Patterns get their sockets from ``Node.server_socket`` and ``Node.client_socket``, which apply
the node's CURVE keys: a server socket is a CURVE server whenever the node has keys, and
``connect_peer`` checks a peer's key against the keyring before it connects. Nothing outside this
module touches a pyzmq socket or a ZeroMQ constant.

ZeroMQ errors are translated: ``zmq.Again`` becomes ``Timeout``, a closed socket or context
becomes ``ClosedError``, anything else ``BrokenError`` with the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import itertools
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from .codec import DEFAULT_MAX_MESSAGE_SIZE
from .deadline import Deadline, check_timeout
from .errors import BrokenError, ClosedError, ConfigError, Timeout, WrongThread, ZmqkitError
from .security import CURVE_HEADER, Security, check_plain_peer
from .wakeup import Wakeup

if TYPE_CHECKING:
    from .peers import Peer

__all__ = [
    "AsyncSocket",
    "Poller",
    "Socket",
    "SocketKind",
    "SocketOptions",
    "format_endpoint",
    "open_sockets",
    "translate_zmq_error",
]


class SocketKind(enum.IntEnum):
    """The ZeroMQ socket types zmqkit uses (the values are ZeroMQ's own)."""

    PAIR = zmq.PAIR
    PUB = zmq.PUB
    SUB = zmq.SUB
    XPUB = zmq.XPUB  # a PUB that also reads its subscribers' subscriptions (groups' handshake)
    REQ = zmq.REQ
    REP = zmq.REP
    DEALER = zmq.DEALER
    ROUTER = zmq.ROUTER
    PULL = zmq.PULL
    PUSH = zmq.PUSH

_open: weakref.WeakSet[Socket] = weakref.WeakSet()
_monitors = itertools.count(1)  # a name for each socket's monitor endpoint


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Options applied to every socket the blocks create.

    The defaults never let a socket hang a process: close waits at most ``linger`` seconds for
    unsent messages, a send blocked by a full queue gives up after ``send_timeout`` seconds, and
    a silent TCP peer is dropped after ``heartbeat_timeout`` seconds.
    """

    linger: float = 0.2
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    send_hwm: int = 10_000
    recv_hwm: int = 10_000
    send_timeout: float = 5.0
    immediate: bool = False
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    reconnect_interval: float = 0.1
    reconnect_interval_max: float = 2.0


DEFAULT_OPTIONS = SocketOptions()


def format_endpoint(host: str, port: int | str) -> str:
    """``tcp://host:port``, with IPv6 hosts in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def open_sockets() -> list[Socket]:
    """The sockets made by these blocks that are still open (for leak checks in tests)."""
    return [sock for sock in list(_open) if not sock.closed]


def translate_zmq_error(exc: zmq.ZMQError, doing: str) -> ZmqkitError:
    """The zmqkit error for a ZeroMQ error; raise it ``from exc``."""
    if isinstance(exc, zmq.Again):
        return Timeout(f"timed out {doing}")
    if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
        return ClosedError(f"socket closed while {doing}")
    return BrokenError(f"{doing} failed: {exc}")


MAX_WAIT_MS = 2**31 - 1  # ZeroMQ's timeouts are C ints: a longer wait is cut to about 24.8 days


def _milliseconds(timeout: float) -> int:
    """A timeout in whole milliseconds, rounded up (at most ZeroMQ's longest wait).

    Raises:
        ConfigError: not a finite number of seconds >= 0 (every wait in zmqkit is finite).
    """
    return min(math.ceil(check_timeout(timeout) * 1000), MAX_WAIT_MS)


def _configure(sock: zmq.Socket[Any], options: SocketOptions) -> None:
    sock.linger = int(options.linger * 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_size)
    sock.sndhwm = options.send_hwm
    sock.rcvhwm = options.recv_hwm
    sock.sndtimeo = int(options.send_timeout * 1000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, int(options.heartbeat_interval * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(options.heartbeat_timeout * 1000))
    sock.setsockopt(zmq.RECONNECT_IVL, int(options.reconnect_interval * 1000))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(options.reconnect_interval_max * 1000))
    if options.immediate:
        sock.immediate = True


class Socket:
    """A ZeroMQ socket with safe defaults, used only by the thread that created it.

    ``raw`` is the pyzmq socket; it belongs to this module (and tests), never to the patterns.
    ``security`` is the CURVE policy ``connect_peer`` applies (None: plaintext peers only).
    """

    def __init__(
        self,
        kind: int,
        *,
        options: SocketOptions = DEFAULT_OPTIONS,
        routing_id: bytes | None = None,
        context: zmq.Context[Any] | None = None,
        security: Security | None = None,
    ) -> None:
        self.kind = SocketKind(kind)
        self.options = options
        self.security = security
        self.raw: zmq.Socket[Any] = (context or zmq.Context.instance()).socket(kind)
        try:
            _configure(self.raw, options)
            if routing_id is not None:
                self.raw.routing_id = routing_id
        except zmq.ZMQError as exc:
            self.raw.close(linger=0)
            raise translate_zmq_error(exc, f"configuring a {self.kind.name} socket") from exc
        self.owner = threading.get_ident()
        self._rcvtimeo = -1  # milliseconds, as set on the socket
        self._timeout = math.nan  # seconds, as last asked for (NaN equals nothing)
        self.endpoints: list[str] = []
        self._monitor: zmq.Socket[Any] | None = None  # see watch_drops
        _open.add(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ", ".join(self.endpoints) or "unbound"
        return f"<zmqkit.Socket {self.kind.name} {state}>"

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether the socket is closed."""
        return bool(self.raw.closed)

    @property
    def endpoint(self) -> str:
        """The first endpoint this socket is bound on ("" if it is not bound)."""
        return self.endpoints[0] if self.endpoints else ""

    def check_owner(self) -> None:
        """Raise ``WrongThread`` unless called from the thread that created the socket."""
        if threading.get_ident() != self.owner:
            raise WrongThread(f"{self!r} belongs to another thread; make one socket per thread")
        if self.raw.closed:
            raise ClosedError(f"{self!r} is closed")

    def bind(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind on ``host`` (port 0: a free port chosen by the kernel) and return the endpoint.

        Raises:
            ConfigError: the address cannot be bound (in use, or not an address of this host).
        """
        return self.bind_endpoint(format_endpoint(host, port or "*"))

    def bind_endpoint(self, endpoint: str) -> str:
        """Bind on a full endpoint (``inproc://name``, ``tcp://host:port``) and return it.

        Raises:
            ConfigError: it cannot be bound.
        """
        self.check_owner()
        try:
            if "[" in endpoint:
                self.raw.ipv6 = True
            self.raw.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot bind {endpoint}: {exc}") from exc
        bound = self.raw.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoints.append(bound)
        return bound

    def unbind(self, endpoint: str) -> None:
        """Stop listening on ``endpoint``; quietly nothing if it is not bound."""
        self._undo(self.raw.unbind, endpoint, "unbinding")
        if endpoint in self.endpoints:
            self.endpoints.remove(endpoint)

    def connect(self, endpoint: str) -> None:
        """Connect to ``endpoint`` (ZeroMQ reconnects by itself if the peer goes away).

        Raises:
            ConfigError: the endpoint is malformed.
        """
        self.check_owner()
        try:
            if "[" in endpoint:
                self.raw.ipv6 = True
            self.raw.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot connect to {endpoint!r}: {exc}") from exc

    def disconnect(self, endpoint: str) -> None:
        """Drop the connection to ``endpoint``; quietly does nothing if it is not connected."""
        self._undo(self.raw.disconnect, endpoint, "disconnecting")

    def _undo(self, operation: Callable[[str], None], endpoint: str, doing: str) -> None:
        """Unbind or disconnect ``endpoint``; one that was never there is not an error."""
        self.check_owner()
        try:
            operation(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno != errno.ENOENT:
                raise translate_zmq_error(exc, f"{doing} {endpoint}") from exc

    def watch_drops(self) -> None:
        """Note the connections ZeroMQ drops from now on, for ``dropped``.

        ZeroMQ reconnects by itself after a peer goes away, but not after a protocol error on
        the connection (a frame over ``max_message_size`` is one): a part that must stay
        connected asks ``dropped`` and connects those endpoints again.
        """
        self.check_owner()
        if self._monitor is not None:
            return
        address = f"inproc://zmqkit-drops-{next(_monitors)}"
        self.raw.monitor(address, zmq.EVENT_DISCONNECTED)
        monitor = self.raw.context.socket(zmq.PAIR)
        monitor.linger = 0
        monitor.connect(address)
        self._monitor = monitor

    def dropped(self) -> list[str]:
        """The endpoints whose connection dropped since the last look (after ``watch_drops``),
        as they were given to ``connect``; never waits."""
        monitor = self._monitor
        if monitor is None or not int(monitor.getsockopt(_EVENTS)) & _POLLIN:
            return []
        endpoints: list[str] = []
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(_NOBLOCK))
            except zmq.Again:
                return endpoints
            endpoints.append(event["endpoint"].decode())

    def connect_peer(self, peer: Peer, role: str) -> str:
        """Connect to what ``peer`` serves as ``role``, under this socket's CURVE policy.

        With keys, the peer must present a key from the keyring and the connection is
        encrypted; without, a peer that requires CURVE is refused now rather than after a
        silent handshake failure.

        Returns:
            The endpoint connected to.

        Raises:
            SecurityError: the peer's key is refused, or one side has keys and the other none.
            ConfigError: the peer does not serve ``role``, or its endpoint is malformed.
        """
        self.check_owner()
        endpoint = peer.endpoints.get(role)
        if not isinstance(endpoint, str):
            raise ConfigError(f"{peer.name} ({peer.uuid.hex[:8]}) does not serve {role!r}")
        self.secure_for(peer)
        self.connect(endpoint)
        return endpoint

    def secure_for(self, peer: Peer) -> None:
        """Set the CURVE options for the next ``connect`` to ``peer`` (or refuse it).

        Raises:
            SecurityError: as for ``connect_peer``.
        """
        key = peer.headers.get(CURVE_HEADER)
        who = f"{peer.name} ({peer.uuid.hex[:8]})"
        if self.security is None:
            check_plain_peer(key, who)
            return
        server_key = self.security.check_server_key(key, who)
        self._set_options(
            (zmq.CURVE_SERVERKEY, server_key.encode()),
            (zmq.CURVE_SECRETKEY, self.security.keypair.secret.encode()),
            (zmq.CURVE_PUBLICKEY, self.security.keypair.public.encode()),
        )

    def serve_curve(self, security: Security) -> None:
        """Before binding: accept only CURVE clients whose key ``security``'s keyring holds."""
        self.check_owner()
        self.security = security
        self._set_options(
            (zmq.CURVE_SERVER, 1),
            (zmq.CURVE_SECRETKEY, security.keypair.secret.encode()),
            (zmq.CURVE_PUBLICKEY, security.keypair.public.encode()),
            (zmq.ZAP_DOMAIN, security.domain.encode()),
            # without this, libzmq admits every CURVE client while no ZAP handler is bound (its
            # "encryption without authentication" legacy mode): fail closed instead
            (zmq.ZAP_ENFORCE_DOMAIN, 1),
        )

    def _set_options(self, *options: tuple[int, int | bytes]) -> None:
        try:
            for option, value in options:
                self.raw.setsockopt(option, value)
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"configuring {self.kind.name}") from exc

    def subscribe(self, prefix: bytes) -> None:
        """SUB only: receive the messages that start with ``prefix`` (b"" for all)."""
        self.check_owner()
        self._set_options((zmq.SUBSCRIBE, prefix))

    def unsubscribe(self, prefix: bytes) -> None:
        """SUB only: undo one ``subscribe(prefix)``."""
        self.check_owner()
        self._set_options((zmq.UNSUBSCRIBE, prefix))

    @property
    def readable(self) -> bool:
        """Whether a message is queued now (no wait)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        return bool(int(self.raw.getsockopt(_EVENTS)) & _POLLIN)

    @property
    def writable(self) -> bool:
        """Whether a send would not block now (no wait)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        return bool(int(self.raw.getsockopt(_EVENTS)) & _POLLOUT)

    def try_send(self, frame: bytes, *, more: bool = False) -> bool:
        """Send one frame if it can go at once; False when it would block (queue full, or no
        connection yet with ``immediate``)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        try:
            self.raw.send(frame, _NOBLOCK | _SNDMORE if more else _NOBLOCK,
                          copy=len(frame) < 65536)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"sending on {self.kind.name}") from exc
        return True

    def try_send_multipart(self, frames: list[bytes]) -> bool:
        """Send a multipart message if it can go at once; False when it would block."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        send = self.raw.send  # frame by frame: pyzmq's send_multipart checks each in Python
        try:
            for frame in frames[:-1]:
                send(frame, _NOBLOCK | _SNDMORE, copy=len(frame) < 65536)
            send(frames[-1], _NOBLOCK, copy=len(frames[-1]) < 65536)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"sending on {self.kind.name}") from exc
        return True

    def try_recv(self) -> bytes | None:
        """One queued frame, or None when nothing is queued (never waits)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        try:
            return self.raw.recv(_NOBLOCK)  # type: ignore[no-any-return]
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"receiving on {self.kind.name}") from exc

    def try_recv_multipart(self) -> list[bytes] | None:
        """One queued multipart message, or None when nothing is queued (never waits)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        raw = self.raw
        try:
            frames = [raw.recv(_NOBLOCK)]
            while raw.getsockopt(_RCVMORE):  # the rest is here: a message arrives whole
                frames.append(raw.recv(_NOBLOCK))
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"receiving on {self.kind.name}") from exc
        return frames

    def try_recv_many(self, limit: int) -> Iterator[bytes]:
        """Up to ``limit`` queued frames, oldest first, each received when the loop that takes
        them asks for it; none when nothing is queued (never waits). ``try_recv`` for a loop
        that drains: one owner check for all of them (here, before the first)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        return self._queued(limit)

    def _queued(self, limit: int) -> Iterator[bytes]:
        recv = self.raw.recv
        try:
            for _ in range(limit):
                yield recv(_NOBLOCK)
        except zmq.Again:
            return
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"receiving on {self.kind.name}") from exc

    def poll_writable(self, timeout: float) -> bool:
        """True when a send would not block, after waiting at most ``timeout`` seconds."""
        self.check_owner()
        return bool(self.raw.poll(_milliseconds(timeout), zmq.POLLOUT))

    def send(self, frame: bytes, *, more: bool = False) -> None:
        """Send one frame; blocks at most ``options.send_timeout`` when the queue is full."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        try:
            self.raw.send(frame, zmq.SNDMORE if more else 0, copy=len(frame) < 65536)
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"sending on {self.kind.name}") from exc

    def send_multipart(self, frames: list[bytes]) -> None:
        """Send a multipart message; blocks at most ``options.send_timeout``."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        send = self.raw.send
        try:
            for frame in frames[:-1]:
                send(frame, _SNDMORE, copy=len(frame) < 65536)
            send(frames[-1], 0, copy=len(frames[-1]) < 65536)
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"sending on {self.kind.name}") from exc

    def send_each(self, frames: list[bytes]) -> None:
        """Send each of ``frames`` as a message of its own; each blocks at most
        ``options.send_timeout``. ``send`` for a loop of frames: one owner check, and pyzmq's
        plain send (its wrapper adds only draft socket types' options, and a third of the
        cost of a small frame)."""
        if threading.get_ident() != self.owner:
            self.check_owner()
        send, raw = _PLAIN_SEND, self.raw
        try:
            for frame in frames:
                send(raw, frame, 0, len(frame) < 65536)
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"sending on {self.kind.name}") from exc

    def _wait_for(self, timeout: float) -> None:
        """Set the receive timeout to ``timeout`` seconds (the option is touched only when the
        value changes: a loop that receives with the same timeout pays nothing for it)."""
        milliseconds = _milliseconds(timeout)
        if milliseconds != self._rcvtimeo:
            self.raw.rcvtimeo = milliseconds
            self._rcvtimeo = milliseconds
        self._timeout = timeout

    def recv(self, timeout: float) -> bytes:
        """Receive one frame, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: nothing arrived in time.
        """
        if threading.get_ident() != self.owner:
            self.check_owner()
        try:
            if timeout != self._timeout:
                self._wait_for(timeout)
            return self.raw.recv()  # type: ignore[no-any-return]
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"receiving on {self.kind.name}") from exc

    def recv_multipart(self, timeout: float) -> list[bytes]:
        """Receive one multipart message, waiting at most ``timeout`` seconds.

        Frame by frame, with the more-frames flag read by its number: pyzmq's
        ``recv_multipart`` looks the option up by name, which costs more than a frame.
        """
        if threading.get_ident() != self.owner:
            self.check_owner()
        raw = self.raw
        try:
            if timeout != self._timeout:
                self._wait_for(timeout)
            frames = [raw.recv()]
            while raw.getsockopt(_RCVMORE):
                frames.append(raw.recv())
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, f"receiving on {self.kind.name}") from exc
        return frames

    def poll(self, timeout: float) -> bool:
        """True when a message is waiting, after waiting at most ``timeout`` seconds."""
        self.check_owner()
        return bool(self.raw.poll(_milliseconds(timeout)))

    def close(self) -> None:
        """Close, waiting at most ``options.linger`` for unsent messages. Safe to call twice."""
        if self._monitor is not None:
            if not self.raw.closed:
                self.raw.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if not self.raw.closed:
            self.raw.close()
        _open.discard(self)


class AsyncSocket(Socket):
    """A socket for one asyncio loop: the same options, awaitable waits.

    The loop watches ZeroMQ's notification descriptor itself (no pyzmq futures on the hot path).
    That descriptor is edge-triggered: any operation on the socket may consume the signal that
    messages arrived, so every wait first looks at ``EVENTS`` (and wakes the other waiters that
    reading may have robbed of their signal), and ``try_send`` wakes parked readers when its
    send has swallowed their signal. Receives drain what is queued without a
    trip through the loop; a burst of messages costs one wake-up, not one each.
    """

    def __init__(
        self,
        kind: int,
        *,
        options: SocketOptions = DEFAULT_OPTIONS,
        routing_id: bytes | None = None,
        context: zmq.Context[Any] | None = None,
        security: Security | None = None,
    ) -> None:
        super().__init__(
            kind, options=options, routing_id=routing_id, context=context, security=security
        )
        self._fd = int(self.raw.getsockopt(zmq.FD))  # type: ignore[arg-type]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parked: list[tuple[int, asyncio.Future[bool]]] = []

    def _events(self) -> int:
        return int(self.raw.getsockopt(_EVENTS))

    def _on_descriptor(self) -> None:
        """The loop saw the descriptor fire: wake whoever waits for what is now possible."""
        if not self.raw.closed:
            self._wake(self._events())

    def _wake(self, events: int) -> None:
        """Wake the parked waiters that ``events`` satisfies."""
        still_parked = []
        for wanted, future in self._parked:
            if future.done():
                continue
            if events & wanted:
                future.set_result(True)
            else:
                still_parked.append((wanted, future))
        self._parked = still_parked

    async def _wait(self, wanted: int, timeout: float) -> bool:
        if threading.get_ident() != self.owner:
            self.check_owner()
        if self.raw.closed:
            raise ClosedError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._watch_from(loop)
        events = self._events()  # may consume the edge that other waiters wait for: wake them
        if self._parked:
            self._wake(events)
        if events & wanted:
            return True
        future: asyncio.Future[bool] = loop.create_future()
        self._parked.append((wanted, future))
        timer = loop.call_later(_milliseconds(timeout) / 1000, _settle, future, False)
        try:
            return await future
        finally:
            timer.cancel()

    def _watch_from(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the descriptor from ``loop``: the first one, or a new one after the last closed
        (whose waiters, if it closed without cancelling them, are forgotten)."""
        if self._loop is not None and not self._loop.is_closed():
            raise WrongThread(f"{self!r} is watched by another event loop; one socket, one loop")
        self._parked = []
        self._loop = loop
        loop.add_reader(self._fd, self._on_descriptor)

    async def wait_readable(self, timeout: float) -> bool:
        """Wait until a message is queued, at most ``timeout`` seconds; False if none came."""
        return await self._wait(_POLLIN, timeout)

    async def wait_writable(self, timeout: float) -> bool:
        """Wait until a send would not block, at most ``timeout`` seconds."""
        return await self._wait(_POLLOUT, timeout)

    def send(self, frame: bytes, *, more: bool = False) -> None:
        super().send(frame, more=more)
        self._wake_parked()

    def send_multipart(self, frames: list[bytes]) -> None:
        super().send_multipart(frames)
        self._wake_parked()

    def send_each(self, frames: list[bytes]) -> None:
        super().send_each(frames)
        self._wake_parked()

    def _wake_parked(self) -> None:
        """After a send: it may have eaten the signal that parked waiters wait for."""
        if self._parked and self._loop is not None:
            self._loop.call_soon(self._on_descriptor)

    def try_send(self, frame: bytes, *, more: bool = False) -> bool:
        """Send one frame if it can go at once; False when it would block."""
        if not super().try_send(frame, more=more):
            return False
        self._wake_parked()
        return True

    def try_send_multipart(self, frames: list[bytes]) -> bool:
        if not super().try_send_multipart(frames):
            return False
        self._wake_parked()
        return True

    def try_recv(self) -> bytes | None:
        frame = super().try_recv()
        if frame is not None and self._parked:  # it may have taken a parked writer's signal
            self._wake_parked()
        return frame

    def try_recv_multipart(self) -> list[bytes] | None:
        frames = super().try_recv_multipart()
        if frames is not None and self._parked:
            self._wake_parked()
        return frames

    def try_recv_many(self, limit: int) -> Iterator[bytes]:
        frames = super().try_recv_many(limit)
        return self._waking_parked(frames) if self._parked else frames

    def _waking_parked(self, frames: Iterator[bytes]) -> Iterator[bytes]:
        yield from frames
        self._wake_parked()  # the receives may have taken a parked writer's signal

    async def recv_async(self, timeout: float) -> bytes:
        """Receive one frame, waiting at most ``timeout`` seconds; Timeout if none came."""
        return (await self._recv_async(timeout, multipart=False))[0]

    async def recv_multipart_async(self, timeout: float) -> list[bytes]:
        """Receive one multipart message, waiting at most ``timeout`` seconds."""
        return await self._recv_async(timeout, multipart=True)

    async def _recv_async(self, timeout: float, *, multipart: bool) -> list[bytes]:
        if threading.get_ident() != self.owner:
            self.check_owner()
        deadline = Deadline.after(timeout)
        while True:
            try:
                if multipart:
                    frames: list[bytes] = self.raw.recv_multipart(zmq.NOBLOCK)
                else:
                    frames = [self.raw.recv(zmq.NOBLOCK)]
                if self._parked:  # the receive may have taken a parked writer's signal
                    self._wake_parked()
                return frames
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                raise translate_zmq_error(exc, f"receiving on {self.kind.name}") from exc
            if not await self.wait_readable(deadline.remaining()):
                if self.raw.closed:
                    raise ClosedError(f"{self!r} was closed while a receive waited")
                raise Timeout(f"timed out receiving on {self.kind.name}")

    def close(self) -> None:
        """Stop watching the descriptor, wake every waiter with False, close the socket."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None
        for _, future in self._parked:
            _settle(future, False)
        self._parked = []
        super().close()


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
# pyzmq's send, unwrapped: (socket, data, flags, copy), copy decided per frame (its overloads
# take copy as a literal)
_PLAIN_SEND: Callable[[zmq.Socket[Any], bytes, int, bool], object] = (
    zmq.backend.Socket.send  # type: ignore[assignment]
)


class Poller:
    """Wait on several sockets (and ``Wakeup``s) at once, in the thread that owns them.

        poller = Poller()
        poller.register(router)
        poller.register(wakeup)
        for ready in poller.poll(0.5):   # the items with a message waiting (a Wakeup: taken)
            ...
    """

    def __init__(self, items: Iterable[Socket | Wakeup] = ()) -> None:
        self.owner = threading.get_ident()  # polls the sockets of this thread, in this thread
        self._poller = zmq.Poller()
        self._items: dict[Any, Socket | Wakeup] = {}
        for item in items:
            self.register(item)

    def register(self, item: Socket | Wakeup) -> None:
        """Watch ``item`` for incoming messages (a Wakeup: for ``set``).

        Raises:
            WrongThread: called off the poller's thread, or ``item`` is another thread's socket.
        """
        self._check_thread()
        if isinstance(item, Socket) and item.owner != self.owner:
            raise WrongThread(f"{item!r} belongs to another thread than this poller's")
        key = item.raw if isinstance(item, Socket) else item.fileno()
        self._poller.register(key, zmq.POLLIN)
        self._items[key] = item

    def unregister(self, item: Socket | Wakeup) -> None:
        """Stop watching ``item``; quietly nothing if it was not watched."""
        key = item.raw if isinstance(item, Socket) else item.fileno()
        if self._items.pop(key, None) is not None:
            self._poller.unregister(key)

    def _check_thread(self) -> None:
        if threading.get_ident() != self.owner:
            raise WrongThread("a Poller is used by the thread that made it; make one per thread")

    def __contains__(self, item: object) -> bool:
        return any(watched is item for watched in self._items.values())

    def poll(self, timeout: float) -> list[Socket | Wakeup]:
        """The registered items that are ready, after waiting at most ``timeout`` seconds.

        A Wakeup that is returned has been taken: it stays quiet until the next ``set``.

        Raises:
            WrongThread: called off the thread that made the poller.
        """
        if threading.get_ident() != self.owner:
            self._check_thread()
        try:
            events = self._poller.poll(_milliseconds(timeout))
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "polling") from exc
        ready = []
        for key, _ in events:
            item = self._items.get(key)
            if item is None:
                continue
            if isinstance(item, Wakeup):
                item.take()
            ready.append(item)
        return ready


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)

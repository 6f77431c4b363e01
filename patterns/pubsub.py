"""Publish and subscribe by topic across every discovered publisher, with no broker.

    pub = pubsub.Publisher(node)                 # binds a PUB socket, advertised as "pub"
    pub.publish("ticks", {"sym": "ABC", "px": 101.25})

    with pubsub.Subscriber(node, "ticks") as sub:    # connects to every node that publishes
        message = sub.recv(timeout=2.0)              # Message(topic, data, publisher, seq, gap)

Topics match exactly: a subscriber to ``news`` never receives ``newsletter``, because the
subscription prefix includes the topic's CBOR length (see ``codec.publish_prefixes``). A topic
ending in ``*`` is an explicit prefix pattern: ``news.*`` receives ``news.uk`` and
``news.uk.sport``; such patterns are filtered on the subscriber, after ZeroMQ.

Each message carries its topic, the publisher's UUID and a sequence number per (publisher,
topic), so a subscriber counts what it missed: ``message.gap`` and ``subscriber.gaps``. Gaps are
reported, never hidden. A subscriber that falls behind does not grow memory without bound: each
side queues at most ``SocketOptions.send_hwm`` / ``recv_hwm`` (10,000) messages and the publisher
drops beyond that, which shows up as gaps. Messages published before a subscriber's connection
is made are not seen by it (ZeroMQ's "slow joiner"): publish after ``wait_for`` when it matters.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

import zmq

from zmqkit import (
    AsyncSocket,
    ClosedError,
    ConfigError,
    Deadline,
    Node,
    Peer,
    PeerNotFound,
    ProtocolError,
    Socket,
    SocketOptions,
    Timeout,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.security import SecurityError
from zmqkit.sockets import translate_zmq_error

__all__ = ["Message", "Publisher", "Subscriber", "subscribe"]

log = logging.getLogger("zmqkit.pubsub")

SLICE = 0.25  # while waiting, look at discovery this often to connect new publishers
DRAIN_BATCH = 256  # frames taken per look at the socket
BATCH_BYTES = 64 * 1024  # a batching publisher's frame holds at most about this much...
BATCH_COUNT = 1024  # ...and at most this many messages
MAX_QUEUED = 100_000  # messages a batching publisher queues before publish() waits for its sender
_NOBLOCK = int(zmq.NOBLOCK)
SETTLE = 0.05  # after connecting, time for the subscription to reach the publishers
WILDCARD = "*"
_PUBLISH = int(Kind.PUBLISH)
_decode = codec.decode_publish
ALL_PUBLISH_PREFIXES = (
    bytes([0x86, codec.VERSION, Kind.PUBLISH]),
    bytes([0x86, codec.VERSION, Kind.PUBLISH_BATCH]),
)


def _check_topic(topic: object) -> None:
    """A topic is non-empty text that does not end in ``*`` (which marks a prefix pattern)."""
    if not isinstance(topic, str) or not topic or topic.endswith(WILDCARD):
        raise ConfigError(f"a topic is non-empty text not ending in {WILDCARD!r}, not {topic!r}")


class Message(NamedTuple):
    """One published message as a subscriber sees it."""

    topic: str
    data: Any
    publisher: str  # the publishing node's name
    sender: uuid_module.UUID  # the publishing node's UUID
    seq: int  # per (publisher, topic), from 1
    gap: int  # messages from this publisher on this topic missed just before this one


# Builds a Message from a ready tuple at a third of the cost of Message(...), whose generated
# __new__ is Python code: this runs once per received message.
_new_message = tuple.__new__
MAX_STREAMS = 10_000  # (publisher, topic) pairs a subscriber tracks; see _Intake


class Publisher:
    """Publishes on any topic from ``node``; used from the thread (or loop) that created it.

    ``publish`` never blocks: a subscriber whose queue is full misses messages (and sees the gap).

    With ``batch=True`` the publisher coalesces small messages under load: ``publish`` encodes
    the message and queues it; a sender thread of the publisher's own ("zmqkit-pub:NODE", started
    here and joined by ``close``) sends whatever has queued as one PUBLISH_BATCH frame per topic,
    up to 64 KiB or 1024 messages. An idle publisher's message leaves at once (the thread wakes for
    it); a busy one's share a frame, which is how a Python publisher outruns per-message sends.
    Sequence numbers, topics and gap counting are the same either way. When 100,000 messages
    wait for the sender thread, ``publish`` waits for it to catch up (at most the send timeout).
    """

    def __init__(
        self, node: Node, *, options: SocketOptions | None = None, batch: bool = False
    ) -> None:
        if "pub" in node.endpoints:
            raise ConfigError(f"{node!r} already has a publisher; share it")
        self.node = node
        self._sender = node.uuid.bytes
        self._seqs: dict[str, int] = {}
        self._sock: Socket | None = None
        self._batcher: _Batcher | None = None
        try:
            node.attach(self)  # first: a closed node refuses before anything is bound
            if batch:
                self._batcher = _Batcher(node, options or SocketOptions())
                self.endpoint = self._batcher.start()
            else:
                self._sock = Socket(zmq.PUB, options=options or SocketOptions())
                node.secure_server(self._sock)
                self.endpoint = self._sock.bind(node.host)
            node.advertise("pub", self.endpoint)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<zmqkit pubsub.Publisher {self.node.name!r} at {self.endpoint}>"

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def dropped(self) -> int:
        """Messages a batching publisher dropped because its sender was stuck for the whole send
        timeout with 100,000 queued (0 otherwise)."""
        return self._batcher.dropped if self._batcher else 0

    def publish(self, topic: str, data: Any) -> int:
        """Publish ``data`` on ``topic``; return its sequence number."""
        seq = self._seqs.get(topic, 0) + 1
        if seq == 1:
            _check_topic(topic)
        if self._batcher is not None:
            self._batcher.put(topic, seq, codec.dumps(data))
        elif self._sock is not None:
            self._sock.send(codec.encode_publish(topic, self._sender, seq, data))
        else:
            raise ClosedError(f"{self!r} is closed")
        self._seqs[topic] = seq
        return seq

    def close(self) -> None:
        """Stop publishing (a batching publisher sends what it has queued first)."""
        if self._sock is None and self._batcher is None:
            return
        self.node.withdraw("pub")
        self.node.detach(self)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None


class _Batcher:
    """The sender thread of a batching Publisher: it owns the PUB socket."""

    def __init__(self, node: Node, options: SocketOptions) -> None:
        self.node = node
        self.options = options
        self.dropped = 0
        self._sender = node.uuid.bytes
        self._queue: deque[tuple[str, int, bytes]] = deque()
        self._wake = threading.Event()
        self._room = threading.Event()  # set while the queue has room; publishers wait on it
        self._room.set()
        self._stopping = False
        self._ready = threading.Event()
        self._endpoint = ""
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"zmqkit-pub:{node.name}", daemon=True
        )

    def start(self) -> str:
        """Start the thread; return the endpoint it bound."""
        self._thread.start()
        self._ready.wait(5.0)
        if self._failure is not None or not self._endpoint:
            self._thread.join(1.0)
            raise ConfigError("the publisher's sender thread failed to start") from self._failure
        return self._endpoint

    def put(self, topic: str, seq: int, encoded: bytes) -> None:
        """Queue one message; when the sender thread falls far behind, wait for it (at most the
        send timeout) rather than drop what this process could still send."""
        if len(self._queue) >= MAX_QUEUED:
            self._room.clear()
            self._wake.set()
            if len(self._queue) >= MAX_QUEUED and not self._room.wait(self.options.send_timeout):
                self.dropped += 1  # the sender is stuck: subscribers see it as a gap
                return
        self._queue.append((topic, seq, encoded))
        if not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            sock = Socket(zmq.PUB, options=self.options)
            self.node.secure_server(sock)
            self._endpoint = sock.bind(self.node.host)
        except BaseException as exc:  # handed to start(), which raises it in the owner's thread
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stopping:
                self._wake.wait(SLICE)
                self._wake.clear()  # before draining: a message queued from here on wakes us again
                self._flush(sock.raw)
            self._flush(sock.raw)
        finally:
            sock.close()

    def _flush(self, raw: zmq.Socket[Any]) -> None:
        """Send everything queued: one frame per topic per batch, in sequence order."""
        queue, sender = self._queue, self._sender
        while queue:
            batches: dict[str, tuple[int, list[bytes]]] = {}
            size = count = 0
            while queue and size < BATCH_BYTES and count < BATCH_COUNT:
                topic, seq, encoded = queue.popleft()
                batch = batches.get(topic)
                if batch is None:
                    batches[topic] = (seq, [encoded])
                else:
                    batch[1].append(encoded)
                size += len(encoded)
                count += 1
            for topic, (first_seq, items) in batches.items():
                if len(items) == 1:
                    frame = codec.encode_publish_from(topic, sender, first_seq, items[0])
                else:
                    frame = codec.encode_publish_batch_from(topic, sender, first_seq, items)
                raw.send(frame, 0, copy=len(frame) < 65536)
            if not self._room.is_set() and len(queue) < MAX_QUEUED // 2:
                self._room.set()


class _Intake:
    """The subscriber logic that does not touch a socket: filtering, unbatching, gap counting.

    It remembers the last sequence number of at most ``MAX_STREAMS`` (publisher, topic) streams
    and the names of as many publishers: a peer that invents a new sender id per message cannot
    grow them without bound. Past the limit the stream heard from longest ago is forgotten; if
    it speaks again, its next message counts as its first (no gap reported across the
    forgetting).
    """

    def __init__(self, node: Node, topics: tuple[str, ...]) -> None:
        self.node = node
        self.exact: set[str] = set()
        self.patterns: set[str] = set()
        self.gaps = 0
        self.received = 0
        self.stats: Counter[str] = Counter()
        self.ready: deque[Message] = deque()
        self.names: dict[bytes, tuple[str, uuid_module.UUID]] = {}
        self._last_seq: dict[tuple[bytes, str], int] = {}
        for topic in topics:
            self.add(topic)

    def add(self, topic: str) -> list[bytes]:
        """Take ``topic``; return the ZeroMQ prefixes to subscribe to."""
        if isinstance(topic, str) and topic.endswith(WILDCARD):  # "*" alone: every topic
            self.patterns.add(topic[:-1])
            return list(ALL_PUBLISH_PREFIXES)
        _check_topic(topic)
        self.exact.add(topic)
        return list(codec.publish_prefixes(topic))

    def take(self, frame: bytes) -> None:
        """Decode a frame into ``ready`` messages; count and drop what does not belong.

        The hot path of every subscriber: one decode, a few checks, one Message per item.
        """
        try:
            _, kind, topic, sender, seq, data = _decode(frame)
        except codec.UnexpectedKind:
            self.stats["dropped-not-publish"] += 1
            return
        except ProtocolError:
            self.stats["dropped-malformed"] += 1
            return
        if topic not in self.exact and not (self.patterns and self._matches_pattern(topic)):
            return  # a pattern subscription sees every topic at the ZeroMQ level
        name, sender_uuid = self.names.get(sender) or self._name_of(sender)
        key = (sender, topic)
        last = self._last_seq.pop(key, None)  # and put back below: the table is kept LRU-first
        if last is None and len(self._last_seq) >= MAX_STREAMS:
            del self._last_seq[next(iter(self._last_seq))]  # the stream heard from longest ago
        if kind == _PUBLISH:
            gap = seq - last - 1 if last is not None and seq > last + 1 else 0
            if gap:
                self.gaps += gap
            self._last_seq[key] = seq
            self.ready.append(_new_message(Message, (topic, data, name, sender_uuid, seq, gap)))
            self.received += 1
            return
        # a batch holds consecutive sequence numbers: only its first message can follow a gap
        gap = seq - last - 1 if last is not None and seq > last + 1 else 0
        if gap:
            self.gaps += gap
        self.ready.append(Message(topic, data[0], name, sender_uuid, seq, gap))
        self.ready.extend(
            _new_message(Message, (topic, item, name, sender_uuid, item_seq, 0))
            for item_seq, item in enumerate(data[1:], seq + 1)
        )
        self._last_seq[key] = seq + len(data) - 1
        self.received += len(data)

    def _matches_pattern(self, topic: str) -> bool:
        return any(topic.startswith(prefix) for prefix in self.patterns)

    def _name_of(self, sender: bytes) -> tuple[str, uuid_module.UUID]:
        """The publishing node's name, from discovery; cached until the peers change."""
        sender_uuid = uuid_module.UUID(bytes=sender)
        name = f"?{sender_uuid.hex[:8]}"  # not (yet) in the peer table
        if sender_uuid == self.node.uuid:
            name = self.node.name
        for peer in self.node.peers():
            if peer.uuid == sender_uuid:
                name = peer.name
        if len(self.names) >= MAX_STREAMS:
            del self.names[next(iter(self.names))]
        self.names[sender] = (name, sender_uuid)
        return name, sender_uuid

    def publishers(self) -> dict[str, Peer | None]:
        """Endpoint -> peer of every publisher to connect to; None for this node's own."""
        wanted: dict[str, Peer | None] = {
            peer.endpoints["pub"]: peer for peer in self.node.peers(role="pub")
        }
        if "pub" in self.node.endpoints:
            wanted[self.node.endpoints["pub"]] = None
        return wanted


class Subscriber:
    """Receives ``topics`` from every publisher that discovery finds, joining late ones too.

    Use it from the thread that created it (``recv``, ``messages``) or from one asyncio loop
    (``recv_async``, ``amessages``); a ``Subscriber`` made inside a running loop is an asyncio one.
    """

    def __init__(self, node: Node, *topics: str, options: SocketOptions | None = None) -> None:
        self.node = node
        self._intake = _Intake(node, ())
        try:
            asyncio.get_running_loop()
            self._sock: Socket = AsyncSocket(zmq.SUB, options=options or SocketOptions())
        except RuntimeError:
            self._sock = Socket(zmq.SUB, options=options or SocketOptions())
        self._connected: set[str] = set()
        self._refused: set[str] = set()  # publishers skipped for their keys (warned once each)
        self._version: tuple[int, str | None] = (-1, None)
        try:
            for topic in topics:
                self.subscribe(topic)
            self._refresh()  # connect now, so that what is published from here on can arrive
        except BaseException:
            self._sock.close()
            raise

    def __repr__(self) -> str:
        topics = sorted(self._intake.exact) + sorted(p + WILDCARD for p in self._intake.patterns)
        return f"<zmqkit pubsub.Subscriber {topics} from {len(self._connected)} publishers>"

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    @property
    def gaps(self) -> int:
        """Messages missed in total, across publishers and topics."""
        return self._intake.gaps

    def stats(self) -> dict[str, int]:
        return dict(
            self._intake.stats,
            received=self._intake.received,
            gaps=self._intake.gaps,
            publishers=len(self._connected),
        )

    def subscribe(self, topic: str) -> None:
        """Also receive ``topic`` (exact) or a ``prefix*`` pattern."""
        for prefix in self._intake.add(topic):
            self._sock.raw.subscribe(prefix)

    def close(self) -> None:
        self._sock.close()

    def _refresh(self) -> None:
        version = (self.node.peers_version, self.node.endpoints.get("pub"))
        if version == self._version:
            return
        self._version = version
        self._intake.names.clear()  # names of publishers are looked up again as they arrive
        wanted = self._intake.publishers()
        for endpoint in self._connected - wanted.keys():
            self._sock.disconnect(endpoint)
            self._connected.discard(endpoint)
        for endpoint in wanted.keys() - self._connected:
            peer = wanted[endpoint]
            try:
                if peer is None:
                    self.node.secure_client(self._sock, self._own_peer())
                else:
                    self.node.secure_client(self._sock, peer)
            except SecurityError as exc:  # a publisher we may not talk to: skipped, counted
                if endpoint not in self._refused:
                    self._refused.add(endpoint)
                    self._intake.stats["refused-publishers"] += 1
                    log.warning("not subscribing to %s: %s", endpoint, exc)
                continue
            self._sock.connect(endpoint)
            self._connected.add(endpoint)

    def _own_peer(self) -> Peer:
        """This node as its peers see it, to connect to its own publisher like any other."""
        node = self.node
        return Peer(
            node.name, node.uuid, dict(node.endpoints), dict(node.headers), 0, node.host, 0.0, 0.0
        )

    def wait_for_publishers(self, count: int = 1, timeout: float = 5.0) -> int:
        """Connect to at least ``count`` publishers, waiting at most ``timeout`` seconds.

        Connections are otherwise made whenever the subscriber is used (``recv`` looks at
        discovery at least every 0.25 s). A script that publishes right after subscribing calls
        this first: messages published before the connection is up are not received.
        Returns the number of publishers connected.

        Raises:
            PeerNotFound: fewer than ``count`` publishers were found in time.
        """
        deadline = Deadline.after(timeout)
        while True:
            self._refresh()
            if len(self._connected) >= count:
                time.sleep(min(SETTLE, deadline.remaining()))  # the subscription travels to them
                return len(self._connected)
            if deadline.expired():
                raise PeerNotFound(
                    f"{len(self._connected)} of {count} publishers found in {timeout:g} s"
                )
            time.sleep(min(0.01, deadline.remaining()))

    def recv(self, timeout: float) -> Message:
        """The next message, waiting at most ``timeout`` seconds.

        Raises:
            Timeout: no message in time.
        """
        ready = self._intake.ready
        if ready:
            return ready.popleft()
        if threading.get_ident() != self._sock.owner:
            self._sock.check_owner()
        if self._drain():
            return ready.popleft()
        deadline = Deadline.after(timeout)
        while True:
            try:
                frame = self._sock.recv(min(SLICE, deadline.remaining()))
            except Timeout:
                if deadline.expired():
                    raise Timeout(f"no message on {self!r} in {timeout:g} s") from None
                self._refresh()
                continue
            self._intake.take(frame)
            if ready or self._drain():
                return ready.popleft()

    def _drain(self) -> bool:
        """Take what is queued already, up to a batch, without waiting; True if any message.

        Discovery is looked at once per batch, so publishers that join while messages keep
        flowing are connected too.
        """
        self._refresh()
        raw, take = self._sock.raw, self._intake.take
        try:
            for _ in range(DRAIN_BATCH):
                take(raw.recv(_NOBLOCK))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "receiving publications") from exc
        return bool(self._intake.ready)

    def messages(self, idle_timeout: float) -> Iterator[Message]:
        """Yield messages until none has come for ``idle_timeout`` seconds."""
        while True:
            try:
                yield self.recv(idle_timeout)
            except Timeout:
                return

    async def recv_async(self, timeout: float) -> Message:
        """``recv`` for asyncio code (the subscriber must have been made inside the loop)."""
        if not isinstance(self._sock, AsyncSocket):
            raise ConfigError("this Subscriber was made outside asyncio; make it inside the loop")
        ready = self._intake.ready
        deadline = Deadline.after(timeout)
        while not ready and not self._drain():
            if deadline.expired():
                raise Timeout(f"no message on {self!r} in {timeout:g} s")
            await self._sock.wait_readable(min(SLICE, deadline.remaining()))
        return ready.popleft()

    async def amessages(self) -> AsyncIterator[Message]:
        """Messages for asyncio code, until the consumer stops (bound it with asyncio.timeout)."""
        while True:
            try:
                yield await self.recv_async(3600.0)
            except Timeout:
                continue


class _CallbackSubscription:
    """A named thread that owns a Subscriber and calls ``callback`` with each message."""

    def __init__(
        self, node: Node, topics: tuple[str, ...], callback: Callable[[Message], Any]
    ) -> None:
        self.callback = callback
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(node, topics),
            name=f"zmqkit-sub:{','.join(topics)}",
            daemon=True,
        )

    def _run(self, node: Node, topics: tuple[str, ...]) -> None:
        try:
            subscriber = Subscriber(node, *topics)
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            self._failure = exc
            self._started.set()
            return
        with subscriber:
            self._started.set()
            while not self._stopping.is_set():
                try:
                    message = subscriber.recv(SLICE)
                except Timeout:
                    continue
                try:
                    self.callback(message)
                except Exception:  # one bad message must not end the subscription; logged loudly
                    log.exception(
                        "subscription callback %r failed on %s", self.callback, message.topic
                    )

    def start(self) -> _CallbackSubscription:
        """Start the thread and wait until it has subscribed.

        Raises:
            ConfigError: a topic is not valid (or whatever else made subscribing fail).
        """
        self._thread.start()
        self._started.wait(5.0)
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def subscribe(
    node: Node, *topics: str, callback: Callable[[Message], Any]
) -> _CallbackSubscription:
    """Call ``callback(message)`` for each message on ``topics``, from a thread, until node close.

    The callback runs in the subscription's own thread; returns the subscription (``close()``
    stops it early).
    """
    subscription = _CallbackSubscription(node, topics, callback)
    node.attach(subscription)  # first: a closed node refuses before a thread is started
    try:
        return subscription.start()
    except BaseException:
        node.detach(subscription)
        raise

"""The publisher's sending thread: it owns the PUB socket and sends what publishers queued.

``publish`` may be called from any thread (an RPC handler of any kind, a callback, a thread of
the user's), but a ZeroMQ socket belongs to one thread. So the calling thread only encodes the
message and appends it to one queue, in the order the sequence numbers were given; this
service thread ("zmqkit-pub:NODE") takes the queue and sends it. One queue for every thread
keeps one global order: a subscriber sees the sequence numbers of a topic in order even when
several threads publish on it at once, so a gap always means a message was lost.

Per message, each frame goes as it is. Batched, the thread sends whatever has queued as one
PUBLISH_BATCH frame per topic (at most 64 KiB or 1024 messages): an idle publisher's message
leaves at once, a busy one's share a frame, which is how a Python publisher outruns
per-message sends.

The queue is short: at most ``MAX_QUEUED`` frames per message (``MAX_QUEUED_BATCHED`` batched,
where a long queue makes large batches) and ``MAX_QUEUED_BYTES`` in all. A publisher that outruns
the thread waits for room (at most the send timeout; then the message is dropped, counted, and
subscribers see the gap), so memory stays bounded as before: what piles up beyond that piles up
in the PUB socket, whose high-water mark drops it.

The thread waits on a ``threading.Event``, not on a ``Wakeup`` in a ``Poller``: it has no socket
to poll, and a wake-up written to a socket pair releases the GIL in the publishing thread, which
hands it to this thread after nearly every message (measured: batched publishing fell from
680,000 to 450,000 messages/s, in smaller batches). Set from Python, the event wakes the thread
when the publishing thread next lets go of the GIL, and the queue has grown meanwhile.

That "next" may be late: a publishing thread busy in Python keeps the GIL for CPython's switch
interval (5 ms) at a time, and this thread needs it at each step (measured: a publisher busy
between messages delivered them 27 ms late at the median, 180 ms at p99, against 0.1 ms when
sending itself). So the first message after a pause (``PAUSE``) hands over: ``put`` says so,
and the publisher, once it has let go of its lock, waits until this thread has sent (at most
``HANDOFF``; about 40 µs here). Messages in a burst do not wait: they leave together at the
next switch, as a batch does. Then the median is 0.1 ms again, with no cost to throughput.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from zmqkit import Node, ServiceThread, Socket, SocketKind, SocketOptions

from . import wire

__all__ = [
    "BATCH_BYTES",
    "BATCH_COUNT",
    "MAX_QUEUED",
    "MAX_QUEUED_BATCHED",
    "MAX_QUEUED_BYTES",
    "Outbox",
]

SLICE = 0.25  # the thread looks at its stop flag at least this often
BATCH_BYTES = 64 * 1024  # a batch frame holds at most about this much...
BATCH_COUNT = 1024  # ...and at most this many messages
MAX_QUEUED = 1024  # frames queued (per message) before put() waits for the thread
MAX_QUEUED_BATCHED = 100_000  # messages queued (batched) before put() waits for the thread
MAX_QUEUED_BYTES = 64 * 1024 * 1024  # and bytes, either way (one message of the largest fits)
PAUSE = 0.0002  # a message this long after the previous one hands over to the thread...
HANDOFF = 0.001  # ...waiting at most this long for it to be sent

_monotonic = time.monotonic


class Outbox:
    """The queue between the publishing threads and the thread that owns the PUB socket.

    ``put`` is called under the publisher's lock (so the queue holds sequence order), and
    ``hand_over`` after it when ``put`` returned True; ``close`` once, from any thread: what was
    queued is sent first.
    """

    def __init__(self, node: Node, options: SocketOptions, *, batch: bool) -> None:
        self.node = node
        self.options = options
        self.batch = batch
        self.endpoint = ""
        self.dropped = 0
        self._sender = node.uuid.bytes
        # per message: frames ready to send; batched: (topic, seq, encoded data)
        self._queue: deque[Any] = deque()
        self._max_queued = MAX_QUEUED_BATCHED if batch else MAX_QUEUED
        self._put_bytes = 0  # written by put() only...
        self._sent_bytes = 0  # ...and this by the thread only: their difference is what waits
        self._wake = threading.Event()  # set when something is queued (or on close)
        self._sent = threading.Event()  # set by the thread after each round of sending
        self._last_put = 0.0
        self._room = threading.Event()  # set while the queue has room; put() waits on it
        self._room.set()
        self._closing = False
        self.put: Callable[[str, int, Any], bool] = self._put_item if batch else self._put_frame
        self._service = ServiceThread(f"zmqkit-pub:{node.name}", self._run)
        self._service.start()

    def _put_frame(self, topic: str, seq: int, data: Any) -> bool:
        """``put`` per message: encode the whole frame here (``EncodeError`` queues nothing).

        Returns True when the caller should ``hand_over`` (the first message after a pause).
        """
        frame = wire.encode(topic, self._sender, seq, data)
        queue = self._queue  # the room check is written out in both puts: once per message
        if (
            len(queue) >= self._max_queued or self._put_bytes - self._sent_bytes >= MAX_QUEUED_BYTES
        ) and not self._wait_for_room():
            self.dropped += 1  # the thread is stuck: subscribers see it as a gap
            return False
        self._put_bytes += len(frame)
        queue.append(frame)
        return self._wake_up()

    def _put_item(self, topic: str, seq: int, data: Any) -> bool:
        """``put`` batched: encode the data here; the thread frames it with its neighbours."""
        encoded = wire.encode_data(data)
        queue = self._queue
        if (
            len(queue) >= self._max_queued or self._put_bytes - self._sent_bytes >= MAX_QUEUED_BYTES
        ) and not self._wait_for_room():
            self.dropped += 1
            return False
        self._put_bytes += len(encoded)
        queue.append((topic, seq, encoded))
        return self._wake_up()

    def _wake_up(self) -> bool:
        """After queueing: wake the thread; True if this message should be handed over."""
        now = _monotonic()
        paused = now - self._last_put > PAUSE
        self._last_put = now
        if paused:
            self._sent.clear()
        if not self._wake.is_set():
            self._wake.set()
        return paused

    def hand_over(self) -> None:
        """Let the thread have the GIL until it has sent what is queued (at most ``HANDOFF``)."""
        self._sent.wait(HANDOFF)

    def _has_room(self) -> bool:
        return (
            len(self._queue) < self._max_queued
            and self._put_bytes - self._sent_bytes < MAX_QUEUED_BYTES
        )

    def _wait_for_room(self) -> bool:
        """The thread is behind: wait for it (at most the send timeout) rather than drop."""
        self._room.clear()
        self._wake.set()
        if self._has_room():  # it made room meanwhile
            return True
        return self._room.wait(self.options.send_timeout) and self._has_room()

    def close(self) -> None:
        """Send what is queued, stop the thread, close the socket (any thread; idempotent)."""
        self._closing = True
        self._wake.set()
        self._room.set()  # a put() waiting for room gives up now
        self._service.stop()

    def _run(self, service: ServiceThread) -> None:
        sock = self.node.server_socket(SocketKind.PUB, options=self.options)
        try:
            self.endpoint = sock.endpoint
            service.ready()
            flush = self._flush_batches if self.batch else self._flush_frames
            while not (self._closing or service.stopping):
                self._wake.wait(SLICE)
                self._wake.clear()  # before taking the queue: what is queued from now wakes us
                flush(sock)
                self._sent.set()
            flush(sock)
        finally:
            sock.close()

    def _made_room(self) -> None:
        """After sending some: let waiting publishers go on once half the queue is free."""
        if (
            not self._room.is_set()
            and len(self._queue) <= self._max_queued // 2
            and self._put_bytes - self._sent_bytes <= MAX_QUEUED_BYTES // 2
        ):
            self._room.set()

    def _flush_frames(self, sock: Socket) -> None:
        """Send everything queued, a frame per message."""
        queue, send, take = self._queue, sock.send, self._queue.popleft
        while queue:
            sent = 0
            for _ in range(min(len(queue), BATCH_COUNT)):
                frame = take()
                send(frame)
                sent += len(frame)
            self._sent_bytes += sent
            self._made_room()

    def _flush_batches(self, sock: Socket) -> None:
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
                    sock.send(wire.encode_from(topic, sender, first_seq, items[0]))
                else:
                    sock.send(wire.encode_batch_from(topic, sender, first_seq, items))
            self._sent_bytes += size
            self._made_room()

"""What a publisher is made of: its numbering, its queue, and the thread that owns the PUB
socket and sends what was queued (``Publisher`` adds the node's part).

``publish`` may be called from any thread (an RPC handler of any kind, a callback, a thread of
the user's), but a ZeroMQ socket belongs to one thread. So the calling thread only numbers and
encodes the message and appends it to one queue, under one lock, in the order the sequence
numbers were given; this service thread ("zmqkit-pub:NODE") takes the queue and sends it. One
queue for every thread keeps one global order: a subscriber sees the sequence numbers of a topic
in order even when several threads publish on it at once, so a gap always means a message was
lost. ``publish`` is the hot path of every publisher, written out in one method.

Batched (the default), the thread sends whatever has queued, in the order it was published:
each run of messages on one topic in one PUBLISH_BATCH frame (at most 64 KiB or 1024 messages).
A busy publisher's messages share frames, which is how a Python publisher outruns per-message
sends. A message that finds the queue empty (the thread idle, or sending a round already) is
framed by the publishing thread as a PUBLISH, as it would be per message, so that the thread
only sends it: an idle publisher's message leaves as fast as it would unbatched. So is a
message of ``BATCH_BYTES`` or more; each leaves in its turn. Per
message (``batch=False``), each frame goes as it is. Either way the thread hands the frames of
a round to the socket in one call (``Socket.send_each``).

The queue is short: at most ``MAX_QUEUED`` frames per message (``MAX_QUEUED_BATCHED`` messages
batched, room for several full batches) and ``MAX_QUEUED_BYTES`` in all. A publisher that outruns
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
sending itself). So the first message after a pause hands over: once it has let go of its
lock, ``publish`` waits until this thread has sent (at most ``HANDOFF``; about 40 µs here). A
pause is ``PAUSE`` since the last message that found the queue empty (one that finds it not
empty joins messages the thread is due to send anyway; its clock is not read). Messages in a
burst do not wait: they leave together at the next switch, as a batch does. Then the median is
0.1 ms again, with no cost to throughput (a publisher in a tight loop hands over about once in
a few thousand messages here, after the thread held the GIL for longer than ``PAUSE``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from itertools import groupby
from operator import itemgetter
from typing import Any

from zmqkit import ClosedError, Node, ServiceThread, Socket, SocketKind, SocketOptions

from . import wire
from .topics import check_topic

__all__ = [
    "BATCH_BYTES",
    "BATCH_COUNT",
    "MAX_QUEUED",
    "MAX_QUEUED_BATCHED",
    "MAX_QUEUED_BYTES",
    "Outbox",
]

SLICE = 0.25  # the thread looks at its stop flag at least this often
BATCH_BYTES = 64 * 1024  # a batch frame holds at most this much data...
BATCH_COUNT = 1024  # ...and at most this many messages
MAX_QUEUED = 1024  # frames queued (per message) before publish() waits for the thread
MAX_QUEUED_BATCHED = 10_000  # messages queued (batched) before publish() waits for the thread
MAX_QUEUED_BYTES = 64 * 1024 * 1024  # and bytes, either way (one message of the largest fits)
PAUSE = 0.0002  # a message this long after the previous one hands over to the thread...
HANDOFF = 0.001  # ...waiting at most this long for it to be sent

_monotonic = time.monotonic
_encode_data, _encode_after = wire.encode_data, wire.encode_after


class Outbox:
    """Numbers messages per topic and queues them for the thread that owns the PUB socket.

    ``publish`` from any thread; ``close`` once, from any thread: what was queued is sent first.
    """

    def __init__(self, node: Node, options: SocketOptions, *, batch: bool) -> None:
        self.node = node
        self.options = options
        self.batch = batch
        self.endpoint = ""
        self.dropped = 0
        self._lock = threading.Lock()  # held to number and queue a message: one order
        self._sender = node.uuid.bytes
        self._topics: dict[str, list[Any]] = {}  # topic -> [last seq, head of its PUBLISH frames]
        # frames ready to send; batched, (topic, seq, encoded data) too
        self._queue: deque[Any] = deque()
        self._max_queued = MAX_QUEUED_BATCHED if batch else MAX_QUEUED
        self._put_bytes = 0  # written by publish() only...
        self._sent_bytes = 0  # ...and this by the thread only: their difference is what waits
        self._wake = threading.Event()  # set when something is queued (or on close)
        self._woken = False  # whether _wake is set: a plain read, once a message
        self._sent = threading.Event()  # set by the thread after each round of sending
        self._last_put = 0.0
        self._room = threading.Event()  # set while the queue has room; publish() waits on it
        self._room.set()
        self._closing = False
        self._service = ServiceThread(f"zmqkit-pub:{node.name}", self._run)
        self._service.start()

    def publish(self, topic: str, data: Any) -> int:
        """Publish ``data`` on ``topic``; return its sequence number. Any thread may call it.

        Raises:
            ConfigError: ``topic`` is not a topic (non-empty text not ending in ``*``).
            EncodeError: ``data`` cannot be encoded (nothing is sent, no number is used).
            ClosedError: the publisher is closed.
        """
        lock = self._lock  # acquire and release, not ``with``: half the cost, once a message
        lock.acquire()
        try:
            if self._closing:
                raise ClosedError(f"{self!r} is closed")
            numbered = self._topics.get(topic) or self._first_on(topic)
            seq: int = numbered[0] + 1
            queue = self._queue
            # batched behind queued messages, the data alone (the thread frames it with its
            # neighbours); else (per message, the thread idle, a large message) the whole frame,
            # which the thread only sends
            if self.batch and queue and not (type(data) is bytes and len(data) >= BATCH_BYTES):
                entry: Any = (topic, seq, _encode_data(data))
                size = len(entry[2])
            else:
                entry = _encode_after(numbered[1], seq, data)
                size = len(entry)
            numbered[0] = seq  # encoded: the number is used
            if (
                len(queue) >= self._max_queued
                or self._put_bytes - self._sent_bytes >= MAX_QUEUED_BYTES
            ) and not self._wait_for_room():
                self.dropped += 1  # the thread is stuck: subscribers see it as a gap
                return seq
            self._put_bytes += size
            paused = False
            if not queue:  # else the thread has yet to send what came before: it is due anyway
                now = _monotonic()
                paused = now - self._last_put > PAUSE
                self._last_put = now
                if paused:
                    self._sent.clear()
            queue.append(entry)
            if not self._woken:
                self._woken = True
                self._wake.set()
        finally:
            lock.release()
        if paused:  # the first message after a pause: see it off (about 40 µs; see above)
            self._sent.wait(HANDOFF)
        return seq

    def _first_on(self, topic: str) -> list[Any]:
        """The numbering of a topic not published on before (under the lock).

        Raises:
            ConfigError: ``topic`` is not a topic.
        """
        check_topic(topic)
        numbered = self._topics[topic] = [0, wire.publish_head(topic, self._sender)]
        return numbered

    def counts(self) -> dict[str, int]:
        """Each topic published on, with its last sequence number: its count of messages."""
        with self._lock:
            return {topic: numbered[0] for topic, numbered in self._topics.items()}

    def _has_room(self) -> bool:
        return (
            len(self._queue) < self._max_queued
            and self._put_bytes - self._sent_bytes < MAX_QUEUED_BYTES
        )

    def _wait_for_room(self) -> bool:
        """The thread is behind: wait for it (at most the send timeout) rather than drop."""
        self._room.clear()
        self._woken = True
        self._wake.set()
        if self._has_room():  # it made room meanwhile
            return True
        return self._room.wait(self.options.send_timeout) and self._has_room()

    def close(self) -> None:
        """Send what is queued, stop the thread, close the socket (any thread; idempotent). A
        ``publish`` running now ends first: its message is sent too."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        self._room.set()  # a publish() waiting for room gives up now
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
                self._woken = False  # (after the clear: a set in between is not lost)
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
        queue, take = self._queue, self._queue.popleft
        while queue:
            frames = [take() for _ in range(min(len(queue), BATCH_COUNT))]
            sock.send_each(frames)
            self._sent_bytes += sum(map(len, frames))
            self._made_room()

    def _flush_batches(self, sock: Socket) -> None:
        """Send everything queued, in the order it was published: each run of messages on one
        topic in one frame (a PUBLISH for a message alone), a framed message as it is."""
        queue, take = self._queue, self._queue.popleft
        while queue:
            entries = [take() for _ in range(min(len(queue), BATCH_COUNT))]
            frames: list[bytes] = []
            size = 0
            for topic, run in groupby(entries, _topic_of):
                if type(topic) is int:  # framed messages (their "topic" is their first byte)
                    framed = list(run)
                    frames += framed
                    size += sum(map(len, framed))
                else:
                    size += self._frame_run(frames, topic, list(run))
            sock.send_each(frames)
            self._sent_bytes += size  # as publish() counted them
            self._made_room()

    def _frame_run(
        self, frames: list[bytes], topic: str, run: list[tuple[str, int, bytes]]
    ) -> int:
        """Frame messages queued one after the other on ``topic``, into ``frames``: one frame,
        unless a message was dropped between them or they hold more than ``BATCH_BYTES``.
        Returns the size of their data."""
        first_seq, items = run[0][1], [encoded for _, _, encoded in run]
        size = sum(map(len, items))
        if run[-1][1] - first_seq == len(run) - 1 and size <= BATCH_BYTES:
            frames.append(self._frame(topic, first_seq, items))
            return size
        chunk_seq, chunk, chunk_size = first_seq, [items[0]], len(items[0])
        for (_, seq, encoded) in run[1:]:
            if seq != chunk_seq + len(chunk) or chunk_size + len(encoded) > BATCH_BYTES:
                frames.append(self._frame(topic, chunk_seq, chunk))
                chunk_seq, chunk, chunk_size = seq, [], 0
            chunk.append(encoded)
            chunk_size += len(encoded)
        frames.append(self._frame(topic, chunk_seq, chunk))
        return size

    def _frame(self, topic: str, first_seq: int, items: list[bytes]) -> bytes:
        if len(items) == 1:
            return wire.encode_from(topic, self._sender, first_seq, items[0])
        return wire.encode_batch_from(topic, self._sender, first_seq, items)


# the key that groups queued entries in runs: a message's topic, a framed message's first byte
_topic_of = itemgetter(0)

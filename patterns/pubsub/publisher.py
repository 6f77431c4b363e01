"""The publisher: ``Publisher(node).publish(topic, data)`` from any thread.

    pub = pubsub.Publisher(node)                 # binds a PUB socket, advertised as "pub"
    pub.publish("ticks", {"sym": "ABC", "px": 101.25})     # from any thread; never blocks long

Sequence numbers are given per topic under one lock, and the message joins the outbox's one
queue under the same lock, so every subscriber sees each topic's numbers in order whichever
threads publish.
"""

from __future__ import annotations

import threading
from typing import Any

from zmqkit import ClosedError, ConfigError, Node, SocketOptions

from .outbox import Outbox
from .publishers import ROLE
from .topics import check_topic

__all__ = ["Publisher"]


class Publisher:
    """Publishes on any topic from ``node``, called from any thread.

    Usable once made: its thread owns the PUB socket, which is bound and advertised as
    ``pub``, and it is attached to the node. ``close()`` (from any thread, idempotent), ``with``,
    or closing the node stops it, after sending what was published.

    ``publish`` never waits for subscribers: one whose queue is full misses messages (and sees
    the gap). It queues the message for the publisher's thread, which sends it; the first
    message after a pause waits until it has left (about 40 µs), so that a thread busy in Python
    cannot hold it back (see ``outbox``). Small messages published while the thread is busy
    are coalesced into PUBLISH_BATCH frames (a message alone leaves alone); sequence numbers,
    topics and gaps are the same. ``batch=False`` sends a frame per message.

    Raises:
        ClosedError: the node is closed (or not started).
        ConfigError: the node has a publisher already (share it: it works from any thread).
    """

    def __init__(
        self, node: Node, *, options: SocketOptions | None = None, batch: bool = True
    ) -> None:
        if ROLE in node.endpoints:
            raise ConfigError(f"{node!r} already has a publisher; share it (any thread may use it)")
        self.node = node
        self.endpoint = ""
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._outbox: Outbox | None = None
        node.attach(self)  # first: a closed node refuses before anything is bound
        try:
            self._outbox = Outbox(node, options or SocketOptions(), batch=batch)
            self.endpoint = self._outbox.endpoint
            node.advertise(ROLE, self.endpoint)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.endpoint
        return f"<zmqkit pubsub.Publisher {self.node.name!r} at {state}>"

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called (or the node closed it)."""
        return self._closed

    def stats(self) -> dict[str, int]:
        """Counters: published, topics, and dropped (the publisher's thread was stuck for a
        whole send timeout with its queue full: subscribers see those as gaps)."""
        outbox = self._outbox
        with self._lock:
            published = sum(self._seqs.values())  # each topic's last number is its count
            topics = len(self._seqs)
        return {
            "published": published,
            "topics": topics,
            "dropped": outbox.dropped if outbox is not None else 0,
        }

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): each topic with the messages published on it."""
        with self._lock:
            topics = {topic: {"published": count} for topic, count in self._seqs.items()}
        return {"endpoint": self.endpoint, "topics": topics, "stats": self.stats()}

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
            outbox = self._outbox
            if outbox is None or self._closed:
                raise ClosedError(f"{self!r} is closed")
            seq = self._seqs.get(topic, 0) + 1
            if seq == 1:
                check_topic(topic)
            hand_over = outbox.put(topic, seq, data)
            self._seqs[topic] = seq
        finally:
            lock.release()
        if hand_over:  # the first message after a pause: see it off (about 40 µs; see outbox)
            outbox.hand_over()
        return seq

    def close(self) -> None:
        """Stop publishing, after sending what was published. Idempotent, from any thread."""
        with self._lock:  # a publish() running now ends first: its message is sent too
            if self._closed:
                return
            self._closed = True
        if self.endpoint and self.node.endpoints.get(ROLE) == self.endpoint:
            self.node.withdraw(ROLE)
        self.node.detach(self)
        if self._outbox is not None:
            self._outbox.close()

"""The publisher: ``Publisher(node).publish(topic, data)`` from any thread.

    pub = pubsub.Publisher(node)                 # binds a PUB socket, advertised as "pub"
    pub.publish("ticks", {"sym": "ABC", "px": 101.25})     # from any thread; never blocks long

Sequence numbers are given per topic under one lock, and the message joins the outbox's one
queue under the same lock, so every subscriber sees each topic's numbers in order whichever
threads publish (``publish`` is the outbox's own).
"""

from __future__ import annotations

import threading
from typing import Any

from zmqkit import ConfigError, Node, SocketOptions

from .outbox import Outbox
from .publishers import ROLE

__all__ = ["Publisher"]


class Publisher(Outbox):
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
        self._closed = False
        self._closing_lock = threading.Lock()  # one close does the node's part
        self._started = False
        node.attach(self)  # first: a closed node refuses before anything is bound
        try:
            super().__init__(node, options or SocketOptions(), batch=batch)
            self._started = True
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
        counts = self.counts() if self._started else {}
        return {
            "published": sum(counts.values()),
            "topics": len(counts),
            "dropped": self.dropped if self._started else 0,
        }

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): each topic with the messages published on it."""
        counts = self.counts() if self._started else {}
        topics = {topic: {"published": count} for topic, count in counts.items()}
        return {"endpoint": self.endpoint, "topics": topics, "stats": self.stats()}

    def close(self) -> None:
        """Stop publishing, after sending what was published. Idempotent, from any thread."""
        with self._closing_lock:
            if self._closed:
                return
            self._closed = True
        if self.endpoint and self.node.endpoints.get(ROLE) == self.endpoint:
            self.node.withdraw(ROLE)
        self.node.detach(self)
        if self._started:
            super().close()

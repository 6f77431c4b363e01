"""What ``Subscriber`` and ``AsyncSubscriber`` share: attaching, the feed, ``subscribe``, the
looks of ``wait_for_publishers``, stats.

The front-ends differ in who owns the SUB socket (the thread that made the subscriber, under a
lock that ``close`` takes from other threads; or the loop) and in how they wait.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from zmqkit import Deadline, Node, PeerNotFound, SocketOptions

from .feed import Feed

__all__ = ["SETTLE", "SLICE", "BaseSubscriber"]

SLICE = 0.25  # while waiting, look at discovery this often to connect new publishers
SETTLE = 0.05  # after connecting, time for the subscription to reach the publishers


class BaseSubscriber:
    """A subscriber of ``topics``, less its waits (see ``Subscriber``)."""

    node: Node
    _feed: Feed
    _closed: bool

    def _open(
        self, node: Node, topics: tuple[str, ...], options: SocketOptions | None, *, asyncio: bool
    ) -> None:
        """Attach to ``node`` and open the feed, owned by the calling thread (or its loop).

        Raises:
            ClosedError: the node is closed (checked first: no socket is made).
            ConfigError: a topic is not valid (detached again, the socket closed).
        """
        self.node = node
        self._closed = False
        node.attach(self)
        try:
            self._feed = Feed.open(node, topics, options, asyncio=asyncio)
        except BaseException:
            node.detach(self)
            raise

    def close(self) -> None:
        """Stop receiving and close the socket where it belongs (each front-end's own)."""
        raise NotImplementedError

    def _owned(self) -> AbstractContextManager[None]:
        """Where the front-end may use its socket: checked (open, and its owner calling), and
        held against a ``close`` from another thread."""
        raise NotImplementedError

    def subscribe(self, topic: str) -> None:
        """Also receive ``topic`` (exact) or a ``prefix*`` pattern.

        Raises:
            ConfigError: not a topic or a pattern.
            ClosedError: the subscriber is closed.
            WrongThread: an ``AsyncSubscriber`` called off its loop.
        """
        with self._owned():
            self._feed.subscribe(topic)

    def _look_for_publishers(self, count: int, deadline: Deadline, timeout: float) -> int | None:
        """One look of ``wait_for_publishers`` (both front-ends): the number of publishers
        connected once there are ``count``, else None (look again a little later).

        Raises:
            PeerNotFound: fewer than ``count`` publishers were found in time.
        """
        with self._owned():
            self._feed.refresh()
        connected = len(self._feed.publishers)
        if connected >= count:
            return connected
        if deadline.expired():
            raise PeerNotFound(f"{connected} of {count} publishers found in {timeout:g} s")
        return None

    def __repr__(self) -> str:
        topics = self._feed.intake.topics.names()
        publishers = len(self._feed.publishers)
        return f"<zmqkit pubsub.{type(self).__name__} {topics} from {publishers} publishers>"

    @property
    def gaps(self) -> int:
        """Messages missed in total, across publishers and topics."""
        return self._feed.intake.gaps

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called (or the node closed it)."""
        return self._closed

    def stats(self) -> dict[str, int]:
        """Counters: received, gaps, publishers (connected now), dropped-* by reason,
        refused-publishers."""
        return self._feed.stats()

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the topics, and the counters of ``stats``."""
        stats = self.stats()
        return {"topics": self._feed.intake.topics.names(),
                "publishers": stats.get("publishers", 0), "received": stats.get("received", 0),
                "gaps": stats.get("gaps", 0), "stats": stats}

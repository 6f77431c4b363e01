"""One SUB socket's feed, shared by ``Subscriber`` and ``AsyncSubscriber``: the socket's
subscriptions, its connections to publishers, and the frames it holds taken into messages.

Used by the socket's owner only (the subscriber's thread, or its loop); the waiting is the
front-end's own.
"""

from __future__ import annotations

from zmqkit import Node, Socket, SocketKind, SocketOptions

from .core import Intake
from .publishers import Publishers

__all__ = ["DRAIN_BATCH", "Feed"]

DRAIN_BATCH = 256  # frames taken per look at the socket, or fewer that make as many messages


class Feed:
    """``sock`` connected to every publisher; ``drain`` fills ``ready`` with what it holds."""

    @classmethod
    def open(
        cls, node: Node, topics: tuple[str, ...], options: SocketOptions | None, *, asyncio: bool
    ) -> Feed:
        """A SUB socket from ``node``, owned by the calling thread (or its loop), fed.

        Raises:
            ConfigError: a topic is not valid (the socket is closed again).
        """
        sock = node.client_socket(
            SocketKind.SUB, options=options or SocketOptions(), asyncio=asyncio
        )
        try:
            return cls(node, sock, topics)
        except BaseException:
            sock.close()
            raise

    def __init__(self, node: Node, sock: Socket, topics: tuple[str, ...]) -> None:
        """Subscribe to ``topics`` and connect to the publishers known now, so that what is
        published from here on can arrive.

        Raises:
            ConfigError: a topic is not valid.
        """
        self.sock = sock
        self.intake = Intake(node)
        self.ready = self.intake.ready  # the messages taken, oldest first
        self.publishers = Publishers(node, sock, self.intake.counts)
        for topic in topics:
            self.subscribe(topic)
        self.refresh()

    def stats(self) -> dict[str, int]:
        """Counters: received, gaps, publishers (connected now), dropped-* by reason,
        refused-publishers."""
        return dict(self.intake.stats(), publishers=len(self.publishers))

    def subscribe(self, topic: str) -> None:
        """Also receive ``topic`` (exact) or a ``prefix*`` pattern.

        Raises:
            ConfigError: not a topic or a pattern.
        """
        for prefix in self.intake.topics.add(topic):
            self.sock.subscribe(prefix)

    def refresh(self) -> None:
        """Connect to new publishers, drop those gone."""
        if self.publishers.refresh():
            self.intake.forget_names()

    def drain(self) -> bool:
        """Take what is queued already, up to a batch, without waiting; True if any message.

        Discovery is looked at once per batch, so publishers that join while messages keep
        flowing are connected too.
        """
        self.refresh()
        # each frame taken as it is received: a large one is let go before the next comes
        self.intake.take_all(self.sock.try_recv_many(DRAIN_BATCH), enough=DRAIN_BATCH)
        return bool(self.ready)


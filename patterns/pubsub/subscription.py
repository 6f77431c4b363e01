"""The callback front-end: ``subscribe(node, "ticks", callback=print)`` calls back from a thread.

A ``Subscription`` runs a ``Subscriber`` on a service thread of its own ("zmqkit-sub:TOPICS"),
which calls ``callback(message)`` for each message. A callback that raises is logged loudly and
the subscription goes on: one bad message must not end it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from zmqkit import ClosedError, Node, ServiceThread, Timeout

from .base import SLICE
from .core import Message
from .subscriber import Subscriber

__all__ = ["Subscription", "subscribe"]

log = logging.getLogger("zmqkit.pubsub")


class Subscription:
    """Calls ``callback(message)`` for each message on ``topics``, from a thread of its own.

    Usable once made: it has subscribed when the constructor returns, and it is attached to
    the node. ``close()`` from any thread (the callback's own included; idempotent), ``with``,
    or closing the node stops it.

    Raises:
        ConfigError: a topic is not valid.
        ClosedError: the node is closed.
    """

    def __init__(self, node: Node, *topics: str, callback: Callable[[Message], Any]) -> None:
        self.node = node
        self.topics = topics
        self.callback = callback
        self._failures = 0
        self._subscriber: Subscriber | None = None
        self._service = ServiceThread(f"zmqkit-sub:{','.join(topics)}", self._run)
        node.attach(self)  # first: a closed node refuses before a thread is started
        try:
            self._service.start()
        except BaseException:
            node.detach(self)
            raise

    def __repr__(self) -> str:
        return f"<zmqkit pubsub.Subscription {self._subscriber!r} calling {self.callback!r}>"

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """The subscriber's counters (see ``Subscriber.stats``), and callback-failures."""
        subscriber = self._subscriber
        counts = subscriber.stats() if subscriber is not None else {}
        return dict(counts, **{"callback-failures": self._failures})

    def close(self) -> None:
        """Stop calling back; the thread ends (at once, unless the callback is running)."""
        subscriber = self._subscriber
        if subscriber is not None:
            subscriber.close()  # wakes the thread's receive, which then ends
        self._service.stop()
        self.node.detach(self)

    def _run(self, service: ServiceThread) -> None:
        with Subscriber(self.node, *self.topics) as subscriber:
            self._subscriber = subscriber
            service.ready()
            while not service.stopping:
                try:
                    message = subscriber.recv(SLICE)
                except Timeout:
                    continue
                except ClosedError:
                    return
                try:
                    self.callback(message)
                except Exception:  # one bad message must not end the subscription; logged loudly
                    self._failures += 1
                    log.exception(
                        "subscription callback %r failed on %s", self.callback, message.topic
                    )


def subscribe(node: Node, *topics: str, callback: Callable[[Message], Any]) -> Subscription:
    """Call ``callback(message)`` for each message on ``topics``, from a thread, until the node
    closes (or ``close()`` on the subscription returned)."""
    return Subscription(node, *topics, callback=callback)

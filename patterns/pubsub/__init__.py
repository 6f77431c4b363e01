"""Publish and subscribe by topic across every discovered publisher, with no broker.

    pub = pubsub.Publisher(node)                     # binds a PUB socket, advertised as "pub"
    pub.publish("ticks", {"sym": "ABC", "px": 101.25})   # from any thread

    with pubsub.Subscriber(node, "ticks") as sub:    # connects to every node that publishes
        message = sub.recv(timeout=2.0)              # Message(topic, data, publisher, seq, gap)

    async with pubsub.AsyncSubscriber(node, "ticks") as sub:    # on an asyncio loop
        message = await sub.recv(timeout=2.0)

    pubsub.subscribe(node, "ticks", callback=print)  # from a thread of its own

Topics match exactly: a subscriber to ``news`` never receives ``newsletter``, because the
subscription prefix includes the topic's CBOR length (see ``wire``). A topic ending in ``*`` is
an explicit prefix pattern: ``news.*`` receives ``news.uk`` and ``news.uk.sport``; such patterns
are filtered on the subscriber, after ZeroMQ.

Each message carries its topic, the publisher's UUID and a sequence number per (publisher,
topic), so a subscriber counts what it missed: ``message.gap`` and ``subscriber.gaps``. Gaps are
reported, never hidden. A publisher sends messages in the order they were published; while its
thread is busy, messages in a row on one topic share a PUBLISH_BATCH frame (``batch=False``: a
frame each). A subscriber that falls behind does not grow memory without bound: each side
queues at most ``SocketOptions.send_hwm`` / ``recv_hwm`` (10,000) frames, of one message or a
batch of at most 64 KiB, and the publisher drops beyond that, which shows up as gaps. Messages
published before a subscriber's connection is made are not seen by it (ZeroMQ's "slow
joiner"): publish after ``wait_for_publishers`` when it matters.

- ``wire``              the PUBLISH and PUBLISH_BATCH frames and the topic prefixes (codec's)
- ``topics``            which topics a subscriber wants: exact, or ``prefix*`` (pure)
- ``core``              ``Message`` and ``Intake``: filtering, unbatching, gaps (pure)
- ``outbox``            the thread that owns the PUB socket and sends what was published
- ``publisher``         ``Publisher``: publish from any thread
- ``publishers``        the publishers a SUB socket is connected to, kept in step with discovery
- ``feed``              one SUB socket's subscriptions, connections and intake, for both fronts
- ``base``              what both subscribers share: attaching, subscribe, the publishers' wait
- ``subscriber``        ``Subscriber``: receive in the thread that made it
- ``async_subscriber``  ``AsyncSubscriber``: receive on the loop that made it
- ``subscription``      ``subscribe`` and ``Subscription``: a callback called from a thread
"""

from __future__ import annotations

from .async_subscriber import AsyncSubscriber
from .core import MAX_STREAMS, Intake, Message
from .outbox import BATCH_BYTES, BATCH_COUNT, MAX_QUEUED, MAX_QUEUED_BATCHED, MAX_QUEUED_BYTES
from .publisher import Publisher
from .publishers import ROLE
from .subscriber import Subscriber
from .subscription import Subscription, subscribe
from .topics import WILDCARD, check_topic

__all__ = [
    "BATCH_BYTES",
    "BATCH_COUNT",
    "MAX_QUEUED",
    "MAX_QUEUED_BATCHED",
    "MAX_QUEUED_BYTES",
    "MAX_STREAMS",
    "ROLE",
    "WILDCARD",
    "AsyncSubscriber",
    "Intake",
    "Message",
    "Publisher",
    "Subscriber",
    "Subscription",
    "check_topic",
    "subscribe",
]

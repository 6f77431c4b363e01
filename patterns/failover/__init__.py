"""Failover: call a service that has several replicas through one sticky primary.

    with failover.FailoverClient(node, "store", timeout=3.0) as store:
        store.call("put", "k", 1)                  # to the primary; never run twice
        store.call("get", "k", idempotent=True)    # may be sent again to the next replica
        store.primary                              # UUID of the replica in use

    async with failover.AsyncFailoverClient(node, "store") as store:
        await store.call("get", "k", idempotent=True)

The model is the ZeroMQ Guide's **Freelance** pattern (chapter 4, "Brokerless Reliability"), in
its third form: the client knows every replica, sends to one, sticks with it while it works and
moves to the next in a fixed order when it fails; the servers need no failover code at all, so
any ``rpc.serve`` node is a replica. Binary Star does not fit: it is exactly two servers that
watch each other and vote on which one is active, which needs server cooperation and a fixed
pair, where a zmqkit name has any number of replicas that come and go through discovery. The
beacon plays the part of Freelance's heartbeats (a replica that says goodbye or falls silent is
gone), so failover costs no ping traffic.

The rules are RPC's call core (``rpc.core``: correlation, deadlines, retries, written once for
every client) with failover's routing policy (``replicas``); both clients are RPC's drivers:

- **Order.** Replicas sort by ``order(peer)`` (default: by UUID, so every client of a name picks
  the same primary). The primary is the first that has not failed in the last
  ``FAILURE_PENALTY`` seconds, and it stays primary while it works, even if a replica that sorts
  earlier appears later (sticky: no flapping).
- **When to move.** A replica fails when discovery says it left or expired, when no connection
  to it is up within ``CONNECT_WAIT``, when a call sent to it gets no answer by its deadline, and
  (for idempotent calls, if ``attempt_timeout`` is set) when it is silent that long. The next call
  goes to the next replica. A remote exception is an answer, not a failure.
- **What may be retried.** The caller's request is never lost: it ends with a result, a
  ``RemoteError``, or an error that says what happened. A request that never left this process
  (no connection) goes to the next replica, always. A request that left and whose replica then
  failed is sent again only if the caller marked it ``idempotent=True`` (an answer from any
  replica it went to is taken); otherwise the call raises ``BrokenError`` (replica gone) or
  ``Timeout`` (no answer), and the message says it may or may not have run.

Layout:

- ``replicas``      the routing policy: replicas in order, one sticky primary (pure)
- ``core``          ``FailoverCore``: the RPC call core over that policy (pure)
- ``client``        ``FailoverClient``: blocking, from any thread
- ``async_client``  ``AsyncFailoverClient``: asyncio, on one loop
"""

from __future__ import annotations

from zmqkit.patterns.rpc.core import (
    CONNECT_WAIT,
    DEFAULT_TIMEOUT,
    FAILURE_PENALTY,
    Call,
    Phase,
)
from zmqkit.patterns.rpc.routes import Target

from .async_client import AsyncFailoverClient
from .client import FailoverClient
from .core import FailoverCore
from .replicas import Order, Replicas, by_uuid

Replica = Target  # one replica of the name, as the core sees it

__all__ = [
    "CONNECT_WAIT",
    "DEFAULT_TIMEOUT",
    "FAILURE_PENALTY",
    "AsyncFailoverClient",
    "Call",
    "FailoverClient",
    "FailoverCore",
    "Order",
    "Phase",
    "Replica",
    "Replicas",
    "by_uuid",
]

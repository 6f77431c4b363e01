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

The rules, written once in ``FailoverCore`` (no sockets, no clock) for both clients:

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
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import math
import threading
import time
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from zmqkit import (
    AsyncSocket,
    BrokenError,
    BusyError,
    ClosedError,
    ConfigError,
    Node,
    Peer,
    PeerNotFound,
    ProtocolError,
    Socket,
    SocketOptions,
    Timeout,
    ZmqkitError,
    codec,
)
from zmqkit.codec import Kind
from zmqkit.errors import remote_error
from zmqkit.sockets import translate_zmq_error

__all__ = [
    "CONNECT_WAIT",
    "DEFAULT_TIMEOUT",
    "FAILURE_PENALTY",
    "AsyncFailoverClient",
    "Attempt",
    "Call",
    "FailoverClient",
    "FailoverCore",
    "Phase",
    "Replica",
    "Replicas",
    "by_uuid",
]

DEFAULT_TIMEOUT = 5.0
FAILURE_PENALTY = 5.0  # seconds a replica that failed is chosen only if every other one failed too
CONNECT_WAIT = 0.25  # how long a request waits for a connection before it tries the next replica
SLICE = 0.25  # while waiting, look at discovery at least this often
READER_WAIT = 60.0  # an async reader waits this long per look; it is cancelled on close
PRUNE_SLACK = 10_000  # wake-up times of ended calls kept before the heap is cleaned
CLIENT_OPTIONS = SocketOptions(immediate=True)  # a request never queues for a replica not connected

Order = Callable[[Peer], Any]
UUID = uuid_module.UUID


def by_uuid(peer: Peer) -> bytes:
    """The default failover order: by UUID, the same at every client, arbitrary but stable."""
    return peer.uuid.bytes


# -- the core: no sockets, no clock ---------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Replica:
    """One node that serves the name, and when it last failed."""

    uuid: uuid_module.UUID
    name: str
    endpoint: str
    rank: tuple[Any, bytes]
    failed_at: float = -math.inf

    def __str__(self) -> str:
        return f"{self.name}/{self.uuid.hex[:8]}"


class Replicas:
    """The replicas of one name in failover order, and which one is primary (sticky)."""

    def __init__(self, order: Order = by_uuid) -> None:
        self.order = order
        self.replicas: dict[uuid_module.UUID, Replica] = {}
        self.primary_uuid: uuid_module.UUID | None = None

    def ordered(self) -> list[Replica]:
        return sorted(self.replicas.values(), key=lambda replica: replica.rank)

    def sync(self, peers: Iterable[Peer]) -> tuple[list[Replica], list[Replica]]:
        """Bring the replicas in line with ``peers``; return (added, removed).

        A replica whose endpoint changed is removed and added again: what was sent to the old
        endpoint is lost with it.
        """
        wanted = {peer.uuid: peer for peer in peers if "rpc" in peer.endpoints}
        removed = [
            replica
            for uuid, replica in self.replicas.items()
            if uuid not in wanted or wanted[uuid].endpoints["rpc"] != replica.endpoint
        ]
        for replica in removed:
            del self.replicas[replica.uuid]
            if replica.uuid == self.primary_uuid:
                self.primary_uuid = None
        added = []
        for peer in wanted.values():
            if peer.uuid not in self.replicas:
                replica = Replica(
                    peer.uuid, peer.name, peer.endpoints["rpc"], (self.order(peer), peer.uuid.bytes)
                )
                self.replicas[peer.uuid] = replica
                added.append(replica)
        return added, removed

    def primary(self, now: float, exclude: Iterable[uuid_module.UUID] = ()) -> Replica | None:
        """The replica to send to: the sticky primary, or else the best other one (which then
        becomes primary); None when every replica is in ``exclude`` or none is known."""
        excluded = set(exclude)
        current = self.replicas.get(self.primary_uuid) if self.primary_uuid else None
        if current is not None and current.uuid not in excluded:
            return current
        candidates = [r for r in self.replicas.values() if r.uuid not in excluded]
        if not candidates:
            return None

        def preference(replica: Replica) -> tuple[bool, float, tuple[Any, bytes]]:
            recent = now - replica.failed_at < FAILURE_PENALTY
            # healthy ones first in order; among the recently failed, the longest ago first
            return (recent, replica.failed_at if recent else 0.0, replica.rank)

        best = min(candidates, key=preference)
        self.primary_uuid = best.uuid
        return best

    def fail(self, replica: Replica, now: float) -> None:
        """``replica`` failed: it loses the primary role and goes to the back of the order."""
        replica.failed_at = now
        if self.primary_uuid == replica.uuid:
            self.primary_uuid = None


class Phase(enum.Enum):
    ROUTING = "routing"  # to be sent: a first attempt, or a retry
    IN_FLIGHT = "in flight"  # sent to ``call.replica``, waiting for its answer
    DONE = "done"  # ``call.result`` or ``call.error`` is set


@dataclass(slots=True, eq=False)
class Call:
    """One call from the caller's request to its outcome, across attempts on several replicas."""

    call_id: int  # one id for every attempt: the same request, sent to each replica in turn
    method: str
    frame: bytes
    idempotent: bool
    started: float
    deadline: float
    phase: Phase = Phase.ROUTING
    replica: Replica | None = None  # of the attempt in flight
    attempt_deadline: float = math.inf
    sent_to: set[uuid_module.UUID] = field(default_factory=set)  # answers from these count
    tried: set[uuid_module.UUID] = field(default_factory=set)  # this round's failed replicas
    items: list[Any] = field(default_factory=list)  # a generator method's items so far
    result: Any = None
    error: ZmqkitError | None = None

    def outcome(self) -> Any:
        """The result, or raise the error the call ended with."""
        if self.error is not None:
            raise self.error
        return self.result

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now)


@dataclass(frozen=True, slots=True)
class Attempt:
    """Send ``call.frame`` to ``replica`` now; report back with ``sent`` or ``unreachable``."""

    call: Call
    replica: Replica


class FailoverCore:
    """Which replica gets a call, when to move on, and what may be sent again.

    The drivers feed it discovery (``sync``), what happened to sends (``sent``,
    ``unreachable``), the frames that arrive (``receive``) and the time (``expire``); it keeps
    the calls in flight and ends each one exactly once.
    """

    def __init__(
        self, name: str, *, order: Order = by_uuid, attempt_timeout: float | None = None
    ) -> None:
        if attempt_timeout is not None and not 0 < attempt_timeout < 1e7:
            raise ConfigError(
                f"attempt_timeout is a number of seconds > 0 or None, not {attempt_timeout!r}"
            )
        self.name = name
        self.replicas = Replicas(order)
        self.attempt_timeout = attempt_timeout
        self.calls: dict[int, Call] = {}  # by call id, until they end
        self.stats: Counter[str] = Counter()
        self.refusal: ZmqkitError | None = None  # why the last replica we could not use was refused
        self._ids = itertools.count(1)

    def begin(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        idempotent: bool,
        timeout: float,
        now: float,
    ) -> Call:
        """Start a call.

        Raises:
            ConfigError: ``timeout`` is not a finite number of seconds >= 0.
            EncodeError: the arguments cannot travel on the wire.
        """
        if not isinstance(timeout, (int, float)) or not 0 <= timeout < 1e7:
            raise ConfigError(f"a timeout is a finite number of seconds >= 0, not {timeout!r}")
        call_id = next(self._ids)
        frame = codec.encode_request(call_id, method, list(args), kwargs)
        call = Call(call_id, method, frame, idempotent, now, now + timeout)
        self.calls[call_id] = call
        self.stats["calls"] += 1
        return call

    def route(self, call: Call, now: float) -> Attempt | None:
        """Where a call that needs sending goes now; None while no replica is known."""
        replica = self.replicas.primary(now, exclude=call.tried)
        if replica is None and call.tried and self.replicas.replicas:
            call.tried.clear()  # every replica had its turn: start another round
            replica = self.replicas.primary(now)
        return None if replica is None else Attempt(call, replica)

    def sent(self, attempt: Attempt, now: float) -> None:
        """The request left for ``attempt.replica``."""
        call, replica = attempt.call, attempt.replica
        if call.phase is not Phase.ROUTING:
            return
        call.phase = Phase.IN_FLIGHT
        call.replica = replica
        call.sent_to.add(replica.uuid)
        call.tried.add(replica.uuid)
        if call.idempotent and self.attempt_timeout is not None:
            call.attempt_deadline = now + self.attempt_timeout
        self.stats["sent"] += 1

    def unreachable(self, attempt: Attempt, now: float) -> None:
        """No connection to ``attempt.replica``: the request never left, so the next replica
        gets it whatever the call is."""
        if attempt.call.phase is not Phase.ROUTING:
            return
        self.replicas.fail(attempt.replica, now)
        attempt.call.tried.add(attempt.replica.uuid)
        self.stats["unreachable"] += 1

    def receive(self, replica_uuid: uuid_module.UUID, frame: bytes) -> Call | None:
        """Take one frame from a replica's socket; return the call it ended, if any.

        Garbage and answers to calls that ended already are dropped and counted.
        """
        try:
            message = codec.decode(frame)
        except ProtocolError:
            self.stats["dropped-garbage"] += 1
            return None
        kind = message[1]
        call = self.calls.get(message[2])
        if call is None and message[2] == 0 and kind == Kind.ERROR:
            call = self._only_call_on(replica_uuid)  # protocol.md 6.3: a request it could not read
        if call is None or replica_uuid not in call.sent_to:
            self.stats["dropped-stale"] += 1
            return None
        if kind == Kind.STREAM_ITEM:
            call.items.append(message[3])
            return None
        if kind == Kind.REPLY:
            self._finish(call, result=message[3])
        elif kind == Kind.STREAM_END:
            self._finish(call, result=call.items)
        elif kind == Kind.ERROR:
            self._finish(call, error=remote_error(message[3], message[4], message[5]))
        else:
            self.stats["dropped-not-an-answer"] += 1
            return None
        self.stats["answered"] += 1
        return call

    def sync(
        self, peers: Iterable[Peer], now: float
    ) -> tuple[list[Replica], list[Replica], list[Call]]:
        """Take discovery's view of the replicas; return (added, removed, calls it changed)."""
        added, removed = self.replicas.sync(peers)
        gone = {replica.uuid for replica in removed}
        changed = []
        for call in list(self.calls.values()):
            replica = call.replica
            if call.phase is Phase.IN_FLIGHT and replica is not None and replica.uuid in gone:
                self._lost(call, now, "left the network", gone=True)
                changed.append(call)
        return added, removed, changed

    def expire(self, call: Call, now: float) -> bool:
        """Apply the deadlines to ``call`` at ``now``; True if that changed it."""
        if call.phase is Phase.DONE:
            return False
        if now >= call.deadline:
            self._finish(call, error=self._timeout(call, now))
            return True
        if call.phase is Phase.IN_FLIGHT and now >= call.attempt_deadline:
            self._lost(call, now, f"was silent for {self.attempt_timeout:g} s", gone=False)
            return True
        return False

    def wake_at(self, call: Call) -> float:
        """When ``expire`` may next change ``call``, if nothing arrives before."""
        return min(call.deadline, call.attempt_deadline)

    def abandon(self, call: Call) -> None:
        """The caller stopped waiting (cancelled, interrupted): forget the call."""
        if call.phase is not Phase.DONE:
            self._finish(call, error=ClosedError(f"{self.name}.{call.method}() was abandoned"))

    def note_refusal(self, error: ZmqkitError) -> None:
        """A replica could not be used at all (security): say so instead of PeerNotFound."""
        self.refusal = error
        self.stats["refused"] += 1

    # -- the parts -----------------------------------------------------------------------------

    def _lost(self, call: Call, now: float, what: str, *, gone: bool) -> None:
        """The replica a call waits on left (``gone``) or stayed silent past ``attempt_timeout``:
        send the call on, wait for another replica that has it, or end it."""
        replica = call.replica
        assert replica is not None
        call.attempt_deadline = math.inf
        if not call.idempotent:  # may_retry(sent=True) is False: it may have run already
            self.replicas.fail(replica, now)
            self._finish(
                call,
                error=BrokenError(
                    f"{self.name}.{call.method}() was sent to {replica}, which {what} before "
                    "answering: it may or may not have run, and it was not sent again because the "
                    "call is not marked idempotent"
                ),
            )
            return
        present = self.replicas.replicas.values()
        untried = [r for r in present if r.uuid not in call.sent_to and r.uuid not in call.tried]
        also_asked = [r for r in present if r.uuid in call.sent_to and r is not replica]
        if not gone and not untried:
            return  # silent, but no replica is left that has not got it: keep waiting for them
        self.replicas.fail(replica, now)
        if untried or not also_asked:
            call.phase = Phase.ROUTING  # to the next replica (an answer from this one still counts)
            call.replica = None
            self.stats["retried"] += 1
        else:
            call.replica = also_asked[0]  # another replica has the request already: wait for it

    def _timeout(self, call: Call, now: float) -> ZmqkitError:
        budget = f"{call.deadline - call.started:g} s"
        if call.phase is Phase.IN_FLIGHT:
            assert call.replica is not None
            self.replicas.fail(call.replica, now)
            if not call.idempotent:
                return Timeout(
                    f"{self.name}.{call.method}() got no answer from {call.replica} in "
                    f"{budget}: it may or may not have run, and it was not sent again "
                    "because the call is not marked idempotent"
                )
            return Timeout(
                f"{self.name}.{call.method}() got no answer in {budget} from any of "
                f"{len(call.sent_to)} replica(s) it was sent to"
            )
        if call.sent_to:
            return Timeout(
                f"{self.name}.{call.method}() got no answer in {budget}; no replica "
                f"could take it again after {len(call.sent_to)} tried it"
            )
        if not self.replicas.replicas:
            if self.refusal is not None:
                return self.refusal
            return PeerNotFound(f"no node called {self.name!r} serving RPC was found in {budget}")
        return Timeout(
            f"{self.name}.{call.method}() could not reach any replica in {budget}; "
            "it was never sent, so it did not run"
        )

    def _only_call_on(self, replica_uuid: uuid_module.UUID) -> Call | None:
        in_flight = [
            call
            for call in self.calls.values()
            if call.phase is Phase.IN_FLIGHT
            and call.replica is not None
            and call.replica.uuid == replica_uuid
        ]
        return in_flight[0] if len(in_flight) == 1 else None

    def _finish(self, call: Call, *, result: Any = None, error: ZmqkitError | None = None) -> None:
        call.phase = Phase.DONE
        call.result, call.error = result, error
        call.attempt_deadline = math.inf
        self.calls.pop(call.call_id, None)


# -- shared by both drivers -----------------------------------------------------------------------


class _Connections:
    """One socket per usable replica, kept in step with discovery."""

    def __init__(self, node: Node, core: FailoverCore, make: Callable[[], Socket]) -> None:
        self.node = node
        self.core = core
        self.version = -1
        self.sockets: dict[uuid_module.UUID, tuple[str, Socket]] = {}
        self.refused: set[uuid_module.UUID] = set()
        self._make = make

    def stale(self) -> bool:
        return self.version != self.node.peers_version

    def refresh(self, now: float) -> tuple[list[UUID], list[UUID], list[Call]]:
        """Sync sockets and core with discovery; return (added, removed, calls changed)."""
        version = self.node.peers_version  # first: then the list is at least this new
        peers = self.node.peers(self.core.name, role="rpc")
        self.version = version
        endpoints = {peer.uuid: peer.endpoints["rpc"] for peer in peers}
        removed = [
            uuid for uuid, (endpoint, _) in self.sockets.items() if endpoints.get(uuid) != endpoint
        ]
        for node_uuid in removed:
            self.sockets.pop(node_uuid)[1].close()
        self.refused &= set(endpoints)
        if not self.refused:
            self.core.refusal = None  # the refused peers have gone: PeerNotFound says it best
        usable = []
        for peer in peers:
            if peer.uuid not in self.sockets and peer.uuid not in self.refused:
                self._connect(peer)
            if peer.uuid in self.sockets:
                usable.append(peer)
        added, _, changed = self.core.sync(usable, now)
        return [replica.uuid for replica in added], removed, changed

    def _connect(self, peer: Peer) -> None:
        sock = self._make()
        try:
            self.node.secure_client(sock, peer)
            sock.connect(peer.endpoints["rpc"])
        except ZmqkitError as exc:  # refused by security, or an endpoint we cannot use
            sock.close()
            self.refused.add(peer.uuid)
            self.core.note_refusal(exc)
            return
        self.sockets[peer.uuid] = (peer.endpoints["rpc"], sock)

    def close(self) -> None:
        for _, sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.version = -1


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a failover client calls the replicas of one name (text), not {name!r}")


# -- the blocking client --------------------------------------------------------------------------


class FailoverClient:
    """Calls the replicas called ``name`` through one sticky primary, from one thread.

    ``client.call("get", "k", idempotent=True)``. Every call has a deadline (``timeout``,
    default 5 s) shared by all its attempts. Closed by ``close()``, ``with``, or its node's close.

    Args:
        order: sort key over ``Peer`` for the failover order, e.g.
            ``lambda peer: int(peer.headers.get("rank", "99"))``; default by UUID.
        attempt_timeout: after this many silent seconds, an idempotent call is also sent to the
            next replica (and the silent one stops being primary); None: only on failure.
    """

    def __init__(
        self,
        node: Node,
        name: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float | None = None,
        order: Order = by_uuid,
    ) -> None:
        _check_name(name)
        self.node = node
        self.name = name
        self.timeout = timeout
        self._core = FailoverCore(name, order=order, attempt_timeout=attempt_timeout)
        self._connections = _Connections(
            node, self._core, lambda: Socket(zmq.DEALER, options=CLIENT_OPTIONS)
        )
        self._owner = threading.get_ident()
        self._closed = False
        self._discovery = threading.Event()
        node.attach(self)  # first: a closed node refuses before anything is made
        self._unsubscribe = node.on_event(lambda _: self._discovery.set())

    def __repr__(self) -> str:
        return f"<zmqkit failover.FailoverClient for {self.name!r}, primary {self._primary_text()}>"

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; later calls raise ClosedError. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self._connections.close()
        self.node.detach(self)

    @property
    def primary(self) -> uuid_module.UUID | None:
        """The UUID of the replica calls go to now (None before the first call)."""
        return self._core.replicas.primary_uuid

    @property
    def replicas(self) -> list[uuid_module.UUID]:
        """The known replicas, in failover order."""
        return [replica.uuid for replica in self._core.replicas.ordered()]

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._core.stats)

    def call(
        self,
        method: str,
        *args: Any,
        idempotent: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``method(*args, **kwargs)`` on the primary replica and return its result.

        Raises:
            RemoteError: the method raised on the replica.
            BrokenError: a call not marked idempotent lost its replica before an answer.
            Timeout: no answer in time (the message says whether it may have run).
            PeerNotFound: no replica was found in time.
        """
        return self.call_with(method, args, kwargs, idempotent=idempotent, timeout=timeout)

    def call_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """``call`` with the arguments as values, for methods with a ``timeout`` parameter."""
        self._check_usable()
        core = self._core
        call = core.begin(
            method,
            args,
            kwargs or {},
            idempotent=idempotent,
            timeout=self.timeout if timeout is None else timeout,
            now=time.monotonic(),
        )
        try:
            while call.phase is not Phase.DONE:
                if self._connections.stale():
                    self._connections.refresh(time.monotonic())
                if call.phase is Phase.ROUTING:
                    self._send(call)
                elif call.phase is Phase.IN_FLIGHT:
                    self._wait(call)
                core.expire(call, time.monotonic())
        finally:
            core.abandon(call)  # only if it has not ended: an interrupt, or a bug below
        return call.outcome()

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if threading.get_ident() != self._owner:
            raise BusyError(f"{self!r} belongs to the thread that created it; make one per thread")

    def _primary_text(self) -> str:
        return self.primary.hex[:8] if self.primary else "not chosen yet"

    def _send(self, call: Call) -> None:
        now = time.monotonic()
        attempt = self._core.route(call, now)
        if attempt is None:  # no replica known yet: wait for discovery (expire() ends the wait)
            self._discovery.wait(min(SLICE, call.remaining(now)))
            self._discovery.clear()
            return
        raw = self._connections.sockets[attempt.replica.uuid][1].raw
        sent = _send_now(raw, call.frame)
        if not sent:  # no connection yet: give it a moment, then try the next replica
            wait = min(CONNECT_WAIT, call.remaining(now))
            try:
                sent = bool(raw.poll(math.ceil(wait * 1000), zmq.POLLOUT))
            except zmq.ZMQError as exc:
                raise translate_zmq_error(exc, "waiting to send a request") from exc
            sent = sent and _send_now(raw, call.frame)
        if sent:
            self._core.sent(attempt, time.monotonic())
        else:
            self._core.unreachable(attempt, time.monotonic())

    def _wait(self, call: Call) -> None:
        """Wait for an answer from a replica the call went to, at most until its next deadline
        (and a slice, to look at discovery)."""
        timeout = max(0.0, min(SLICE, self._core.wake_at(call) - time.monotonic()))
        sockets = self._connections.sockets
        asked = [uuid for uuid in call.sent_to if uuid in sockets]
        if len(asked) == 1:  # the usual case: a plain receive, as fast as a hand-written REQ
            try:
                frame = sockets[asked[0]][1].recv(timeout)
            except Timeout:
                return
            self._core.receive(asked[0], frame)
        elif asked:  # an idempotent call sent to several replicas: the first answer wins
            raws = {id(sockets[uuid][1].raw): uuid for uuid in asked}
            try:
                readable, _, _ = zmq.select(
                    [sockets[uuid][1].raw for uuid in asked], [], [], timeout
                )
                for raw in readable:
                    self._drain(raws[id(raw)], raw)
            except zmq.ZMQError as exc:
                raise translate_zmq_error(exc, "waiting for an answer") from exc
        else:  # every replica it went to has gone: the core decides what next
            self._discovery.wait(timeout)

    def _drain(self, node_uuid: uuid_module.UUID, raw: zmq.Socket[Any]) -> None:
        while True:
            try:
                frame = raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._core.receive(node_uuid, frame)


def _send_now(raw: zmq.Socket[Any], frame: bytes) -> bool:
    """Send without waiting; False when there is no connection to send on (or its queue is full)."""
    try:
        raw.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, "sending a request") from exc
    return True


# -- the asyncio client ---------------------------------------------------------------------------


class AsyncFailoverClient:
    """``FailoverClient`` for asyncio code; any number of calls in flight, on one loop.

    ``await client.call("get", "k", idempotent=True)``. One reader task per replica matches
    answers to calls; each call's own coroutine sends, retries and keeps its deadlines.
    """

    def __init__(
        self,
        node: Node,
        name: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float | None = None,
        order: Order = by_uuid,
    ) -> None:
        _check_name(name)
        self.node = node
        self.name = name
        self.timeout = timeout
        self._core = FailoverCore(name, order=order, attempt_timeout=attempt_timeout)
        self._connections = _Connections(
            node, self._core, lambda: AsyncSocket(zmq.DEALER, options=CLIENT_OPTIONS)
        )
        self._readers: dict[uuid_module.UUID, asyncio.Task[None]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}  # by call id
        self._timers: list[tuple[float, int]] = []  # heap of (when, call id) to wake
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._discovery: asyncio.Event | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        node.attach(self)

    def __repr__(self) -> str:
        primary = self.primary.hex[:8] if self.primary else "not chosen yet"
        return f"<zmqkit failover.AsyncFailoverClient for {self.name!r}, primary {primary}>"

    async def __aenter__(self) -> AsyncFailoverClient:
        self._bind_loop()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the readers, close the sockets; calls in flight raise ClosedError."""
        readers = list(self._readers.values())
        self.close()
        await asyncio.gather(*readers, return_exceptions=True)

    def close(self) -> None:
        """Close without waiting for the readers to finish (``aclose`` does): for node.close()."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for reader in self._readers.values():
            reader.cancel()
        self._readers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._connections.close()
        for call in list(self._core.calls.values()):
            self._core.abandon(call)
            self._wake(call)
        self.node.detach(self)

    @property
    def primary(self) -> uuid_module.UUID | None:
        """The UUID of the replica calls go to now (None before the first call)."""
        return self._core.replicas.primary_uuid

    @property
    def replicas(self) -> list[uuid_module.UUID]:
        """The known replicas, in failover order."""
        return [replica.uuid for replica in self._core.replicas.ordered()]

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._core.stats)

    async def call(
        self,
        method: str,
        *args: Any,
        idempotent: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``method(*args, **kwargs)`` on the primary replica; see ``FailoverClient.call``."""
        return await self.call_with(method, args, kwargs, idempotent=idempotent, timeout=timeout)

    async def call_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """``call`` with the arguments as values, for methods with a ``timeout`` parameter."""
        self._bind_loop()
        core = self._core
        call = core.begin(
            method,
            args,
            kwargs or {},
            idempotent=idempotent,
            timeout=self.timeout if timeout is None else timeout,
            now=time.monotonic(),
        )
        try:
            while call.phase is not Phase.DONE:  # close() ends every call with ClosedError
                if self._connections.stale():
                    self._refresh()
                if call.phase is Phase.ROUTING:
                    if not self._send_now(call):
                        await self._send_when_possible(call)
                elif call.phase is Phase.IN_FLIGHT:
                    await self._wait(call)
                core.expire(call, time.monotonic())
        finally:
            core.abandon(call)  # only if it has not ended: cancelled by the caller
        return call.outcome()

    # -- the parts -----------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._loop is None:
            self._loop = loop
            self._discovery = asyncio.Event()

            def on_presence(_: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._on_presence)

            self._unsubscribe = self.node.on_event(on_presence)
        elif self._loop is not loop:
            raise BusyError(f"{self!r} belongs to another event loop; make one per loop")
        return loop

    def _on_presence(self) -> None:
        if not self._closed:
            self._refresh()
            assert self._discovery is not None
            self._discovery.set()

    def _refresh(self) -> None:
        added, removed, changed = self._connections.refresh(time.monotonic())
        for node_uuid in removed:
            reader = self._readers.pop(node_uuid, None)
            if reader is not None:
                reader.cancel()
        for node_uuid in added:
            sock = self._connections.sockets[node_uuid][1]
            assert isinstance(sock, AsyncSocket)
            self._readers[node_uuid] = asyncio.ensure_future(self._read(node_uuid, sock))
        for call in changed:
            self._wake(call)

    def _wake(self, call: Call) -> None:
        waiter = self._waiters.get(call.call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _send_now(self, call: Call) -> bool:
        """The usual case, without suspending: the primary is connected and takes the request."""
        now = time.monotonic()
        attempt = self._core.route(call, now)
        if attempt is None:
            return False
        sock = self._connections.sockets[attempt.replica.uuid][1]
        assert isinstance(sock, AsyncSocket)
        if not sock.send_nowait(call.frame):
            return False
        self._core.sent(attempt, now)
        return True

    async def _send_when_possible(self, call: Call) -> None:
        """No replica known, or no connection to the chosen one: wait a little for either."""
        now = time.monotonic()
        attempt = self._core.route(call, now)
        if attempt is None:  # no replica known yet: wait for discovery (expire() ends the wait)
            discovery = self._discovery
            assert discovery is not None
            discovery.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(discovery.wait(), min(SLICE, call.remaining(now)))
            return
        sock = self._connections.sockets[attempt.replica.uuid][1]
        assert isinstance(sock, AsyncSocket)
        sent = sock.send_nowait(call.frame)
        if not sent:  # no connection yet: give it a moment, then try the next replica
            wait_until = now + min(CONNECT_WAIT, call.remaining(now))
            while not sent:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or not await sock.wait_writable(remaining) or sock.closed:
                    break
                sent = sock.send_nowait(call.frame)
        if sent:
            self._core.sent(attempt, time.monotonic())
        else:
            self._core.unreachable(attempt, time.monotonic())

    async def _wait(self, call: Call) -> None:
        """Wait for the call's answer, a discovery change (both wake it) or its next deadline."""
        assert self._loop is not None
        waiter = self._waiters[call.call_id] = self._loop.create_future()
        self._wake_later(call, self._core.wake_at(call))
        try:
            await waiter
        finally:
            self._waiters.pop(call.call_id, None)

    def _wake_later(self, call: Call, at: float) -> None:
        """Wake ``call`` at ``at``: one heap and one timer for every call, not a timer each."""
        timers = self._timers
        heapq.heappush(timers, (at, call.call_id))
        if len(timers) > 4 * len(self._waiters) + PRUNE_SLACK:  # mostly calls that have ended
            timers[:] = [entry for entry in timers if entry[1] in self._waiters]
            heapq.heapify(timers)
        if at < self._sweep_at:
            if self._sweeper is not None:
                self._sweeper.cancel()
            assert self._loop is not None
            self._sweep_at = at
            self._sweeper = self._loop.call_later(max(0.0, at - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        """Wake the calls whose time has come; arm the timer for the next one."""
        self._sweeper, self._sweep_at = None, math.inf
        timers, now = self._timers, time.monotonic()
        while timers and timers[0][0] <= now:
            waiter = self._waiters.get(heapq.heappop(timers)[1])
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if timers:
            assert self._loop is not None
            self._sweep_at = timers[0][0]
            self._sweeper = self._loop.call_later(max(0.0, self._sweep_at - now), self._sweep)

    async def _read(self, node_uuid: uuid_module.UUID, sock: AsyncSocket) -> None:
        raw = sock.raw
        while True:
            try:
                frame = raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                await sock.wait_readable(READER_WAIT)
                continue
            except zmq.ZMQError as exc:
                if sock.closed:
                    return  # the replica went and its socket was closed under us
                raise translate_zmq_error(exc, "reading answers") from exc
            call = self._core.receive(node_uuid, frame)
            if call is not None:
                self._wake(call)

"""The call core: one call from its request to its outcome, written once for every caller.

No sockets and no clock: the drivers (``sync_caller`` for threads, ``async_caller`` for asyncio,
under ``rpc.Client``, ``rpc.AsyncClient`` and both failover clients) feed it discovery
(``sync``), what happened to each send (``sent``, ``unreachable``), the frames that arrive
(``receive``) and the time (``expire``); it keeps the calls in flight and ends each one exactly
once. A routing policy (``routes.Targets``) says which node gets each attempt.

- **Correlation.** Every call has an id (1 and up); an answer counts only if it carries that id
  and comes from a node the call was sent to. An ERROR with call id 0 answers a request its
  server could not read (docs/protocol.md, 6.3): it is taken as the answer of the one call in
  flight on that connection, and dropped when there are several (it cannot say which).
- **Deadline.** One budget per call, shared by all its attempts (a stream's is per item, and
  runs only while its reader waits).
- **Streams.** A stream is flow-controlled (docs/protocol.md, 6.7): the request asks for a
  window of items, each item must carry the next index, the end says how many were sent, and
  ``took`` says when the reader has taken enough to grant the next half window. A server that
  does not know ``zmqkit.stream`` (older than flow control) gets the plain request instead.
- **Retry.** A request that never left this process (no connection to the chosen node) goes to
  the next node, always. One that left may have run: it is sent again only if the caller marked
  it idempotent (``may_retry``), when its node leaves or (with ``attempt_timeout``) stays silent;
  otherwise the call ends with ``BrokenError`` or ``Timeout``, saying it may or may not have run.
"""

from __future__ import annotations

import enum
import itertools
import math
import uuid as uuid_module
from collections import Counter
from collections.abc import Iterable
from typing import Any

from zmqkit import (
    BrokenError,
    ClosedError,
    ConfigError,
    Peer,
    PeerNotFound,
    ProtocolError,
    Timeout,
    ZmqkitError,
    codec,
    remote_error,
)
from zmqkit.codec import Kind

from . import tracing
from .routes import FAILURE_PENALTY, ROLE, Target, Targets
from .streams import STREAM_METHOD

__all__ = [
    "CONNECT_WAIT",
    "DEFAULT_TIMEOUT",
    "FAILURE_PENALTY",
    "SLICE",
    "STREAM_WINDOW",
    "Call",
    "CallCore",
    "Phase",
    "may_retry",
    "outcome",
]

DEFAULT_TIMEOUT = 5.0
SLICE = 0.25  # while waiting, a driver looks at discovery (and at close) at least this often
CONNECT_WAIT = 0.25  # how long a request waits for a connection before it tries the next node
STREAM_WINDOW = 256  # items a stream's server may send ahead of its reader
RARE_STATS = ("retried", "unreachable", "refused", "dropped-garbage", "dropped-stale",
              "dropped-not-an-answer")
KEYRING_HINT = "(a CURVE node admits only peers whose key is in its keyring: is this one's?)"

_REPLY, _ITEM, _END, _ERROR = Kind.REPLY, Kind.STREAM_ITEM, Kind.STREAM_END, Kind.ERROR
_FLOW_ITEM, _FLOW_END = Kind.FLOW_ITEM, Kind.FLOW_END


class Phase(enum.Enum):
    """Where a call is: to be sent, sent and waiting, or ended."""

    ROUTING = "routing"  # to be sent: a first attempt, or a retry
    IN_FLIGHT = "in flight"  # sent to ``call.target``, waiting for its answer
    DONE = "done"  # ``call.result`` or ``call.error`` is set


# the phases as plain names: an enum member looked up on its class costs ten times more
_ROUTING, _IN_FLIGHT, _DONE = Phase.ROUTING, Phase.IN_FLIGHT, Phase.DONE
_NEVER = math.inf
_TRACING = tracing.ENABLED


class Call:
    """One call from the caller's request to its outcome, across attempts on several nodes.

    Made by ``CallCore.begin``, which sets every field itself: a constructor would add a
    Python frame to every call, costing about as much as the fields.
    """

    __slots__ = (
        "attempt_deadline", "budget", "call_id", "deadline", "error", "frame", "held",
        "idempotent", "items", "limit", "method", "phase", "plain_frame", "promise",
        "received", "result", "sent_to", "stream", "taken", "target", "tried", "via",
    )
    call_id: int  # one id for every attempt: the same request, to each node in turn
    method: str
    frame: bytes
    idempotent: bool
    stream: bool  # items are handed over as they come, and extend the deadline
    budget: float
    deadline: float
    phase: Phase
    target: Target | None  # of the attempt in flight
    via: object  # the connection that attempt went on (for an ERROR with id 0)
    attempt_deadline: float
    # a list, not a set: a UUID hashes in Python, and this holds one or two UUIDs, found by
    # identity (the node's own UUID object) on the hot path
    sent_to: list[uuid_module.UUID]  # answers from these count
    # None until needed: every container a call makes costs the garbage collector, which sees
    # a thousand calls in flight at once when they are pipelined
    tried: list[uuid_module.UUID] | None  # this round's nodes that failed it
    held: Target | None  # the target that counts this call as pending
    items: list[Any] | None  # a generator method's items not handed over yet
    promise: Any  # the driver's own (asyncio: the future of a submitted call)
    result: Any
    error: ZmqkitError | None
    # a stream's only, set by CallCore.begin for a stream: its flow control
    limit: int  # the items below this index may come (0: a plain request, no flow control)
    received: int  # the index the next item must carry
    taken: int  # items the reader has taken
    plain_frame: bytes | None  # the plain request, for a server older than flow control

    def __repr__(self) -> str:
        return f"<zmqkit rpc call {self.call_id} {self.method}() {self.phase.value}>"

    def outcome(self) -> Any:
        """The result, or raise the error the call ended with."""
        if self.error is not None:
            raise self.error
        return self.result

    def remaining(self, now: float) -> float:
        """Seconds left before the call's deadline."""
        return max(0.0, self.deadline - now)

    @property
    def started(self) -> float:
        """When the call (or, for a stream, its last item) started its wait."""
        return self.deadline - self.budget


def may_retry(*, idempotent: bool, sent: bool) -> bool:
    """Whether a failed call may be sent again (see the module docstring)."""
    return idempotent or not sent


def outcome(message: list[Any]) -> Any:
    """The value an answer carries, or raise the ``RemoteError`` an error answer carries.

    Raises:
        RemoteError: the answer is an ERROR.
        ProtocolError: the message is not an answer at all.
    """
    kind = message[1]
    if kind in (_REPLY, _ITEM):
        return message[3]
    if kind == _ERROR:
        raise remote_error(message[3], message[4], message[5])
    if kind == _END:
        return None
    raise ProtocolError(f"expected a reply, got a message of kind {kind!r}")


def _description(peer: Peer | None) -> tuple[Any, ...]:
    """What a refusal depends on: a refused node is tried again only once this changes."""
    if peer is None:
        return ()
    return (peer.endpoints.get(ROLE), tuple(sorted(peer.headers.items())))


class CallCore:
    """Every call in flight to the nodes called ``name``, routed by ``targets``.

    Args:
        name: the service name the calls go to.
        targets: the routing policy (``Routes`` for RPC, ``Replicas`` for failover).
        attempt_timeout: after this many silent seconds, an idempotent call is also sent to the
            next node (and the silent one counts as failed); None: only when a node fails.
    """

    def __init__(self, name: str, targets: Targets, *,
                 attempt_timeout: float | None = None) -> None:
        if attempt_timeout is not None and not (
            isinstance(attempt_timeout, (int, float)) and 0 < attempt_timeout < 1e7
        ):
            raise ConfigError(
                f"attempt_timeout is a number of seconds > 0 or None, not {attempt_timeout!r}"
            )
        self.name = name
        self.targets = targets
        self.attempt_timeout = attempt_timeout
        self.calls: dict[int, Call] = {}  # by call id, until they end
        # what happens rarely; the three hot counters are plain ints
        self.counts: Counter[str] = Counter(dict.fromkeys(RARE_STATS, 0))
        self.calls_count = self.sent_count = self.answered_count = 0
        self.refusal: ZmqkitError | None = None  # why the last node we could not use was refused
        self.refused: dict[uuid_module.UUID, tuple[Any, ...]] = {}
        self.version = -1  # the discovery version last synced (-1: look again)
        self.generation = 0  # grows whenever the set of targets changes
        self.hint = ""  # said when no node could be reached (the driver knows why it may be)
        self.where = ""  # said when no node was found (e.g. the beacon port)
        self._ids = itertools.count(1)

    @property
    def stats(self) -> Counter[str]:
        """Counters: calls, sent, answered, retried, unreachable, refused, dropped-*."""
        stats = Counter(calls=self.calls_count, sent=self.sent_count,
                        answered=self.answered_count)
        stats.update(self.counts)
        return stats

    def explain(self, *, keyed: bool, beacon_port: int) -> None:
        """What a timeout or PeerNotFound says about why (the driver knows its node)."""
        self.hint = KEYRING_HINT if keyed else ""
        self.where = f"beacon port {beacon_port}"

    # -- a call's life -------------------------------------------------------------------------

    def begin(self, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
              idempotent: bool, timeout: float, now: float, stream: bool = False) -> Call:
        """Start a call (the drivers pass the arguments by position: cheaper, on every call).

        Raises:
            ConfigError: ``timeout`` is not a finite number of seconds >= 0.
            EncodeError: the arguments cannot travel on the wire.
        """
        if not isinstance(timeout, (int, float)) or not 0 <= timeout < 1e7:
            raise ConfigError(f"a timeout is a finite number of seconds >= 0, not {timeout!r}")
        call = Call()
        call.call_id = call_id = next(self._ids)
        call.method = method
        if stream:
            call.frame = codec.encode_request(
                call_id, STREAM_METHOD, [method, args, kwargs, STREAM_WINDOW], {})
            call.plain_frame = codec.encode_request(call_id, method, args, kwargs)
            call.limit, call.received, call.taken = STREAM_WINDOW, 0, 0
        else:
            if _TRACING:  # OpenTelemetry is installed: a call in a span carries its context
                kwargs = tracing.outgoing(kwargs)
            call.frame = codec.encode_request(call_id, method, args, kwargs)
        call.idempotent = idempotent and not stream
        call.stream = stream
        call.budget = timeout
        call.deadline = now + timeout
        call.phase = _ROUTING
        call.target = call.via = call.held = call.tried = call.items = None
        call.promise = call.result = call.error = None
        call.attempt_deadline = _NEVER
        call.sent_to = []
        self.calls[call_id] = call
        self.calls_count += 1
        return call

    def route(self, call: Call, now: float) -> Target | None:
        """Where a call that needs sending goes now; report back with ``sent`` or
        ``unreachable``. None while no node is known (or, when every node found was refused,
        the call ends at once with the refusal)."""
        targets = self.targets
        tried = call.tried
        if not tried:
            target = targets.take(now)
        else:
            target = targets.take(now, tried)
            if target is None and targets.targets:
                tried.clear()  # every node had its turn: start another round
                target = targets.take(now)
        if target is None and self.refusal is not None and not targets.targets:
            self._finish(call, error=self.refusal)
        return target

    def sent(self, call: Call, target: Target, now: float, via: object = None) -> None:
        """The request left for ``target`` (on connection ``via``)."""
        if call.phase is not _ROUTING:  # ended meanwhile (closed, abandoned)
            self.targets.finished(target)
            return
        call.phase = _IN_FLIGHT
        call.target = call.held = target  # nothing holds a call being routed (see _lost)
        call.via = via
        uuid = target.uuid
        if uuid not in call.sent_to:
            call.sent_to.append(uuid)
        if call.idempotent and self.attempt_timeout is not None:
            call.attempt_deadline = now + self.attempt_timeout
        self.sent_count += 1

    def unreachable(self, call: Call, target: Target, now: float) -> None:
        """No connection to ``target``: the request never left, so the next node gets it
        whatever the call is."""
        self.targets.unreachable(target, now)
        if call.phase is not _ROUTING:
            return
        _tried(call, target)
        self.counts["unreachable"] += 1

    def receive(self, node: uuid_module.UUID, frame: bytes, via: object = None,
                now: float | None = None) -> Call | None:
        """Take one frame from ``node``'s connection ``via``; return the call it ended, or the
        stream call it brought an item to (its deadline then runs from ``now``).

        Garbage and answers to calls that ended already are dropped and counted.
        """
        try:
            message = codec.decode(frame)
        except ProtocolError:
            self.counts["dropped-garbage"] += 1
            return None
        kind = message[1]
        call = self.calls.get(message[2])
        if call is None and message[2] == 0 and kind == _ERROR:
            call = self._only_call_via(node, via)
        if call is None or node not in call.sent_to:
            self.counts["dropped-stale"] += 1
            return None
        if kind == _REPLY:  # the common case, first, without a call to _finish
            call.result = message[3]
            call.phase = _DONE
            target = call.held
            if target is not None:
                call.held = None
                self.targets.finished(target)
            del self.calls[call.call_id]
            self.answered_count += 1
            return call
        if kind in (_FLOW_ITEM, _FLOW_END):
            if call.stream:
                return self._flow(call, message, now)
            self.counts["dropped-not-an-answer"] += 1
            return None
        if kind == _ITEM:
            if call.items is None:
                call.items = [message[3]]
            else:
                call.items.append(message[3])
            if not call.stream:
                return None  # a generator method called plainly: its items make the result
            if now is not None:
                call.deadline = now + call.budget
            return call
        if kind == _END:
            self._finish(call, result=call.items or [])
        elif kind == _ERROR:
            if call.stream and message[3] == "zmqkit.MethodNotFound" and call.plain_frame:
                self._plain_after_all(call)  # maybe a server older than flow control
                return call
            self._finish(call, error=remote_error(message[3], message[4], message[5]))
        else:
            self.counts["dropped-not-an-answer"] += 1
            return None
        self.answered_count += 1
        return call

    def took(self, call: Call, count: int) -> int | None:
        """The reader of stream ``call`` took ``count`` more items: the new credit limit to
        send the server when half the window is used (else None). Called by the reader only."""
        call.taken += count
        limit = call.limit
        if limit and limit - call.taken <= STREAM_WINDOW // 2 and call.phase is not _DONE:
            call.limit = limit = call.taken + STREAM_WINDOW
            return limit
        return None

    def waiting(self, call: Call, now: float) -> None:
        """The reader of stream ``call`` waits for its next item from ``now``: the per-item
        deadline runs from here (a reader that paused is not timed out for its pause)."""
        if call.phase is not _DONE:
            call.deadline = now + call.budget

    def expire(self, call: Call, now: float) -> bool:
        """Apply the deadlines to ``call`` at ``now``; True if that changed it."""
        if call.phase is _DONE:
            return False
        if now >= call.deadline:
            self._finish(call, error=self._timeout(call, now))
            return True
        if call.phase is _IN_FLIGHT and now >= call.attempt_deadline:
            self._lost(call, now, f"was silent for {self.attempt_timeout:g} s", gone=False)
            return True
        return False

    def wake_at(self, call: Call) -> float:
        """When ``expire`` may next change ``call``, if nothing arrives before."""
        return min(call.deadline, call.attempt_deadline)

    def abandon(self, call: Call) -> None:
        """The caller stopped waiting (cancelled, interrupted, a stream left early)."""
        if call.phase is not _DONE:
            self._finish(call, error=ClosedError(f"{self.name}.{call.method}() was abandoned"))

    def end(self, call: Call, error: ZmqkitError) -> None:
        """End ``call`` with ``error`` (its client was closed, say), unless it has ended."""
        if call.phase is not _DONE:
            self._finish(call, error=error)

    # -- the nodes -----------------------------------------------------------------------------

    def sync(self, peers: Iterable[Peer], now: float,
             version: int | None = None) -> tuple[list[Target], list[Target], list[Call]]:
        """Take discovery's view of the nodes (at ``version``); return (added, removed, calls
        it changed). A node refused earlier is left out until what it advertises changes."""
        if version is not None:
            self.version = version
        peers = list(peers)
        present = {peer.uuid: peer for peer in peers}
        for uuid in list(self.refused):
            if uuid not in present or _description(present[uuid]) != self.refused[uuid]:
                del self.refused[uuid]
        if not self.refused:
            self.refusal = None  # the refused nodes have gone: PeerNotFound says it best
        usable = [peer for peer in peers if peer.uuid not in self.refused]
        added, removed = self.targets.sync(usable)
        if added:
            self.generation += 1
        return added, removed, self._forget(removed, now)

    def refuse(self, target: Target, error: ZmqkitError, now: float) -> list[Call]:
        """This node may not talk to ``target`` (security): leave it out until it changes.
        Returns the calls that changed."""
        self.refused[target.uuid] = _description(target.peer)
        self.refusal = error
        self.counts["refused"] += 1
        if self.targets.targets.get(target.uuid) is not target:
            return []
        self.targets.remove(target)
        return self._forget([target], now)

    def _forget(self, removed: list[Target], now: float) -> list[Call]:
        if not removed:
            return []
        self.generation += 1
        gone = {target.uuid for target in removed}
        changed = []
        for call in list(self.calls.values()):
            target = call.target
            if call.phase is _IN_FLIGHT and target is not None and target.uuid in gone:
                self._lost(call, now, "left the network", gone=True)
                changed.append(call)
        return changed

    # -- the parts -----------------------------------------------------------------------------

    def _lost(self, call: Call, now: float, what: str, *, gone: bool) -> None:
        """The node a call waits on left (``gone``) or stayed silent past ``attempt_timeout``:
        send the call on, wait for another node that has it, or end it."""
        target = call.target
        assert target is not None
        call.attempt_deadline = math.inf
        if not may_retry(idempotent=call.idempotent, sent=True):
            self._release(call, target, now)
            self._finish(call, error=BrokenError(
                f"{self.name}.{call.method}() was sent to {target}, which {what} before "
                "answering: it may or may not have run, and it was not sent again because the "
                "call is not marked idempotent"))
            return
        present = self.targets.targets.values()
        tried = call.tried or ()
        untried = [t for t in present if t.uuid not in call.sent_to and t.uuid not in tried]
        also_asked = [t for t in present if t.uuid in call.sent_to and t is not target]
        if not gone and not untried:
            return  # silent, but no node is left that has not got it: keep waiting for them
        self._release(call, target, now)
        _tried(call, target)  # this round's turn of ``target`` is over
        if untried or not also_asked:
            call.phase = _ROUTING  # to the next node (an answer from this one still counts)
            call.target = None
            self.counts["retried"] += 1
        else:
            call.target = also_asked[0]  # another node has the request already: wait for it

    def _release(self, call: Call, target: Target, now: float) -> None:
        """``target`` failed this call: it no longer counts it as pending."""
        if call.held is target:
            call.held = None
            self.targets.failed(target, now)
        else:
            self.targets.penalize(target, now)

    def _timeout(self, call: Call, now: float) -> ZmqkitError:
        budget = f"{call.budget:g} s"
        if call.phase is _IN_FLIGHT:
            target = call.target
            assert target is not None
            self._release(call, target, now)
            if call.stream:
                return Timeout(f"{self.name}.{call.method}() sent no item in {budget}")
            if not call.idempotent:
                return Timeout(
                    f"{self.name}.{call.method}() got no answer from {target} in {budget}: it "
                    "may or may not have run, and it was not sent again because the call is not "
                    "marked idempotent"
                )
            return Timeout(
                f"{self.name}.{call.method}() got no answer in {budget} from any of "
                f"{len(call.sent_to)} node(s) it was sent to"
            )
        if call.sent_to:
            return Timeout(
                f"{self.name}.{call.method}() got no answer in {budget}; no node could take it "
                f"again after {len(call.sent_to)} tried it"
            )
        if not self.targets.targets:
            if self.refusal is not None:
                return self.refusal
            where = f" ({self.where})" if self.where else ""
            return PeerNotFound(
                f"no node called {self.name!r} serving RPC was found in {budget}{where}"
            )
        hint = f" {self.hint}" if self.hint else ""
        return Timeout(
            f"{self.name}.{call.method}() could not connect to any {self.name!r} node in "
            f"{budget}; it was never sent, so it did not run{hint}"
        )

    def _flow(self, call: Call, message: list[Any], now: float | None) -> Call:
        """A FLOW_ITEM or FLOW_END of stream ``call``: in order, within its credit, complete."""
        kind, count = message[1], message[3]
        if kind == _FLOW_END:
            if count == call.received:
                self._finish(call, result=call.items or [])
            else:
                self._finish(call, error=BrokenError(
                    f"{self.name}.{call.method}() ended after {count} items, of which "
                    f"{call.received} arrived: the rest were lost on the way"))
        elif count != call.received or count >= call.limit:
            why = (f"item {count} came where {call.received} was due" if count != call.received
                   else f"item {count} came beyond the credit given ({call.limit})")
            self._finish(call, error=BrokenError(
                f"{self.name}.{call.method}() broke its stream: {why}"))
        else:
            call.received = count + 1
            if call.items is None:
                call.items = [message[4]]
            else:
                call.items.append(message[4])
            if now is not None:
                call.deadline = now + call.budget
            return call
        self.answered_count += 1
        return call

    def _plain_after_all(self, call: Call) -> None:
        """A stream's ``zmqkit.stream`` request was not found: send the plain request (an older
        server streams it without flow control; a method that does not exist is not found
        again, and that error ends the call)."""
        assert call.plain_frame is not None
        call.frame, call.plain_frame, call.limit = call.plain_frame, None, 0
        target = call.held
        if target is not None:
            call.held = None
            self.targets.finished(target)
        call.phase = _ROUTING
        call.target = None
        self.counts["retried"] += 1

    def _only_call_via(self, node: uuid_module.UUID, via: object) -> Call | None:
        in_flight = [
            call
            for call in self.calls.values()
            if call.phase is _IN_FLIGHT and call.via is via
            and call.target is not None and call.target.uuid == node
        ]
        return in_flight[0] if len(in_flight) == 1 else None

    def _finish(self, call: Call, *, result: Any = None, error: ZmqkitError | None = None) -> None:
        call.phase = _DONE
        call.result, call.error = result, error
        target = call.held
        if target is not None:  # the call ended: its target no longer counts it as pending
            call.held = None
            self.targets.finished(target)
        self.calls.pop(call.call_id, None)


def _tried(call: Call, target: Target) -> None:
    """``target`` had its turn at ``call`` in this round: the next attempt goes elsewhere."""
    if call.tried is None:
        call.tried = [target.uuid]
    else:
        call.tried.append(target.uuid)

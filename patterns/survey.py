"""Scatter-gather: ask every node of a name the same RPC question and gather the answers.

    result = survey.ask(node, "sensor", "read", timeout=1.0)   # every node called "sensor"
    result.answers     # {Responder("sensor", uuid): value}: who answered, and what
    result.failed      # {Responder: RemoteError}: whose handler raised
    result.missing     # (Responder, ...): asked, but no answer in time (silent, dead or gone)

    survey.ask(node, None, "zmqkit.describe")                  # every node that serves RPC
    survey.ask(node, "sensor", "read", min_replies=2)          # a quorum: done at the 2nd answer

    with survey.Surveyor(node, "sensor") as sensors:           # keeps its sockets between surveys
        sensors.ask("read")
    async with survey.AsyncSurveyor(node, "sensor") as sensors:
        await sensors.ask("read")

A survey ends at the first of: ``min_replies`` answers (a quorum); every node asked has answered
or failed (without a quorum); the deadline. Dead nodes never hold it up: one that the beacon
declares gone is counted missing at once, one that is merely silent at the deadline. The
nodes asked are those discovered when the survey starts plus any that appear while it runs; the
asking node itself is never asked. No node found at all by the deadline is ``PeerNotFound``.

Why not ``rpc.Client``? It picks one node per call. A survey must reach each node, so it speaks
the RPC wire itself (docs/protocol.md section 6): one DEALER per node, connected to its ``rpc``
endpoint, one REQUEST each, answers matched by call id. Any ``rpc.serve`` server answers; nothing
new travels on the wire. ``SurveyState`` holds the logic (who was asked, who answered or failed,
when it is done) with no sockets and no clock, shared by ``Surveyor`` and ``AsyncSurveyor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import threading
import time
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from zmqkit import (
    AsyncSocket,
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
    "DEFAULT_TIMEOUT",
    "AsyncSurveyor",
    "Ending",
    "Responder",
    "SurveyResult",
    "SurveyState",
    "Surveyor",
    "ask",
    "ask_async",
]

DEFAULT_TIMEOUT = 1.0  # a survey is a quick look around: it waits for the slow, not the dead
SLICE = 0.1  # while waiting, look at discovery this often (new nodes, nodes gone)
SURVEY_OPTIONS = SocketOptions(immediate=True)  # a request is never queued for a node not connected


# -- the core: no sockets, no clock ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Responder:
    """A node that was asked: its name and its UUID (several nodes may share a name)."""

    name: str
    uuid: uuid_module.UUID

    def __str__(self) -> str:
        return f"{self.name}/{self.uuid.hex[:8]}"


class Ending(enum.Enum):
    """Why a survey ended."""

    QUORUM = "quorum"  # min_replies answers arrived
    EVERYONE = "everyone"  # every node asked answered or failed
    DEADLINE = "deadline"  # time ran out first


@dataclass(frozen=True)
class SurveyResult:
    """What a survey gathered. ``answers`` keeps the order the answers arrived in."""

    method: str
    answers: dict[Responder, Any]
    failed: dict[Responder, ZmqkitError]
    missing: tuple[Responder, ...]
    ending: Ending
    elapsed: float

    @property
    def values(self) -> list[Any]:
        """The answers' values, in the order they arrived."""
        return list(self.answers.values())

    @property
    def asked(self) -> tuple[Responder, ...]:
        return (*self.answers, *self.failed, *self.missing)

    def __repr__(self) -> str:
        return (
            f"<SurveyResult {self.method}: {len(self.answers)} answered, {len(self.failed)} "
            f"failed, {len(self.missing)} missing; ended by {self.ending.value} "
            f"in {self.elapsed:.3f} s>"
        )


class Status(enum.Enum):
    UNSENT = "unsent"  # known, request not out yet (no connection so far)
    ASKED = "asked"  # request sent, no answer yet
    ANSWERED = "answered"
    FAILED = "failed"  # the handler raised, or the node cannot be talked to
    GONE = "gone"  # left or expired before answering


SETTLED = frozenset({Status.ANSWERED, Status.FAILED, Status.GONE})  # nothing more to wait for
MISSING = frozenset({Status.UNSENT, Status.ASKED, Status.GONE})  # no answer, for whatever reason


@dataclass(slots=True)
class Target:
    responder: Responder
    status: Status = Status.UNSENT
    call_id: int = 0
    frame: bytes = b""
    items: list[Any] = field(default_factory=list)  # a generator method's items so far
    outcome: Any = None  # the value, or the error when FAILED


class SurveyState:
    """One survey's bookkeeping: fed targets, sends and frames, asked ``done(now)``.

    Call ids come from ``call_ids``, shared by every survey of one surveyor, so a late answer
    to an earlier survey (on the same sockets) never passes for an answer to this one.

    Raises:
        ConfigError: ``min_replies`` is not a positive integer, or ``timeout`` is not >= 0.
        EncodeError: the arguments cannot travel on the wire.
    """

    def __init__(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        now: float,
        timeout: float,
        call_ids: Iterator[int],
        min_replies: int | None = None,
    ) -> None:
        if min_replies is not None and (type(min_replies) is not int or min_replies < 1):
            raise ConfigError(f"min_replies is a positive integer or None, not {min_replies!r}")
        if not isinstance(timeout, (int, float)) or not 0 <= timeout < 1e7:
            raise ConfigError(f"a timeout is a finite number of seconds >= 0, not {timeout!r}")
        self.method = method
        self.args = list(args)
        self.kwargs = kwargs
        codec.encode_request(0, method, self.args, kwargs)  # unencodable arguments fail now
        self.min_replies = min_replies
        self.started = now
        self.deadline = now + timeout
        self.targets: dict[uuid_module.UUID, Target] = {}
        self.stats: Counter[str] = Counter()
        self._call_ids = call_ids
        self._by_call_id: dict[int, Target] = {}
        self._answers: list[Target] = []  # in the order they arrived
        self._unsettled = 0

    # -- what the drivers feed in ------------------------------------------------------------

    def add(self, responder: Responder) -> bool:
        """A node to ask (discovered now or earlier); False if it is known already."""
        if responder.uuid in self.targets:
            return False
        self.targets[responder.uuid] = Target(responder)
        self._unsettled += 1
        return True

    def request(self, node_uuid: uuid_module.UUID) -> bytes:
        """The REQUEST frame for one node (the same frame each time it is asked for)."""
        target = self.targets[node_uuid]
        if not target.frame:
            target.call_id = next(self._call_ids)
            target.frame = codec.encode_request(target.call_id, self.method, self.args, self.kwargs)
            self._by_call_id[target.call_id] = target
        return target.frame

    def sent(self, node_uuid: uuid_module.UUID) -> None:
        target = self.targets[node_uuid]
        if target.status is Status.UNSENT:
            target.status = Status.ASKED
            self.stats["asked"] += 1

    def gone(self, node_uuid: uuid_module.UUID) -> None:
        """The node left or expired (or moved its endpoint): stop waiting for it."""
        target = self.targets.get(node_uuid)
        if target is not None and target.status not in SETTLED:
            self._settle(target, Status.GONE, None)

    def refused(self, responder: Responder, error: ZmqkitError) -> None:
        """This side cannot talk to the node at all (e.g. its CURVE key is not in our keyring)."""
        self.add(responder)
        target = self.targets[responder.uuid]
        if target.status not in SETTLED:
            self._settle(target, Status.FAILED, error)

    def receive(self, node_uuid: uuid_module.UUID, frame: bytes) -> bool:
        """Take one frame from a node's socket; True when it settled that node.

        Garbage and answers to other calls (an earlier survey's, late) are dropped and counted.
        """
        try:
            message = codec.decode(frame)
        except ProtocolError:
            self.stats["dropped-garbage"] += 1
            return False
        kind, call_id = message[1], message[2]
        target = self._by_call_id.get(call_id)
        if target is None and call_id == 0 and kind == Kind.ERROR:
            # the server could not read a request (protocol.md 6.3): this node has exactly one
            # call of ours outstanding on that connection, so it is that call's answer
            target = self.targets.get(node_uuid)
        if (
            target is None
            or target.responder.uuid != node_uuid
            or target.status is not Status.ASKED
        ):
            self.stats["dropped-stale"] += 1
            return False
        if kind == Kind.REPLY:
            self._settle(target, Status.ANSWERED, message[3])
        elif kind == Kind.STREAM_ITEM:
            target.items.append(message[3])
            return False
        elif kind == Kind.STREAM_END:
            self._settle(target, Status.ANSWERED, target.items)
        elif kind == Kind.ERROR:
            self._settle(target, Status.FAILED, remote_error(message[3], message[4], message[5]))
        else:
            self.stats["dropped-not-an-answer"] += 1
            return False
        return True

    def _settle(self, target: Target, status: Status, outcome: Any) -> None:
        target.status = status
        target.outcome = outcome
        self._unsettled -= 1
        if status is Status.ANSWERED:
            self._answers.append(target)

    # -- what the drivers ask ----------------------------------------------------------------

    def unsent(self) -> list[uuid_module.UUID]:
        return [uuid for uuid, target in self.targets.items() if target.status is Status.UNSENT]

    def waiting_for(self) -> list[uuid_module.UUID]:
        """The nodes asked that have not answered yet."""
        return [uuid for uuid, target in self.targets.items() if target.status is Status.ASKED]

    def settled(self, node_uuid: uuid_module.UUID) -> bool:
        return self.targets[node_uuid].status in SETTLED

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now)

    def ending(self, now: float) -> Ending | None:
        """Why the survey is over, or None while it should go on."""
        if self.min_replies is not None:
            if len(self._answers) >= self.min_replies:
                return Ending.QUORUM
        elif self.targets and not self._unsettled:
            return Ending.EVERYONE
        # with a quorum still short, keep waiting: a node may yet appear and answer
        return Ending.DEADLINE if now >= self.deadline else None

    def done(self, now: float) -> bool:
        return self.ending(now) is not None

    def result(self, now: float, *, searched: str) -> SurveyResult:
        """The survey's outcome.

        Raises:
            PeerNotFound: no node was found to ask (``searched`` says what was looked for).
        """
        if not self.targets:
            raise PeerNotFound(f"no {searched} was found in {self.deadline - self.started:g} s")
        targets = self.targets.values()
        return SurveyResult(
            method=self.method,
            answers={target.responder: target.outcome for target in self._answers},
            failed={t.responder: t.outcome for t in targets if t.status is Status.FAILED},
            missing=tuple(t.responder for t in targets if t.status in MISSING),
            ending=self.ending(now) or Ending.DEADLINE,
            elapsed=now - self.started,
        )


# -- shared by both drivers -----------------------------------------------------------------------


def _searched(name: str | None) -> str:
    return f"node called {name!r} serving RPC" if name is not None else "node serving RPC"


def _check_name(name: object) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(
            f"a survey asks the nodes of a name (text), or of every name (None), not {name!r}"
        )


class _Connections:
    """The sockets of one surveyor, one per node, kept in step with discovery."""

    def __init__(self, node: Node, name: str | None, make: Callable[[], Socket]) -> None:
        self.node = node
        self.name = name
        self.version = -1
        self.sockets: dict[uuid_module.UUID, tuple[str, Socket]] = {}
        self.refusals: dict[uuid_module.UUID, ZmqkitError] = {}  # peers we may not talk to
        self._make = make

    def refresh(self, state: SurveyState) -> tuple[list[uuid_module.UUID], list[uuid_module.UUID]]:
        """Sync with discovery, tell ``state``; return the UUIDs (added, removed)."""
        version = self.node.peers_version  # first: then the list is at least this new
        peers = self.node.peers(self.name, role="rpc")
        self.version = version
        current = {peer.uuid: peer for peer in peers}
        removed = []
        for node_uuid, (endpoint, sock) in list(self.sockets.items()):
            peer = current.get(node_uuid)
            if peer is None or peer.endpoints["rpc"] != endpoint:
                sock.close()
                del self.sockets[node_uuid]
                removed.append(node_uuid)
                state.gone(node_uuid)
        for node_uuid in [uuid for uuid in self.refusals if uuid not in current]:
            del self.refusals[node_uuid]
        added = []
        for peer in peers:
            responder = Responder(peer.name, peer.uuid)
            if peer.uuid not in self.sockets and peer.uuid not in self.refusals:
                self._connect(peer)
            if peer.uuid in self.refusals:
                state.refused(responder, self.refusals[peer.uuid])
            elif state.add(responder):
                added.append(peer.uuid)
        return added, removed

    def _connect(self, peer: Peer) -> None:
        sock = self._make()
        try:
            self.node.secure_client(sock, peer)
            sock.connect(peer.endpoints["rpc"])
        except ZmqkitError as exc:  # refused by security, or an endpoint we cannot use
            sock.close()
            self.refusals[peer.uuid] = exc
            return
        self.sockets[peer.uuid] = (peer.endpoints["rpc"], sock)

    def close(self) -> None:
        for _, sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.version = -1


# -- the blocking surveyor ------------------------------------------------------------------------


class Surveyor:
    """Surveys the nodes called ``name`` (None: every node serving RPC), from one thread.

    Keeps one DEALER per node between surveys, so repeated surveys cost no reconnection. Closed
    by ``close()``, ``with``, or when its node closes.
    """

    def __init__(
        self, node: Node, name: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        _check_name(name)
        self.node = node
        self.name = name
        self.timeout = timeout
        self.stats: Counter[str] = Counter()
        self._connections = _Connections(
            node, name, lambda: Socket(zmq.DEALER, options=SURVEY_OPTIONS)
        )
        self._ids = itertools.count(1)
        self._owner = threading.get_ident()
        self._closed = False
        self._discovery = threading.Event()
        node.attach(self)  # first: a closed node refuses before anything is made
        self._unsubscribe = node.on_event(lambda _: self._discovery.set())

    def __repr__(self) -> str:
        return f"<zmqkit survey.Surveyor of {self.name or 'every RPC node'!r}>"

    def __enter__(self) -> Surveyor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; later surveys raise ClosedError. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self._connections.close()
        self.node.detach(self)

    def ask(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        min_replies: int | None = None,
        **kwargs: Any,
    ) -> SurveyResult:
        """Ask every node ``method(*args, **kwargs)``; gather until a quorum, everyone or timeout.

        Raises:
            PeerNotFound: no node to ask was found before the deadline.
        """
        return self.ask_with(method, args, kwargs, timeout=timeout, min_replies=min_replies)

    def ask_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        min_replies: int | None = None,
    ) -> SurveyResult:
        """``ask`` with the arguments as values, for methods with a ``timeout`` parameter."""
        self._check_usable()
        state = SurveyState(
            method,
            args,
            kwargs or {},
            now=time.monotonic(),
            timeout=self.timeout if timeout is None else timeout,
            call_ids=self._ids,
            min_replies=min_replies,
        )
        connections = self._connections
        self._discovery.clear()
        connections.refresh(state)
        while not state.done(now := time.monotonic()):
            if connections.version != self.node.peers_version:
                connections.refresh(state)
                if state.done(now):
                    break
            self._send(state)
            self._wait(state, min(SLICE, state.remaining(now)))
        self.stats.update(state.stats)
        return state.result(time.monotonic(), searched=_searched(self.name))

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if threading.get_ident() != self._owner:
            raise BusyError(f"{self!r} belongs to the thread that created it; make one per thread")

    def _send(self, state: SurveyState) -> None:
        """Send every request whose node is connected; the others wait for their connection."""
        for node_uuid in state.unsent():
            sock = self._connections.sockets[node_uuid][1]
            try:
                sock.raw.send(state.request(node_uuid), zmq.NOBLOCK)
            except zmq.Again:
                continue  # not connected yet (or its queue is full): wait for POLLOUT
            except zmq.ZMQError as exc:
                raise translate_zmq_error(exc, "sending a survey request") from exc
            state.sent(node_uuid)

    def _wait(self, state: SurveyState, timeout: float) -> None:
        """Wait for answers (or for a connection to send on), at most ``timeout``."""
        sockets = self._connections.sockets
        readers = [sockets[uuid][1].raw for uuid in state.waiting_for()]
        writers = [sockets[uuid][1].raw for uuid in state.unsent()]
        if not readers and not writers:  # nobody to ask yet: wait for discovery instead
            self._discovery.wait(timeout)
            self._discovery.clear()
            return
        try:
            readable, _, _ = zmq.select(readers, writers, [], timeout)
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "waiting for survey answers") from exc
        owners = {id(sock.raw): uuid for uuid, (_, sock) in sockets.items()}
        for raw in readable:
            node_uuid = owners[id(raw)]
            while True:
                try:
                    frame = raw.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    raise translate_zmq_error(exc, "receiving survey answers") from exc
                state.receive(node_uuid, frame)


# -- the asyncio surveyor -------------------------------------------------------------------------


class AsyncSurveyor:
    """``Surveyor`` for asyncio code: one task per node asked, all on the loop that first used it.

    ``async with AsyncSurveyor(node, "sensor") as sensors: await sensors.ask("read")``.
    """

    def __init__(
        self, node: Node, name: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        _check_name(name)
        self.node = node
        self.name = name
        self.timeout = timeout
        self.stats: Counter[str] = Counter()
        self._connections = _Connections(
            node, name, lambda: AsyncSocket(zmq.DEALER, options=SURVEY_OPTIONS)
        )
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._busy = False
        self._closed = False
        node.attach(self)

    def __repr__(self) -> str:
        return f"<zmqkit survey.AsyncSurveyor of {self.name or 'every RPC node'!r}>"

    async def __aenter__(self) -> AsyncSurveyor:
        self._bind_loop()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets; later surveys raise ClosedError. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._connections.close()
        self.node.detach(self)

    async def aclose(self) -> None:
        self.close()

    async def ask(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        min_replies: int | None = None,
        **kwargs: Any,
    ) -> SurveyResult:
        """Ask every node ``method(*args, **kwargs)``; see ``Surveyor.ask``."""
        return await self.ask_with(method, args, kwargs, timeout=timeout, min_replies=min_replies)

    async def ask_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        min_replies: int | None = None,
    ) -> SurveyResult:
        """``ask`` with the arguments as values, for methods with a ``timeout`` parameter."""
        self._bind_loop()
        if self._busy:  # two surveys would read each other's answers off the shared sockets
            raise BusyError(f"{self!r} is running a survey already; make one surveyor per task")
        state = SurveyState(
            method,
            args,
            kwargs or {},
            now=time.monotonic(),
            timeout=self.timeout if timeout is None else timeout,
            call_ids=self._ids,
            min_replies=min_replies,
        )
        changed = self._changed
        assert changed is not None
        changed.clear()
        connections = self._connections
        askers: dict[uuid_module.UUID, asyncio.Task[None]] = {}
        self._busy = True
        try:
            connections.refresh(state)
            while True:
                for node_uuid in state.unsent():
                    if node_uuid not in askers:
                        sock = connections.sockets[node_uuid][1]
                        assert isinstance(sock, AsyncSocket)
                        asking = self._ask_one(state, node_uuid, sock)
                        askers[node_uuid] = asyncio.ensure_future(asking)
                if state.done(now := time.monotonic()):
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(SLICE, state.remaining(now)))
                changed.clear()
                if connections.version != self.node.peers_version:
                    _, removed = connections.refresh(state)
                    for node_uuid in removed:
                        if node_uuid in askers:
                            askers[node_uuid].cancel()
        finally:
            self._busy = False
            for asker in askers.values():
                asker.cancel()
            outcomes = await asyncio.gather(*askers.values(), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        self.stats.update(state.stats)
        return state.result(time.monotonic(), searched=_searched(self.name))

    async def _ask_one(
        self, state: SurveyState, node_uuid: uuid_module.UUID, sock: AsyncSocket
    ) -> None:
        """Send one node its request once it is connected, then read until it has answered."""
        frame = state.request(node_uuid)
        while not sock.send_nowait(frame):
            remaining = state.remaining(time.monotonic())
            if remaining <= 0 or not await sock.wait_writable(remaining):
                return  # never connected in time: the survey counts it missing
        state.sent(node_uuid)
        changed = self._changed
        assert changed is not None
        while not state.settled(node_uuid):
            try:
                answer = await sock.recv_async(state.remaining(time.monotonic()))
            except (Timeout, ClosedError):
                return  # the deadline passed, or the node went and its socket was closed
            if state.receive(node_uuid, answer):
                changed.set()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._loop is None:
            self._loop = loop
            changed = self._changed = asyncio.Event()

            def on_presence(_: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(changed.set)

            self._unsubscribe = self.node.on_event(on_presence)
        elif self._loop is not loop:
            raise BusyError(f"{self!r} belongs to another event loop; make one per loop")
        return loop


# -- one-shot surveys -----------------------------------------------------------------------------


def ask(
    node: Node,
    name: str | None,
    method: str,
    *args: Any,
    timeout: float = DEFAULT_TIMEOUT,
    min_replies: int | None = None,
    **kwargs: Any,
) -> SurveyResult:
    """Ask every node called ``name`` (None: every node serving RPC) ``method(*args, **kwargs)``.

    Raises:
        PeerNotFound: no node to ask was found before the deadline.
    """
    with Surveyor(node, name, timeout=timeout) as surveyor:
        return surveyor.ask_with(method, args, kwargs, min_replies=min_replies)


async def ask_async(
    node: Node,
    name: str | None,
    method: str,
    *args: Any,
    timeout: float = DEFAULT_TIMEOUT,
    min_replies: int | None = None,
    **kwargs: Any,
) -> SurveyResult:
    """``ask`` for asyncio code."""
    async with AsyncSurveyor(node, name, timeout=timeout) as surveyor:
        return await surveyor.ask_with(method, args, kwargs, min_replies=min_replies)

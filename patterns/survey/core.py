"""The survey's logic, written once: who was asked, who answered or failed, when it is done.

``SurveyState`` is fed targets, sends and frames and asked ``done(now)``; it holds no socket and
reads no clock, so ``Surveyor`` and ``AsyncSurveyor`` share it and the tests drive it directly.
"""

from __future__ import annotations

import enum
import uuid as uuid_module
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from zmqkit import (
    ConfigError,
    PeerNotFound,
    ProtocolError,
    ZmqkitError,
    check_timeout,
    codec,
    remote_error,
)
from zmqkit.codec import Kind

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_TIMEOUT",
    "Ending",
    "Responder",
    "SurveyResult",
    "SurveyState",
    "check_max_concurrent",
    "check_name",
    "searched",
]

DEFAULT_TIMEOUT = 1.0  # a survey is a quick look around: it waits for the slow, not the dead
DEFAULT_MAX_CONCURRENT = 16  # surveys running at once on one surveyor: each holds a socket per node


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
        """Every node asked: those that answered, failed, or are missing."""
        return (*self.answers, *self.failed, *self.missing)

    def __repr__(self) -> str:
        return (
            f"<SurveyResult {self.method}: {len(self.answers)} answered, {len(self.failed)} "
            f"failed, {len(self.missing)} missing; ended by {self.ending.value} "
            f"in {self.elapsed:.3f} s>"
        )


class Status(enum.Enum):
    """Where one node asked stands in one survey."""

    UNSENT = "unsent"  # known, request not out yet (no connection so far)
    ASKED = "asked"  # request sent, no answer yet
    ANSWERED = "answered"
    FAILED = "failed"  # the handler raised, or the node cannot be talked to
    GONE = "gone"  # left or expired before answering


SETTLED = frozenset({Status.ANSWERED, Status.FAILED, Status.GONE})  # nothing more to wait for
MISSING = frozenset({Status.UNSENT, Status.ASKED, Status.GONE})  # no answer, for whatever reason


@dataclass(slots=True)
class Target:
    """One node of one survey: its request, its status, and what came back."""

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
        check_timeout(timeout)
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
        """The node's request left (the driver sent ``request(node_uuid)``)."""
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
        """The nodes known but not asked yet (no connection to send on so far)."""
        return [uuid for uuid, target in self.targets.items() if target.status is Status.UNSENT]

    def waiting_for(self) -> list[uuid_module.UUID]:
        """The nodes asked that have not answered yet."""
        return [uuid for uuid, target in self.targets.items() if target.status is Status.ASKED]

    def settled(self, node_uuid: uuid_module.UUID) -> bool:
        """Whether nothing more is awaited from this node (answered, failed or gone)."""
        return self.targets[node_uuid].status in SETTLED

    def remaining(self, now: float) -> float:
        """Seconds left until the deadline (0 once it has passed)."""
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
        """Whether the survey is over (see ``ending``)."""
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


def searched(name: str | None) -> str:
    """What a survey of ``name`` looked for, for ``PeerNotFound``."""
    return f"node called {name!r} serving RPC" if name is not None else "node serving RPC"


def check_name(name: object) -> None:
    """Raise ``ConfigError`` unless ``name`` is a node name (text) or None (every node)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(
            f"a survey asks the nodes of a name (text), or of every name (None), not {name!r}"
        )


def check_max_concurrent(max_concurrent: object) -> int:
    """Raise ``ConfigError`` unless ``max_concurrent`` is a positive integer; return it."""
    if type(max_concurrent) is not int or max_concurrent < 1:
        raise ConfigError(f"max_concurrent is a positive integer, not {max_concurrent!r}")
    return max_concurrent

"""What ``Submitter`` and ``AsyncSubmitter`` share: the set-up, the checks, the reading of the core.

Both hand tasks out from one ``SubmitterCore`` over a ROUTER that the node makes; they differ in
who owns the ROUTER (a service thread, or a pump task on the loop), so in how the core is held
(a lock, or the loop) and how a caller waits. The ROUTER helpers serve both owners' loops. The
owner of the ROUTER owns the journal too, when there is one: it opens it (``_open_journal``)
and writes it.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from zmqkit import BrokenError, ClosedError, ConfigError, Deadline, Node, Socket, Timeout

from .._durable import check_path
from . import wire
from .core import SubmitterCore, TaskResult, WorkerInfo
from .journal import Journal
from .ledger import Ledger

__all__ = [
    "BATCH",
    "DEFAULT_WAIT",
    "JOURNAL_WAIT",
    "TICK",
    "BaseSubmitter",
    "core_stats",
    "drain",
    "send_all",
    "waiting_message",
]

DEFAULT_WAIT = 30.0  # how long result() and as_completed() wait unless told
TICK = 0.1  # seconds between looks at discovery, task deadlines and the stop flag
BATCH = 1000  # frames taken before the submitter sends what they earned
JOURNAL_WAIT = 10.0  # the longest a call waits for its change to be written to the journal

Journaled = str | os.PathLike[str] | None  # where a durable submitter keeps its tasks


class BaseSubmitter:
    """Hands tasks of farm ``farm`` to the workers that ask for them, from ``core`` (made with
    the options that ``Submitter`` documents), journaled in the file ``journal`` if given.

    Raises:
        ClosedError: the node is not running.
        ConfigError: a bad option, or the node already has a submitter for this farm.
    """

    def __init__(self, node: Node, farm: str, core: SubmitterCore, journal: Journaled) -> None:
        self.node = node
        self.farm = wire.check_farm_name(farm)
        self.role = wire.role_of(farm)
        self.endpoint = ""
        self.journal = None if journal is None else check_path(journal, "farm journal")
        self._core = core
        self._ledger = None if journal is None else Ledger()
        core.ledger = self._ledger
        self._closed = False
        self._failure: BaseException | None = None  # what stopped the ROUTER's owner, not close()
        if not node.running:  # unannounced: no worker could ever find it
            raise ClosedError(f"{node!r} is not running; start it first")
        if self.role in node.endpoints:
            raise ConfigError(
                f"{node!r} already submits to farm {self.farm!r}; share that submitter")

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.endpoint or "starting"
        return f"<zmqkit farm.{type(self).__name__} {self.farm!r} {state}>"

    def _holding_core(self) -> AbstractContextManager[Any]:
        """Where the core may be read: under the submitter's lock, or on its loop (checked)."""
        raise NotImplementedError

    def _check_open(self) -> None:
        """Raise ``BrokenError`` if the ROUTER's owner stopped on an error, ``ClosedError`` once
        closed."""
        if self._failure is not None:
            raise BrokenError(f"{self!r} stopped: {self._failure!r}") from self._failure
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    def _open_journal(self) -> Journal | None:
        """Open the journal (in the thread or loop that will write it) and take back what it
        holds into the core.

        Raises:
            ConfigError: the journal cannot be used (see ``Journal``).
        """
        if self.journal is None:
            return None
        journal = Journal(self.journal, self.farm)
        try:
            tasks, results, next_id = journal.restore()
            with self._holding_core():
                self._core.restore(tasks, results, next_id)
        except BaseException:
            journal.close()
            raise
        return journal

    def _deliver_handed(self) -> None:
        """The submitter closes with its process alive: the results its code was handed have
        been delivered (the core held)."""
        for task_id in sorted(self._core.handed):
            self._core.deliver(task_id)

    def _withdraw(self) -> None:
        """Stop advertising this submitter (unless another took the role meanwhile)."""
        if self.endpoint and self.node.endpoints.get(self.role) == self.endpoint:
            self.node.withdraw(self.role)

    def _look_for_result(self, task_id: int, deadline: Deadline,
                         timeout: float) -> TaskResult | None:
        """One look of ``result`` (the core held): the task's outcome, else None (wait for more).

        Raises:
            Timeout: the deadline passed without it.
            ClosedError, BrokenError: see ``_check_open``.
        """
        self._check_open()
        outcome = self._core.take(task_id)
        if outcome is None and deadline.expired():
            raise Timeout(waiting_message(self._core, f"task {task_id}", timeout))
        return outcome

    @property
    def duplicates(self) -> int:
        """Results that came for tasks already done (at-least-once delivery at work)."""
        with self._holding_core():
            return self._core.stats["duplicates"]

    def stats(self) -> dict[str, int]:
        """Counters: submitted, completed, duplicates, reassigned, timed-out, worker-lost, ...,
        and the gauges outstanding, untaken, workers."""
        with self._holding_core():
            return core_stats(self._core)

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the farm, and the counters of ``stats``."""
        return {"name": self.farm, "endpoint": self.endpoint, "stats": core_stats(self._core)}

    def workers(self) -> list[WorkerInfo]:
        """The workers that asked for work: node UUID, tasks in flight, completed, credit.

        One entry per worker connection: each slot of a plain-function worker is one.
        """
        with self._holding_core():
            return self._core.workers()


def waiting_message(core: SubmitterCore, what: str, timeout: float) -> str:
    """Why a wait ended empty, in words that point at the likely cause."""
    workers = core.workers()
    if not workers:
        why = "no worker has asked for work: is any node serving this farm (with keys it admits)?"
    else:
        why = f"{len(workers)} workers, {core.outstanding} tasks not done"
    return f"{what} not done in {timeout:g} s ({why})"


def core_stats(core: SubmitterCore) -> dict[str, int]:
    """A submitter's counters, with its gauges: outstanding, untaken, workers."""
    return dict(core.stats, outstanding=core.outstanding, untaken=core.untaken,
                workers=len(core.workers()))


def drain(router: Socket) -> tuple[list[tuple[bytes, bytes]], int]:
    """Up to BATCH (routing id, frame) pairs waiting on a ROUTER, and how many messages of more
    than one frame were dropped (every farm message is one frame)."""
    items: list[tuple[bytes, bytes]] = []
    dropped = 0
    for _ in range(BATCH):
        if not router.readable:  # cheaper than the failed receive that would say so
            break
        message = router.try_recv_multipart()
        if message is None:
            break
        if len(message) != 2:
            dropped += 1
            continue
        items.append((message[0], message[1]))
    return items, dropped


def send_all(router: Socket, outgoing: list[tuple[bytes, bytes]]) -> None:
    """Send (routing id, frame) pairs; a ROUTER drops, never blocks, what it cannot send."""
    for key, frame in outgoing:
        router.try_send_multipart([key, frame])

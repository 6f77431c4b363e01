"""The farm's logic, written once for every front: no sockets, no clock (``now`` is an argument).

``SubmitterCore`` is the ventilator: a queue of tasks, the workers that asked for work and how
much credit each has, what each holds, results kept until taken. ``WorkerCore`` is a worker's
ledger: what it holds from each submitter and the READY it owes each. Both take and give bytes
(``take_frame``/``frames_out``) as well as plain calls, so tests wire them together in memory.

Credit, the one rule that makes a slow worker get less: a worker's READY says how many more
tasks it takes from this submitter (``free``) and the last dispatch it received; the submitter
subtracts what it sent since (in transit) and never sends more. Each result gives back the
credit its task used, so a busy worker need not send a READY per task. A READY is a full
statement, not a delta: a lost message, or a worker the submitter forgot, heals with the next
one (an idle worker restates itself every second).

At-least-once: a task whose worker left, was declared gone by discovery, timed out or lost it
(a READY that acknowledges its dispatch but does not list it) goes back to the front of the
queue. After ``max_attempts`` losses that may be the task's fault (node gone, timed out) it fails
with ``BrokenError``. The first result for a task wins; later ones are counted as duplicates,
and a worker still holding a finished task gets a CANCEL.

A durable submitter gives the core a ``Ledger``: the core notes there each task submitted, each
result back and each result delivered, for the journal to write (``restore`` takes a journal's
content back after a crash).
"""

from __future__ import annotations

import heapq
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zmqkit import BrokenError, BusyError, ConfigError, ProtocolError, ZmqkitError, codec

from . import wire
from .ledger import Ledger

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TASK_TIMEOUT",
    "DEFAULT_WORKER_EXPIRY",
    "MAX_CREDIT",
    "Cancel",
    "Dispatch",
    "SubmitterCore",
    "TaskResult",
    "WorkerCore",
    "WorkerInfo",
]

DEFAULT_TASK_TIMEOUT = 60.0  # a task held this long by one worker is given to another
DEFAULT_MAX_ATTEMPTS = 3  # losses (worker gone, timed out) before a task fails
DEFAULT_WORKER_EXPIRY = 5.0  # an idle worker unheard this long is gone (it restates every 1 s)
DEFAULT_MAX_PENDING = 100_000  # tasks queued, running or done-but-not-taken, before BusyError
MAX_CREDIT = 1000  # a worker claiming more free slots than this gets this many
STATS = (  # the submitter's counters, all present from the start
    "submitted", "completed", "duplicates", "reassigned", "given-up",
    "timed-out", "lost", "reclaimed", "worker-lost", "worker-silent", "left", "workers-joined",
    "stray", "dropped-malformed", "dropped-multipart", "dropped-stranger", "restored",
    "restored-results",
)


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How one task ended: its value, or the error (``RemoteError`` from the handler,
    ``BrokenError`` when every worker that took it was lost)."""

    task_id: int
    value: Any = None
    error: ZmqkitError | None = None
    worker: uuid_module.UUID | None = None  # the node that ran it, when its routing id says

    @property
    def ok(self) -> bool:
        """Whether the task succeeded (no error)."""
        return self.error is None

    def unwrap(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


class Dispatch(NamedTuple):
    """Send task ``task_id`` (``frame``) to ``worker``."""

    worker: bytes
    task_id: int
    number: int
    frame: wire.TaskFrame


class Cancel(NamedTuple):
    """Tell ``worker`` that ``task_id`` is finished elsewhere: drop it if not started."""

    worker: bytes
    task_id: int


class WorkerInfo(NamedTuple):
    """A worker as the submitter sees it."""

    node: uuid_module.UUID | None
    in_flight: int
    completed: int
    available: int


@dataclass(slots=True)
class _Task:
    task_id: int
    frame: wire.TaskFrame
    failures: int = 0
    worker: bytes | None = None  # the worker it is assigned to now
    dispatch: int = 0  # the number of its latest dispatch


@dataclass(slots=True)
class _Worker:
    key: bytes  # its routing id
    node: uuid_module.UUID | None
    last_heard: float
    free: int = 0
    acknowledged: int = 0  # the highest dispatch number it said it received
    assigned: dict[int, int] = field(default_factory=dict)  # task id -> dispatch number
    # tasks taken back from it (timed out, or done elsewhere) that it may still hold: they use
    # its credit until its result or a READY without them frees it
    superseded: dict[int, int] = field(default_factory=dict)
    in_transit: int = 0  # assigned or superseded with a dispatch number above ``acknowledged``
    seen: bool = False  # discovery has listed its node (only then can discovery lose it)
    cancelled: set[int] = field(default_factory=set)  # CANCELs sent, not yet out of ``held``
    last_used: int = 0
    completed: int = 0

    @property
    def available(self) -> int:
        return self.free - self.in_transit


class SubmitterCore:
    """The ventilator's state. Not thread-safe: the fronts hold a lock or stay on one loop."""

    def __init__(
        self,
        *,
        task_timeout: float = DEFAULT_TASK_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        worker_expiry: float = DEFAULT_WORKER_EXPIRY,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        for option, value in (("task_timeout", task_timeout), ("worker_expiry", worker_expiry)):
            if not isinstance(value, (int, float)) or not 0 < value < 1e7:
                raise ConfigError(f"{option} is a finite number of seconds > 0, not {value!r}")
        for option, count in (("max_attempts", max_attempts), ("max_pending", max_pending)):
            if type(count) is not int or count < 1:
                raise ConfigError(f"{option} is an integer >= 1, not {count!r}")
        self.task_timeout = float(task_timeout)
        self.max_attempts = max_attempts
        self.worker_expiry = float(worker_expiry)
        self.max_pending = max_pending
        self.stats: Counter[str] = Counter(dict.fromkeys(STATS, 0))
        self.results_version = 0  # grows with every result: the fronts' "wake the waiters"
        self._tasks: dict[int, _Task] = {}  # queued or in flight
        self._queue: deque[int] = deque()  # ids waiting for a worker (stale ids are skipped)
        self._workers: dict[bytes, _Worker] = {}
        self._results: dict[int, TaskResult] = {}  # done, not yet taken
        self._finished: deque[int] = deque()  # ids in the order they finished (stale: skipped)
        self._timeouts: list[tuple[float, int, int]] = []  # heap of (at, dispatch, task id)
        self._cancels: list[Cancel] = []
        self._next_id = 1
        self._dispatches = 0
        self._turn = 0
        self.ledger: Ledger | None = None  # a durable submitter's: what its journal must write
        self.handed: set[int] = set()  # with a ledger: results handed out, not yet delivered
        self._present: set[uuid_module.UUID] = set()  # the nodes discovery listed last

    # -- the user's side -----------------------------------------------------------------------

    def submit(self, payload: Any) -> int:
        """Queue a task; return its id (1, 2, ...).

        Raises:
            EncodeError: the payload cannot travel.
            BusyError: ``max_pending`` tasks are queued, running or waiting to be taken.
        """
        if len(self._tasks) + len(self._results) >= self.max_pending:
            raise BusyError(f"{self.max_pending} tasks are pending or not taken; take some results")
        task_id = self._next_id
        frame = wire.TaskFrame(task_id, payload)
        self._next_id += 1
        self._tasks[task_id] = _Task(task_id, frame)
        self._queue.append(task_id)
        self.stats["submitted"] += 1
        if self.ledger is not None:
            self.ledger.note_submitted(task_id, frame.payload)
        return task_id

    def restore(self, tasks: Sequence[tuple[int, Any]], results: Sequence[TaskResult],
                next_id: int) -> None:
        """Take back what a journal held: ``tasks`` to do again and ``results`` to hand out
        (each in id order), under their ids; new tasks get ids from ``next_id`` on.

        Raises:
            ConfigError: the core has tasks already.
            EncodeError: a payload cannot travel (the journal only holds ones that could).
        """
        if self._next_id != 1 or self._tasks or self._results:
            raise ConfigError("a journal is restored into a new submitter only")
        for task_id, payload in tasks:
            self._tasks[task_id] = _Task(task_id, wire.TaskFrame(task_id, payload))
            self._queue.append(task_id)
        for result in results:
            self._results[result.task_id] = result
            self._finished.append(result.task_id)
        self._next_id = next_id
        self.stats["restored"] += len(tasks)
        self.stats["restored-results"] += len(results)
        if results:
            self.results_version += 1

    def deliver(self, task_id: int) -> int:
        """The user's code has the result of ``task_id``: the journal may forget the task.
        Returns the ledger mark to wait for (0: nothing to wait for)."""
        if self.ledger is None or task_id not in self.handed:
            return 0
        self.handed.discard(task_id)
        return self.ledger.note_delivered(task_id)

    def take(self, task_id: int) -> TaskResult | None:
        """The result of ``task_id`` (handed out once), or None while it is not done.

        Raises:
            ConfigError: no such task, or its result was taken already.
        """
        result = self._results.pop(task_id, None)
        if result is None and task_id not in self._tasks:
            raise ConfigError(f"task {task_id!r} is unknown or its result was taken already")
        if result is not None and self.ledger is not None:
            self.handed.add(task_id)
        return result

    def take_next(self) -> TaskResult | None:
        """The oldest result not taken yet, or None."""
        while self._finished:
            result = self._results.pop(self._finished.popleft(), None)
            if result is not None:
                if self.ledger is not None:
                    self.handed.add(result.task_id)
                return result
        return None

    @property
    def outstanding(self) -> int:
        """Tasks not done yet (queued or in flight)."""
        return len(self._tasks)

    @property
    def untaken(self) -> int:
        """Tasks done whose results have not been taken."""
        return len(self._results)

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return sum(1 for task_id in self._queue if self._waiting(task_id))

    def workers(self) -> list[WorkerInfo]:
        """The workers known now, with their tasks in flight, completions and credit."""
        return [WorkerInfo(w.node, len(w.assigned), w.completed, max(0, w.available))
                for w in self._workers.values()]

    # -- the workers' side ---------------------------------------------------------------------

    def ready(self, key: bytes, free: int, last_dispatch: int, held: Iterable[int],
              now: float) -> None:
        """A worker's full statement: reclaim what it lost, cancel what finished elsewhere."""
        worker = self._worker(key, now)
        acknowledged = max(last_dispatch, worker.acknowledged)
        held_ids = set(held)
        for task_id, number in list(worker.assigned.items()):
            if number <= acknowledged and task_id not in held_ids:  # arrived, then vanished
                self._reclaim(worker, task_id, "lost", failure=False, still_held=False)
        worker.superseded = {task_id: number for task_id, number in worker.superseded.items()
                             if number > acknowledged or task_id in held_ids}
        worker.acknowledged = acknowledged
        worker.free = min(free, MAX_CREDIT)
        worker.in_transit = sum(1 for tasks in (worker.assigned, worker.superseded)
                                for number in tasks.values() if number > acknowledged)
        worker.cancelled &= held_ids
        for task_id in held_ids - worker.cancelled:
            if self._is_done(task_id):
                worker.cancelled.add(task_id)
                self._cancels.append(Cancel(key, task_id))

    def leave(self, key: bytes) -> None:
        """A worker stopped cleanly: what it held goes to others, and does not count as a loss."""
        worker = self._workers.get(key)
        if worker is not None:
            self._forget(worker, "left", failure=False)

    def complete(self, key: bytes, task_id: int, value: Any, error: ZmqkitError | None,
                 now: float) -> bool:
        """A result; True if it is the first for its task (kept), False if not (counted)."""
        worker = self._workers.get(key)
        if worker is not None:
            worker.last_heard = now
            self._release(worker, task_id)  # the result gives back the credit its task used
        task = self._tasks.pop(task_id, None)
        if task is None:
            self.stats["duplicates" if self._is_done(task_id) else "stray"] += 1
            return False
        if task.worker is not None and task.worker != key:
            owner = self._workers[task.worker]  # given to another worker since: it may skip it
            owner.superseded[task_id] = owner.assigned.pop(task_id)
            self._cancels.append(Cancel(owner.key, task_id))
        if worker is not None:
            worker.completed += 1
        node = worker.node if worker is not None else wire.worker_node(key)
        self._finish(TaskResult(task_id, value, error, node))
        return True

    def discovered(self, present: set[uuid_module.UUID]) -> None:
        """The node UUIDs discovery lists now: a worker whose node was listed and is not is lost."""
        self._present = present
        for worker in list(self._workers.values()):
            if worker.node is None:
                continue
            if worker.node in present:
                worker.seen = True
            elif worker.seen:
                self._forget(worker, "worker-lost", failure=True)

    def expire(self, now: float) -> None:
        """Reclaim tasks held past ``task_timeout``; forget idle workers silent too long.

        A worker that holds tasks may say nothing while it runs them (a slot thread sends no
        READY mid-task): discovery, or the task timeout, tells when it is gone.
        """
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, number, task_id = heapq.heappop(timeouts)
            task = self._tasks.get(task_id)
            if task is not None and task.dispatch == number and task.worker is not None:
                self._reclaim(self._workers[task.worker], task_id, "timed-out", still_held=True)
        for worker in list(self._workers.values()):  # a busy worker may be silent: its tasks
            if (not worker.assigned and not worker.superseded  # time out, or discovery tells
                    and now - worker.last_heard > self.worker_expiry):
                self._forget(worker, "worker-silent", failure=False)

    def outgoing(self, now: float) -> list[Dispatch | Cancel]:
        """What to send now: the cancels owed, then as many tasks as the workers' credit allows."""
        out: list[Dispatch | Cancel] = list(self._cancels)
        self._cancels.clear()
        queue = self._queue
        while queue:
            worker = self._pick()
            if worker is None:
                break
            task_id = queue.popleft()
            task = self._tasks.get(task_id)
            if task is None or task.worker is not None:
                continue  # finished while it waited (a late result from its first worker)
            self._dispatches += 1
            self._turn += 1
            number = task.dispatch = self._dispatches
            task.worker = worker.key
            worker.assigned[task_id] = number
            worker.in_transit += 1
            worker.last_used = self._turn
            heapq.heappush(self._timeouts, (now + self.task_timeout, number, task_id))
            out.append(Dispatch(worker.key, task_id, number, task.frame))
        if len(self._timeouts) > 4 * len(self._tasks) + 10_000:
            self._prune_timeouts()
        return out

    # -- bytes in, bytes out -------------------------------------------------------------------

    def take_frame(self, key: bytes, frame: bytes, now: float) -> bytes | None:
        """Take one frame from worker ``key``; return the answer it needs, if any.

        Bad input is dropped and counted (``dropped-malformed``), never raised.
        """
        try:
            message = wire.read_from_worker(frame)
        except ProtocolError:
            self.stats["dropped-malformed"] += 1
            return None
        if isinstance(message, wire.Result):
            self.complete(key, message.task_id, message.value, message.error, now)
        elif isinstance(message, wire.Ready):
            self.ready(key, message.free, message.last_dispatch, message.held, now)
        elif isinstance(message, wire.Leave):
            self.leave(key)
        else:
            self.stats["dropped-stranger"] += 1
            return codec.encode_error(message.call_id, "zmqkit.MethodNotFound",
                                      f"this is a task farm; {message.method!r} is not served here")
        return None

    def frames_out(self, now: float) -> list[tuple[bytes, bytes]]:
        """``outgoing`` as (routing id, frame) pairs."""
        return [
            (item.worker, item.frame.encode(item.number)) if isinstance(item, Dispatch)
            else (item.worker, codec.encode_cancel(item.task_id))
            for item in self.outgoing(now)
        ]

    # -- the parts -----------------------------------------------------------------------------

    def _worker(self, key: bytes, now: float) -> _Worker:
        worker = self._workers.get(key)
        if worker is None:
            node = wire.worker_node(key)
            worker = self._workers[key] = _Worker(key, node, now, seen=node in self._present)
            self.stats["workers-joined"] += 1
        worker.last_heard = now
        return worker

    def _pick(self) -> _Worker | None:
        """The worker with the most credit left; the least recently used among equals."""
        best: _Worker | None = None
        for worker in self._workers.values():
            if worker.available > 0 and (best is None or (worker.available, -worker.last_used)
                                         > (best.available, -best.last_used)):
                best = worker
        return best

    def _waiting(self, task_id: int) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and task.worker is None

    def _release(self, worker: _Worker, task_id: int) -> None:
        """``worker`` answered ``task_id``: the credit the task used is free again."""
        number = worker.assigned.pop(task_id, None)
        if number is None:
            number = worker.superseded.pop(task_id, None)
        if number is None:
            return  # not one it was counted for (a READY since said it did not hold it)
        if number > worker.acknowledged:
            worker.in_transit -= 1  # its READY has not counted it yet
        else:
            worker.free += 1  # its READY counted it as held

    def _reclaim(self, worker: _Worker, task_id: int, reason: str, *, failure: bool = True,
                 still_held: bool = False) -> None:
        """Take ``task_id`` back from ``worker``: to the front of the queue, or failed for good.

        ``still_held``: the worker may still hold it (timed out): it keeps using its credit.
        """
        number = worker.assigned.pop(task_id)
        if still_held:
            worker.superseded[task_id] = number
        elif number > worker.acknowledged:
            worker.in_transit -= 1
        task = self._tasks[task_id]
        task.worker = None
        self.stats[reason] += 1
        task.failures += failure
        if task.failures >= self.max_attempts:
            del self._tasks[task_id]
            self.stats["given-up"] += 1
            self._finish(TaskResult(task_id, error=BrokenError(
                f"task {task_id} was lost by {task.failures} workers (left, silent or timed out); "
                "given up")))
        else:
            self.stats["reassigned"] += 1
            self._queue.appendleft(task_id)

    def _forget(self, worker: _Worker, reason: str, *, failure: bool) -> None:
        del self._workers[worker.key]
        self.stats[reason] += 1
        for task_id in list(worker.assigned):
            self._reclaim(worker, task_id, "reclaimed", failure=failure)

    def _finish(self, result: TaskResult) -> None:
        task_id = result.task_id
        self._results[task_id] = result
        self._finished.append(task_id)
        if len(self._finished) > 2 * len(self._results) + 10_000:  # results taken by id
            self._finished = deque(i for i in self._finished if i in self._results)
        self.results_version += 1
        self.stats["completed"] += 1
        if self.ledger is not None:
            self.ledger.note_finished(result)

    def _is_done(self, task_id: int) -> bool:
        """Every id given out is a task queued or in flight until it finishes."""
        return 0 < task_id < self._next_id and task_id not in self._tasks

    def _prune_timeouts(self) -> None:
        tasks = self._tasks
        self._timeouts = [(at, number, task_id) for at, number, task_id in self._timeouts
                          if (task := tasks.get(task_id)) is not None and task.dispatch == number]
        heapq.heapify(self._timeouts)


class WorkerCore:
    """A worker's ledger: the tasks it holds from each submitter, and the READY it owes each.

    ``capacity`` is the number of tasks it takes at once (slots plus prefetch). Submitters are
    any hashable keys. Each submitter may have up to ``capacity`` tasks at the worker, run in the
    order they came; a task beyond that is refused (the submitter sees it lost, and gives it
    to another worker).
    """

    def __init__(self, capacity: int) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ConfigError(f"capacity is an integer >= 1, not {capacity!r}")
        self.capacity = capacity
        self.stats: Counter[str] = Counter()
        self._held: dict[Hashable, dict[int, None]] = {}  # submitter -> task ids, in arrival order
        self._last_dispatch: dict[Hashable, int] = {}
        self._total = 0

    @property
    def held(self) -> int:
        """Tasks held in all (running or waiting), across submitters."""
        return self._total

    def connect(self, submitter: Hashable) -> None:
        """Know ``submitter``, newly connected: nothing held from it yet, READYs owed to it."""
        self._held.setdefault(submitter, {})
        self._last_dispatch.setdefault(submitter, 0)

    def disconnect(self, submitter: Hashable) -> list[int]:
        """Forget a submitter that left; return the task ids it had given (now orphans)."""
        orphans = list(self._held.pop(submitter, ()))
        self._last_dispatch.pop(submitter, None)
        self._total -= len(orphans)
        return orphans

    def receive(self, submitter: Hashable, task_id: int, dispatch: int) -> bool:
        """A task arrived; True if the worker takes it (not a copy it holds, not over capacity)."""
        held = self._held.get(submitter)
        if held is None:
            self.stats["dropped-unknown-submitter"] += 1
            return False
        self._last_dispatch[submitter] = max(self._last_dispatch[submitter], dispatch)
        if task_id in held:
            self.stats["dropped-copy"] += 1
            return False
        if len(held) >= self.capacity:
            self.stats["dropped-over-capacity"] += 1
            return False
        held[task_id] = None
        self._total += 1
        return True

    def finish(self, submitter: Hashable, task_id: int) -> bool:
        """A task is answered or skipped; True if it was held (so its result is owed)."""
        held = self._held.get(submitter)
        if held is None or task_id not in held:
            return False
        del held[task_id]
        self._total -= 1
        return True

    def ready(self, submitter: Hashable) -> tuple[int, int, list[int]]:
        """(free, last_dispatch, held) for the READY owed to ``submitter``."""
        held = self._held.get(submitter, {})
        last_dispatch = self._last_dispatch.get(submitter, 0)
        return max(0, self.capacity - len(held)), last_dispatch, list(held)

    def ready_frame(self, submitter: Hashable, seq: int) -> bytes:
        """The READY frame owed to ``submitter``, numbered ``seq``."""
        return wire.encode_ready(seq, *self.ready(submitter))

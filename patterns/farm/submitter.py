"""The blocking submitter: queue tasks, then wait for one result or iterate them as they finish.

    with farm.Submitter(node, "squares") as squares:
        ids = [squares.submit(x) for x in range(100)]
        print(squares.result(ids[0], timeout=5))           # one task's value (or its error)
        for result in squares.as_completed(timeout=60):     # the others, as they finish
            print(result.task_id, result.value)

One named thread owns the ROUTER that workers connect to: it answers their READYs with tasks
while your code does something else, notices workers that leave, and gives their tasks to others.
Your threads only touch the core under a lock, so ``submit``/``result``/``as_completed`` may be
called from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from zmqkit import ClosedError, ConfigError, Deadline, Node, Socket, Timeout
from zmqkit.wakeup import Wakeup

from . import wire
from .core import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PENDING,
    DEFAULT_TASK_TIMEOUT,
    DEFAULT_WORKER_EXPIRY,
    SubmitterCore,
    TaskResult,
    WorkerInfo,
)

__all__ = ["DEFAULT_WAIT", "Submitter"]

log = logging.getLogger("zmqkit.farm")

DEFAULT_WAIT = 30.0  # how long result() and as_completed() wait unless told
TICK = 0.1  # seconds between looks at discovery, task deadlines and the stop flag
TICK_MS = 100
BATCH = 1000  # frames taken before the submitter sends what they earned

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def waiting_message(core: SubmitterCore, what: str, timeout: float) -> str:
    """Why a wait ended empty, in words that point at the likely cause."""
    workers = core.workers()
    if not workers:
        why = "no worker has asked for work: is any node serving this farm?"
    else:
        why = f"{len(workers)} workers, {core.outstanding} tasks not done"
    return f"{what} not done in {timeout:g} s ({why})"


class Submitter:
    """Hands tasks of farm ``farm`` to the workers that ask for them; keeps their results.

    Args:
        node: a running node; the submitter advertises its endpoint there as role ``farm:NAME``.
        farm: the farm's name; workers started with the same name find this submitter.
        task_timeout: seconds one worker may hold a task before it is given to another one.
        max_attempts: how many workers may lose a task (their node gone, or timed out) before
            it fails with ``BrokenError``.
        worker_expiry: seconds of silence after which a worker that holds no task is taken
            for gone (a busy one may be silent while it works: discovery tells if it died).
        max_pending: tasks queued, running or with results not yet taken; beyond this,
            ``submit`` raises ``BusyError``.
    """

    def __init__(self, node: Node, farm: str, *, task_timeout: float = DEFAULT_TASK_TIMEOUT,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 worker_expiry: float = DEFAULT_WORKER_EXPIRY,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.node = node
        self.farm = wire.check_farm_name(farm)
        self.role = wire.role_of(farm)
        self.endpoint = ""
        self._core = SubmitterCore(task_timeout=task_timeout, max_attempts=max_attempts,
                                   worker_expiry=worker_expiry, max_pending=max_pending)
        self._changed = threading.Condition()
        self._state = "new"
        self._stopping = False
        self._wakeup: Wakeup | None = None  # made by start(): a constructor holds no resources
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"zmqkit-farm-submitter:{farm}",
                                        daemon=True)

    def __repr__(self) -> str:
        return f"<zmqkit farm.Submitter {self.farm!r} {self.endpoint or self._state}>"

    def __enter__(self) -> Submitter:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Submitter:
        """Bind, start the thread, advertise; the node's ``close()`` closes the submitter too.

        Raises:
            ClosedError: the node is not running, or the submitter was started before.
            ConfigError: the node already has a submitter for this farm.
        """
        if self._state != "new":
            raise ClosedError(f"{self!r} cannot start twice")
        if not self.node.running:  # unannounced, no worker could ever find it
            raise ClosedError(f"{self.node!r} is not running; start it first")
        if self.role in self.node.endpoints:
            raise ConfigError(f"{self.node!r} already submits to farm {self.farm!r}; share it")
        self.node.attach(self)  # first: a closed node refuses before a thread is started
        self._state = "running"
        self._wakeup = Wakeup()
        self._unsubscribe = self.node.on_event(lambda _: self._wake())  # react at once
        self._thread.start()
        if not self._ready.wait(timeout) or self._startup_error is not None:
            self.close()
            failed = f"farm submitter {self.farm!r} failed to start"
            raise ConfigError(failed) from self._startup_error
        self.node.advertise(self.role, self.endpoint)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop handing out tasks, withdraw, join the thread; waiters get ``ClosedError``."""
        if self._state == "closed":
            return
        started, self._state = self._state == "running", "closed"
        if self.node.endpoints.get(self.role) == self.endpoint:
            self.node.withdraw(self.role)
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake()
        if started and self._thread.is_alive():
            self._thread.join(timeout)
        with self._changed:
            self._changed.notify_all()
        if self._wakeup is not None:
            self._wakeup.close()
        self.node.detach(self)

    # -- the user's side -----------------------------------------------------------------------

    def submit(self, payload: Any) -> int:
        """Queue ``payload`` for a worker; return the task id.

        Raises:
            EncodeError: the payload cannot travel.
            BusyError: too many tasks pending or not taken (``max_pending``).
            ClosedError: the submitter is not running.
        """
        with self._changed:
            self._check_running()
            task_id = self._core.submit(payload)
        self._wake()
        return task_id

    def result(self, task_id: int, timeout: float = DEFAULT_WAIT) -> Any:
        """The value of task ``task_id``, waiting at most ``timeout`` seconds. Handed out once.

        Raises:
            RemoteError: the handler raised (with its type name, message and traceback).
            BrokenError: every worker that took the task was lost (``max_attempts``).
            Timeout: not done in time (the task stays queued; ask again later).
            ConfigError: no such task, or its result was taken already.
        """
        deadline = Deadline.after(timeout)
        with self._changed:
            while True:
                self._check_running()
                outcome = self._core.take(task_id)
                if outcome is not None:
                    return outcome.unwrap()
                if deadline.expired():
                    raise Timeout(waiting_message(self._core, f"task {task_id}", timeout))
                self._changed.wait(deadline.remaining())

    def as_completed(self, timeout: float = DEFAULT_WAIT) -> Iterator[TaskResult]:
        """Yield each result not taken yet as its task finishes, tasks submitted meanwhile too.

        Stops when no task is left; a failed task is yielded with its ``error`` set, not raised.

        Raises:
            Timeout: tasks were still not done ``timeout`` seconds after the call.
        """
        return self._as_completed(Deadline.after(timeout), timeout)

    def _as_completed(self, deadline: Deadline, timeout: float) -> Iterator[TaskResult]:
        while True:
            with self._changed:
                while (outcome := self._core.take_next()) is None:
                    self._check_running()
                    if self._core.outstanding == 0:
                        return
                    if deadline.expired():
                        what = f"{self._core.outstanding} tasks"
                        raise Timeout(waiting_message(self._core, what, timeout))
                    self._changed.wait(deadline.remaining())
            yield outcome

    @property
    def duplicates(self) -> int:
        """Results that came for tasks already done (at-least-once delivery at work)."""
        with self._changed:
            return self._core.stats["duplicates"]

    def stats(self) -> dict[str, int]:
        """Counters: submitted, completed, duplicates, reassigned, timed-out, worker-lost, ..."""
        with self._changed:
            return dict(self._core.stats, outstanding=self._core.outstanding,
                        untaken=self._core.untaken, workers=len(self._core.workers()))

    def workers(self) -> list[WorkerInfo]:
        """The workers that asked for work: node UUID, tasks in flight, completed, credit.

        One entry per worker connection: each slot of a plain-function worker is one.
        """
        with self._changed:
            return self._core.workers()

    def _check_running(self) -> None:
        if self._state != "running":
            raise ClosedError(f"{self!r} is not running (use it in a with block, or start() it)")

    # -- the submitter thread ------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _run(self) -> None:
        try:
            router = Socket(zmq.ROUTER)
            self.endpoint = router.bind(self.node.host)
        except BaseException as exc:  # handed to start(), which raises it in the owner's thread
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        raw = router.raw
        poller = zmq.Poller()
        poller.register(raw, zmq.POLLIN)
        wakeup = self._wakeup
        assert wakeup is not None
        wakeup.register(poller)
        core, seen_version, seen_results = self._core, -1, 0
        try:
            while not self._stopping:
                events = dict(poller.poll(TICK_MS))
                wakeup.woke(events)
                incoming, multipart = drain(raw) if raw in events else ([], 0)
                with self._changed:
                    now = time.monotonic()
                    core.stats["dropped-multipart"] += multipart
                    outgoing = [(key, answer) for key, frame in incoming
                                if (answer := core.take_frame(key, frame, now)) is not None]
                    if self.node.peers_version != seen_version:
                        seen_version = self.node.peers_version
                        core.discovered({peer.uuid for peer in self.node.peers()})
                    core.expire(now)
                    outgoing += core.frames_out(now)
                    if core.results_version != seen_results:
                        seen_results = core.results_version
                        self._changed.notify_all()
                for key, frame in outgoing:
                    raw.send(key, _SNDMORE | _NOBLOCK)
                    raw.send(frame, _NOBLOCK)  # a ROUTER drops, never blocks, what it cannot send
        except zmq.ZMQError as exc:
            if not self._stopping:
                log.error("farm submitter %s stopped: %s", self.farm, exc)
        finally:
            router.close()


def drain(raw: zmq.Socket[Any]) -> tuple[list[tuple[bytes, bytes]], int]:
    """Up to BATCH (routing id, frame) pairs waiting on a ROUTER, and how many messages of more
    than one frame were dropped (every farm message is one frame)."""
    items: list[tuple[bytes, bytes]] = []
    dropped = 0
    for _ in range(BATCH):
        if not int(raw.getsockopt(_EVENTS)) & _POLLIN:  # cheaper than the exception of zmq.Again
            break
        key = raw.recv(_NOBLOCK)
        frame = raw.recv()  # a ROUTER message always has a frame after the routing id
        if raw.getsockopt(_RCVMORE):
            while raw.getsockopt(_RCVMORE):
                raw.recv()
            dropped += 1
            continue
        items.append((key, frame))
    return items, dropped


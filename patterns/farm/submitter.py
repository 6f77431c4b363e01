"""The blocking submitter: queue tasks, then wait for one result or iterate them as they finish.

    with farm.Submitter(node, "squares") as squares:
        ids = [squares.submit(x) for x in range(100)]
        print(squares.result(ids[0], timeout=5))           # one task's value (or its error)
        for result in squares.as_completed(timeout=60):     # the others, as they finish
            print(result.task_id, result.value)

One named thread owns the ROUTER that workers connect to (made by the node: a CURVE server that
admits only its keyring whenever the node has keys): it answers their READYs with tasks while
your code does something else, notices workers that leave, and gives their tasks to others.
Your threads only touch the core under a lock, so ``submit``/``result``/``as_completed`` may be
called from any thread. With a journal, that thread opens and writes it too: a call that must
not return before its change is on disk (a submit, a delivery) waits for the thread to write it,
so calls from many threads share one transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from zmqkit import Deadline, Node, Poller, ServiceThread, Socket, SocketKind, Timeout

from .base import (
    DEFAULT_WAIT,
    JOURNAL_WAIT,
    TICK,
    BaseSubmitter,
    Journaled,
    drain,
    send_all,
    waiting_message,
)
from .core import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PENDING,
    DEFAULT_TASK_TIMEOUT,
    DEFAULT_WORKER_EXPIRY,
    SubmitterCore,
    TaskResult,
)
from .journal import Journal

__all__ = ["DEFAULT_WAIT", "Submitter"]


class Submitter(BaseSubmitter):
    """Hands tasks of farm ``farm`` to the workers that ask for them; keeps their results.

    Usable once made: its thread runs, its endpoint is advertised, and it is attached to the
    node (``node.close()`` closes it). ``close()`` it (or use ``with``) to stop earlier.

    Args:
        node: a running node; the submitter advertises its endpoint there as role ``farm:NAME``.
            With keys, only workers whose key its keyring holds are served.
        farm: the farm's name; workers started with the same name find this submitter.
        task_timeout: seconds one worker may hold a task before it is given to another one.
        max_attempts: how many workers may lose a task (their node gone, or timed out) before
            it fails with ``BrokenError``.
        worker_expiry: seconds of silence after which a worker that holds no task is taken
            for gone (a busy one may be silent while it works: discovery tells if it died).
        max_pending: tasks queued, running or with results not yet taken; beyond this,
            ``submit`` raises ``BusyError``.
        journal: a file (SQLite) to keep the tasks in until their results are delivered. A
            submitter started on the journal of one that crashed does every task not yet
            delivered, under its id, and delivers each result once (README: the task farm).

    Raises:
        ClosedError: the node is not running.
        ConfigError: a bad option, the node already has a submitter for this farm, or the
            journal cannot be used (another submitter holds it, or it is another farm's).
    """

    def __init__(self, node: Node, farm: str, *, task_timeout: float = DEFAULT_TASK_TIMEOUT,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 worker_expiry: float = DEFAULT_WORKER_EXPIRY,
                 max_pending: int = DEFAULT_MAX_PENDING, journal: Journaled = None) -> None:
        super().__init__(node, farm, SubmitterCore(
            task_timeout=task_timeout, max_attempts=max_attempts, worker_expiry=worker_expiry,
            max_pending=max_pending), journal)
        self._changed = threading.Condition()  # guards the core; notified on results and close
        self._unsubscribe: Callable[[], None] | None = None
        self._service = ServiceThread(f"zmqkit-farm-submitter:{farm}", self._run)
        node.attach(self)  # first: a closed node refuses before a thread is started
        try:
            self._service.start()
            self._unsubscribe = node.on_event(lambda _: self._service.wake())  # react at once
            node.advertise(self.role, self.endpoint)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop handing out tasks, withdraw, stop the thread; waiters get ``ClosedError``.

        Idempotent, and callable from any thread (the submitter's own included).
        """
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._deliver_handed()  # written by the thread before it stops
            self._changed.notify_all()
        self._withdraw()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._service.stop()
        self.node.detach(self)

    # -- the user's side (any thread) ----------------------------------------------------------

    def submit(self, payload: Any) -> int:
        """Queue ``payload`` for a worker; return the task id.

        With a journal, it returns once the task is written there.

        Raises:
            EncodeError: the payload cannot travel.
            BusyError: too many tasks pending or not taken (``max_pending``).
            ClosedError: the submitter is closed.
            BrokenError: its thread stopped on an error (the journal failed, say).
            Timeout: the journal was not written within ``JOURNAL_WAIT`` seconds.
        """
        with self._changed:
            self._check_open()
            task_id = self._core.submit(payload)
            mark = self._ledger.noted if self._ledger is not None else 0
        self._service.wake()
        self._wait_written(mark)
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
            while (outcome := self._look_for_result(task_id, deadline, timeout)) is None:
                self._changed.wait(deadline.remaining())
        self._deliver(task_id)
        return outcome.unwrap()

    def as_completed(self, timeout: float = DEFAULT_WAIT) -> Iterator[TaskResult]:
        """Yield each result not taken yet as its task finishes, tasks submitted meanwhile too.

        Stops when no task is left; a failed task is yielded with its ``error`` set, not raised.

        Raises:
            Timeout: tasks were still not done ``timeout`` seconds after the call.
        """
        return self._as_completed(Deadline.after(timeout), timeout)

    def _as_completed(self, deadline: Deadline, timeout: float) -> Iterator[TaskResult]:
        held = 0  # the result your code has: delivered when it asks for the next one
        try:
            while True:
                if held:
                    self._deliver(held)
                    held = 0
                with self._changed:
                    while (outcome := self._core.take_next()) is None:
                        self._check_open()
                        if self._core.outstanding == 0:
                            return
                        if deadline.expired():
                            what = f"{self._core.outstanding} tasks"
                            raise Timeout(waiting_message(self._core, what, timeout))
                        self._changed.wait(deadline.remaining())
                held = outcome.task_id
                yield outcome
        finally:
            if held:  # the loop was left: the result is delivered (written soon, not waited for)
                with self._changed:
                    self._core.deliver(held)
                self._service.wake()

    def _holding_core(self) -> threading.Condition:
        return self._changed

    def _deliver(self, task_id: int) -> None:
        """Your code has the result of ``task_id``: return once the journal says so."""
        with self._changed:
            mark = self._core.deliver(task_id)
        if mark:
            self._service.wake()
            self._wait_written(mark)

    def _wait_written(self, mark: int) -> None:
        """Wait until the journal holds the changes up to ``mark`` (0: none to wait for).

        Raises:
            BrokenError: the thread stopped on an error (the journal failed).
            ClosedError: closed meanwhile.
            Timeout: not written within ``JOURNAL_WAIT`` seconds.
        """
        if not mark:
            return
        ledger = self._ledger
        assert ledger is not None
        deadline = Deadline.after(JOURNAL_WAIT)
        with self._changed:
            while ledger.written < mark:
                self._check_open()
                if deadline.expired():
                    raise Timeout(f"{self!r}: the journal was not written in {JOURNAL_WAIT:g} s")
                self._changed.wait(deadline.remaining())

    # -- the submitter thread ------------------------------------------------------------------

    def _run(self, service: ServiceThread) -> None:
        journal = self._open_journal()  # here: the journal belongs to this thread
        try:
            router = self.node.server_socket(SocketKind.ROUTER)
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        try:
            self.endpoint = router.endpoint
            poller = Poller([router, service.wakeup])
            service.ready()
            self._serve(service, router, poller, journal)
            self._write_journal(journal)  # what the close delivered
        except BaseException as exc:
            with self._changed:  # waiters hear of it now, not at their deadline
                self._failure = None if service.stopping else exc
                self._changed.notify_all()
            raise
        finally:
            router.close()
            if journal is not None:
                journal.close()

    def _serve(self, service: ServiceThread, router: Socket, poller: Poller,
               journal: Journal | None) -> None:
        core, changed, node = self._core, self._changed, self.node
        seen_version, seen_results = -1, 0
        while not service.stopping:
            ready = poller.poll(TICK)
            incoming, multipart = drain(router) if router in ready else ([], 0)
            with changed:
                now = time.monotonic()
                core.stats["dropped-multipart"] += multipart
                outgoing = [(key, answer) for key, frame in incoming
                            if (answer := core.take_frame(key, frame, now)) is not None]
                if node.peers_version != seen_version:
                    seen_version = node.peers_version
                    core.discovered({peer.uuid for peer in node.peers()})
                core.expire(now)
                outgoing += core.frames_out(now)
                if core.results_version != seen_results:
                    seen_results = core.results_version
                    changed.notify_all()
            self._write_journal(journal)  # before the tasks it holds leave
            send_all(router, outgoing)

    def _write_journal(self, journal: Journal | None) -> None:
        """Write what the ledger noted in one transaction; wake who waits for it."""
        ledger = self._ledger
        if journal is None or ledger is None:
            return
        with self._changed:
            if not ledger.pending:
                return
            batch = ledger.take()
        journal.write(batch)
        with self._changed:
            ledger.written = batch.mark
            self._changed.notify_all()


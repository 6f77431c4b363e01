"""The asyncio submitter: the same farm, driven from an event loop, with no thread.

    async with farm.AsyncSubmitter(node, "squares") as squares:
        ids = [squares.submit(x) for x in range(100)]          # submit() does not wait
        print(await squares.result(ids[0], timeout=5))
        async for result in squares.as_completed(timeout=60):
            print(result.task_id, result.value)

A pump task on the loop owns the ROUTER (made by the node, so CURVE applies whenever the node
has keys); ``submit`` sends at once when a worker has credit. Everything but ``close`` is used on
that loop; from other threads use ``farm.Submitter``. A journal is opened and written on that
loop too: each change is committed in the call that makes it (a few tens of microseconds in
WAL mode), so nothing waits for another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from zmqkit import AsyncSocket, BrokenError, Deadline, LoopOwner, Node, SocketKind, Timeout

from .base import (
    BATCH,
    DEFAULT_WAIT,
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

__all__ = ["AsyncSubmitter"]

log = logging.getLogger("zmqkit.farm")


class AsyncSubmitter(BaseSubmitter):
    """``Submitter`` for asyncio code: the same options, awaitable waits, one loop.

    Made inside a running loop, it is usable at once and attached to its node; ``async with``
    closes it on the way out. Its methods are used on that loop (elsewhere they raise
    ``WrongThread``); ``close()`` works from any thread.

    Raises:
        WrongThread: made outside a running event loop.
        ClosedError: the node is not running.
        ConfigError: a bad option, the node already has a submitter for this farm, or the
            journal cannot be used.
    """

    def __init__(self, node: Node, farm: str, *, task_timeout: float = DEFAULT_TASK_TIMEOUT,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 worker_expiry: float = DEFAULT_WORKER_EXPIRY,
                 max_pending: int = DEFAULT_MAX_PENDING, journal: Journaled = None) -> None:
        self._owner = LoopOwner("an AsyncSubmitter", instead="farm.Submitter")
        super().__init__(node, farm, SubmitterCore(
            task_timeout=task_timeout, max_attempts=max_attempts, worker_expiry=worker_expiry,
            max_pending=max_pending), journal)
        self._sock: AsyncSocket | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # replaced each time it is set: waiters hold the old one
        self._seen_version = -1
        self._seen_results = 0
        self._journal = self._open_journal()  # on this loop, which alone writes it
        try:
            node.attach(self)
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            raise
        try:
            sock = node.server_socket(SocketKind.ROUTER, asyncio=True)
            assert isinstance(sock, AsyncSocket)
            self._sock = sock
            self.endpoint = sock.endpoint
            node.advertise(self.role, self.endpoint)
        except BaseException:
            self.close()
            raise
        self._pump_task = self._owner.loop.create_task(
            self._pump(), name=f"zmqkit-farm-submitter:{self.farm}")

    async def __aenter__(self) -> AsyncSubmitter:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()
        if self._pump_task is not None:
            await asyncio.gather(self._pump_task, return_exceptions=True)

    def close(self) -> None:
        """Stop the pump, withdraw, close the ROUTER; waiters get ``ClosedError``.

        Idempotent, and callable from any thread: the work is done on the submitter's loop
        (at once when that loop has ended).
        """
        if not self._closed:
            self._owner.call(self._close)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._withdraw()
        loop_open = not self._owner.loop.is_closed()
        if self._pump_task is not None and loop_open:
            self._pump_task.cancel()
        if self._sock is not None:
            self._sock.close()
        if self._journal is not None and self._owner.is_current:
            self._deliver_handed()
            try:
                self._write_journal()
            except BrokenError as exc:  # kept in _failure too; the close itself goes on
                log.warning("farm submitter %s: the last deliveries were not written: %s",
                            self.farm, exc)
            finally:
                self._journal.close()
        # else: closed from another thread after the loop's thread ended: the connection is that
        # thread's, so it is left to the garbage collector, and the results handed out but not
        # recorded as delivered come again after a restart, as after a crash
        if loop_open:
            self._changed.set()
        self.node.detach(self)

    # -- the user's side (on the loop) ---------------------------------------------------------

    def submit(self, payload: Any) -> int:
        """Queue ``payload``; it is sent at once if a worker has credit. Returns the task id
        (with a journal, once the task is written there).

        Raises:
            EncodeError: the payload cannot travel.
            BusyError: too many tasks pending or not taken (``max_pending``).
            ClosedError: the submitter is closed.
            BrokenError: its pump stopped on an error, or the journal failed.
            WrongThread: called off the submitter's loop.
        """
        self._check_open()
        task_id = self._core.submit(payload)
        self._write_journal()
        assert self._sock is not None
        send_all(self._sock, self._core.frames_out(time.monotonic()))
        return task_id

    async def result(self, task_id: int, timeout: float = DEFAULT_WAIT) -> Any:
        """The value of task ``task_id``, waiting at most ``timeout`` seconds (see
        ``Submitter.result`` for the errors)."""
        deadline = Deadline.after(timeout)
        while (outcome := self._look_for_result(task_id, deadline, timeout)) is None:
            await self._wait_for_results(deadline)
        self._core.deliver(task_id)
        self._write_journal()
        return outcome.unwrap()

    def as_completed(self, timeout: float = DEFAULT_WAIT) -> AsyncIterator[TaskResult]:
        """``async for`` each result as its task finishes (see ``Submitter.as_completed``)."""
        return self._as_completed(Deadline.after(timeout), timeout)

    async def _as_completed(self, deadline: Deadline, timeout: float) -> AsyncIterator[TaskResult]:
        while True:
            self._check_open()
            outcome = self._core.take_next()
            if outcome is not None:
                try:
                    yield outcome
                finally:  # asked for the next one, or left the loop: your code has it
                    if not self._closed:
                        self._core.deliver(outcome.task_id)
                        self._write_journal()
                continue
            if self._core.outstanding == 0:
                return
            if deadline.expired():
                what = f"{self._core.outstanding} tasks"
                raise Timeout(waiting_message(self._core, what, timeout))
            await self._wait_for_results(deadline)

    # -- the parts -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        self._owner.check(self)
        super()._check_open()

    def _holding_core(self) -> contextlib.nullcontext[None]:
        self._owner.check(self)  # the core is the loop's: only the loop reads it
        return contextlib.nullcontext()

    async def _wait_for_results(self, deadline: Deadline) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), deadline.remaining())

    def _write_journal(self) -> None:
        """Commit what the ledger noted, now (on the loop).

        Raises:
            BrokenError: the journal failed; the submitter is broken from now on.
        """
        ledger = self._ledger
        if self._journal is None or ledger is None or not ledger.pending:
            return
        batch = ledger.take()
        try:
            self._journal.write(batch)
        except BrokenError as exc:
            self._failure = exc
            self._wake_waiters()
            raise
        ledger.written = batch.mark

    def _wake_waiters(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _pump(self) -> None:
        """Take frames, answer them, follow discovery and deadlines, send what is owed."""
        try:
            await self._serve()
        except Exception as exc:  # not swallowed: kept, logged, and raised to every caller
            self._failure = exc
            log.exception("farm submitter %s stopped", self.farm)
            self._wake_waiters()

    async def _serve(self) -> None:
        sock, core, node = self._sock, self._core, self.node
        assert sock is not None
        while True:
            incoming, multipart = drain(sock)
            core.stats["dropped-multipart"] += multipart
            now = time.monotonic()
            outgoing = [(key, answer) for key, frame in incoming
                        if (answer := core.take_frame(key, frame, now)) is not None]
            if node.peers_version != self._seen_version:
                self._seen_version = node.peers_version
                core.discovered({peer.uuid for peer in node.peers()})
            core.expire(now)
            outgoing += core.frames_out(now)
            self._write_journal()  # before the tasks it holds leave
            send_all(sock, outgoing)
            if core.results_version != self._seen_results:
                self._seen_results = core.results_version
                self._wake_waiters()
            if len(incoming) < BATCH:
                await sock.wait_readable(TICK)

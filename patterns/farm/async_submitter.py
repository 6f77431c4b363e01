"""The asyncio submitter: the same farm, driven from an event loop, with no thread.

    async with farm.AsyncSubmitter(node, "squares") as squares:
        ids = [squares.submit(x) for x in range(100)]          # submit() does not wait
        print(await squares.result(ids[0], timeout=5))
        async for result in squares.as_completed(timeout=60):
            print(result.task_id, result.value)

A pump task on the loop owns the ROUTER; ``submit`` sends at once when a worker has credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq

from zmqkit import AsyncSocket, BusyError, ClosedError, ConfigError, Deadline, Node, Timeout

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
from .submitter import BATCH, DEFAULT_WAIT, TICK, drain, waiting_message

__all__ = ["AsyncSubmitter"]

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


class AsyncSubmitter:
    """``Submitter`` for asyncio code: the same options, awaitable waits, one loop.

    Use ``async with`` (or ``start()`` inside the loop and ``await aclose()``).
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
        self._state = "new"
        self._sock: AsyncSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner = 0
        self._pump_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # replaced each time it is set: waiters hold the old one
        self._seen_version = -1
        self._seen_results = 0

    def __repr__(self) -> str:
        return f"<zmqkit farm.AsyncSubmitter {self.farm!r} {self.endpoint or self._state}>"

    async def __aenter__(self) -> AsyncSubmitter:
        return self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> AsyncSubmitter:
        """Bind, advertise and start the pump on the running loop.

        Raises:
            ClosedError: the node is not running, or the submitter was started before.
            ConfigError: the node already has a submitter for this farm.
        """
        loop = asyncio.get_running_loop()
        if self._state != "new":
            raise ClosedError(f"{self!r} cannot start twice")
        if not self.node.running:  # unannounced, no worker could ever find it
            raise ClosedError(f"{self.node!r} is not running; start it first")
        if self.role in self.node.endpoints:
            raise ConfigError(f"{self.node!r} already submits to farm {self.farm!r}; share it")
        self.node.attach(self)
        self._state = "running"
        self._loop, self._owner = loop, threading.get_ident()
        try:
            self._sock = AsyncSocket(zmq.ROUTER)
            self.endpoint = self._sock.bind(self.node.host)
            self.node.advertise(self.role, self.endpoint)
        except BaseException:
            self.close()
            raise
        self._pump_task = loop.create_task(self._pump(), name=f"zmqkit-farm-submitter:{self.farm}")
        return self

    def close(self) -> None:
        """Stop (from the loop's thread; from another thread it is scheduled on the loop)."""
        if self._state == "closed":
            return
        if self._loop is not None and threading.get_ident() != self._owner:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
                self._loop.call_soon_threadsafe(self.close)
            return
        self._state = "closed"
        if self.node.endpoints.get(self.role) == self.endpoint and self.endpoint:
            self.node.withdraw(self.role)
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self._sock is not None:
            self._sock.close()
        self._changed.set()
        self.node.detach(self)

    async def aclose(self) -> None:
        """``close``, then wait for the pump to finish."""
        self.close()
        if self._pump_task is not None:
            await asyncio.gather(self._pump_task, return_exceptions=True)

    # -- the user's side -----------------------------------------------------------------------

    def submit(self, payload: Any) -> int:
        """Queue ``payload``; it is sent at once if a worker has credit. Returns the task id.

        Raises:
            EncodeError: the payload cannot travel.
            BusyError: too many tasks pending or not taken, or called from another thread.
            ClosedError: not running.
        """
        self._check_usable()
        task_id = self._core.submit(payload)
        self._send(self._core.frames_out(time.monotonic()), from_pump=False)
        return task_id

    async def result(self, task_id: int, timeout: float = DEFAULT_WAIT) -> Any:
        """The value of task ``task_id``, waiting at most ``timeout`` seconds (see
        ``Submitter.result`` for the errors)."""
        deadline = Deadline.after(timeout)
        while True:
            self._check_usable()
            outcome = self._core.take(task_id)
            if outcome is not None:
                return outcome.unwrap()
            if deadline.expired():
                raise Timeout(waiting_message(self._core, f"task {task_id}", timeout))
            await self._wait_for_results(deadline)

    def as_completed(self, timeout: float = DEFAULT_WAIT) -> AsyncIterator[TaskResult]:
        """``async for`` each result as its task finishes (see ``Submitter.as_completed``)."""
        return self._as_completed(Deadline.after(timeout), timeout)

    async def _as_completed(self, deadline: Deadline, timeout: float) -> AsyncIterator[TaskResult]:
        while True:
            self._check_usable()
            outcome = self._core.take_next()
            if outcome is not None:
                yield outcome
                continue
            if self._core.outstanding == 0:
                return
            if deadline.expired():
                what = f"{self._core.outstanding} tasks"
                raise Timeout(waiting_message(self._core, what, timeout))
            await self._wait_for_results(deadline)

    @property
    def duplicates(self) -> int:
        return self._core.stats["duplicates"]

    def stats(self) -> dict[str, int]:
        return dict(self._core.stats, outstanding=self._core.outstanding,
                    untaken=self._core.untaken, workers=len(self._core.workers()))

    def workers(self) -> list[WorkerInfo]:
        return self._core.workers()

    # -- the parts -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state != "running":
            raise ClosedError(f"{self!r} is not running (use it in an async with block)")
        if threading.get_ident() != self._owner:
            raise BusyError(f"{self!r} belongs to the loop that started it")

    async def _wait_for_results(self, deadline: Deadline) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), deadline.remaining())

    def _send(self, frames: list[tuple[bytes, bytes]], *, from_pump: bool) -> None:
        assert self._sock is not None
        if from_pump:  # the pump looks at the socket again before it parks
            raw = self._sock.raw
            for key, frame in frames:
                raw.send(key, _SNDMORE | _NOBLOCK)
                raw.send(frame, _NOBLOCK)  # a ROUTER drops, never blocks, what it cannot send
            return
        for key, frame in frames:  # these sends wake the parked pump if they ate its signal
            self._sock.send_multipart([key, frame])

    async def _pump(self) -> None:
        """Take frames, answer them, follow discovery and deadlines, send what is owed."""
        assert self._sock is not None
        sock, core = self._sock, self._core
        raw = sock.raw
        while True:
            incoming, multipart = drain(raw)
            core.stats["dropped-multipart"] += multipart
            now = time.monotonic()
            outgoing = [(key, answer) for key, frame in incoming
                        if (answer := core.take_frame(key, frame, now)) is not None]
            if self.node.peers_version != self._seen_version:
                self._seen_version = self.node.peers_version
                core.discovered({peer.uuid for peer in self.node.peers()})
            core.expire(now)
            self._send(outgoing + core.frames_out(now), from_pump=True)
            if core.results_version != self._seen_results:
                self._seen_results = core.results_version
                self._changed.set()
                self._changed = asyncio.Event()
            if len(incoming) < BATCH:
                await sock.wait_readable(TICK)

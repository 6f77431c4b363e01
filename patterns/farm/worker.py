"""A farm worker: pulls tasks from every submitter of a farm and runs them, ``slots`` at a time.

    farm.serve_worker(node, square, farm="squares", slots=2)    # until the node closes

A plain function gets ``slots`` threads ("zmqkit-farm-slot:NAME:i"). Each is a worker of its own
to the submitters: it has its own DEALER to each of them, asks for a task, runs it and sends the
result itself, so a task costs no hand-off between threads. An ``async def`` gets one thread
running an event loop ("zmqkit-farm-loop:NAME") that owns one DEALER per submitter and runs up
to ``slots`` tasks at once.

The worker asks for work instead of being pushed it: its READY says how many more tasks it takes,
so a slow worker gets fewer. ``prefetch`` extra tasks wait in each slot (or the loop) so that it
does not idle for a round trip between tiny tasks; 0, the default, spreads work most fairly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import math
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from zmqkit import (
    AsyncSocket,
    ClosedError,
    ConfigError,
    Deadline,
    EncodeError,
    Node,
    ProtocolError,
    Socket,
    codec,
)
from zmqkit.wakeup import Wakeup

from . import wire
from .core import WorkerCore

__all__ = ["READY_INTERVAL", "Worker", "serve_worker"]

log = logging.getLogger("zmqkit.farm")

READY_INTERVAL = 1.0  # an idle worker restates its READY this often (resync, and "still here")
TICK = 0.1  # seconds between looks at the stop flag and at discovery
BATCH = 1000  # frames taken from one socket at a time
MAX_TRACEBACK = 8192
_INSTANCES = itertools.count(1)  # tells apart the slots of one node in their routing ids

SubmitterKey = str  # "UUID ENDPOINT": a restarted submitter on a reused port is a new one


@dataclass(slots=True)
class _Job:
    submitter: SubmitterKey
    task_id: int
    payload: Any
    cancelled: bool = False


class Worker:
    """Runs ``handler(payload)`` for the tasks of farm ``farm`` (default: the node's name).

    Args:
        node: a running node; the worker finds submitters through its discovery.
        handler: a plain function (run in ``slots`` threads) or an ``async def`` (run on the
            worker's own event loop, ``slots`` at once). Its return value is the task's result;
            an exception it raises becomes a ``RemoteError`` result for that task.
        farm: the farm's name, as given to ``Submitter``.
        slots: tasks run at once: the worker's credit.
        prefetch: tasks held waiting beyond those running (per slot for a plain function, in
            all for an ``async def``), to hide the round trip between tiny tasks.
    """

    def __init__(self, node: Node, handler: Callable[[Any], Any], farm: str | None = None, *,
                 slots: int = 1, prefetch: int = 0) -> None:
        if not callable(handler):
            raise ConfigError(f"the handler must be callable, not {handler!r}")
        if type(slots) is not int or not 1 <= slots <= 1000:
            raise ConfigError(f"slots is an integer from 1 to 1000, not {slots!r}")
        if type(prefetch) is not int or not 0 <= prefetch <= 1000:
            raise ConfigError(f"prefetch is an integer from 0 to 1000, not {prefetch!r}")
        self.node = node
        self.handler = handler
        self.farm = wire.check_farm_name(node.name if farm is None else farm)
        self.role = wire.role_of(self.farm)
        self.slots = slots
        self.prefetch = prefetch
        self.stats: Counter[str] = Counter()  # summed over the slots (each adds its own)
        self._is_async = inspect.iscoroutinefunction(handler)
        self._state = "new"
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._wakeups: list[Wakeup] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<zmqkit farm.Worker {self.farm!r} slots={self.slots} {self._state}>"

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- life cycle (owner's thread) -----------------------------------------------------------

    def start(self) -> Worker:
        """Start the threads and tie the worker to its node (``node.close()`` closes it).

        Raises:
            ClosedError: the node is not running, or the worker was started before.
        """
        if self._state != "new":
            raise ClosedError(f"{self!r} cannot start twice")
        if not self.node.running:
            raise ClosedError(f"{self.node!r} is not running; start it first")
        self.node.attach(self)
        self._state = "running"
        if self._is_async:
            loop = self._loop = asyncio.new_event_loop()
            self._threads.append(threading.Thread(
                target=self._run_loop, name=f"zmqkit-farm-loop:{self.farm}", daemon=True))
        else:
            for index in range(self.slots):
                wakeup = Wakeup()
                self._wakeups.append(wakeup)
                self._threads.append(threading.Thread(
                    target=self._serve_slot, args=(wakeup,),
                    name=f"zmqkit-farm-slot:{self.farm}:{index}", daemon=True))
        self._unsubscribe = self.node.on_event(lambda _: self._wake())  # react to discovery at once
        for thread in self._threads:
            thread.start()
        if self._is_async:
            ready = threading.Event()
            loop.call_soon_threadsafe(ready.set)
            ready.wait(5.0)  # the loop runs and ``_main`` exists before start() returns
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop taking tasks, hand back those not started, join every thread. Safe to call twice.

        A plain handler that is running cannot be interrupted: it finishes and its result is
        sent (close waits up to ``timeout`` for all of them); an ``async def`` handler is
        cancelled. Tasks not started go back to their submitters at once (a LEAVE message),
        which give them to other workers.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake()
        if self._loop is not None and self._main is not None:
            with contextlib.suppress(RuntimeError):  # the loop has finished already
                self._loop.call_soon_threadsafe(self._main.cancel)
        deadline = Deadline.after(timeout)
        for thread in self._threads:
            thread.join(deadline.remaining())
            if thread.is_alive():
                log.warning("%s is still running a task after %s s; left behind",
                            thread.name, timeout)
        if self._loop is not None and not any(t.is_alive() for t in self._threads):
            self._loop.close()
        for wakeup in self._wakeups:
            wakeup.close()
        self.node.detach(self)

    def _wake(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()
        if self._loop is not None and self._changed is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._changed.set)

    def _count(self, counts: Counter[str]) -> None:
        with self._stats_lock:
            self.stats.update(counts)
        counts.clear()

    def _submitters(self) -> set[SubmitterKey]:
        """The submitters of this farm that discovery lists (and one on this node)."""
        role = self.role
        wanted = {f"{peer.uuid} {peer.endpoints[role]}" for peer in self.node.peers(role=role)}
        if self.role in self.node.endpoints:
            wanted.add(f"{self.node.uuid} {self.node.endpoints[self.role]}")
        return wanted

    def _discovery_version(self) -> tuple[int, str | None]:
        return (self.node.peers_version, self.node.endpoints.get(self.role))

    # -- a slot thread (plain handlers) --------------------------------------------------------

    def _serve_slot(self, wakeup: Wakeup) -> None:
        """One slot: its own connections, its own queue; runs each task itself."""
        routing_id = wire.worker_routing_id(self.node.uuid, next(_INSTANCES))
        core = WorkerCore(1 + self.prefetch)
        counts: Counter[str] = Counter()
        sockets: dict[SubmitterKey, Socket] = {}
        owners: dict[zmq.Socket[Any], SubmitterKey] = {}
        waiting: deque[_Job] = deque()
        poller = zmq.Poller()
        wakeup.register(poller)
        seqs = itertools.count(1)
        seen: tuple[int, str | None] = (-1, None)
        next_ready = time.monotonic() + READY_INTERVAL

        def find_waiting(key: SubmitterKey, task_id: int) -> _Job | None:
            return next((j for j in waiting if j.submitter == key and j.task_id == task_id), None)

        try:
            while not self._stopping:
                if (version := self._discovery_version()) != seen:
                    seen = version
                    self._follow_slot(core, sockets, owners, poller, waiting, routing_id, seqs,
                                      counts)
                wait = 0.0 if waiting else min(TICK, max(0.0, next_ready - time.monotonic()))
                events = dict(poller.poll(math.ceil(wait * 1000)))
                wakeup.woke(events)
                owed: set[SubmitterKey] = set()
                for raw, key in owners.items():
                    if raw in events:
                        self._intake(key, raw, core, owed, counts, waiting.append, find_waiting)
                for job in [job for job in waiting if job.cancelled]:
                    waiting.remove(job)
                    core.finish(job.submitter, job.task_id)
                    counts["skipped"] += 1
                    owed.add(job.submitter)  # no result will give its credit back: a READY will
                if time.monotonic() >= next_ready:
                    owed.update(sockets)
                    next_ready = time.monotonic() + READY_INTERVAL
                for key in owed:  # before the next task: a refusal is told at once
                    if key in sockets:
                        _send(sockets[key], core.ready_frame(key, next(seqs)), counts)
                if waiting and not self._stopping:
                    job = waiting.popleft()
                    frame = _run(self.handler, job)
                    sock = sockets.get(job.submitter)
                    if core.finish(job.submitter, job.task_id) and sock is not None:
                        _send(sock, frame, counts)  # it gives back the credit: no READY needed
                        counts["done"] += 1
                    else:
                        counts["dropped-orphan"] += 1  # its submitter left while it ran
                if counts:
                    self._count(counts)
        except zmq.ZMQError as exc:
            if not self._stopping:
                log.error("farm worker %s stopped: %s", self.farm, exc)
        finally:
            for key, sock in sockets.items():  # else the submitter waits for expiry or timeouts
                _send(sock, wire.encode_leave(next(seqs)), counts)
                sock.close()
                core.disconnect(key)
            self._count(counts)

    def _follow_slot(self, core: WorkerCore, sockets: dict[SubmitterKey, Socket],
                     owners: dict[zmq.Socket[Any], SubmitterKey], poller: zmq.Poller,
                     waiting: deque[_Job], routing_id: bytes, seqs: itertools.count[int],
                     counts: Counter[str]) -> None:
        wanted = self._submitters()
        for key in set(sockets) - wanted:
            sock = sockets.pop(key)
            poller.unregister(sock.raw)
            del owners[sock.raw]
            sock.close()
            core.disconnect(key)
            counts["submitters-lost"] += 1
            for job in waiting:  # nobody waits for their results any more
                if job.submitter == key:
                    job.cancelled = True
        for key in wanted - set(sockets):
            sock = Socket(zmq.DEALER, routing_id=routing_id)
            try:
                sock.connect(key.split(" ", 1)[1])
            except ConfigError:
                sock.close()
                counts["dropped-bad-endpoint"] += 1
                continue
            sockets[key] = sock
            owners[sock.raw] = key
            poller.register(sock.raw, zmq.POLLIN)
            core.connect(key)
            _send(sock, core.ready_frame(key, next(seqs)), counts)

    @staticmethod
    def _intake(key: SubmitterKey, raw: zmq.Socket[Any], core: WorkerCore, owed: set[SubmitterKey],
                counts: Counter[str], accept: Callable[[_Job], object],
                find: Callable[[SubmitterKey, int], _Job | None]) -> None:
        """Take the frames waiting on ``raw``: tasks go to ``accept``; a cancel marks the job
        that ``find`` returns, which is then skipped if it has not started."""
        for _ in range(BATCH):
            if not int(raw.getsockopt(_EVENTS)) & _POLLIN:  # cheaper than raising zmq.Again
                return
            frame = raw.recv(_NOBLOCK)
            try:
                message = wire.read_from_submitter(frame)
            except ProtocolError:
                counts["dropped-malformed"] += 1
                continue
            if isinstance(message, wire.CancelTask):
                found = find(key, message.task_id)
                if found is not None:
                    found.cancelled = True  # a running task runs on: its result is a duplicate
                continue
            if core.receive(key, message.task_id, message.dispatch):
                accept(_Job(key, message.task_id, message.payload))
            else:
                owed.add(key)  # say at once that it was not taken

    # -- the loop thread (async handlers) ------------------------------------------------------

    def _follow_loop(self, core: WorkerCore, sockets: dict[SubmitterKey, AsyncSocket],
                     readers: dict[SubmitterKey, asyncio.Task[None]],
                     jobs: dict[tuple[SubmitterKey, int], _Job], routing_id: bytes,
                     read: Callable[[SubmitterKey, AsyncSocket], Coroutine[Any, Any, None]],
                     send_ready: Callable[[Iterable[SubmitterKey]], None],
                     counts: Counter[str]) -> None:
        wanted = self._submitters()
        for key in set(sockets) - wanted:
            readers.pop(key).cancel()
            sockets.pop(key).close()
            core.disconnect(key)
            counts["submitters-lost"] += 1
            for (submitter, _), job in jobs.items():  # nobody waits for their results any more
                if submitter == key:
                    job.cancelled = True
        for key in wanted - set(sockets):
            sock = AsyncSocket(zmq.DEALER, routing_id=routing_id)
            try:
                sock.connect(key.split(" ", 1)[1])
            except ConfigError:
                sock.close()
                counts["dropped-bad-endpoint"] += 1
                continue
            sockets[key] = sock
            core.connect(key)
            send_ready([key])
            readers[key] = asyncio.ensure_future(read(key, sock))

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._main = self._loop.create_task(self._serve_async())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._main)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())

    async def _serve_async(self) -> None:
        """One loop: a DEALER and a reader per submitter, up to ``slots`` handlers at once."""
        routing_id = wire.worker_routing_id(self.node.uuid, next(_INSTANCES))
        core = WorkerCore(self.slots + self.prefetch)
        semaphore = asyncio.Semaphore(self.slots)
        changed = self._changed = asyncio.Event()
        counts: Counter[str] = Counter()
        sockets: dict[SubmitterKey, AsyncSocket] = {}
        readers: dict[SubmitterKey, asyncio.Task[None]] = {}
        jobs: dict[tuple[SubmitterKey, int], _Job] = {}
        running: set[asyncio.Task[None]] = set()
        seqs = itertools.count(1)

        def send_ready(keys: Iterable[SubmitterKey]) -> None:
            for key in list(keys):
                if key in sockets:
                    _send(sockets[key], core.ready_frame(key, next(seqs)), counts)

        async def run(job: _Job) -> None:
            async with semaphore:
                frame = None if job.cancelled else await _run_async(self.handler, job)
            jobs.pop((job.submitter, job.task_id), None)
            held = core.finish(job.submitter, job.task_id)
            sock = sockets.get(job.submitter)
            if frame is None:
                counts["skipped"] += 1
                send_ready([job.submitter])  # no result will give its credit back
            elif held and sock is not None:
                _send(sock, frame, counts)
                counts["done"] += 1
            else:
                counts["dropped-orphan"] += 1

        def accept(job: _Job) -> None:
            jobs[(job.submitter, job.task_id)] = job
            task = asyncio.ensure_future(run(job))
            running.add(task)
            task.add_done_callback(running.discard)

        async def read(key: SubmitterKey, sock: AsyncSocket) -> None:
            while True:
                owed: set[SubmitterKey] = set()
                self._intake(key, sock.raw, core, owed, counts, accept,
                             lambda submitter, task_id: jobs.get((submitter, task_id)))
                send_ready(owed)
                await sock.wait_readable(READY_INTERVAL)

        try:
            seen: tuple[int, str | None] = (-1, None)
            next_ready = time.monotonic() + READY_INTERVAL
            while not self._stopping:
                if (version := self._discovery_version()) != seen:
                    seen = version
                    self._follow_loop(core, sockets, readers, jobs, routing_id, read, send_ready,
                                      counts)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(0.0, next_ready - time.monotonic()))
                changed.clear()
                if time.monotonic() >= next_ready:
                    send_ready(sockets)  # restate: a lost message heals, and "still here"
                    next_ready = time.monotonic() + READY_INTERVAL
                self._count(counts)
        finally:
            for task in [*readers.values(), *running]:
                task.cancel()
            await asyncio.gather(*readers.values(), *running, return_exceptions=True)
            for key, sock in sockets.items():
                _send(sock, wire.encode_leave(next(seqs)), counts)
                sock.close()
                core.disconnect(key)
            self._count(counts)


_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _send(sock: Socket, frame: bytes, counts: Counter[str]) -> None:
    """Send without waiting: a submitter that cannot take more (gone, queue full) loses it."""
    if isinstance(sock, AsyncSocket):  # its send also wakes a reader parked on the same socket
        if not sock.send_nowait(frame):
            counts["dropped-unsent"] += 1
        return
    try:
        sock.raw.send(frame, _NOBLOCK)
    except zmq.Again:
        counts["dropped-unsent"] += 1


def _run(handler: Callable[[Any], Any], job: _Job) -> bytes:
    """Run a plain handler; its result or its exception, as the frame to send back."""
    try:
        value = handler(job.payload)
    except Exception as exc:  # the submitter gets it as RemoteError; the worker goes on
        return _error(job.task_id, exc)
    return _reply(job.task_id, value)


async def _run_async(handler: Callable[[Any], Any], job: _Job) -> bytes:
    try:
        value = await handler(job.payload)
    except Exception as exc:  # the submitter gets it as RemoteError; the worker goes on
        return _error(job.task_id, exc)
    return _reply(job.task_id, value)


def _reply(task_id: int, value: Any) -> bytes:
    try:
        return codec.encode_reply(task_id, value)
    except EncodeError as exc:
        return codec.encode_error(task_id, "zmqkit.EncodeError", f"the task returned {exc}")


def _error(task_id: int, exc: Exception) -> bytes:
    remote_traceback = traceback.format_exc()[-MAX_TRACEBACK:]
    return codec.encode_error(task_id, type(exc).__name__, str(exc), remote_traceback)


def serve_worker(node: Node, handler: Callable[[Any], Any], farm: str | None = None, *,
                 slots: int = 1, prefetch: int = 0) -> Worker:
    """Run ``handler`` on the tasks of ``farm`` (default: the node's name) until the node closes.

    Returns the running worker (``close()`` stops it early).

    Raises:
        ClosedError: the node is not running.
        ConfigError: a bad farm name, slots or prefetch.
    """
    return Worker(node, handler, farm, slots=slots, prefetch=prefetch).start()

"""A farm worker: pulls tasks from every submitter of a farm and runs them, ``slots`` at a time.

    farm.serve_worker(node, square, farm="squares", slots=2)    # until the node closes

    node thread "zmqkit-farm:NAME"        one DEALER per submitter; READY, tasks, results
       ├──► slot threads (plain def)       ``slots`` of them, each runs one task at a time
       └──► loop thread (async def)        up to ``slots`` coroutines at once
             results ──► outbox ──► the node thread sends them (it alone touches the sockets)

The worker asks for work instead of being pushed it: its READY says how many more tasks it takes,
so a slow worker gets fewer. ``prefetch`` extra tasks wait in the worker so that a slot never
idles for a round trip; 0 (the default) gives the fairest spread between fast and slow workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import queue
import threading
import time
import traceback
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from zmqkit import ClosedError, ConfigError, EncodeError, Node, ProtocolError, Socket, codec

from . import wire
from .wakeup import Wakeup
from .core import WorkerCore

__all__ = ["READY_INTERVAL", "Worker", "serve_worker"]

log = logging.getLogger("zmqkit.farm")

READY_INTERVAL = 1.0  # a worker restates its READY this often (the submitter's liveness signal)
TICK = 0.1  # seconds between looks at the stop flag and at discovery
BATCH = 1000  # frames taken from one socket before looking at the others
MAX_TRACEBACK = 8192
_INSTANCES = itertools.count(1)  # tells apart the workers of one node in their routing ids

SubmitterKey = tuple[uuid_module.UUID, str]  # (node UUID, endpoint)


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
        prefetch: tasks held waiting beyond ``slots``, to hide the round trip for tiny tasks.
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
        self.routing_id = wire.worker_routing_id(node.uuid, next(_INSTANCES))
        self.stats: Counter[str] = Counter()
        self._core = WorkerCore(slots + prefetch)
        self._is_async = inspect.iscoroutinefunction(handler)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._outbox: deque[tuple[_Job, bytes | None]] = deque()
        self._jobs_by_id: dict[tuple[SubmitterKey, int], _Job] = {}  # the node thread's only
        self._wakeup: Wakeup | None = None  # made by start(): a constructor holds no resources
        self._state = "new"
        self._stopping = False
        self._unsubscribe: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"zmqkit-farm-worker:{self.farm}",
                                        daemon=True)
        self._pool: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._semaphore: asyncio.Semaphore | None = None

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
            self._semaphore = asyncio.Semaphore(self.slots)
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name=f"zmqkit-farm-loop:{self.farm}", daemon=True)
            self._loop_thread.start()
        else:
            for index in range(self.slots):
                slot = threading.Thread(target=self._slot, name=f"zmqkit-farm-slot:{self.farm}:{index}",
                                        daemon=True)
                slot.start()
                self._pool.append(slot)
        self._wakeup = Wakeup()
        self._unsubscribe = self.node.on_event(lambda _: self._wake())  # react at once
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Tell every submitter to reassign what this worker holds, stop, join every thread.

        Tasks still running are abandoned (their results are not sent): the submitter gives them
        to another worker. Safe to call twice.
        """
        if self._state == "closed":
            return
        started, self._state = self._state == "running", "closed"
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake()
        if started and self._thread.is_alive():
            self._thread.join(timeout)
        for _ in self._pool:
            self._jobs.put(None)
        for slot in self._pool:
            slot.join(timeout)
            if slot.is_alive():
                log.warning("%s is still running a task after %s s; left behind", slot.name, timeout)
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._stop_loop)
            self._loop_thread.join(timeout)
            if not self._loop_thread.is_alive():
                self._loop.close()
        if self._wakeup is not None:
            self._wakeup.close()
        self.node.detach(self)

    def _stop_loop(self) -> None:
        assert self._loop is not None
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.stop()

    # -- the node thread -----------------------------------------------------------------------

    def _run(self) -> None:
        sockets: dict[SubmitterKey, Socket] = {}
        owners: dict[zmq.Socket[Any], SubmitterKey] = {}
        poller = zmq.Poller()
        wakeup = self._wakeup
        assert wakeup is not None
        wakeup.register(poller)
        seen: tuple[int, str | None] = (-1, None)
        seqs = itertools.count(1)
        next_ready = time.monotonic() + READY_INTERVAL
        try:
            while not self._stopping:
                version = (self.node.peers_version, self.node.endpoints.get(self.role))
                if version != seen:
                    seen = version
                    self._follow_discovery(sockets, owners, poller, seqs)
                events = dict(poller.poll(min(TICK, max(0.0, next_ready - time.monotonic())) * 1000))
                wakeup.woke(events)
                owed: set[SubmitterKey] = set()
                for raw, key in owners.items():
                    if raw in events:
                        self._intake(key, raw, owed)
                if self._outbox:
                    owed.update(self._flush(sockets))
                if time.monotonic() >= next_ready:
                    owed.update(sockets)
                    next_ready = time.monotonic() + READY_INTERVAL
                for key in owed:
                    if key in sockets:
                        _send(sockets[key], self._core.ready_frame(key, next(seqs)), self.stats)
        except zmq.ZMQError as exc:
            if not self._stopping:
                log.error("farm worker %s stopped: %s", self.farm, exc)
        finally:
            for key, sock in sockets.items():  # best effort: else the submitter waits for expiry
                _send(sock, wire.encode_leave(next(seqs)), self.stats)
                sock.close()
                self._core.disconnect(key)

    def _follow_discovery(self, sockets: dict[SubmitterKey, Socket],
                          owners: dict[zmq.Socket[Any], SubmitterKey], poller: zmq.Poller,
                          seqs: itertools.count[int]) -> None:
        """Connect to each submitter of the farm that discovery lists; drop those gone."""
        wanted = {(peer.uuid, peer.endpoints[self.role]) for peer in self.node.peers(role=self.role)}
        if self.role in self.node.endpoints:  # a submitter on this very node
            wanted.add((self.node.uuid, self.node.endpoints[self.role]))
        for key in set(sockets) - wanted:
            sock = sockets.pop(key)
            poller.unregister(sock.raw)
            del owners[sock.raw]
            sock.close()
            orphans = set(self._core.disconnect(key))
            self.stats["submitters-lost"] += 1
            for task_id in orphans:  # nobody waits for their results: skip those not started
                job = self._jobs_by_id.pop((key, task_id), None)
                if job is not None:
                    job.cancelled = True
        for key in wanted - set(sockets):
            sock = Socket(zmq.DEALER, routing_id=self.routing_id)
            try:
                sock.connect(key[1])
            except ConfigError:
                sock.close()
                self.stats["dropped-bad-endpoint"] += 1
                continue
            sockets[key] = sock
            owners[sock.raw] = key
            poller.register(sock.raw, zmq.POLLIN)
            self._core.connect(key)
            _send(sock, self._core.ready_frame(key, next(seqs)), self.stats)

    def _intake(self, key: SubmitterKey, raw: zmq.Socket[Any], owed: set[SubmitterKey]) -> None:
        for _ in range(BATCH):
            try:
                frame = raw.recv(_NOBLOCK)
            except zmq.Again:
                return
            try:
                message = wire.read_from_submitter(frame)
            except ProtocolError:
                self.stats["dropped-malformed"] += 1
                continue
            if isinstance(message, wire.CancelTask):
                job = self._jobs_by_id.get((key, message.task_id))
                if job is not None:
                    job.cancelled = True  # skipped if not started; a running task runs on
                continue
            if not self._core.receive(key, message.task_id, message.dispatch):
                owed.add(key)  # say at once that it was not taken
                continue
            job = _Job(key, message.task_id, message.payload)
            self._jobs_by_id[(key, message.task_id)] = job
            if self._loop is not None:
                asyncio.run_coroutine_threadsafe(self._run_async(job), self._loop)
            else:
                self._jobs.put(job)

    def _flush(self, sockets: dict[SubmitterKey, Socket]) -> set[SubmitterKey]:
        """Send the results the slots posted; return the submitters owed a READY (all: a slot
        freed up for each of them)."""
        while self._outbox:
            job, frame = self._outbox.popleft()
            self._jobs_by_id.pop((job.submitter, job.task_id), None)
            held = self._core.finish(job.submitter, job.task_id)
            sock = sockets.get(job.submitter)
            if frame is None:
                self.stats["skipped"] += 1  # cancelled before it started, or stopping
            elif held and sock is not None:
                _send(sock, frame, self.stats)
                self.stats["done"] += 1
            else:
                self.stats["dropped-orphan"] += 1  # its submitter left while it ran
        return set(sockets)

    # -- running tasks (slot threads, loop thread) ---------------------------------------------

    def _slot(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled or self._stopping:
                self._post(job, None)
                continue
            try:
                value = self.handler(job.payload)
            except Exception as exc:  # the submitter gets it as RemoteError; the worker goes on
                self._post(job, _error(job.task_id, exc))
                continue
            self._post(job, _reply(job.task_id, value))

    async def _run_async(self, job: _Job) -> None:
        assert self._semaphore is not None
        async with self._semaphore:
            if job.cancelled or self._stopping:
                self._post(job, None)
                return
            try:
                value = await self.handler(job.payload)
            except Exception as exc:  # the submitter gets it as RemoteError; the worker goes on
                self._post(job, _error(job.task_id, exc))
                return
            self._post(job, _reply(job.task_id, value))

    def _post(self, job: _Job, frame: bytes | None) -> None:
        """Hand a result (None: a skipped task) to the node thread, waking it if need be."""
        self._outbox.append((job, frame))
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()


_NOBLOCK = int(zmq.NOBLOCK)


def _send(sock: Socket, frame: bytes, stats: Counter[str]) -> None:
    """Send without waiting: a submitter that cannot take more (gone, queue full) loses it."""
    try:
        sock.raw.send(frame, _NOBLOCK)
    except zmq.Again:
        stats["dropped-unsent"] += 1


def _reply(task_id: int, value: Any) -> bytes:
    try:
        return codec.encode_reply(task_id, value)
    except EncodeError as exc:
        return codec.encode_error(task_id, "zmqkit.EncodeError", f"the task returned {exc}")


def _error(task_id: int, exc: Exception) -> bytes:
    return codec.encode_error(task_id, type(exc).__name__, str(exc), traceback.format_exc()[-MAX_TRACEBACK:])


def serve_worker(node: Node, handler: Callable[[Any], Any], farm: str | None = None, *,
                 slots: int = 1, prefetch: int = 0) -> Worker:
    """Run ``handler`` on the tasks of ``farm`` (default: the node's name) until the node closes.

    Returns the running worker (``close()`` stops it early).

    Raises:
        ClosedError: the node is not running.
        ConfigError: a bad farm name, slots or prefetch.
    """
    return Worker(node, handler, farm, slots=slots, prefetch=prefetch).start()

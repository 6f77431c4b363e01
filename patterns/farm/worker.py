"""A farm worker: pulls tasks from every submitter of a farm and runs them, ``slots`` at a time.

    farm.serve_worker(node, square, farm="squares", slots=2)    # until the node closes

A plain function gets ``slots`` threads ("zmqkit-farm-slot:NAME:i"). Each is a worker of its own
to the submitters: it has its own DEALER to each of them, asks for a task, runs it and sends the
result itself, so a task costs no hand-off between threads. An ``async def`` gets one thread
running an event loop ("zmqkit-farm-loop:NAME") that owns one DEALER per submitter and runs up
to ``slots`` tasks at once.

Every DEALER comes from the node and connects with ``connect_peer``, so the node's keys apply:
a keyed worker serves only submitters whose key its keyring holds (and a keyed submitter admits
only workers in its keyring); a worker without keys never connects to a keyed submitter. A
refused submitter is skipped, logged once and counted (``refused-submitters``).

The worker asks for work instead of being pushed it: its READY says how many more tasks it takes,
so a slow worker gets fewer. ``prefetch`` extra tasks wait in each slot (or the loop) so that it
does not idle for a round trip between tiny tasks; 0, the default, spreads work most fairly.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from zmqkit import (
    AsyncSocket,
    ClosedError,
    ConfigError,
    Deadline,
    EncodeError,
    LoopWakeup,
    Node,
    Peer,
    Poller,
    ProtocolError,
    SecurityError,
    ServiceThread,
    Socket,
    SocketKind,
    codec,
)

from . import wire
from .core import WorkerCore

__all__ = ["READY_INTERVAL", "Worker", "serve_worker"]

log = logging.getLogger("zmqkit.farm")

READY_INTERVAL = 1.0  # an idle worker restates its READY this often (resync, and "still here")
TICK = 0.1  # seconds between looks at the stop flag and at discovery
BATCH = 1000  # frames taken from one socket at a time
MAX_TRACEBACK = 8192
_INSTANCES = itertools.count(1)  # tells apart the slots of one node in their routing ids
STATS = (  # the worker's counters, all present from the start
    "done", "skipped", "submitters-lost", "refused-submitters", "dropped-orphan",
    "dropped-unsent", "dropped-malformed", "dropped-bad-endpoint",
)

SubmitterKey = str  # "UUID ENDPOINT": a restarted submitter on a reused port is a new one


@dataclass(slots=True)
class _Job:
    submitter: SubmitterKey
    task_id: int
    payload: Any
    cancelled: bool = False


class Worker:
    """Runs ``handler(payload)`` for the tasks of farm ``farm`` (default: the node's name).

    Usable once made: its threads run and it is attached to the node (``node.close()`` closes
    it). ``close()`` it (or use ``with``) to stop earlier.

    Args:
        node: a running node; the worker finds submitters through its discovery, and connects
            to them with its keys when it has some.
        handler: a plain function (run in ``slots`` threads) or an ``async def`` (run on the
            worker's own event loop, ``slots`` at once). Its return value is the task's result;
            an exception it raises becomes a ``RemoteError`` result for that task.
        farm: the farm's name, as given to ``Submitter``.
        slots: tasks run at once: the worker's credit.
        prefetch: tasks held waiting beyond those running (per slot for a plain function, in
            all for an ``async def``), to hide the round trip between tiny tasks.

    Raises:
        ClosedError: the node is not running.
        ConfigError: a bad handler, farm name, slots or prefetch.
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
        if not node.running:
            raise ClosedError(f"{node!r} is not running; start it first")
        self._is_async = inspect.iscoroutinefunction(handler)
        self._closed = False
        self._closing = threading.Lock()
        self._stats = Counter(dict.fromkeys(STATS, 0))  # summed over the slots (each adds its own)
        self._stats_lock = threading.Lock()
        self._refusals_told: set[SubmitterKey] = set()  # logged once per worker, not per slot
        self._loop_wakeup: LoopWakeup | None = None  # made on the async worker's loop
        self._unsubscribe: Callable[[], None] | None = None
        if self._is_async:
            self._services = [ServiceThread(f"zmqkit-farm-loop:{self.farm}", self._run_loop)]
        else:
            self._services = [ServiceThread(f"zmqkit-farm-slot:{self.farm}:{index}",
                                            self._serve_slot) for index in range(slots)]
        node.attach(self)  # first: a closed node refuses before a thread is started
        try:
            for service in self._services:
                service.start()
            self._unsubscribe = node.on_event(lambda _: self._wake())  # react to discovery at once
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<zmqkit farm.Worker {self.farm!r} slots={self.slots} {state}>"

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self, timeout: float = 2.0) -> None:
        """Stop taking tasks, hand back those not started, join every thread.

        Idempotent, and callable from any thread (a handler of this worker included: its own
        thread then ends when the handler returns). A plain handler that is running cannot be
        interrupted: it finishes and its result is sent (close waits up to ``timeout`` for all
        of them); an ``async def`` handler is cancelled. Tasks not started go back to their
        submitters at once (a LEAVE message), which give them to other workers.
        """
        with self._closing:
            if self._closed:
                return
            self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake()  # every thread sees ``_closed`` now, before the first join
        deadline = Deadline.after(timeout)
        for service in self._services:
            service.stop(deadline.remaining())
        self.node.detach(self)

    def stats(self) -> dict[str, int]:
        """Counters summed over the slots: done, skipped, refused-submitters, dropped-*, ..."""
        with self._stats_lock:
            return dict(self._stats)

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the farm worked for, and the counters."""
        return {"name": self.farm, "stats": self.stats()}

    def _wake(self) -> None:
        for service in self._services:
            service.wake()
        if self._loop_wakeup is not None:
            self._loop_wakeup.set()

    def _count(self, counts: Counter[str]) -> None:
        with self._stats_lock:
            self._stats.update(counts)
        counts.clear()

    def _submitters(self) -> dict[SubmitterKey, Peer]:
        """The submitters of this farm that discovery lists (and one on this node)."""
        role, node = self.role, self.node
        wanted = {f"{peer.uuid} {peer.endpoints[role]}": peer for peer in node.peers(role=role)}
        endpoint = node.endpoints.get(role)
        if endpoint is not None:  # this node as its peers see it: its keys apply the same way
            wanted[f"{node.uuid} {endpoint}"] = Peer(
                node.name, node.uuid, dict(node.endpoints), dict(node.headers), 0, node.host,
                0.0, 0.0)
        return wanted

    def _discovery_version(self) -> tuple[int, str | None]:
        return (self.node.peers_version, self.node.endpoints.get(self.role))

    def _connect(self, sock: Socket, key: SubmitterKey, peer: Peer,
                 counts: Counter[str]) -> bool:
        """Connect ``sock`` to submitter ``peer`` under the node's keys; False if refused."""
        try:
            sock.connect_peer(peer, self.role)
        except SecurityError as exc:  # not ours to serve: skipped, counted, told once
            counts["refused-submitters"] += 1
            with self._stats_lock:
                first = key not in self._refusals_told
                self._refusals_told.add(key)
            if first:
                log.warning("farm worker %s does not serve submitter %s: %s", self.farm,
                            key.split(" ", 1)[1], exc)
            return False
        except ConfigError:
            counts["dropped-bad-endpoint"] += 1
            return False
        return True

    # -- a slot thread (plain handlers) --------------------------------------------------------

    def _serve_slot(self, service: ServiceThread) -> None:
        """One slot: its own connections, its own queue; runs each task itself."""
        routing_id = wire.worker_routing_id(self.node.uuid, next(_INSTANCES))
        core = WorkerCore(1 + self.prefetch)
        counts: Counter[str] = Counter()
        sockets: dict[SubmitterKey, Socket] = {}
        owners: dict[Socket, SubmitterKey] = {}
        refused: set[SubmitterKey] = set()
        waiting: deque[_Job] = deque()
        poller = Poller([service.wakeup])
        seqs = itertools.count(1)
        seen: tuple[int, str | None] = (-1, None)
        next_ready = time.monotonic() + READY_INTERVAL
        service.ready()

        def find_waiting(key: SubmitterKey, task_id: int) -> _Job | None:
            return next((j for j in waiting if j.submitter == key and j.task_id == task_id), None)

        try:
            while not service.stopping and not self._closed:
                if (version := self._discovery_version()) != seen:
                    seen = version
                    self._follow_slot(core, sockets, owners, refused, poller, waiting,
                                      routing_id, seqs, counts)
                wait = 0.0 if waiting else min(TICK, max(0.0, next_ready - time.monotonic()))
                owed: set[SubmitterKey] = set()
                for item in poller.poll(wait):
                    if isinstance(item, Socket):  # else the wake-up: discovery, or close
                        self._intake(owners[item], item, core, owed, counts, waiting.append,
                                     find_waiting)
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
                if waiting and not service.stopping and not self._closed:
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
        finally:
            for key, sock in sockets.items():  # else the submitter waits for expiry or timeouts
                _send(sock, wire.encode_leave(next(seqs)), counts)
                sock.close()
                core.disconnect(key)
            self._count(counts)

    def _follow_slot(self, core: WorkerCore, sockets: dict[SubmitterKey, Socket],
                     owners: dict[Socket, SubmitterKey], refused: set[SubmitterKey],
                     poller: Poller, waiting: deque[_Job], routing_id: bytes,
                     seqs: itertools.count[int], counts: Counter[str]) -> None:
        wanted = self._submitters()
        for key in set(sockets) - wanted.keys():
            sock = sockets.pop(key)
            poller.unregister(sock)
            del owners[sock]
            sock.close()
            core.disconnect(key)
            counts["submitters-lost"] += 1
            for job in waiting:  # nobody waits for their results any more
                if job.submitter == key:
                    job.cancelled = True
        refused &= wanted.keys()  # a refused submitter is tried again only once it is back
        for key in wanted.keys() - sockets.keys() - refused:
            sock = self.node.client_socket(SocketKind.DEALER, routing_id=routing_id)
            if not self._connect(sock, key, wanted[key], counts):
                sock.close()
                refused.add(key)
                continue
            sockets[key] = sock
            owners[sock] = key
            poller.register(sock)
            core.connect(key)
            _send(sock, core.ready_frame(key, next(seqs)), counts)

    @staticmethod
    def _intake(key: SubmitterKey, sock: Socket, core: WorkerCore, owed: set[SubmitterKey],
                counts: Counter[str], accept: Callable[[_Job], object],
                find: Callable[[SubmitterKey, int], _Job | None]) -> None:
        """Take the frames waiting on ``sock``: tasks go to ``accept``; a cancel marks the job
        that ``find`` returns, which is then skipped if it has not started."""
        for _ in range(BATCH):
            if not sock.readable:  # cheaper than the failed receive that would say so
                return
            frame = sock.try_recv()
            if frame is None:
                return
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
                     refused: set[SubmitterKey], jobs: dict[tuple[SubmitterKey, int], _Job],
                     routing_id: bytes,
                     read: Callable[[SubmitterKey, AsyncSocket], Coroutine[Any, Any, None]],
                     send_ready: Callable[[Iterable[SubmitterKey]], None],
                     counts: Counter[str]) -> None:
        wanted = self._submitters()
        for key in set(sockets) - wanted.keys():
            readers.pop(key).cancel()
            sockets.pop(key).close()
            core.disconnect(key)
            counts["submitters-lost"] += 1
            for (submitter, _), job in jobs.items():  # nobody waits for their results any more
                if submitter == key:
                    job.cancelled = True
        refused &= wanted.keys()
        for key in wanted.keys() - sockets.keys() - refused:
            sock = self.node.client_socket(SocketKind.DEALER, routing_id=routing_id,
                                           asyncio=True)
            assert isinstance(sock, AsyncSocket)
            if not self._connect(sock, key, wanted[key], counts):
                sock.close()
                refused.add(key)
                continue
            sockets[key] = sock
            core.connect(key)
            send_ready([key])
            readers[key] = asyncio.ensure_future(read(key, sock))

    def _run_loop(self, service: ServiceThread) -> None:
        """The async worker's thread: its own event loop, closed when the worker stops."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # for handlers that ask for "the" loop
        try:
            loop.run_until_complete(self._serve_async(service))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def _serve_async(self, service: ServiceThread) -> None:
        """One loop: a DEALER and a reader per submitter, up to ``slots`` handlers at once."""
        routing_id = wire.worker_routing_id(self.node.uuid, next(_INSTANCES))
        core = WorkerCore(self.slots + self.prefetch)
        semaphore = asyncio.Semaphore(self.slots)
        changed = self._loop_wakeup = LoopWakeup()
        counts: Counter[str] = Counter()
        sockets: dict[SubmitterKey, AsyncSocket] = {}
        readers: dict[SubmitterKey, asyncio.Task[None]] = {}
        refused: set[SubmitterKey] = set()
        jobs: dict[tuple[SubmitterKey, int], _Job] = {}
        running: set[asyncio.Task[None]] = set()
        seqs = itertools.count(1)
        service.ready()

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
                self._intake(key, sock, core, owed, counts, accept,
                             lambda submitter, task_id: jobs.get((submitter, task_id)))
                send_ready(owed)
                await sock.wait_readable(READY_INTERVAL)

        try:
            seen: tuple[int, str | None] = (-1, None)
            next_ready = time.monotonic() + READY_INTERVAL
            while not service.stopping and not self._closed:
                if (version := self._discovery_version()) != seen:
                    seen = version
                    self._follow_loop(core, sockets, readers, refused, jobs, routing_id, read,
                                      send_ready, counts)
                await changed.wait(max(0.0, next_ready - time.monotonic()))
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


def _send(sock: Socket, frame: bytes, counts: Counter[str]) -> None:
    """Send without waiting: a submitter that cannot take more (gone, queue full) loses it.

    (An ``AsyncSocket``'s ``try_send`` also wakes a reader parked on the same socket.)
    """
    if not sock.try_send(frame):
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

    The same as ``Worker(...)``: returns the running worker (``close()`` stops it early).

    Raises:
        ClosedError: the node is not running.
        ConfigError: a bad farm name, slots or prefetch.
    """
    return Worker(node, handler, farm, slots=slots, prefetch=prefetch)

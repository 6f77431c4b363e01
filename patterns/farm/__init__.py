"""A load-balanced task farm with no broker: submitters queue tasks, workers pull them.

    farm.serve_worker(worker_node, square, farm="squares", slots=2)     # on any number of nodes

    with farm.Submitter(node, "squares") as squares:                     # blocking
        task_id = squares.submit(7)
        squares.result(task_id, timeout=5)                               # 49
        for result in squares.as_completed(timeout=60): ...

    async with farm.AsyncSubmitter(node, "squares") as squares:          # asyncio
        await squares.result(squares.submit(7))

A submitter advertises a ROUTER as role ``farm:NAME``; each worker of that farm connects to every
such submitter and asks for work when it has a free slot (credit), so a slow worker gets less.
Delivery is at least once: the tasks of a worker that leaves, expires or times out go to another
worker; the first result per task is kept and later ones are counted as duplicates.

Durable, as an opt-in: ``farm.Submitter(node, "squares", journal="tasks.db")`` keeps each task in
a SQLite file until its result is delivered; a submitter started on the journal of one that
crashed does every task not yet delivered, under its id, and hands each result out once.

Every part runs once made and is attached to its node. Every socket comes from the node
(``server_socket``, ``client_socket`` + ``connect_peer``), so on nodes with keys the farm serves
only the workers whose key the submitter's keyring holds, and a worker only trusted submitters.

- ``wire``             the farm's messages (docs/protocol.md, section 9.1)
- ``core``             the logic, written once: queue, credit, reassignment, duplicates (pure)
- ``ledger``           what a durable submitter's journal must still write (pure)
- ``journal``          the journal: a submitter's tasks and results in one SQLite file
- ``base``             what both submitters share: set-up, checks, reading results, ROUTER I/O
- ``submitter``        ``Submitter``: a service thread owns the ROUTER; any thread submits
- ``async_submitter``  ``AsyncSubmitter``: a pump task on your loop owns the ROUTER (loop only)
- ``worker``           ``Worker`` and ``serve_worker``: slot threads or an asyncio loop
- ``bench``            throughput, 1 to 4 worker processes: ``python -m zmqkit.patterns.farm.bench``
"""

from __future__ import annotations

from .async_submitter import AsyncSubmitter
from .core import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PENDING,
    DEFAULT_TASK_TIMEOUT,
    DEFAULT_WORKER_EXPIRY,
    TaskResult,
    WorkerInfo,
)
from .submitter import DEFAULT_WAIT, Submitter
from .worker import READY_INTERVAL, Worker, serve_worker

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TASK_TIMEOUT",
    "DEFAULT_WAIT",
    "DEFAULT_WORKER_EXPIRY",
    "READY_INTERVAL",
    "AsyncSubmitter",
    "Submitter",
    "TaskResult",
    "Worker",
    "WorkerInfo",
    "serve_worker",
]

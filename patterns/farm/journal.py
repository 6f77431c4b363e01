"""A submitter's journal: its tasks in one SQLite file, so that a crash loses none of them.

    tasks (id, payload, result)   a row per task submitted and not yet delivered
    meta  (name, value)           kind, owner (the farm), format, next_id

A task's row is written before ``submit`` returns, its result when it comes back, and the row
is deleted once the result is **delivered** (taken by your code: see ``Ledger``). A submitter
started on the journal of one that crashed takes every row back: a row with a result is
delivered again without being recomputed, a row without one is queued again, under its id.

The core notes what happens in a ``Ledger`` (pure); ``Journal`` writes a ledger's ``Batch`` in one
transaction. The journal is opened and written by the thread (or loop)
that owns the submitter's socket, never by another.
"""

from __future__ import annotations

import uuid as uuid_module
from typing import Any, NamedTuple

from zmqkit import BrokenError, ConfigError, RemoteError, codec, remote_error

from .._durable import DEFAULT_TIMEOUT, Database
from .core import TaskResult
from .ledger import Batch

__all__ = ["Journal", "Restored"]

KIND = "zmqkit farm journal"
TABLES = ("CREATE TABLE IF NOT EXISTS tasks "
          "(id INTEGER PRIMARY KEY, payload BLOB NOT NULL, result BLOB)",)
# a result in its row: [0, value, worker] or [1, type, message, traceback, worker] (the handler
# raised) or [2, message] (given up: every worker that took it was lost)
VALUE, RAISED, GIVEN_UP = 0, 1, 2


class Restored(NamedTuple):
    """What a journal held when it was opened: the tasks to do again and the results to hand
    out, both in id order, and the id the next task gets."""

    tasks: list[tuple[int, Any]]
    results: list[TaskResult]
    next_id: int


class Journal(Database):
    """The tasks of farm ``farm``'s submitter in the SQLite file at ``path``; used by the thread
    that made it.

    Raises:
        ConfigError: the file cannot be used (see ``_durable.open_database``).
    """

    def __init__(self, path: object, farm: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(path, kind=KIND, owner=farm, tables=TABLES, timeout=timeout)

    def restore(self) -> Restored:
        """The tasks and results the file holds (what a crashed submitter left).

        Raises:
            ConfigError: a row cannot be read back (the file was changed by hand?).
        """
        tasks: list[tuple[int, Any]] = []
        results: list[TaskResult] = []
        rows = self.db.execute("SELECT id, payload, result FROM tasks ORDER BY id").fetchall()
        for task_id, payload, result in rows:
            if result is None:
                tasks.append((task_id, self.read_cbor(payload, f"task {task_id}")))
                continue
            row = self.read_cbor(result, f"the result of task {task_id}")
            try:
                results.append(_read_result(task_id, row))
            except (ValueError, TypeError, IndexError) as exc:
                raise ConfigError(f"{str(self.path)!r}: the result of task {task_id} cannot be "
                                  f"read back: {exc}") from exc
        stored = self.db.execute("SELECT value FROM meta WHERE name = 'next_id'").fetchone()
        next_id = max([stored[0] if stored else 1, *(row[0] + 1 for row in rows)])
        return Restored(tasks, results, next_id)

    def write(self, batch: Batch) -> None:
        """Commit ``batch`` in one transaction.

        Raises:
            BrokenError: the file failed (a full disk, say); nothing of the batch was kept.
        """
        with self.transaction() as db:
            if batch.submitted:
                db.executemany("INSERT OR REPLACE INTO tasks (id, payload) VALUES (?, ?)",
                               batch.submitted)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (batch.next_id,))
            if batch.finished:
                db.executemany("UPDATE tasks SET result = ? WHERE id = ?",
                               [(_result_row(r), r.task_id) for r in batch.finished])
            if batch.delivered:
                db.executemany("DELETE FROM tasks WHERE id = ?",
                               [(task_id,) for task_id in batch.delivered])


def _result_row(result: TaskResult) -> bytes:
    worker = None if result.worker is None else result.worker.bytes
    error = result.error
    if error is None:
        return codec.dumps([VALUE, result.value, worker])
    if isinstance(error, RemoteError):
        return codec.dumps([RAISED, error.type_name, error.message, error.traceback, worker])
    return codec.dumps([GIVEN_UP, str(error)])


def _read_result(task_id: int, row: list[Any]) -> TaskResult:
    if row[0] == GIVEN_UP:
        return TaskResult(task_id, error=BrokenError(row[1]))
    worker = None if row[-1] is None else uuid_module.UUID(bytes=row[-1])
    if row[0] == RAISED:
        return TaskResult(task_id, error=remote_error(row[1], row[2], row[3]), worker=worker)
    if row[0] != VALUE:
        raise ValueError(f"a result row starts with 0, 1 or 2, not {row[0]!r}")
    return TaskResult(task_id, row[1], worker=worker)

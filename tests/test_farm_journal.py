"""The durable farm: a submitter's journal keeps every task until its result is delivered.

First the parts without sockets (the core's ledger, the journal file), then submitters closed
and opened again on their journal, then the promise itself: a submitter process SIGKILLed after
40 of 300 results, started again on its journal, delivers the other results, each right, none
lost, and recomputes none that had come back.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import test_state
from conftest import wait_until
from test_partition import Child
from zmqkit.patterns import farm
from zmqkit.patterns.farm.core import SubmitterCore, TaskResult
from zmqkit.patterns.farm.journal import Journal
from zmqkit.patterns.farm.ledger import Ledger

from zmqkit import BrokenError, ClosedError, ConfigError, Node, RemoteError

make_node = test_state.make_node  # the fixture: nodes on a private beacon port

FAST = {"interval": 0.2, "expiry": 0.6}
WORKER = b"W" + bytes(16) + bytes(4)  # a worker's routing id


# -- the core's ledger and the journal file -------------------------------------------------------


def durable_core() -> SubmitterCore:
    core = SubmitterCore()
    core.ledger = Ledger()
    return core


def test_farm_core_notes_submissions_results_and_deliveries_for_the_journal() -> None:
    core = durable_core()
    ledger = core.ledger
    assert ledger is not None
    first, second = core.submit({"n": 1}), core.submit([2])
    core.ready(WORKER, 2, 0, [], now=0.0)
    core.outgoing(0.0)
    assert core.complete(WORKER, first, 1, None, now=0.0)
    batch = ledger.take()
    assert [task_id for task_id, _ in batch.submitted] == [first, second]
    assert batch.submitted[0][1] == b"\xa1an\x01"  # the payload as CBOR, cut from the frame
    assert [r.task_id for r in batch.finished] == [first] and batch.next_id == 3
    assert batch.mark == ledger.noted == 3 and ledger.pending
    ledger.written = batch.mark
    assert not ledger.pending
    assert core.deliver(first) == 0  # not handed out yet: nothing to note
    assert core.take_next() == TaskResult(first, 1, None, uuid.UUID(int=0))
    assert core.deliver(first) == 4 and core.deliver(first) == 0  # once
    assert ledger.take().delivered == [first]


def test_farm_core_restores_tasks_and_results_under_their_ids() -> None:
    core = durable_core()
    core.restore([(4, "four"), (7, "seven")], [TaskResult(5, 25)], next_id=9)
    assert core.stats["restored"] == 2 and core.stats["restored-results"] == 1
    assert core.outstanding == 2 and core.take_next() == TaskResult(5, 25)
    assert core.submit("nine") == 9
    core.ready(WORKER, 10, 0, [], now=0.0)
    assert [(d.task_id, d.frame.payload) for d in core.outgoing(0.0)] == [
        (4, b"dfour"), (7, b"eseven"), (9, b"dnine")]
    core.complete(WORKER, 5, 25, None, now=0.0)  # an id done before the crash: a duplicate
    core.complete(WORKER, 12, 0, None, now=0.0)  # an id never given: a stray
    assert (core.stats["duplicates"], core.stats["stray"]) == (1, 1)
    with pytest.raises(ConfigError, match="new submitter"):
        core.restore([], [], 1)


def test_farm_journal_keeps_what_is_not_delivered(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    core = durable_core()
    ledger = core.ledger
    assert ledger is not None
    ids = [core.submit(n) for n in range(5)]
    core.ready(WORKER, 5, 0, [], now=0.0)
    core.outgoing(0.0)
    core.complete(WORKER, ids[0], 0, None, now=0.0)
    core.complete(WORKER, ids[1], None, RemoteError("ValueError", "no", "tb"), now=0.0)
    core.complete(WORKER, ids[2], 4, None, now=0.0)
    core.take_next()
    core.deliver(ids[0])
    journal = Journal(path, "squares")
    journal.write(ledger.take())
    journal.close()

    journal = Journal(path, "squares")
    tasks, results, next_id = journal.restore()
    assert tasks == [(ids[3], 3), (ids[4], 4)] and next_id == 6
    assert [(r.task_id, r.value, type(r.error)) for r in results] == [
        (ids[1], None, RemoteError), (ids[2], 4, type(None))]
    assert str(results[0].error) == "ValueError: no" and results[0].error.traceback == "tb"
    restored = durable_core()
    restored.restore(tasks, results, next_id)
    for result in results:  # every result delivered: the rows go, the next id stays
        assert restored.take_next() == result
        restored.deliver(result.task_id)
    restored.ready(WORKER, 5, 0, [], now=0.0)
    restored.outgoing(0.0)
    restored.complete(WORKER, ids[3], 9, None, now=0.0)
    restored.complete(WORKER, ids[4], 16, None, now=0.0)
    while (result := restored.take_next()) is not None:
        restored.deliver(result.task_id)
    assert restored.ledger is not None
    journal.write(restored.ledger.take())
    journal.close()
    journal = Journal(path, "squares")
    assert journal.restore() == ([], [], 6)
    journal.close()


def test_farm_journal_has_one_owner_and_one_farm(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    journal = Journal(path, "squares")
    try:
        with pytest.raises(ConfigError, match="in use"):
            Journal(path, "squares", timeout=0.2)
    finally:
        journal.close()
    with pytest.raises(ConfigError, match="'squares'"):
        Journal(path, "cubes")
    (tmp_path / "junk.db").write_bytes(b"not a database, " * 100)
    with pytest.raises(ConfigError, match="not a zmqkit farm journal"):
        Journal(tmp_path / "junk.db", "squares")
    with pytest.raises(ConfigError, match="directory"):
        Journal(tmp_path, "squares")
    with pytest.raises(ConfigError, match="path of a file"):
        Journal(":memory:", "squares")
    check = sqlite3.connect(path)  # a real database, in WAL mode, that any SQLite reads
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert dict(check.execute("SELECT name, value FROM meta"))["owner"] == "squares"
    check.close()


def test_farm_journal_failure_is_a_broken_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "tasks.db", "squares")
    ledger = Ledger()
    ledger.note_submitted(1, b"\x01")
    journal.db.execute("DROP TABLE tasks")  # the file fails under it
    with pytest.raises(BrokenError, match="failed") as raised:
        journal.write(ledger.take())
    assert isinstance(raised.value.__cause__, sqlite3.Error)
    journal.close()


# -- submitters closed and opened again -----------------------------------------------------------


class Counting:
    """A handler that squares and counts how often it ran for each input."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runs: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, n: int) -> int:
        with self._lock:
            self.runs[n] += 1
        time.sleep(self.delay)
        return n * n


def test_farm_submitter_reopened_on_its_journal_delivers_the_rest_once(
    make_node: Callable[[str], Node], tmp_path: Path
) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    journal = tmp_path / "tasks.db"
    with farm.Submitter(boss, "squares", journal=journal) as squares:
        ids = [squares.submit(n) for n in range(20)]
        farm.serve_worker(worker, Counting(), farm="squares", slots=2)
        first = []
        for result in squares.as_completed(timeout=10):
            first.append(result.task_id)
            if len(first) == 5:
                break
        wait_until(lambda: squares.stats()["completed"] == 20, 10, "every task done")
    with farm.Submitter(boss, "squares", journal=journal) as squares:
        assert squares.stats()["restored-results"] == 15 and squares.stats()["restored"] == 0
        rest = {r.task_id: r.value for r in squares.as_completed(timeout=10)}
        assert sorted(first + list(rest)) == ids  # each once: the five taken are not back
        assert all(value == (task_id - 1) ** 2 for task_id, value in rest.items())
        assert squares.submit(0) == 21  # ids go on where they were
        assert squares.result(21, timeout=10) == 0
    with farm.Submitter(boss, "squares", journal=journal) as squares:
        assert squares.stats()["outstanding"] == squares.stats()["untaken"] == 0


def test_farm_async_submitter_reopened_on_its_journal(
    make_node: Callable[[str], Node], tmp_path: Path
) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    journal = tmp_path / "tasks.db"
    handler = Counting()

    async def first_run() -> list[int]:
        async with farm.AsyncSubmitter(boss, "squares", journal=journal) as squares:
            return [squares.submit(n) for n in range(10)]  # closed before any worker came

    async def second_run() -> list[int]:
        async with farm.AsyncSubmitter(boss, "squares", journal=journal) as squares:
            assert squares.stats()["restored"] == 10
            farm.serve_worker(worker, handler, farm="squares")  # one slot: tasks end in order
            seen = []
            async for result in squares.as_completed(timeout=10):
                assert result.value == (result.task_id - 1) ** 2
                seen.append(result.task_id)
                if len(seen) == 4:
                    break
            assert await squares.result(ids[-1], timeout=10) == 81
            return seen

    ids = asyncio.run(first_run())
    seen = asyncio.run(second_run())
    assert seen == ids[:4]
    with farm.Submitter(boss, "squares", journal=journal) as squares:
        assert squares.stats()["restored-results"] == 5  # done in the second run, not taken
        rest = [r.task_id for r in squares.as_completed(timeout=10)]
    assert sorted(rest) == ids[4:-1]
    assert handler.runs == Counter(range(10))  # each ran once: results came from the journal


def test_farm_journal_held_by_a_submitter_is_refused_to_another(
    make_node: Callable[[str], Node], tmp_path: Path
) -> None:
    one, two = make_node("one"), make_node("two")
    with farm.Submitter(one, "squares", journal=tmp_path / "tasks.db") as squares:
        with pytest.raises(ConfigError, match="in use"):
            farm.Submitter(two, "squares", journal=tmp_path / "tasks.db")
        assert "farm:squares" not in two.endpoints
        squares.submit(1)
    with pytest.raises(ConfigError, match="'squares'"):
        farm.Submitter(two, "cubes", journal=tmp_path / "tasks.db")
    squares.close()
    with pytest.raises(ClosedError):
        squares.submit(2)


# -- the promise: SIGKILL after 40 of 300 results -------------------------------------------------

SUBMITTER = r"""
import json, sys, time
import zmqkit
from zmqkit.patterns import farm

config = json.loads(sys.argv[1])
name, journal, count = config.pop("name"), config.pop("journal"), config.pop("count")
pause = config.pop("pause")  # after each result: a reader slower than the workers

with zmqkit.Node(name, **config) as node, \
        farm.Submitter(node, "squares", journal=journal) as squares:
    stats = squares.stats()
    print("ready", json.dumps({"uuid": str(node.uuid), "host": node.host,
                               "restored": stats["restored"],
                               "restored_results": stats["restored-results"]}), flush=True)
    for n in range(count):
        squares.submit(n)
    for result in squares.as_completed(timeout=60):
        print("result", json.dumps([result.task_id, result.value]), flush=True)
        time.sleep(pause)
    print("result null", flush=True)
    sys.stdin.read()
"""


def printed_results(child: Child, count: int | None = None) -> list[list[int]]:
    """The results a submitter child prints: ``count`` of them, else up to its end mark, or
    (for a child killed) all it printed before it died."""
    results: list[list[int]] = []
    while count is None or len(results) < count:
        try:
            result = json.loads(child.expect("result", 30))
        except AssertionError:  # it died: every line it printed has been read
            break
        if result is None:
            break
        results.append(result)
    return results


def test_farm_submitter_sigkilled_after_40_of_300_results_loses_none_on_restart(
    make_node: Callable[[str], Node], beacon_port: int, tmp_path: Path
) -> None:
    worker = make_node("worker")
    handler = Counting(delay=0.005)
    farm.serve_worker(worker, handler, farm="squares", slots=4)
    config = {"port": beacon_port, "journal": str(tmp_path / "tasks.db"), "pause": 0.003, **FAST}
    first = Child(SUBMITTER, "boss", prefix=[], count=300, **config)
    second: Child | None = None
    try:
        first.wait_ready()
        before = printed_results(first, 40)
        first.sigkill()
        before += printed_results(first)  # printed before it died, not read yet
        second = Child(SUBMITTER, "boss", prefix=[], count=0, **config)
        restored = second.answer("ready", 10)
        after = printed_results(second)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    delivered = Counter(task_id for task_id, _ in before + after)
    assert sorted(delivered) == list(range(1, 301)), "a task was lost"
    assert all(value == (task_id - 1) ** 2 for task_id, value in before + after)
    again = [task_id for task_id, times in delivered.items() if times > 1]
    assert again in ([], [before[-1][0]]), f"only the result held at the kill comes again: {again}"
    held = 300 - len(before) + len(again)  # the rows the journal still had
    assert restored["restored"] + restored["restored_results"] == held, restored
    runs = sum(handler.runs.values())
    assert 300 <= runs <= 300 + restored["restored"], "a result that had come back ran again"
    assert all(handler.runs[task_id - 1] == 1 for task_id, _ in before)
    print(f"figures: farm submitter SIGKILL: delivered_before={len(before)}, "
          f"requeued={restored['restored']}, results_from_journal={restored['restored_results']}, "
          f"delivered_twice={len(again)}, handler_runs={runs}")

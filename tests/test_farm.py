"""The task farm: its pure core on a fake clock, then real workers, submitters, killed processes.

The first half drives ``SubmitterCore`` and ``WorkerCore`` with plain calls and real frames, time
passed in by hand: credit, reassignment, duplicates, reconciliation, bad input. The second half
runs nodes on a private beacon port with short intervals; workers that must die run in child
processes and are SIGKILLed, and every child is killed and reaped when its test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq
from conftest import doc_section, wait_until
from zmqkit.patterns import farm
from zmqkit.patterns.farm import wire
from zmqkit.patterns.farm.core import Cancel, Dispatch, SubmitterCore, WorkerCore

from zmqkit import (
    BrokenError,
    BusyError,
    ClosedError,
    ConfigError,
    EncodeError,
    Keypair,
    Keyring,
    Node,
    ProtocolError,
    RemoteError,
    Socket,
    Timeout,
    WrongThread,
    codec,
)
from zmqkit.codec import Kind

ROOT = Path(__file__).resolve().parent.parent
FAST = {"interval": 0.2, "expiry": 0.6}
SLACK = 0.5  # how far past its deadline a wait may end on a loaded test host
MakeNode = Callable[..., Node]


def key(n: int) -> bytes:
    """A worker routing id as a zmqkit worker makes it: a node UUID inside."""
    return wire.worker_routing_id(uuid.UUID(int=n), 1)


A, B = key(1), key(2)


def dispatched(out: list[Dispatch | Cancel]) -> list[tuple[bytes, int]]:
    return [(item.worker, item.task_id) for item in out if isinstance(item, Dispatch)]


# -- the wire --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [1, 23, 24, 255, 256, 70_000, 2**32, 2**64 - 1])
@pytest.mark.parametrize("dispatch", [1, 24, 300, 2**40])
def test_farm_task_frame_is_the_documented_request(task_id: int, dispatch: int) -> None:
    payload = {"x": [1, 2.5, "three", b"4"]}
    frame = wire.TaskFrame(task_id, payload).encode(dispatch)
    assert frame == codec.encode_request(task_id, "zmqkit.farm.task", [dispatch, payload], {})
    assert wire.read_from_submitter(frame) == wire.TaskMessage(task_id, dispatch, payload)


def test_farm_task_frame_refuses_what_cannot_travel() -> None:
    with pytest.raises(EncodeError):
        wire.TaskFrame(1, object())


def test_farm_worker_messages_are_read_or_refused() -> None:
    assert wire.read_from_worker(wire.encode_ready(1, 2, 7, [5, 6])) == wire.Ready(2, 7, [5, 6])
    assert wire.read_from_worker(wire.encode_leave(2)) == wire.Leave()
    assert wire.read_from_worker(codec.encode_reply(9, [81])) == wire.Result(9, [81], None)
    result = wire.read_from_worker(codec.encode_error(9, "ValueError", "bad", "tb"))
    assert isinstance(result, wire.Result)
    error = result.error
    assert isinstance(error, RemoteError)
    assert (error.type_name, error.message) == ("ValueError", "bad")
    stranger = codec.encode_request(4, "add", [1, 2], {})
    assert wire.read_from_worker(stranger) == wire.Stranger(4, "add")
    for bad in (
        b"",
        b"\xff\x00",
        codec.encode_request(1, wire.READY_METHOD, [1, 2], {}),
        codec.encode_request(1, wire.READY_METHOD, [1, -2, []], {}),
        codec.encode_request(1, wire.READY_METHOD, [1, 2, ["x"]], {}),
        codec.encode_cancel(3),
        codec.encode_publish("t", bytes(16), 1, 0),
    ):
        with pytest.raises(ProtocolError):
            wire.read_from_worker(bad)
    for bad in (
        codec.encode_request(1, "zmqkit.farm.task", [0, 5], {}),
        codec.encode_request(1, "zmqkit.farm.task", [5], {}),
        codec.encode_request(1, "other", [1, 5], {}),
        codec.encode_reply(1, 2),
    ):
        with pytest.raises(ProtocolError):
            wire.read_from_submitter(bad)


def test_farm_routing_id_carries_the_worker_node() -> None:
    node = uuid.uuid4()
    routing_id = wire.worker_routing_id(node, 7)
    assert routing_id[:1] == b"W" and len(routing_id) == 21
    assert wire.worker_node(routing_id) == node
    assert wire.worker_node(b"\x00\x80\x00\x00\x29") is None  # one ZeroMQ made up itself
    with pytest.raises(ConfigError):
        wire.role_of("")
    assert wire.role_of("squares") == "farm:squares"


# -- the submitter's core, with a fake clock -------------------------------------------------------


def test_farm_core_sends_no_more_than_the_credit() -> None:
    core = SubmitterCore()
    ids = [core.submit(i) for i in range(5)]
    assert core.outgoing(0.0) == []  # no worker yet: everything waits
    core.ready(A, 2, 0, [], now=0.0)
    assert dispatched(core.outgoing(0.0)) == [(A, ids[0]), (A, ids[1])]
    assert core.outgoing(0.1) == []  # both credits in transit
    assert core.complete(A, ids[0], 0, None, now=0.2)  # a result gives its credit back
    assert dispatched(core.outgoing(0.2)) == [(A, ids[2])]
    assert core.outgoing(0.3) == []
    core.ready(A, 0, 3, [ids[1], ids[2]], now=0.4)  # the same, restated
    assert core.outgoing(0.4) == []
    assert core.complete(A, ids[2], 4, None, now=0.5)  # counted as held by that READY
    assert dispatched(core.outgoing(0.5)) == [(A, ids[3])]


def test_farm_core_in_transit_tasks_count_against_a_stale_ready() -> None:
    """A READY written before the worker received a dispatch does not earn extra tasks."""
    core = SubmitterCore()
    ids = [core.submit(i) for i in range(4)]
    core.ready(A, 2, 0, [], now=0.0)
    core.outgoing(0.0)  # dispatches 1 and 2, not yet received
    core.ready(A, 2, 0, [], now=0.1)  # the periodic READY, crossing them on the wire
    assert core.outgoing(0.1) == []
    core.ready(A, 0, 2, ids[:2], now=0.2)  # it has them now and is full
    assert core.outgoing(0.2) == []


def test_farm_core_spreads_over_workers_and_a_slow_worker_gets_less() -> None:
    """Two workers with one slot each, one ten times slower, simulated on a fake clock."""
    core = SubmitterCore()
    cores = {A: WorkerCore(1), B: WorkerCore(1)}
    seconds = {A: 0.01, B: 0.1}
    ids = {core.submit(i): i for i in range(200)}
    now, seqs = 0.0, iter(range(1, 10_000))
    running: list[tuple[float, bytes, int, Any]] = []
    for worker, ledger in cores.items():
        ledger.connect("sub")
        core.take_frame(worker, ledger.ready_frame("sub", next(seqs)), now)
    done: Counter[bytes] = Counter()
    while core.outstanding:
        for worker, frame in core.frames_out(now):
            task = wire.read_from_submitter(frame)
            assert isinstance(task, wire.TaskMessage)
            assert cores[worker].receive("sub", task.task_id, task.dispatch)
            running.append((now + seconds[worker], worker, task.task_id, task.payload))
        running.sort()
        now, worker, task_id, payload = running.pop(0)
        cores[worker].finish("sub", task_id)
        assert core.take_frame(worker, codec.encode_reply(task_id, payload * 2), now) is None
        done[worker] += 1  # no READY: the result gave the credit back
    results = {r.task_id: r for r in iter(core.take_next, None)}
    assert {t: r.value for t, r in results.items()} == {t: x * 2 for t, x in ids.items()}
    assert done[A] > 5 * done[B] > 0, done
    assert core.stats["duplicates"] == 0 and core.stats["reassigned"] == 0


def test_farm_core_a_worker_discovery_loses_gives_its_tasks_to_another() -> None:
    core = SubmitterCore()
    ids = [core.submit(i) for i in range(3)]
    core.ready(A, 3, 0, [], now=0.0)
    assert len(dispatched(core.outgoing(0.0))) == 3
    core.discovered({uuid.UUID(int=1), uuid.UUID(int=2)})
    core.ready(B, 3, 0, [], now=0.5)
    assert core.outgoing(0.5) == []  # A still holds all three
    core.discovered({uuid.UUID(int=2)})  # A's node left or expired
    assert sorted(dispatched(core.outgoing(0.6))) == [(B, task_id) for task_id in ids]
    assert core.stats["worker-lost"] == 1 and core.stats["reassigned"] == 3
    assert [w.node for w in core.workers()] == [uuid.UUID(int=2)]


def test_farm_core_a_worker_that_joins_after_the_listing_is_still_lost_when_it_goes() -> None:
    core = SubmitterCore()
    task_id = core.submit("x")
    core.discovered({uuid.UUID(int=1)})  # A's beacon came first, then its READY
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)
    core.discovered(set())
    assert core.stats["worker-lost"] == 1 and core.workers() == []
    core.ready(B, 1, 0, [], now=0.1)
    assert dispatched(core.outgoing(0.1)) == [(B, task_id)]


def test_farm_core_a_worker_not_yet_discovered_is_not_taken_for_lost() -> None:
    """Its READY may arrive before its beacon does."""
    core = SubmitterCore()
    core.submit("x")
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)
    core.discovered(set())
    assert core.stats["worker-lost"] == 0 and core.workers()[0].in_flight == 1


def test_farm_core_timeout_reassigns_and_the_late_result_is_a_duplicate() -> None:
    core = SubmitterCore(task_timeout=1.0)
    task_id = core.submit(7)
    core.ready(A, 1, 0, [], now=0.0)
    assert dispatched(core.outgoing(0.0)) == [(A, task_id)]
    core.ready(B, 1, 0, [], now=0.5)
    core.expire(0.9)
    assert core.outgoing(0.9) == []  # not late yet
    core.ready(A, 0, 1, [task_id], now=0.95)
    core.expire(1.01)
    assert dispatched(core.outgoing(1.01)) == [(B, task_id)]
    assert core.stats["timed-out"] == 1
    assert core.complete(B, task_id, 49, None, now=1.1)
    assert not core.complete(A, task_id, 49, None, now=1.2)  # the slow first worker
    assert core.stats["duplicates"] == 1
    result = core.take(task_id)
    assert result is not None and (result.value, result.worker) == (49, uuid.UUID(int=2))


def test_farm_core_a_timed_out_task_keeps_using_its_worker_credit_until_answered() -> None:
    """The slow worker still runs it: giving it a new task at once would overload it."""
    core = SubmitterCore(task_timeout=1.0)
    first, second = core.submit(1), core.submit(2)
    core.ready(A, 1, 0, [], now=0.0)
    assert dispatched(core.outgoing(0.0)) == [(A, first)]
    core.expire(1.5)  # first goes back to the queue ...
    assert core.outgoing(1.5) == []  # ... but A still holds it: no credit for anything
    assert not core.workers()[0].in_flight
    assert not core.complete(A, 99, "?", None, now=1.6)  # a stray result frees nothing
    assert core.outgoing(1.6) == []
    assert core.complete(A, first, 1, None, now=2.0)  # late, but first: kept, credit back
    assert dispatched(core.outgoing(2.0)) == [(A, second)]
    assert core.stats["duplicates"] == 0


def test_farm_core_a_ready_without_the_timed_out_task_frees_its_credit() -> None:
    core = SubmitterCore(task_timeout=1.0)
    first, second = core.submit(1), core.submit(2)
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)
    core.expire(1.5)
    core.ready(A, 1, 1, [], now=1.6)  # it dropped it (a cancel, or it lost it)
    assert dispatched(core.outgoing(1.6)) == [(A, first)]
    core.complete(A, first, 1, None, now=1.7)
    assert dispatched(core.outgoing(1.7)) == [(A, second)]


def test_farm_core_a_worker_holding_a_finished_task_is_told_to_drop_it() -> None:
    core = SubmitterCore(task_timeout=1.0)
    task_id = core.submit(7)
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)
    core.ready(B, 1, 0, [], now=0.0)
    core.expire(1.5)
    core.outgoing(1.5)  # to B
    core.complete(B, task_id, 49, None, now=1.6)
    core.ready(A, 0, 1, [task_id], now=1.7)  # A still has it queued
    assert core.outgoing(1.7) == [Cancel(A, task_id)]
    core.ready(A, 0, 1, [task_id], now=1.8)
    assert core.outgoing(1.8) == []  # told once


def test_farm_core_a_result_from_the_first_worker_cancels_the_second_copy() -> None:
    core = SubmitterCore(task_timeout=1.0)
    task_id = core.submit(7)
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)
    core.ready(B, 1, 0, [], now=0.0)
    core.expire(1.5)
    core.outgoing(1.5)  # to B
    assert core.complete(A, task_id, 49, None, now=1.6)
    assert core.outgoing(1.6) == [Cancel(B, task_id)]


def test_farm_core_lost_task_is_found_by_the_next_ready() -> None:
    """A READY that acknowledges a dispatch but does not list its task: the task was lost."""
    core = SubmitterCore()
    first, second = core.submit(1), core.submit(2)
    core.ready(A, 2, 0, [], now=0.0)
    core.outgoing(0.0)
    core.ready(A, 1, 2, [second], now=0.1)  # got dispatch 2 (second); the first never came
    assert dispatched(core.outgoing(0.1)) == [(A, first)]
    assert core.stats["lost"] == 1


def test_farm_core_silent_idle_worker_expires_a_busy_one_does_not() -> None:
    """A slot thread says nothing while it runs a task: only an idle worker's silence counts."""
    core = SubmitterCore(worker_expiry=3.0)
    task_id = core.submit(1)
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)  # A is busy from here on
    core.ready(B, 0, 0, [], now=0.0)  # B is idle (and full)
    core.expire(3.1)
    assert core.stats["worker-silent"] == 1
    assert [w.node for w in core.workers()] == [uuid.UUID(int=1)]
    assert core.complete(A, task_id, 1, None, now=10.0)


def test_farm_core_leave_hands_back_without_counting_a_failure() -> None:
    core = SubmitterCore(max_attempts=1)
    task_id = core.submit(1)
    core.ready(A, 1, 0, [], now=0.0)
    core.outgoing(0.0)
    core.leave(A)
    core.ready(B, 1, 0, [], now=0.1)
    assert dispatched(core.outgoing(0.1)) == [(B, task_id)]
    assert core.stats["left"] == 1 and core.stats["given-up"] == 0


def test_farm_core_gives_up_after_max_attempts() -> None:
    core = SubmitterCore(task_timeout=1.0, max_attempts=2)
    task_id = core.submit("poison")
    now = 0.0
    for worker in (A, B):
        core.ready(worker, 1, 0, [], now=now)
        assert dispatched(core.outgoing(now)) == [(worker, task_id)]
        now += 1.5
        core.expire(now)
        core.leave(worker)  # gone: the next worker is fresh
    result = core.take(task_id)
    assert result is not None and isinstance(result.error, BrokenError)
    with pytest.raises(BrokenError):
        result.unwrap()
    assert core.outstanding == 0 and core.stats["given-up"] == 1


def test_farm_core_results_are_handed_out_once() -> None:
    core = SubmitterCore()
    first, second = core.submit(1), core.submit(2)
    assert core.take(first) is None  # pending
    core.ready(A, 2, 0, [], now=0.0)
    core.outgoing(0.0)
    core.complete(A, second, "two", None, now=0.1)
    core.complete(A, first, "one", None, now=0.2)
    assert core.take(first) == farm.TaskResult(first, "one", None, uuid.UUID(int=1))
    assert core.take_next() == farm.TaskResult(second, "two", None, uuid.UUID(int=1))
    assert core.take_next() is None
    for task_id in (first, second, 99):
        with pytest.raises(ConfigError):
            core.take(task_id)
    assert not core.complete(A, 99, "?", None, now=0.3)
    assert core.stats["stray"] == 1 and core.stats["duplicates"] == 0


def test_farm_core_max_pending_refuses_with_busy() -> None:
    core = SubmitterCore(max_pending=2)
    core.submit(1)
    core.submit(2)
    with pytest.raises(BusyError):
        core.submit(3)
    assert core.outstanding == 2


def test_farm_core_bad_frames_are_dropped_and_counted_strangers_answered() -> None:
    core = SubmitterCore()
    for garbage in (b"", b"\x00\x01", b"\x86\x01\x01", codec.encode_cancel(1)):
        assert core.take_frame(A, garbage, 0.0) is None
    assert core.stats["dropped-malformed"] == 4
    answer = core.take_frame(A, codec.encode_request(5, "add", [1, 2], {}), 0.0)
    assert answer is not None
    message = codec.decode(answer)
    assert message[1:4] == [Kind.ERROR, 5, "zmqkit.MethodNotFound"]
    assert core.workers() == []  # none of that made a worker


def test_farm_core_bad_options_are_config_errors() -> None:
    for options in (
        {"task_timeout": 0},
        {"task_timeout": float("inf")},
        {"max_attempts": 0},
        {"max_pending": 1.5},
        {"worker_expiry": -1},
    ):
        with pytest.raises(ConfigError):
            SubmitterCore(**options)  # type: ignore[arg-type]


# -- the worker's ledger ---------------------------------------------------------------------------


def test_farm_worker_core_states_credit_and_refuses_copies_and_overflow() -> None:
    ledger = WorkerCore(2)
    assert not ledger.receive("s", 1, 1)  # not connected
    ledger.connect("s")
    assert ledger.ready("s") == (2, 0, [])
    assert ledger.receive("s", 10, 1) and ledger.receive("s", 11, 2)
    assert not ledger.receive("s", 10, 3)  # a copy it holds
    assert not ledger.receive("s", 12, 4)  # over capacity: the submitter sees it lost
    assert ledger.ready("s") == (0, 4, [10, 11])
    assert ledger.finish("s", 10) and not ledger.finish("s", 10)
    assert ledger.ready("s") == (1, 4, [11])
    ledger.connect("t")  # each submitter has its own credit at the worker
    assert ledger.ready("t") == (2, 0, [])
    assert ledger.receive("t", 10, 1) and ledger.held == 2  # task ids are per submitter
    assert ledger.disconnect("s") == [11]
    assert ledger.held == 1 and ledger.ready("t") == (1, 1, [10])


# -- real nodes ------------------------------------------------------------------------------------


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[MakeNode]:
    nodes: list[Node] = []

    def make(name: str, **options: Any) -> Node:
        node = Node(name, port=beacon_port, **{**FAST, **options})
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.close()



def wait_workers(submitter: farm.Submitter, nodes: int, timeout: float = 5.0) -> None:
    """Wait until slots of ``nodes`` worker nodes have asked for work."""
    wait_until(
        lambda: len({w.node for w in submitter.workers()}) >= nodes,
        timeout,
        f"{nodes} worker nodes asked for work",
    )


@contextlib.contextmanager
def took(at_most: float) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        assert elapsed <= at_most, f"took {elapsed:.2f} s, more than {at_most} s"


def napping(seconds: float) -> Callable[[Any], Any]:
    def nap(x: Any) -> Any:
        time.sleep(seconds)
        return x

    return nap


def square(x: int) -> int:
    if x < 0:
        raise ValueError(f"no square for {x}")
    return x * x


WORKER_SCRIPT = r"""
import os, sys, time
import zmqkit
from zmqkit.patterns import farm

port, name, delay, slots = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

def work(x):
    time.sleep(delay)
    return [x * x, os.getpid()]

with zmqkit.Node("worker", port=port, interval=0.2, expiry=0.6) as node:
    farm.serve_worker(node, work, farm=name, slots=slots)
    print("ready", node.uuid, flush=True)
    sys.stdin.read()  # work until the parent closes our stdin (or dies)
"""


class WorkerProcess:
    """A farm worker node in a child process, to be SIGKILLed mid-run."""

    def __init__(self, port: int, name: str, delay: float, slots: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(port), name, str(delay), str(slots)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.uuid: uuid.UUID | None = None

    def wait_ready(self, timeout: float = 10.0) -> WorkerProcess:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("ready "), f"child not ready: {line!r}, exit {self.proc.poll()}"
        self.uuid = uuid.UUID(line.split()[1])
        return self

    def close(self) -> None:
        """SIGKILL (if still running), reap, close the pipes. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def worker_processes(
    port: int, name: str, *specs: tuple[float, int]
) -> Iterator[list[WorkerProcess]]:
    """Child workers, one per (delay, slots); always killed and reaped."""
    children: list[WorkerProcess] = []
    try:
        children = [WorkerProcess(port, name, delay, slots) for delay, slots in specs]
        yield [child.wait_ready() for child in children]
    finally:
        for child in children:
            child.close()


def test_farm_many_tasks_over_two_worker_processes_complete_exactly_once(
    make_node: MakeNode,
    beacon_port: int,
) -> None:
    boss = make_node("boss")
    with (
        worker_processes(beacon_port, "squares", (0.0, 1), (0.0, 2)) as children,
        farm.Submitter(boss, "squares") as squares,
    ):
        wait_workers(squares, 2)
        ids = [squares.submit(x) for x in range(400)]
        seen: Counter[int] = Counter()
        pids: Counter[int] = Counter()
        for result in squares.as_completed(timeout=20):
            seen[result.task_id] += 1
            value, pid = result.unwrap()
            assert value == (result.task_id - ids[0]) ** 2
            pids[pid] += 1
        assert sorted(seen) == ids and set(seen.values()) == {1}
        assert set(pids) == {child.proc.pid for child in children}, pids
        assert squares.duplicates == 0 and squares.stats()["completed"] == 400
        assert {w.node for w in squares.workers()} == {child.uuid for child in children}


def test_farm_slow_worker_gets_fewer_tasks(make_node: MakeNode) -> None:
    boss, quick, slow = make_node("boss"), make_node("quick"), make_node("slow")
    farm.serve_worker(quick, napping(0.002), farm="naps")
    farm.serve_worker(slow, napping(0.1), farm="naps")
    with farm.Submitter(boss, "naps") as naps:
        wait_workers(naps, 2)
        for x in range(60):
            naps.submit(x)
        by_worker = Counter(result.worker for result in naps.as_completed(timeout=20))
    assert set(by_worker) == {quick.uuid, slow.uuid}
    assert by_worker[quick.uuid] > 2 * by_worker[slow.uuid], by_worker


def test_farm_sigkilled_worker_process_loses_no_task(make_node: MakeNode, beacon_port: int) -> None:
    boss = make_node("boss")
    with (
        worker_processes(beacon_port, "squares", (0.15, 2), (0.02, 2)) as (victim, survivor),
        farm.Submitter(boss, "squares") as squares,
    ):
        wait_workers(squares, 2)
        ids = [squares.submit(x) for x in range(60)]
        seen: Counter[int] = Counter()
        killed = False
        for result in squares.as_completed(timeout=20):
            seen[result.task_id] += 1
            assert result.unwrap()[0] == (result.task_id - ids[0]) ** 2
            if not killed and result.unwrap()[1] == victim.proc.pid:
                # mid-run: the victim has just answered one task and is holding others
                wait_until(
                    lambda: any(w.node == victim.uuid and w.in_flight for w in squares.workers()),
                    5,
                    "the victim holds tasks",
                )
                victim.proc.kill()
                victim.proc.wait(5)
                killed = True
        assert killed and victim.proc.returncode == -9
        assert sorted(seen) == ids and set(seen.values()) == {1}  # none lost, none twice
        stats = squares.stats()
        assert stats["worker-lost"] == 2 and stats["reassigned"] >= 1, dict(stats)  # its 2 slots
        assert stats["duplicates"] == squares.duplicates == 0
        assert [w.node for w in squares.workers()] == [survivor.uuid] * 2


SUBMITTER_SCRIPT = r"""
import sys
import zmqkit
from zmqkit.patterns import farm

with zmqkit.Node("boss", port=int(sys.argv[1]), interval=0.2, expiry=0.6) as node:
    with farm.Submitter(node, "jobs") as jobs:
        ids = [jobs.submit(x) for x in range(10_000)]
        print("first", jobs.result(ids[0], timeout=10), flush=True)
        sys.stdin.read()  # the parent kills us mid-run
"""


def test_farm_sigkilled_submitter_process_does_not_stall_its_workers(
    make_node: MakeNode,
    beacon_port: int,
) -> None:
    worker_node, new_boss = make_node("worker"), make_node("new-boss")
    worker = farm.serve_worker(worker_node, napping(0.01), farm="jobs", prefetch=2)
    child = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER_SCRIPT, str(beacon_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert select.select([child.stdout], [], [], 10)[0], "the child submitter never started"
        assert child.stdout.readline() == b"first 0\n"
        child.kill()
        child.wait(5)
        wait_until(lambda: worker.stats()["submitters-lost"] == 1, 5, "the worker drops it")
        with farm.Submitter(new_boss, "jobs") as jobs, took(3):
            assert jobs.result(jobs.submit(42), timeout=3) == 42
        assert worker.stats()["done"] >= 2
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(5)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


def test_farm_result_times_out_when_no_worker_exists(make_node: MakeNode) -> None:
    boss = make_node("boss")
    with farm.Submitter(boss, "nobody") as nobody:
        task_id = nobody.submit(1)
        with took(0.5 + SLACK), pytest.raises(Timeout, match="no worker has asked for work"):
            nobody.result(task_id, timeout=0.5)
        with took(0.3 + SLACK), pytest.raises(Timeout):
            list(nobody.as_completed(timeout=0.3))
        assert nobody.stats()["outstanding"] == 1  # still queued for a worker that may come


def test_farm_as_completed_yields_each_task_once_including_late_submissions(
    make_node: MakeNode,
) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    farm.serve_worker(worker, square, farm="squares", slots=3)
    with farm.Submitter(boss, "squares") as squares:
        first = [squares.submit(x) for x in range(20)]
        taken = squares.result(first[0], timeout=5)  # handed out here, so not yielded below
        assert taken == 0
        seen: list[int] = []
        more: list[int] = []
        for result in squares.as_completed(timeout=10):
            seen.append(result.task_id)
            if len(more) < 5:  # work that the results make: submitted while iterating
                more.append(squares.submit(result.value + 1000))
        assert sorted(seen) == first[1:] + more
        assert list(squares.as_completed(timeout=1)) == []  # nothing left
        with pytest.raises(ConfigError):
            squares.result(first[1], timeout=1)  # taken by as_completed already


def test_farm_handler_error_is_a_remote_error_result_and_the_farm_goes_on(
    make_node: MakeNode,
) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    farm.serve_worker(worker, square, farm="squares")
    with farm.Submitter(boss, "squares") as squares:
        ids = {squares.submit(x): x for x in (2, -3, 4)}
        results = {r.task_id: r for r in squares.as_completed(timeout=10)}
        failed = next(r for r in results.values() if not r.ok)
        assert ids[failed.task_id] == -3
        assert isinstance(failed.error, RemoteError)
        assert (failed.error.type_name, failed.error.message) == ("ValueError", "no square for -3")
        assert "square" in failed.error.traceback
        assert sorted(r.value for r in results.values() if r.ok) == [4, 16]
        with pytest.raises(RemoteError, match="no square for -5"):
            squares.result(squares.submit(-5), timeout=5)
        assert squares.result(squares.submit(9), timeout=5) == 81
        with pytest.raises(EncodeError):
            squares.submit({1, object()})
        assert squares.result(squares.submit(10), timeout=5) == 100


def test_farm_unencodable_result_is_a_remote_error(make_node: MakeNode) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    farm.serve_worker(worker, lambda x: object(), farm="odd")
    with farm.Submitter(boss, "odd") as odd, pytest.raises(RemoteError) as caught:
        odd.result(odd.submit(1), timeout=5)
    assert caught.value.type_name == "zmqkit.EncodeError"


def test_farm_async_submitter_and_async_handler(make_node: MakeNode) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    running = 0
    most = 0

    async def slow_square(x: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        return square(x)

    farm.serve_worker(worker, slow_square, farm="squares", slots=4)

    async def main() -> None:
        async with farm.AsyncSubmitter(boss, "squares") as squares:
            assert await squares.result(squares.submit(7), timeout=5) == 49
            ids = [squares.submit(x) for x in range(40)] + [squares.submit(-1)]
            got = {r.task_id: r async for r in squares.as_completed(timeout=10)}
            assert sorted(got) == ids
            assert [got[i].value for i in ids[:-1]] == [x * x for x in range(40)]
            assert isinstance(got[ids[-1]].error, RemoteError)
            with pytest.raises(Timeout):
                await squares.result(squares.submit(1), timeout=0.0)
            assert squares.duplicates == 0

    asyncio.run(main())
    assert most == 4  # the slots bound how many run at once, and all were used


def test_farm_async_result_times_out_when_no_worker_exists(make_node: MakeNode) -> None:
    boss = make_node("boss")

    async def main() -> None:
        async with farm.AsyncSubmitter(boss, "nobody") as nobody:
            with took(0.5 + SLACK), pytest.raises(Timeout, match="no worker"):
                await nobody.result(nobody.submit(1), timeout=0.5)
        with pytest.raises(ClosedError):
            nobody.submit(2)

    asyncio.run(main())


def test_farm_timed_out_task_goes_to_another_worker_and_the_late_result_is_a_duplicate(
    make_node: MakeNode,
) -> None:
    boss, first, second = make_node("boss"), make_node("first"), make_node("second")
    entered, release = threading.Event(), threading.Event()

    def stuck(x: int) -> str:
        entered.set()
        release.wait(5)
        return "first"

    farm.serve_worker(first, stuck, farm="jobs")
    with farm.Submitter(boss, "jobs", task_timeout=0.3) as jobs:
        task_id = jobs.submit(1)
        assert entered.wait(5)
        farm.serve_worker(second, lambda x: "second", farm="jobs")
        try:
            assert jobs.result(task_id, timeout=5) == "second"
        finally:
            release.set()
        wait_until(lambda: jobs.duplicates == 1, 5, "the first worker's late result is counted")
        stats = jobs.stats()
        assert stats["timed-out"] == 1 and stats["completed"] == 1, stats


def test_farm_worker_close_finishes_the_running_task_and_hands_back_the_rest(
    make_node: MakeNode,
) -> None:
    boss, first, second = make_node("boss"), make_node("first"), make_node("second")
    entered, release = threading.Event(), threading.Event()

    def stuck(x: int) -> str:
        entered.set()
        release.wait(0.5)
        return "first"

    leaving = farm.serve_worker(first, stuck, farm="jobs", prefetch=1)  # holds two tasks
    with farm.Submitter(boss, "jobs") as jobs:  # task_timeout 60 s, expiry 5 s: neither helps
        running, queued = jobs.submit(1), jobs.submit(2)
        assert entered.wait(5)
        wait_until(lambda: jobs.workers()[0].in_flight == 2, 5, "the first worker holds both")
        farm.serve_worker(second, lambda x: "second", farm="jobs")
        with took(3):
            leaving.close()
            assert jobs.result(running, timeout=3) == "first"
            assert jobs.result(queued, timeout=3) == "second"
        assert jobs.stats()["left"] == 1 and jobs.duplicates == 0


def test_farm_bad_input_on_the_submitter_socket_is_dropped_and_counted(make_node: MakeNode) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    farm.serve_worker(worker, square, farm="squares")
    with farm.Submitter(boss, "squares") as squares, Socket(zmq.DEALER) as stranger:
        stranger.connect(squares.endpoint)
        for garbage in (b"", b"\xff" * 10, codec.encode_reply(12345, "who asked?")):
            stranger.send(garbage)
        stranger.send_multipart([b"two", b"frames"])
        stranger.send(codec.encode_request(3, "add", [1, 2], {}))
        answer = codec.decode(stranger.recv(timeout=5))
        assert answer[1:4] == [Kind.ERROR, 3, "zmqkit.MethodNotFound"]
        assert squares.result(squares.submit(12), timeout=5) == 144
        stats = squares.stats()
        assert stats["dropped-malformed"] == 2 and stats["stray"] == 1, stats
        assert stats["dropped-multipart"] == 1 and stats["dropped-stranger"] == 1, stats
        assert stats["workers"] == 1  # the stranger is not taken for a worker


def test_farm_closing_the_node_closes_its_parts(make_node: MakeNode) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    farm.serve_worker(worker, square, farm="squares")
    squares = farm.Submitter(boss, "squares")  # usable at once, attached to its node
    assert squares.result(squares.submit(3), timeout=5) == 9
    assert "farm:squares" in boss.endpoints
    worker.close()
    boss.close()  # the conftest leak check sees that every thread and socket went with them
    assert "farm:squares" not in boss.endpoints
    with pytest.raises(ClosedError):
        squares.submit(1)
    with pytest.raises(ClosedError):
        farm.serve_worker(worker, square)


def test_farm_misuse_is_refused_clearly(make_node: MakeNode) -> None:
    boss = make_node("boss")
    closed = farm.Submitter(boss, "squares")
    closed.close()
    closed.close()  # idempotent
    with pytest.raises(ClosedError):
        closed.submit(1)
    assert closed not in boss.parts and "farm:squares" not in boss.endpoints
    unstarted = Node("unstarted", port=boss.port)
    try:
        with pytest.raises(ClosedError):  # no beacon: no worker could find it
            farm.Submitter(unstarted, "squares")
        with pytest.raises(ClosedError):
            farm.Worker(unstarted, square)
    finally:
        unstarted.close()
    with farm.Submitter(boss, "squares"), pytest.raises(ConfigError):
        farm.Submitter(boss, "squares")  # one submitter per farm per node
    for bad in ({"slots": 0}, {"slots": 1.5}, {"prefetch": -1}, {"farm": ""}, {"farm": "x" * 65}):
        with pytest.raises(ConfigError):
            farm.Worker(boss, square, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        farm.Worker(boss, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        farm.Submitter(boss, "squares", task_timeout=-1)


# -- CURVE: a keyed farm serves only the workers its keyring holds --------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Keypair]:
    return {who: Keypair.generate() for who in ("boss", "good", "stranger")}


def keyed(keys: dict[str, Keypair], who: str, *trusted: str) -> dict[str, Any]:
    """Node options: ``who``'s keypair and a keyring of the ``trusted`` public keys."""
    return {"keys": keys[who], "keyring": Keyring([keys[t].public for t in trusted])}


async def async_square(x: int) -> int:
    return square(x)


@pytest.mark.parametrize("handler", [square, async_square], ids=["threads", "asyncio"])
def test_farm_keyed_submitter_gives_no_task_to_a_stranger_or_a_plain_worker(
    make_node: MakeNode,
    keys: dict[str, Keypair],
    handler: Callable[[Any], Any],
) -> None:
    """The stranger trusts the boss, but the boss's keyring does not hold its key: its CURVE
    handshake is refused. The plain worker has no keys: it refuses to connect at once, and
    says so. Neither gets a task; the worker in the keyring gets them all."""
    boss = make_node("boss", **keyed(keys, "boss", "good"))
    stranger = make_node("stranger", **keyed(keys, "stranger", "boss"))
    plain = make_node("plain")
    bad_workers = [
        farm.Worker(stranger, handler, "squares", slots=2),
        farm.Worker(plain, handler, "squares", slots=2),
    ]
    with farm.Submitter(boss, "squares") as squares:
        ids = [squares.submit(x) for x in range(10)]
        wait_until(
            lambda: bad_workers[1].stats()["refused-submitters"] >= 1,
            5,
            "the plain worker refuses the keyed submitter",
        )
        with pytest.raises(Timeout, match="no worker has asked for work"):
            squares.result(ids[0], timeout=1.0)  # time for any handshake to have happened
        assert squares.workers() == [] and squares.stats()["completed"] == 0
        good = make_node("good", **keyed(keys, "good", "boss"))
        farm.Worker(good, handler, "squares")
        results = list(squares.as_completed(timeout=10))
        assert sorted(r.task_id for r in results) == ids
        assert {r.worker for r in results} == {good.uuid}
        assert [r.value for r in sorted(results, key=lambda r: r.task_id)] == [
            x * x for x in range(10)
        ]
        assert {w.node for w in squares.workers()} == {good.uuid}
    for refused in bad_workers:
        assert refused.stats()["done"] == 0, refused.stats()


def test_farm_keyed_submitter_gives_no_task_to_a_raw_plaintext_dealer(
    make_node: MakeNode,
    keys: dict[str, Keypair],
) -> None:
    """Security by construction: a worker that skips every check (a raw pyzmq DEALER that
    speaks the protocol in plaintext) is refused by the submitter's socket itself."""
    boss = make_node("boss", **keyed(keys, "boss", "good"))
    context: zmq.Context[Any] = zmq.Context.instance()
    with farm.Submitter(boss, "squares") as squares:
        intruder = context.socket(zmq.DEALER)
        intruder.linger = 0
        intruder.routing_id = wire.worker_routing_id(uuid.uuid4(), 1)
        try:
            intruder.connect(squares.endpoint)
            intruder.send(wire.encode_ready(1, 10, 0, []))
            task_id = squares.submit(3)
            assert not intruder.poll(1000), "a plaintext worker was given a task"
            assert squares.workers() == []
            good = make_node("good", **keyed(keys, "good", "boss"))
            farm.Worker(good, square, "squares")
            assert squares.result(task_id, timeout=5) == 9
        finally:
            intruder.close()


def test_farm_keyed_worker_refuses_a_submitter_its_keyring_does_not_hold(
    make_node: MakeNode,
    keys: dict[str, Keypair],
) -> None:
    """The other direction: a keyed worker serves no plaintext submitter and no submitter
    whose key it does not trust; it says so in its stats and stays idle."""
    plain_boss = make_node("plain-boss")
    worker_node = make_node("worker", **keyed(keys, "good", "stranger"))  # trusts not the boss
    boss = make_node("boss", **keyed(keys, "boss", "good"))
    with (
        farm.Worker(worker_node, square, "squares") as worker,
        farm.Submitter(plain_boss, "squares") as plain,
        farm.Submitter(boss, "squares") as keyed_boss,
    ):
        plain.submit(1)
        keyed_boss.submit(2)
        wait_until(
            lambda: worker.stats()["refused-submitters"] >= 2,
            5,
            "the worker refuses both submitters",
        )
        time.sleep(0.3)
        assert plain.workers() == keyed_boss.workers() == []
        assert worker.stats()["done"] == 0


def test_farm_keyed_async_submitter_serves_only_its_keyring(
    make_node: MakeNode,
    keys: dict[str, Keypair],
) -> None:
    boss = make_node("boss", **keyed(keys, "boss", "good"))
    stranger = make_node("stranger", **keyed(keys, "stranger", "boss"))
    farm.Worker(stranger, square, "squares")

    async def main() -> None:
        async with farm.AsyncSubmitter(boss, "squares") as squares:
            task_id = squares.submit(4)
            with pytest.raises(Timeout):
                await squares.result(task_id, timeout=1.0)
            assert squares.workers() == []
            good = make_node("good", **keyed(keys, "good", "boss"))
            farm.Worker(good, square, "squares")
            assert await squares.result(task_id, timeout=5) == 16

    asyncio.run(main())


# -- the parts' conventions: usable once made, any thread, closed with their node -----------------


def test_farm_submitter_is_used_from_many_threads_at_once(make_node: MakeNode) -> None:
    boss, worker = make_node("boss"), make_node("worker")
    farm.Worker(worker, square, "squares", slots=2)
    with farm.Submitter(boss, "squares") as squares:
        errors: list[BaseException] = []

        def user(base: int) -> None:
            try:
                for x in range(base, base + 25):
                    assert squares.result(squares.submit(x), timeout=10) == x * x
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=user, args=(100 * i,)) for i in range(1, 4)]
        for thread in threads:
            thread.start()
        assert squares.result(squares.submit(7), timeout=10) == 49  # the owner's thread too
        for thread in threads:
            thread.join(20)
        assert not errors and not any(t.is_alive() for t in threads), errors
        assert squares.stats()["completed"] == 76


def test_farm_submitter_closed_from_another_thread_wakes_its_waiters(make_node: MakeNode) -> None:
    boss = make_node("boss")
    squares = farm.Submitter(boss, "squares")
    task_id = squares.submit(1)
    closer = threading.Timer(0.2, squares.close)
    closer.start()
    with took(2), pytest.raises(ClosedError):
        squares.result(task_id, timeout=10)
    closer.join(5)
    assert squares not in boss.parts and "farm:squares" not in boss.endpoints


@pytest.mark.parametrize("handler_kind", ["threads", "asyncio"])
def test_farm_worker_closes_from_its_own_handler(make_node: MakeNode, handler_kind: str) -> None:
    boss, worker_node = make_node("boss"), make_node("worker")
    holder: list[farm.Worker] = []

    def last(x: int) -> int:
        holder[0].close()  # from the worker's own thread: it ends once the handler returns
        return x

    async def async_last(x: int) -> int:
        holder[0].close()
        return x

    holder.append(
        farm.Worker(worker_node, last if handler_kind == "threads" else async_last, "jobs")
    )
    with farm.Submitter(boss, "jobs") as jobs:
        first = jobs.submit(1)
        if handler_kind == "threads":  # a running plain handler finishes: its result is sent
            assert jobs.result(first, timeout=5) == 1
        wait_until(lambda: holder[0] not in worker_node.parts, 5, "the worker detached")
        wait_until(
            lambda: (
                not any(
                    t.name.startswith("zmqkit-farm-")
                    and "jobs" in t.name
                    and "submitter" not in t.name
                    for t in threading.enumerate()
                )
            ),
            5,
            "its threads ended",
        )
        holder[0].close()  # idempotent


def test_farm_async_submitter_refuses_other_threads_and_closes_from_any(
    make_node: MakeNode,
) -> None:
    boss = make_node("boss")
    with pytest.raises(WrongThread, match=r"farm\.Submitter"):
        farm.AsyncSubmitter(boss, "squares")  # no running loop here

    async def main() -> None:
        squares = farm.AsyncSubmitter(boss, "squares")  # usable at once, no start()
        assert squares in boss.parts
        task_id = squares.submit(1)
        for misuse in (lambda: squares.submit(2), squares.stats, squares.workers):
            with pytest.raises(WrongThread, match="run_coroutine_threadsafe"):
                await asyncio.to_thread(misuse)
        waiter = asyncio.ensure_future(squares.result(task_id, timeout=10))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(squares.close)  # another thread: done on this loop
        with took(1), pytest.raises(ClosedError):
            await waiter
        assert squares not in boss.parts and "farm:squares" not in boss.endpoints
        squares.close()  # idempotent

    asyncio.run(main())


def test_farm_node_closed_from_another_thread_while_its_parts_are_busy(
    make_node: MakeNode,
) -> None:
    """Submitter, async submitter and both kinds of worker on one node, all at work: closing
    the node from another thread closes every one on its own thread or loop (the conftest's
    leak check sees that no thread and no socket is left)."""
    node = make_node("busy")
    farm.Worker(node, napping(0.01), "jobs", slots=2)
    farm.Worker(node, async_square, "async-jobs", slots=2)
    jobs = farm.Submitter(node, "jobs")
    for x in range(200):
        jobs.submit(x)
    errors: list[BaseException] = []

    async def drive() -> None:
        async with farm.AsyncSubmitter(node, "async-jobs") as async_jobs:
            for x in range(200):
                async_jobs.submit(x)
            await async_jobs.result(1, timeout=5)
            closer = threading.Thread(target=node.close)
            closer.start()
            while closer.is_alive():
                await asyncio.sleep(0.01)  # the loop runs on: the node closes its part here
            assert async_jobs not in node.parts
            with pytest.raises(ClosedError):
                async_jobs.submit(1)

    def loop_thread() -> None:
        try:
            asyncio.run(drive())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    assert jobs.result(1, timeout=5) == 0  # task 1 carries 0
    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join(15)
    assert not thread.is_alive() and not errors, errors
    assert node.parts == [] and not node.running
    with pytest.raises(ClosedError):
        jobs.submit(1)


# -- the wire, as docs/protocol.md section 9.1 tells it ------------------------------------------

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def doc_examples() -> list[tuple[bytes, Any]]:
    """Each ``hex`` block of the protocol section and the value of the ``diag`` block after it."""
    blocks = [
        (info.strip(), body)
        for info, body in FENCE.findall(doc_section("docs/protocol.md", "9.1 "))
    ]
    examples = []
    for (info, body), (next_info, diag) in itertools.pairwise(blocks):
        if info == "hex":
            assert next_info == "diag", body
            digits = "".join(re.sub(r"#.*", "", line) for line in body.splitlines())
            examples.append((bytes.fromhex(re.sub(r"\s", "", digits)), json.loads(diag)))
    return examples


def test_farm_protocol_doc_examples_are_what_the_code_sends() -> None:
    examples = dict((bytes(data), value) for data, value in doc_examples())
    assert len(examples) == 7
    for data, value in examples.items():
        assert cbor2.loads(data) == value and cbor2.dumps(value) == data
        assert codec.decode(data) == value  # a valid envelope of docs/protocol.md
    sent = [
        wire.encode_ready(1, 2, 0, []),
        wire.encode_ready(2, 0, 9, [3, 4]),
        wire.encode_leave(3),
        wire.TaskFrame(3, 7).encode(9),
        codec.encode_reply(3, 49),
        codec.encode_error(4, "ValueError", "no square for -1", ""),
        codec.encode_cancel(3),
    ]
    assert set(sent) == set(examples)
    routing_id = "57 12345678123456781234567812345678 00000001"
    assert routing_id in doc_section("docs/protocol.md", "9.1 ")
    node = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert wire.worker_routing_id(node, 1) == bytes.fromhex(routing_id.replace(" ", ""))


def test_farm_submitter_serves_a_worker_built_from_the_protocol_doc(make_node: MakeNode) -> None:
    """A foreign worker: pyzmq and cbor2, and what the document says, nothing else."""
    boss, helper = make_node("boss"), make_node("helper")
    context: zmq.Context[Any] = zmq.Context.instance()
    with farm.Submitter(boss, "hand") as hand:
        foreign = context.socket(zmq.DEALER)
        foreign.linger = 0
        foreign.routing_id = b"W" + helper.uuid.bytes + (7).to_bytes(4, "big")
        try:
            foreign.connect(boss.endpoints["farm:hand"])
            foreign.send(cbor2.dumps([1, 1, 1, "zmqkit.farm.ready", [1, 0, []], {}]))
            wait_until(lambda: hand.workers(), 5, "the foreign worker is known")
            first, second = hand.submit("a"), hand.submit("b")

            def next_task() -> list[Any]:
                assert foreign.poll(5000), "no task came"
                message: list[Any] = cbor2.loads(foreign.recv())
                assert message[:4] == [1, 1, message[2], "zmqkit.farm.task"]
                return message

            task = next_task()
            assert task[2] == first and task[4] == [1, "a"]  # dispatch 1, payload "a"
            assert not foreign.poll(200), "a second task with no credit for it"
            foreign.send(cbor2.dumps([1, 2, first, "A"]))  # the result returns the credit
            task = next_task()
            assert task[2] == second and task[4] == [2, "b"]
            foreign.send(cbor2.dumps([1, 3, second, "KeyError", "'b'", ""]))
            assert hand.result(first, timeout=5) == "A"
            with pytest.raises(RemoteError, match="KeyError"):
                hand.result(second, timeout=5)
            third = hand.submit("c")
            assert next_task()[2] == third
            foreign.send(cbor2.dumps([1, 1, 2, "zmqkit.farm.leave", [], {}]))  # leaves holding it
            farm.serve_worker(helper, str.upper, farm="hand")
            assert hand.result(third, timeout=5) == "C"
            assert hand.stats()["left"] == 1
        finally:
            foreign.close()


def test_farm_worker_serves_a_submitter_built_from_the_protocol_doc(make_node: MakeNode) -> None:
    """A hand-made submitter drives a real worker through refusal and cancel (an async handler,
    whose loop reads while tasks run, so that the order of events is certain)."""
    boss, worker = make_node("boss"), make_node("worker")
    release = threading.Event()

    async def handler(x: str) -> str:
        while x == "hold" and not release.is_set():
            await asyncio.sleep(0.005)
        return f"done {x}"

    farm.serve_worker(worker, handler, farm="hand", prefetch=1)  # takes 2: one runs, one waits
    with Socket(zmq.ROUTER) as router:
        boss.advertise("farm:hand", router.bind(boss.host))

        def recv() -> tuple[bytes, list[Any]]:
            routing_id, frame = router.recv_multipart(timeout=5)
            return routing_id, cbor2.loads(frame)

        def task(routing_id: bytes, task_id: int, dispatch: int, payload: str) -> None:
            router.send_multipart(
                [
                    routing_id,
                    cbor2.dumps([1, 1, task_id, "zmqkit.farm.task", [dispatch, payload], {}]),
                ]
            )

        routing_id, ready = recv()
        assert ready[:4] == [1, 1, ready[2], "zmqkit.farm.ready"] and ready[4] == [2, 0, []]
        assert wire.worker_node(routing_id) == worker.uuid
        task(routing_id, 10, 1, "hold")
        task(routing_id, 11, 2, "queued")
        task(routing_id, 12, 3, "one too many")  # over its credit: refused, and said at once
        while (message := recv()[1])[4][1] != 3:
            pass
        assert message[3] == "zmqkit.farm.ready" and message[4] == [0, 3, [10, 11]]
        router.send_multipart([routing_id, cbor2.dumps([1, 6, 11])])  # CANCEL the waiting one
        task(routing_id, 13, 4, "refused too")  # its READY shows that the CANCEL was read
        while (message := recv()[1])[4][1] != 4:
            pass
        assert message[4] == [0, 4, [10, 11]]
        release.set()
        answers = []
        while (message := recv()[1])[3:5] != ["zmqkit.farm.ready", [2, 4, []]]:  # all free
            answers.append(message)
        assert [m for m in answers if m[1] != Kind.REQUEST] == [[1, Kind.REPLY, 10, "done hold"]]
        time.sleep(0.2)
        while router.poll(0):
            assert recv()[1][1] == Kind.REQUEST  # READYs only: the cancelled task never ran
        boss.withdraw("farm:hand")


# -- the documentation -----------------------------------------------------------------------------


def test_farm_doc_examples_run_and_print_what_they_promise(tmp_path: Path) -> None:
    text = doc_section("README.md", "Task farm:")
    examples = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(examples) == 2  # in memory, then durable
    for number, code in enumerate(examples):
        promised = [m.group(1).strip()
                    for m in re.finditer(r"print\(.*\)\s+#\s*(.+)$", code, re.M)]
        assert promised
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / "example.py").write_text(code)
        result = subprocess.run(
            [sys.executable, "example.py"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            cwd=folder,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == promised

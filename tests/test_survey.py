"""Survey (scatter-gather): the pure core (who was asked, who answered or failed, when it is done),
then real nodes, some in child processes that are SIGKILLed while a survey waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import doc_section
from hypothesis import given, settings
from hypothesis import strategies as st
from zmqkit.patterns import rpc, survey
from zmqkit.patterns.survey import Ending, Responder, SurveyState

from zmqkit import (
    BusyError,
    ClosedError,
    ConfigError,
    EncodeError,
    Keypair,
    MethodNotFound,
    Node,
    PeerNotFound,
    RemoteError,
    SecurityError,
    WrongThread,
    codec,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = {"interval": 0.2, "expiry": 0.6}
SLACK = 0.5  # how far past its deadline a survey may return on a loaded 2-core test host
NOW = 1000.0
MakeNode = Callable[..., Node]


# -- the core, without sockets or clocks -----------------------------------------------------------


def who(number: int, name: str = "sensor") -> Responder:
    return Responder(name, uuid.UUID(int=number))


def state_of(*numbers: int, min_replies: int | None = None, timeout: float = 1.0,
             ids: Iterator[int] | None = None) -> SurveyState:
    state = SurveyState("read", [], {}, now=NOW, timeout=timeout,
                        call_ids=ids or itertools.count(1), min_replies=min_replies)
    for number in numbers:
        state.add(who(number))
    return state


def ask_all(state: SurveyState) -> dict[uuid.UUID, int]:
    """Send every request; return each node's call id."""
    ids = {}
    for node_uuid in state.unsent():
        ids[node_uuid] = codec.decode(state.request(node_uuid))[2]
        state.sent(node_uuid)
    return ids


def test_survey_core_ends_when_everyone_answered_or_failed() -> None:
    state = state_of(1, 2, 3)
    ids = ask_all(state)
    assert len(set(ids.values())) == 3  # one call id per node
    assert state.receive(who(2).uuid, codec.encode_reply(ids[who(2).uuid], 22))
    assert state.receive(who(1).uuid, codec.encode_error(ids[who(1).uuid], "KeyError", "k"))
    assert not state.done(NOW + 0.1)
    assert state.receive(who(3).uuid, codec.encode_reply(ids[who(3).uuid], 33))
    assert state.done(NOW + 0.1)
    result = state.result(NOW + 0.1, searched="sensor")
    assert result.ending is Ending.EVERYONE and result.elapsed == pytest.approx(0.1)
    assert list(result.answers.items()) == [(who(2), 22), (who(3), 33)]  # in arrival order
    assert isinstance(result.failed[who(1)], RemoteError)
    assert result.failed[who(1)].type_name == "KeyError" and result.missing == ()
    assert set(result.asked) == {who(1), who(2), who(3)}


def test_survey_core_quorum_ends_early_and_waits_for_late_joiners() -> None:
    state = state_of(1, 2, 3, min_replies=2)
    ids = ask_all(state)
    state.receive(who(1).uuid, codec.encode_reply(ids[who(1).uuid], 1))
    state.gone(who(2).uuid)
    state.receive(who(3).uuid, codec.encode_error(ids[who(3).uuid], "OSError", "x"))
    # everyone settled, yet only one answer: a quorum waits for nodes that may still appear
    assert not state.done(NOW + 0.5)
    assert state.add(who(4)) and not state.add(who(4))
    ids.update(ask_all(state))
    state.receive(who(4).uuid, codec.encode_reply(ids[who(4).uuid], 4))
    result = state.result(NOW + 0.6, searched="sensor")
    assert result.ending is Ending.QUORUM and result.values == [1, 4]
    assert result.missing == (who(2),)  # gone before answering
    # a quorum never reached ends at the deadline
    short = state_of(1, min_replies=3)
    ask_all(short)
    assert not short.done(NOW + 0.99) and short.ending(NOW + 1.0) is Ending.DEADLINE


def test_survey_core_deadline_counts_the_silent_and_the_unsent_missing() -> None:
    state = state_of(1, 2, 3)
    state.request(who(1).uuid)
    state.sent(who(1).uuid)  # 2 and 3 never got a connection
    assert state.unsent() == [who(2).uuid, who(3).uuid]
    assert state.waiting_for() == [who(1).uuid]
    assert state.remaining(NOW + 0.25) == 0.75 and not state.done(NOW + 0.25)
    result = state.result(NOW + 1.0, searched="sensor")
    assert result.ending is Ending.DEADLINE and result.answers == {} and result.failed == {}
    assert set(result.missing) == {who(1), who(2), who(3)}
    with pytest.raises(PeerNotFound, match="sensor"):
        state_of().result(NOW + 1.0, searched="node called 'sensor' serving RPC")


def test_survey_core_drops_garbage_stale_and_misdirected_answers() -> None:
    shared_ids = itertools.count(1)
    earlier = state_of(1, ids=shared_ids)
    earlier_ids = ask_all(earlier)
    state = state_of(1, 2, ids=shared_ids)  # the next survey on the same sockets
    ids = ask_all(state)
    one, two = who(1).uuid, who(2).uuid
    assert ids[one] != earlier_ids[one]
    assert not state.receive(one, codec.encode_reply(earlier_ids[one], "late"))  # stale
    assert not state.receive(one, codec.encode_reply(ids[two], "not yours"))  # misdirected
    assert not state.receive(one, b"\x00\xffnot cbor")
    assert not state.receive(one, codec.encode_publish("t", b"\0" * 16, 1, 0))  # a publication
    assert not state.receive(one, codec.encode_stream_item(ids[one], "a"))
    assert state.receive(one, codec.encode_stream_end(ids[one]))  # a generator: its items
    assert state.receive(two, codec.encode_error(0, "zmqkit.ProtocolError", "unreadable"))
    assert not state.receive(one, codec.encode_reply(ids[one], "twice"))
    result = state.result(NOW, searched="sensor")
    assert result.answers == {who(1): ["a"]} and who(2) in result.failed
    assert state.stats["dropped-stale"] == 4 and state.stats["dropped-garbage"] == 1
    with pytest.raises(ConfigError):
        state_of(min_replies=0)
    with pytest.raises(ConfigError):
        state_of(timeout=float("nan"))
    with pytest.raises(EncodeError):
        SurveyState("read", [object()], {}, now=NOW, timeout=1, call_ids=itertools.count(1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_survey_core_survives_any_bytes(frame: bytes) -> None:
    state = state_of(1)
    ask_all(state)
    settled = state.receive(who(1).uuid, frame)
    assert settled == state.settled(who(1).uuid)


# -- real nodes -----------------------------------------------------------------------------------


class Sensor:
    def __init__(self, value: Any) -> None:
        self.value = value

    def read(self, scale: float = 1) -> Any:
        return self.value * scale

    def broken(self) -> None:
        raise OSError("sensor unplugged")

    @rpc.blocking
    def slow_read(self, seconds: float) -> Any:
        time.sleep(seconds)
        return self.value


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


def wait_serving(node: Node, name: str | None, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(node.peers(name, role="rpc")) != count:
        assert time.monotonic() < deadline, f"{count} nodes serving RPC not seen in {timeout} s"
        time.sleep(0.01)


def sensors(make_node: MakeNode, values: list[Any], name: str = "sensor") -> list[Node]:
    nodes = [make_node(name) for _ in values]
    for node, value in zip(nodes, values, strict=True):
        rpc.serve(node, Sensor(value))
    return nodes


def test_survey_asks_every_node_of_the_name_and_only_those(make_node: MakeNode) -> None:
    sensors(make_node, [1, 2, 3])
    other = make_node("actuator")
    rpc.serve(other, Sensor(100))
    me = make_node("hub")
    wait_serving(me, None, 4)
    result = survey.ask(me, "sensor", "read", scale=10, timeout=2)
    assert sorted(result.values) == [10, 20, 30] and result.ending is Ending.EVERYONE
    assert {responder.name for responder in result.answers} == {"sensor"}
    failing = survey.ask(me, "sensor", "broken", timeout=2)
    assert failing.answers == {} and len(failing.failed) == 3
    assert all(e.type_name == "OSError" for e in failing.failed.values())
    unknown = survey.ask(me, "sensor", "nope", timeout=2)
    assert all(isinstance(e, MethodNotFound) for e in unknown.failed.values())
    everyone = survey.ask(me, None, "read", timeout=2)  # every node that serves RPC
    assert sorted(everyone.values) == [1, 2, 3, 100]
    assert {r.name for r in everyone.answers} == {"sensor", "actuator"}


def test_survey_quorum_does_not_wait_for_the_slow(make_node: MakeNode) -> None:
    sensors(make_node, [1, 2, 3])
    me = make_node("hub")
    wait_serving(me, "sensor", 3)
    with survey.Surveyor(me, "sensor", timeout=3) as surveyor:
        # every node sleeps; the quorum of 2 ends the survey at the 2nd answer, not at 3 s
        start = time.monotonic()
        result = surveyor.ask("slow_read", 0.2, min_replies=2)
        assert time.monotonic() - start < 3 - SLACK
        assert result.ending is Ending.QUORUM and len(result.answers) >= 2
        # a deadline shorter than the work: everyone missing, back on time, nothing raised
        start = time.monotonic()
        late = surveyor.ask("slow_read", 0.6, timeout=0.2)
        assert time.monotonic() - start <= 0.2 + SLACK
        assert late.ending is Ending.DEADLINE and len(late.missing) == 3 and late.answers == {}
        time.sleep(0.6)  # the late answers arrive on the surveyor's sockets ...
        fresh = surveyor.ask("read", 5)
        assert sorted(fresh.values) == [5, 10, 15]  # ... and are not taken for these
        assert surveyor.stats()["dropped-stale"] >= 1 and surveyor.stats()["surveys"] == 3


SENSOR_SCRIPT = r"""
import sys, time
import zmqkit
from zmqkit.patterns import rpc

port = int(sys.argv[1])

class Sensor:
    def __init__(self, me):
        self.me = me

    @rpc.blocking
    def slow_read(self, seconds):
        time.sleep(seconds)
        return self.me

with zmqkit.Node("sensor", port=port, interval=0.2, expiry=0.6) as node:
    rpc.serve(node, Sensor(str(node.uuid)))
    print("ready", node.uuid, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or dies)
"""


class SensorProcess:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SENSOR_SCRIPT, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        self.uuid = ""

    def wait_ready(self, timeout: float = 15.0) -> SensorProcess:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("ready "), f"child not ready: {line!r}, exit {self.proc.poll()}"
        self.uuid = line.split()[1]
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
        self.proc.wait(5)

    def close(self) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def sensor_processes(port: int, count: int) -> Iterator[list[SensorProcess]]:
    children: list[SensorProcess] = []
    try:
        children = [SensorProcess(port) for _ in range(count)]
        yield [child.wait_ready() for child in children]
    finally:
        for child in children:
            child.close()


def test_survey_a_node_killed_mid_survey_is_missing_and_holds_nothing_up(
    make_node: MakeNode, beacon_port: int,
) -> None:
    me = make_node("hub")
    with sensor_processes(beacon_port, 2) as (victim, survivor):
        wait_serving(me, "sensor", 2)
        timer = threading.Timer(0.3, victim.kill)
        timer.start()
        try:
            start = time.monotonic()
            # the survivor answers after 0.5 s; the victim dies holding the question. Expiry
            # (0.6 s) tells the survey it is gone, long before the 5 s deadline.
            result = survey.ask(me, "sensor", "slow_read", 0.5, timeout=5)
            elapsed = time.monotonic() - start
        finally:
            timer.cancel()
            timer.join()
        assert victim.proc.returncode == -9
        assert result.values == [survivor.uuid]
        assert [str(r.uuid) for r in result.missing] == [victim.uuid]
        assert result.ending is Ending.EVERYONE and elapsed < 5 - SLACK


def test_survey_async_with_a_killed_node_and_a_quorum(
    make_node: MakeNode, beacon_port: int,
) -> None:
    me = make_node("hub")

    async def main(victim: SensorProcess, survivor: SensorProcess) -> None:
        async with survey.AsyncSurveyor(me, "sensor", timeout=5) as surveyor:
            result = await surveyor.ask("slow_read", 0.0)
            assert sorted(result.values) == sorted([victim.uuid, survivor.uuid])
            victim.kill()
            start = time.monotonic()
            # a quorum of 2 can no longer be reached: the survey runs to its deadline, no further
            result = await surveyor.ask("slow_read", 0.1, min_replies=2, timeout=1.5)
            elapsed = time.monotonic() - start
            assert result.ending is Ending.DEADLINE and 1.5 <= elapsed <= 1.5 + SLACK
            assert result.values == [survivor.uuid]
            assert [str(r.uuid) for r in result.missing] == [victim.uuid]
            # surveys at once from several tasks: each has sockets of its own
            both = await asyncio.gather(surveyor.ask("slow_read", 0.1),
                                        surveyor.ask("slow_read", 0.1))
            assert [r.values for r in both] == [[survivor.uuid], [survivor.uuid]]
            assert surveyor.stats()["surveys"] == 4
        async with survey.AsyncSurveyor(me, "sensor", timeout=2, max_concurrent=1) as one:
            first = asyncio.ensure_future(one.ask("slow_read", 0.0))
            await asyncio.sleep(0)  # let it start
            with pytest.raises(BusyError, match="max_concurrent"):  # the bound is full
                await one.ask("slow_read", 0.0)
            assert (await first).values == [survivor.uuid]

    with sensor_processes(beacon_port, 2) as (victim, survivor):
        wait_serving(me, "sensor", 2)
        asyncio.run(main(victim, survivor))


def test_survey_of_nobody_is_peer_not_found_within_the_deadline(make_node: MakeNode) -> None:
    me = make_node("hub")
    start = time.monotonic()
    with pytest.raises(PeerNotFound, match="nobody"):
        survey.ask(me, "nobody", "read", timeout=0.5)
    assert time.monotonic() - start <= 0.5 + SLACK

    async def ask_nobody() -> None:
        async with survey.AsyncSurveyor(me, "nobody", timeout=0.3) as nobody:
            await nobody.ask("read")

    with pytest.raises(PeerNotFound):
        asyncio.run(ask_nobody())


def test_survey_finds_a_node_that_starts_during_the_survey(make_node: MakeNode) -> None:
    me = make_node("hub")

    def late_start() -> None:
        sensors(make_node, [7])

    timer = threading.Timer(0.3, late_start)
    timer.start()
    try:
        result = survey.ask(me, "sensor", "read", timeout=5, min_replies=1)
    finally:
        timer.join()
    assert result.values == [7] and result.ending is Ending.QUORUM


class Rendezvous:
    """A sensor whose answer waits until ``parties`` requests are in its handlers at once: it
    answers only surveys that really run at the same time."""

    def __init__(self, value: int, parties: int) -> None:
        self.value = value
        self.barrier = threading.Barrier(parties, timeout=5)

    @rpc.blocking
    def meet(self) -> int:
        self.barrier.wait()
        return self.value


def test_survey_surveyor_runs_from_any_thread_several_at_once(make_node: MakeNode) -> None:
    for value in (1, 2):
        rpc.serve(make_node("meeting"), Rendezvous(value, parties=2))
    me = make_node("hub")
    wait_serving(me, "meeting", 2)
    surveyor = survey.Surveyor(me, "meeting", timeout=4)  # made here, in the main thread
    results: list[list[Any]] = []
    errors: list[BaseException] = []

    def survey_from_a_thread() -> None:
        try:
            results.append(sorted(surveyor.ask("meet").values))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=survey_from_a_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # each node answered only once both surveys' requests were in its handlers together
    assert errors == [] and results == [[1, 2], [1, 2]]
    assert surveyor.stats()["surveys"] == 2 and surveyor.stats()["asked"] == 4
    me.close()  # closes the surveyor attached to it, and the sockets of both threads
    with pytest.raises(ClosedError):
        surveyor.ask("meet")
    with pytest.raises(ConfigError):
        survey.Surveyor(make_node("x"), "")
    with pytest.raises(ConfigError):
        survey.Surveyor(make_node("y"), "meeting", max_concurrent=0)


class Hub:
    """A service whose handlers survey the sensors with a surveyor made in main."""

    def __init__(self, surveyor: survey.Surveyor) -> None:
        self.surveyor = surveyor

    def plain(self) -> list[Any]:
        return sorted(self.surveyor.ask("read").values)

    @rpc.blocking
    def blocking(self) -> list[Any]:
        return sorted(self.surveyor.ask("read", scale=10).values)

    async def in_loop(self) -> list[Any]:  # blocks the server's loop for one quick survey
        return sorted(self.surveyor.ask("read", scale=100).values)


def test_survey_from_rpc_handlers_with_a_surveyor_made_in_main(make_node: MakeNode) -> None:
    sensors(make_node, [1, 2])
    hub = make_node("hub")
    caller = make_node("caller")
    wait_serving(hub, "sensor", 2)
    surveyor = survey.Surveyor(hub, "sensor", timeout=3)
    rpc.serve(hub, Hub(surveyor))
    wait_serving(caller, "hub", 1)
    with rpc.Client(caller, "hub", timeout=10) as client:
        assert client.call("plain") == [1, 2]
        assert client.call("blocking") == [10, 20]
        assert client.call("in_loop") == [100, 200]
    assert surveyor.ask("read").values  # and from main too, meanwhile
    assert surveyor.stats()["surveys"] == 4


def test_survey_closed_from_another_thread_while_a_survey_runs(make_node: MakeNode) -> None:
    sensors(make_node, [1])
    me = make_node("hub")
    wait_serving(me, "sensor", 1)
    surveyor = survey.Surveyor(me, "sensor", timeout=5)
    closer = threading.Timer(0.3, surveyor.close)  # while the node takes 2 s to answer
    closer.start()
    start = time.monotonic()
    try:
        with pytest.raises(ClosedError, match="closed while a survey ran"):
            surveyor.ask("slow_read", 2.0)
    finally:
        closer.join()
    assert time.monotonic() - start < 2.0
    surveyor.close()  # again: nothing
    assert surveyor not in me.parts


def test_survey_async_surveyor_belongs_to_its_loop(make_node: MakeNode) -> None:
    sensors(make_node, [1])
    me = make_node("hub")
    wait_serving(me, "sensor", 1)
    with pytest.raises(WrongThread, match="Surveyor"):
        survey.AsyncSurveyor(me, "sensor")  # no loop runs here

    async def make() -> survey.AsyncSurveyor:
        surveyor = survey.AsyncSurveyor(me, "sensor")
        assert (await surveyor.ask("read")).values == [1]
        return surveyor

    surveyor = asyncio.run(make())
    with pytest.raises(WrongThread, match="run_coroutine_threadsafe"):
        asyncio.run(surveyor.ask("read"))  # another loop
    surveyor.close()  # from this thread, its loop closed: the sockets close here
    surveyor.close()
    assert surveyor not in me.parts

    async def closed_from_a_thread() -> None:
        async with survey.AsyncSurveyor(me, "sensor", timeout=5) as sensors_:
            closer = threading.Timer(0.3, sensors_.close)  # close() runs on the loop
            closer.start()
            try:
                with pytest.raises(ClosedError):
                    await sensors_.ask("slow_read", 2.0)
            finally:
                await asyncio.to_thread(closer.join)

    asyncio.run(closed_from_a_thread())


def test_survey_sockets_are_curve_by_construction(make_node: MakeNode) -> None:
    hub_keys, friend_keys, stranger_keys = (Keypair.generate() for _ in range(3))
    ring = [hub_keys.public, friend_keys.public]
    hub = make_node("hub", keys=hub_keys, keyring=ring)
    rpc.serve(make_node("sensor", keys=friend_keys, keyring=ring), Sensor(1))
    rpc.serve(make_node("sensor", keys=stranger_keys, keyring=[*ring, stranger_keys.public]),
              Sensor(2))
    rpc.serve(make_node("sensor"), Sensor(3))  # no keys at all
    wait_serving(hub, "sensor", 3)
    result = survey.ask(hub, "sensor", "read", timeout=2)
    # only the key in the hub's keyring is asked; the stranger and the plaintext node are refused
    assert result.values == [1] and result.ending is Ending.EVERYONE
    assert len(result.failed) == 2
    assert all(isinstance(e, SecurityError) for e in result.failed.values())


def test_survey_docs_example_runs(tmp_path: Path) -> None:
    doc = doc_section("README.md", "Survey:")
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    expected = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+#\s*(.+)$", code, re.M)]
    assert expected
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected, f"the example printed:\n{result.stdout}"

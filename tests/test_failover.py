"""Failover client: the pure core (order, sticky primary, when to move, what may be retried),
then real replicas, some in child processes that are SIGKILLed in the middle of a stream of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
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

import pytest
from conftest import doc_section
from hypothesis import given, settings
from hypothesis import strategies as st
from zmqkit.patterns import failover, rpc
from zmqkit.patterns.failover import FAILURE_PENALTY, FailoverCore, Phase

from zmqkit import (
    BrokenError,
    ClosedError,
    ConfigError,
    EncodeError,
    Node,
    Peer,
    PeerNotFound,
    RemoteError,
    Timeout,
    WrongThread,
    ZmqkitError,
    codec,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = {"interval": 0.2, "expiry": 0.6}
SLACK = 0.5  # how far past its deadline a call may return on a loaded 2-core test host
NOW = 1000.0
MakeNode = Callable[..., Node]


# -- the core, without sockets or clocks -----------------------------------------------------------


def peer(number: int, *, endpoint: str | None = None, rank: str | None = None) -> Peer:
    return Peer(name="store", uuid=uuid.UUID(int=number),
                endpoints={"rpc": endpoint or f"tcp://127.0.0.1:{7000 + number}"},
                headers={"rank": rank} if rank else {}, seq=1, address="127.0.0.1",
                first_seen=0.0, last_seen=0.0)


def u(number: int) -> uuid.UUID:
    return uuid.UUID(int=number)


def core_with(*numbers: int, **options: Any) -> FailoverCore:
    core = FailoverCore("store", **options)
    core.sync([peer(n) for n in numbers], NOW)
    return core


def send(core: FailoverCore, call: failover.Call, now: float = NOW) -> uuid.UUID:
    """Route ``call`` and report it sent; return the replica it went to."""
    target = core.route(call, now)
    assert target is not None
    core.sent(call, target, now)
    return target.uuid


def reply(call: failover.Call, value: Any) -> bytes:
    return codec.encode_reply(call.call_id, value)


def test_failover_core_order_is_stable_and_the_primary_is_sticky() -> None:
    core = core_with(3, 2)
    assert [r.uuid for r in core.replicas.ordered()] == [u(2), u(3)]
    call = core.begin("get", ["k"], {}, idempotent=False, timeout=5, now=NOW)
    assert send(core, call) == u(2)
    assert core.replicas.primary_uuid == u(2)
    core.sync([peer(1), peer(2), peer(3)], NOW)  # one that sorts first arrives: no flapping
    later = core.begin("get", [], {}, idempotent=False, timeout=5, now=NOW)
    assert send(core, later) == u(2)
    core.replicas.penalize(core.replicas.targets[u(2)], NOW)  # the primary fails: next in order
    assert core.replicas.pick(NOW).uuid == u(1)
    core.replicas.penalize(core.replicas.targets[u(1)], NOW + 1)
    assert core.replicas.pick(NOW + 1).uuid == u(3)
    core.replicas.penalize(core.replicas.targets[u(3)], NOW + 2)
    # everyone failed recently: the one that failed longest ago gets the next turn
    assert core.replicas.pick(NOW + 2).uuid == u(2)
    # a custom order: rank headers decide, not UUIDs
    ranked = FailoverCore("store", order=lambda p: int(p.headers["rank"]))
    ranked.sync([peer(1, rank="2"), peer(2, rank="1"), peer(3, rank="3")], NOW)
    assert [r.uuid for r in ranked.replicas.ordered()] == [u(2), u(1), u(3)]


def test_failover_core_retries_only_what_may_be_retried() -> None:
    core = core_with(1, 2)
    plain = core.begin("put", ["k", 1], {}, idempotent=False, timeout=5, now=NOW)
    safe = core.begin("get", ["k"], {}, idempotent=True, timeout=5, now=NOW)
    assert send(core, plain) == send(core, safe) == u(1)
    _, removed, changed = core.sync([peer(2)], NOW + 0.5)  # replica 1 dies with both in flight
    assert [r.uuid for r in removed] == [u(1)] and set(changed) == {plain, safe}
    assert plain.phase is Phase.DONE and isinstance(plain.error, BrokenError)
    assert "may or may not have run" in str(plain.error) and "idempotent" in str(plain.error)
    assert safe.phase is Phase.ROUTING  # the same request goes to the next replica
    assert send(core, safe, NOW + 0.5) == u(2)
    assert core.receive(u(2), reply(safe, "v")) is safe and safe.outcome() == "v"
    assert core.calls == {}  # every call ended exactly once
    # a request that never left goes to the next replica even when not idempotent
    core = core_with(1, 2)
    call = core.begin("put", [], {}, idempotent=False, timeout=5, now=NOW)
    target = core.route(call, NOW)
    assert target is not None
    core.unreachable(call, target, NOW)
    assert call.phase is Phase.ROUTING and send(core, call) == u(2)
    assert core.replicas.primary_uuid == u(2)


def test_failover_core_deadlines_and_their_messages() -> None:
    core = core_with(1, 2, attempt_timeout=0.5)
    plain = core.begin("put", [], {}, idempotent=False, timeout=2, now=NOW)
    send(core, plain)
    assert core.wake_at(plain) == NOW + 2  # no per-attempt deadline for a call not idempotent
    assert not core.expire(plain, NOW + 1.9)
    assert core.expire(plain, NOW + 2) and isinstance(plain.error, Timeout)
    assert "may or may not have run" in str(plain.error)
    assert core.replicas.pick(NOW + 2).uuid == u(2)  # the silent one lost the primary role
    safe = core.begin("get", [], {}, idempotent=True, timeout=2, now=NOW + 2)
    assert send(core, safe, NOW + 2) == u(2)
    assert core.wake_at(safe) == NOW + 2.5
    assert core.expire(safe, NOW + 2.5) and safe.phase is Phase.ROUTING  # silent: try the next
    assert send(core, safe, NOW + 2.5) == u(1)
    # the silent replica answers late after all: any replica it was sent to may answer
    assert core.receive(u(2), reply(safe, "late")) is safe and safe.outcome() == "late"
    # nobody serves the name at all: PeerNotFound, not a plain timeout
    empty = FailoverCore("store")
    lonely = empty.begin("get", [], {}, idempotent=True, timeout=1, now=NOW)
    assert empty.route(lonely, NOW) is None
    empty.expire(lonely, NOW + 1)
    with pytest.raises(PeerNotFound):
        lonely.outcome()


def test_failover_core_silence_never_sends_a_call_twice_to_one_replica() -> None:
    core = core_with(1, 2, attempt_timeout=0.5)
    call = core.begin("slow", [], {}, idempotent=True, timeout=10, now=NOW)
    assert send(core, call) == u(1)
    core.expire(call, NOW + 0.5)
    assert call.phase is Phase.ROUTING and send(core, call, NOW + 0.5) == u(2)
    core.expire(call, NOW + 1.0)  # silent too, but both have it now: wait, no third send
    assert call.phase is Phase.IN_FLIGHT and core.wake_at(call) == NOW + 10
    assert core.stats["sent"] == 2 and core.replicas.primary_uuid == u(2)
    core.sync([peer(1)], NOW + 1.5)  # the one it waits on leaves; the other has it: wait for it
    assert call.phase is Phase.IN_FLIGHT and call.target is not None and call.target.uuid == u(1)
    assert core.receive(u(1), reply(call, "done")) is call and call.outcome() == "done"
    assert core.stats["sent"] == 2 and core.stats["retried"] == 1


def test_failover_core_matches_answers_and_drops_the_rest() -> None:
    core = core_with(1, 2)
    call = core.begin("count", [3], {}, idempotent=False, timeout=5, now=NOW)
    send(core, call)
    assert core.receive(u(2), reply(call, "forged")) is None  # never sent there
    assert core.receive(u(1), b"\xff garbage") is None
    assert core.receive(u(1), codec.encode_reply(999, "nobody asked")) is None
    assert core.receive(u(1), codec.encode_stream_item(call.call_id, 0)) is None
    assert core.receive(u(1), codec.encode_stream_item(call.call_id, 1)) is None
    assert core.receive(u(1), codec.encode_stream_end(call.call_id)) is call
    assert call.outcome() == [0, 1]
    assert core.receive(u(1), reply(call, "again")) is None  # ended: a second answer is stale
    assert core.stats["dropped-stale"] == 3 and core.stats["dropped-garbage"] == 1
    # an ERROR with call id 0 answers the one call in flight on that connection
    failing = core.begin("x", [], {}, idempotent=False, timeout=5, now=NOW)
    send(core, failing)
    assert core.receive(u(1), codec.encode_error(0, "zmqkit.ProtocolError", "bad")) is failing
    with pytest.raises(RemoteError, match="bad"):
        failing.outcome()
    with pytest.raises(EncodeError):
        core.begin("x", [object()], {}, idempotent=False, timeout=5, now=NOW)
    with pytest.raises(ConfigError):
        core.begin("x", [], {}, idempotent=False, timeout=-1, now=NOW)
    with pytest.raises(ConfigError):
        FailoverCore("store", attempt_timeout=0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_failover_core_survives_any_bytes(frame: bytes) -> None:
    core = core_with(1)
    call = core.begin("get", [], {}, idempotent=True, timeout=5, now=NOW)
    send(core, call)
    ended = core.receive(u(1), frame)
    assert ended is None or ended is call


def test_failover_core_penalty_wears_off() -> None:
    core = core_with(1, 2)
    core.replicas.penalize(core.replicas.targets[u(1)], NOW)
    assert core.replicas.pick(NOW).uuid == u(2)
    core.replicas.primary_uuid = None  # as if the primary had gone: choose afresh
    assert core.replicas.pick(NOW + FAILURE_PENALTY + 0.1).uuid == u(1)


# -- real replicas --------------------------------------------------------------------------------


REPLICA_SCRIPT = r"""
import sys, time
import zmqkit
from zmqkit.patterns import rpc

port = int(sys.argv[1])

class Store:
    def __init__(self, me):
        self.me = me

    def whoami(self):
        return self.me

    @rpc.blocking
    def work(self, tag, seconds):
        time.sleep(seconds)
        return [self.me, tag]

with zmqkit.Node("store", port=port, interval=0.2, expiry=0.6) as node:
    rpc.serve(node, Store(str(node.uuid)))
    print("ready", node.uuid, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or dies)
"""


class Replica:
    """A replica in a child process, to be SIGKILLed."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", REPLICA_SCRIPT, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        self.uuid = ""

    def wait_ready(self, timeout: float = 15.0) -> Replica:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("ready "), f"replica not ready: {line!r}, exit {self.proc.poll()}"
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
def replicas(port: int, count: int) -> Iterator[list[Replica]]:
    children: list[Replica] = []
    try:
        children = [Replica(port) for _ in range(count)]
        yield [child.wait_ready() for child in children]
    finally:
        for child in children:
            child.close()


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


def wait_serving(node: Node, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(node.peers("store", role="rpc")) != count:
        assert time.monotonic() < deadline, f"{count} store replicas not seen in {timeout} s"
        time.sleep(0.01)


@contextlib.contextmanager
def after(seconds: float, action: Callable[[], None]) -> Iterator[None]:
    timer = threading.Timer(seconds, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


MAY_NOT_HAVE_RUN = re.compile("may or may not have run")


def test_failover_kill_the_primary_mid_stream_no_call_hangs_or_is_lost(
    make_node: MakeNode, beacon_port: int,
) -> None:
    """The required test: SIGKILL the primary while a stream of calls runs. Every call returns
    or raises within its deadline, the count adds up, and calls go on on the next replica."""
    me = make_node("app")
    timeout = 3.0
    with replicas(beacon_port, 3) as children, \
            failover.FailoverClient(me, "store", timeout=timeout) as store:
        wait_serving(me, 3)
        first = store.call("whoami")
        assert first == str(store.primary) and str(store.replicas[0]) == first  # order: by UUID
        victim = next(child for child in children if child.uuid == first)
        successor = str(store.replicas[1])  # the next in order takes over
        results: list[tuple[int, bool, str]] = []  # (tag, idempotent, replica)
        errors: list[tuple[int, bool, Exception]] = []
        total = 120
        killed_at = total  # the first tag after which the victim was seen dead
        with after(0.6, victim.kill):
            for tag in range(total):
                idempotent = tag % 2 == 0
                start = time.monotonic()
                try:
                    replica, echoed = store.call("work", tag, 0.01, idempotent=idempotent)
                    assert echoed == tag  # the answer belongs to this call, not another one
                    results.append((tag, idempotent, replica))
                except (BrokenError, Timeout) as error:
                    errors.append((tag, idempotent, error))
                assert time.monotonic() - start <= timeout + SLACK  # none hangs
                if killed_at == total and victim.proc.poll() is not None:
                    killed_at = tag
        assert victim.proc.returncode == -9
        assert len(results) + len(errors) == total  # none silently lost
        assert killed_at < total - 10, "the kill came too late to test anything"
        assert not [e for e in errors if e[1]], f"an idempotent call failed: {errors}"
        for _, _, failure in errors:  # only a call in flight at the kill, and it says so
            assert MAY_NOT_HAVE_RUN.search(str(failure)), failure
        assert len(errors) <= 2
        before = {replica for tag, _, replica in results if tag < 5}
        after_kill = [replica for tag, _, replica in results if tag > killed_at + 1]
        assert before == {first}
        assert after_kill and set(after_kill) == {successor}  # sticky on the next replica
        assert str(store.primary) == successor
        assert store.stats()["calls"] == total + 1


def test_failover_async_kill_the_primary_with_calls_in_flight(
    make_node: MakeNode, beacon_port: int,
) -> None:
    me = make_node("app")
    timeout = 3.0

    async def main(children: list[Replica]) -> None:
        async with failover.AsyncFailoverClient(me, "store", timeout=timeout) as store:
            first = await store.call("whoami")
            victim = next(child for child in children if child.uuid == first)
            loop = asyncio.get_running_loop()

            async def one(tag: int) -> tuple[str, Any]:
                await asyncio.sleep(tag * 0.01)  # a stream of calls, many in flight at a time
                start = loop.time()
                try:
                    replica, echoed = await store.call("work", tag, 0.1, idempotent=tag % 2 == 0)
                    assert echoed == tag
                    return "ok", replica
                except (BrokenError, Timeout) as error:
                    assert tag % 2 == 1, f"idempotent call {tag} failed: {error}"
                    assert MAY_NOT_HAVE_RUN.search(str(error)), error
                    return "error", error
                finally:
                    assert loop.time() - start <= timeout + SLACK

            loop.call_later(0.3, victim.kill)
            total = 100
            outcomes = await asyncio.wait_for(asyncio.gather(*(one(t) for t in range(total))),
                                              timeout + 3)
            assert len(outcomes) == total
            counts = Counter(kind for kind, _ in outcomes)
            assert counts["ok"] + counts["error"] == total and counts["ok"] >= total - 20
            assert victim.proc.returncode == -9
            assert first not in {replica for kind, replica in outcomes[-20:] if kind == "ok"}
            assert store.primary is not None and str(store.primary) != first
            assert await store.call("whoami") == str(store.primary)

    with replicas(beacon_port, 2) as children:
        wait_serving(me, 2)
        asyncio.run(main(children))


class Named:
    def __init__(self, node: Node) -> None:
        self.me = str(node.uuid)

    def whoami(self) -> str:
        return self.me

    def fail(self) -> None:
        raise KeyError("missing")

    @rpc.blocking
    def hang(self, seconds: float) -> str:
        time.sleep(seconds)
        return self.me


def test_failover_a_replica_that_says_goodbye_loses_nothing(make_node: MakeNode) -> None:
    servers = [make_node("store") for _ in range(2)]
    for node in servers:
        rpc.serve(node, Named(node))
    me = make_node("app")
    wait_serving(me, 2)
    with failover.FailoverClient(me, "store", timeout=2) as store:
        first = store.call("whoami")
        with pytest.raises(RemoteError) as caught:  # a remote exception is an answer
            store.call("fail")
        assert caught.value.type_name == "KeyError" and str(store.primary) == first
        primary = next(node for node in servers if str(node.uuid) == first)
        primary.close()  # goodbye: peers hear it at once
        wait_serving(me, 1)
        other = next(str(node.uuid) for node in servers if node is not primary)
        assert [store.call("whoami") for _ in range(5)] == [other] * 5  # not even idempotent
        assert store.stats().get("retried", 0) == 0


def test_failover_a_silent_primary_is_left_for_idempotent_calls(make_node: MakeNode) -> None:
    servers = [make_node("store") for _ in range(2)]
    for node in servers:
        rpc.serve(node, Named(node))
    me = make_node("app")
    wait_serving(me, 2)
    with failover.FailoverClient(me, "store", timeout=3, attempt_timeout=0.3) as store:
        first = store.call("whoami")
        start = time.monotonic()
        # the primary is busy for 1 s with its first call; a plain call waits, and times out
        with pytest.raises(Timeout, match="may or may not have run"):
            store.call("hang", 1.0, timeout=0.5)
        assert time.monotonic() - start <= 0.5 + SLACK
        second = store.call("whoami")  # the silent one lost the primary role
        assert second != first
        start = time.monotonic()
        assert store.call("hang", 0.0, idempotent=True) == second
        assert time.monotonic() - start <= 1.0


def test_failover_attempt_timeout_sends_an_idempotent_call_on(make_node: MakeNode) -> None:
    servers = [make_node("store") for _ in range(2)]
    for node in servers:
        rpc.serve(node, Named(node))
    me = make_node("app")
    wait_serving(me, 2)
    with failover.FailoverClient(me, "store", timeout=5, attempt_timeout=0.3) as store:
        first = store.call("whoami")
        start = time.monotonic()
        # "hang" sleeps 2 s on whichever replica runs it; the primary stays silent for 0.3 s,
        # so the call goes to the other replica too, and the first answer wins
        assert store.call("hang", 2.0, idempotent=True) in {first, str(store.primary)}
        assert time.monotonic() - start <= 2.0 + 0.3 + SLACK
        assert store.stats()["retried"] >= 1 and str(store.primary) != first


def test_failover_async_close_and_cancel_end_every_call(make_node: MakeNode) -> None:
    server = make_node("store")
    rpc.serve(server, Named(server))
    me = make_node("app")
    wait_serving(me, 1)

    async def main() -> None:
        client = failover.AsyncFailoverClient(me, "store", timeout=5)
        assert await client.call("whoami") == str(server.uuid)
        cancelled = asyncio.ensure_future(client.call("hang", 1.0))
        in_flight = [asyncio.ensure_future(client.call("hang", 1.0)) for _ in range(3)]
        await asyncio.sleep(0.1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        start = time.monotonic()
        await client.aclose()
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(outcome, ClosedError) for outcome in outcomes), outcomes
        assert time.monotonic() - start < 0.5  # closing does not wait for the answers
        assert client.stats()["calls"] == 5
        with pytest.raises(ClosedError):
            await client.call("whoami")

    asyncio.run(main())


def test_failover_no_replica_is_peer_not_found_within_the_deadline(make_node: MakeNode) -> None:
    me = make_node("app")
    with failover.FailoverClient(me, "nobody", timeout=0.5) as client:
        start = time.monotonic()
        with pytest.raises(PeerNotFound):
            client.call("get")
        assert time.monotonic() - start <= 0.5 + SLACK

    async def main() -> None:
        async with failover.AsyncFailoverClient(me, "nobody", timeout=0.5) as client:
            with pytest.raises(PeerNotFound):
                await client.call("get")

    asyncio.run(main())


def test_failover_client_works_from_any_thread_and_closes_with_its_node(
    make_node: MakeNode,
) -> None:
    server = make_node("store")
    rpc.serve(server, Named(server))
    me = make_node("app")
    wait_serving(me, 1)
    client = failover.FailoverClient(me, "store", timeout=2)
    assert client.call("whoami") == str(server.uuid)
    answers: list[object] = []

    def from_another_thread() -> None:
        try:
            answers.append(client.call("whoami"))
        except ZmqkitError as error:  # handed to the test's thread to check
            answers.append(error)

    threads = [threading.Thread(target=from_another_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert answers == [str(server.uuid)] * 4
    assert client.stats()["answered"] == 5
    me.close()  # closes the client attached to it, and every thread's sockets
    with pytest.raises(ClosedError):
        client.call("whoami")
    with pytest.raises(ConfigError):
        failover.FailoverClient(server, "")


def test_failover_docs_example_runs(tmp_path: Path) -> None:
    doc = doc_section("README.md", "Failover:")
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    expected = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+#\s*(.+)$", code, re.M)]
    assert expected
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == expected, f"the example printed:\n{result.stdout}"


def test_failover_async_client_off_its_loop_says_what_to_use(make_node: MakeNode) -> None:
    server = make_node("store")
    rpc.serve(server, Named(server))
    me = make_node("app")
    wait_serving(me, 1)

    async def main() -> None:
        async with failover.AsyncFailoverClient(me, "store", timeout=2) as store:
            assert await store.call("whoami") == str(server.uuid)

            def elsewhere() -> None:
                with pytest.raises(WrongThread, match=r"failover\.FailoverClient"):
                    asyncio.run(store.call("whoami"))

            await asyncio.to_thread(elsewhere)
            assert store.stats()["answered"] == 1
        assert store.closed

    asyncio.run(main())

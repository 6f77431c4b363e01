"""RPC by name over real sockets: both clients, every handler mode, failures and bad input.

Every test runs its nodes on a private beacon port (the ``beacon_port`` fixture) with short
beacon intervals, so discovery, expiry and failover take well under a second. Servers that must
die mid-call run in child processes (``server_process``) and are SIGKILLed; everything else runs
in this process, and every node, client and child is closed or reaped when its test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq
from conftest import wait_until
from zmqkit.patterns import rpc
from zmqkit.patterns.rpc.core import STREAM_WINDOW

from zmqkit import (
    BrokenError,
    ClosedError,
    ConfigError,
    MethodNotFound,
    Node,
    PeerNotFound,
    RemoteError,
    Socket,
    Timeout,
    WrongThread,
    ZmqkitError,
    codec,
)
from zmqkit.codec import DEFAULT_MAX_MESSAGE_SIZE, Kind

FAST = {"interval": 0.2, "expiry": 0.6}
MakeNode = Callable[..., Node]
ROOT = Path(__file__).resolve().parent.parent
SLACK = 0.4  # how far past its deadline a failing call may return on a loaded test host


class Oops(Exception):
    """A handler's own exception type, to see its name come back."""


class Calc:
    """The service most tests call: one method per handler mode, plus probes for the server side."""

    def __init__(self) -> None:
        self.release = threading.Event()  # lets a waiting handler finish when a test ends
        self.entered = threading.Event()  # set when ``hold`` has started
        self.produced: Counter[str] = Counter()  # items each ``ticks`` stream has produced
        self.stopped: set[str] = set()  # ``ticks`` streams whose generator was closed

    def add(self, a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    def sub(self, a: float, b: float = 0) -> float:
        """Subtract b from a."""
        return a - b

    def echo(self, x: Any) -> Any:
        return x

    def div(self, a: float, b: float) -> float:
        return a / b

    def fail(self, message: str) -> None:
        raise Oops(message)

    @rpc.blocking
    def sleep(self, seconds: float) -> float:
        """Sleep, then return the seconds slept."""
        time.sleep(seconds)
        return seconds

    @rpc.blocking
    def hold(self, seconds: float) -> str:
        """Wait up to ``seconds`` for the test to release it."""
        self.entered.set()
        self.release.wait(seconds)
        return "held"

    def count(self, n: int) -> Iterator[int]:
        """Yield 0 to n-1."""
        yield from range(n)

    def count_then_fail(self, n: int) -> Iterator[int]:
        yield from range(n)
        raise Oops(f"failed after {n}")

    def ticks(self, key: str, pause: float) -> Iterator[int]:
        """An endless stream that records how far it got and whether it was stopped."""
        try:
            for index in range(100_000):
                self.produced[key] += 1
                yield index
                time.sleep(pause)
        finally:
            self.stopped.add(key)

    def counted(self, key: str, n: int) -> Iterator[int]:
        """Yield 0 to n-1 as fast as it can, recording how far it got."""
        produced = self.produced
        try:
            for index in range(n):
                produced[key] = index + 1
                yield index
        finally:
            self.stopped.add(key)

    def one_then_wait(self, seconds: float) -> Iterator[int]:
        yield 0
        self.release.wait(seconds)
        yield 1

    async def aadd(self, a: float, b: float) -> float:
        """Add two numbers, asynchronously."""
        await asyncio.sleep(0.01)
        return a + b

    async def asleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def jitter(self, value: Any) -> Any:
        """Return ``value`` after a random pause, so that replies come back out of order."""
        await asyncio.sleep(random.random() * 0.05)
        return value

    async def acount(self, n: int) -> Any:
        """Yield 0 to n-1 from the event loop."""
        for index in range(n):
            await asyncio.sleep(0)
            yield index

    async def acounted(self, key: str, n: int) -> Any:
        """Yield 0 to n-1 from the event loop, recording how far it got."""
        try:
            for index in range(n):
                self.produced[key] = index + 1
                yield index
        finally:
            self.stopped.add(key)

    async def aticks(self, key: str, pause: float) -> Any:
        try:
            for index in range(100_000):
                self.produced[key] += 1
                yield index
                await asyncio.sleep(pause)
        finally:
            self.stopped.add(key)


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[MakeNode]:
    """Start nodes on the test's private beacon port; every one is closed after the test."""
    nodes: list[Node] = []

    def make(name: str, **options: Any) -> Node:
        node = Node(name, port=beacon_port, **{**FAST, **options})
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.close()


@pytest.fixture
def calc() -> Iterator[Calc]:
    service = Calc()
    yield service
    service.release.set()  # no handler may still wait when the server closes


@pytest.fixture
def server(make_node: MakeNode, calc: Calc) -> rpc.Server:
    return rpc.serve(make_node("calc"), calc)


@pytest.fixture
def me(make_node: MakeNode, server: rpc.Server) -> Node:
    """The calling node, once it sees the server's RPC endpoint."""
    node = make_node("caller")
    wait_serving(node, "calc")
    return node


def wait_serving(node: Node, name: str, count: int = 1, timeout: float = 5.0) -> None:
    """Wait until ``node`` sees ``count`` nodes called ``name`` that advertise RPC."""
    wait_until(lambda: len([p for p in node.peers(name) if "rpc" in p.endpoints]) == count,
               timeout, f"{count} {name!r} node(s) serving RPC")



@contextlib.contextmanager
def took(at_most: float) -> Iterator[None]:
    """Fail if the block takes longer than ``at_most`` seconds (whether or not it raises)."""
    start = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        assert elapsed <= at_most, f"took {elapsed:.2f} s, more than {at_most} s"


SERVER_SCRIPT = r"""
import sys, time
import zmqkit
from zmqkit.patterns import rpc

port, name = int(sys.argv[1]), sys.argv[2]

class Service:
    def __init__(self, me):
        self.me = me

    def whoami(self):
        return self.me

    @rpc.blocking
    def slow(self, seconds):
        time.sleep(seconds)
        return [self.me, seconds]

with zmqkit.Node(name, port=port, interval=0.2, expiry=0.6) as node:
    rpc.serve(node, Service(str(node.uuid)))
    print("ready", node.uuid, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or dies)
"""


class ServerProcess:
    """An RPC server node in a child process, to be SIGKILLed mid-call."""

    def __init__(self, port: int, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, str(port), name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        )
        self.uuid = ""

    def wait_ready(self, timeout: float = 10.0) -> ServerProcess:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("ready "), f"child not ready: {line!r}, exit {self.proc.poll()}"
        self.uuid = line.split()[1]
        return self

    def kill(self) -> None:
        """SIGKILL (if still running) and reap. Safe to call twice, from any thread."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def close(self) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def server_processes(port: int, name: str, count: int) -> Iterator[list[ServerProcess]]:
    children: list[ServerProcess] = []
    try:
        children = [ServerProcess(port, name) for _ in range(count)]
        yield [child.wait_ready() for child in children]
    finally:
        for child in children:
            child.close()


@contextlib.contextmanager
def after(seconds: float, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` in a timer thread after ``seconds``; the timer is joined on exit."""
    timer = threading.Timer(seconds, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


# -- calls -----------------------------------------------------------------------------------------


def test_sync_calls_args_kwargs_and_attribute_sugar(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        assert client.call("add", 1, 2) == 3
        assert client.add(2.5, 4) == 6.5
        assert client.call("sub", a=10, b=4) == 6
        assert client.sub(10, b=3) == 7
        assert client.sub(10) == 10  # a default on the server side
        assert client.call_with("sub", [9], {"b": 1}) == 8
        value = {"text": "é", "bytes": b"\x00\xff", "list": [1, None, True], "float": 1.5}
        assert client.echo(value) == value
        assert client.echo(x=[]) == []


def test_sync_client_runs_every_handler_mode(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        assert client.sleep(0.01) == 0.01  # @blocking, in the pool
        assert client.aadd(2, 3) == 5  # async def, on the server's loop
        assert client.count(4) == [0, 1, 2, 3]  # generator called plainly: a list
        assert client.acount(3) == [0, 1, 2]  # async generator called plainly
        assert client.count(0) == []


def test_async_calls_args_kwargs_and_attribute_sugar(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            assert await client.call("add", 1, 2) == 3
            assert await client.add(2, 5) == 7
            assert await client.call("sub", a=10, b=4) == 6
            assert await client.sub(10, b=3) == 7
            assert await client.call_with("sub", [9], {"b": 1}) == 8
            assert await client.aadd(3, 4) == 7
            assert await client.sleep(0.01) == 0.01
            assert await client.count(3) == [0, 1, 2]
            assert await client.acount(2) == [0, 1]
            assert await client.echo({"k": b"v"}) == {"k": b"v"}

    asyncio.run(main())


def test_async_def_handlers_run_concurrently(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=3) as client:
            start = time.monotonic()
            results = await asyncio.gather(*(client.asleep(0.3) for _ in range(20)))
            assert results == [0.3] * 20
            assert time.monotonic() - start < 1.5  # twenty 0.3 s sleeps side by side, not 6 s

    asyncio.run(main())


# -- remote errors ---------------------------------------------------------------------------------


def test_remote_exception_comes_back_with_type_message_and_traceback(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        with pytest.raises(RemoteError) as caught:
            client.div(1, 0)
        error = caught.value
        assert error.type_name == "ZeroDivisionError"
        assert error.message == "division by zero"
        assert "Traceback" in error.traceback and "ZeroDivisionError" in error.traceback
        assert "in div" in error.traceback
        with pytest.raises(RemoteError) as caught:
            client.fail("custom trouble")
        assert caught.value.type_name == "Oops"
        assert caught.value.message == "custom trouble"
        assert "raise Oops(message)" in caught.value.traceback
        assert client.add(1, 1) == 2  # the server keeps serving


def test_async_remote_exception(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            with pytest.raises(RemoteError) as caught:
                await client.div(1, 0)
            assert caught.value.type_name == "ZeroDivisionError"
            assert "Traceback" in caught.value.traceback
            with pytest.raises(RemoteError, match="custom"):
                await client.fail("custom")
            with pytest.raises(RemoteError) as caught:
                await client.nope()
            assert caught.value.type_name == "zmqkit.MethodNotFound"
            with pytest.raises(RemoteError) as caught:
                await client.add(1)
            assert caught.value.type_name == "zmqkit.BadArguments"
            assert await client.add(1, 1) == 2

    asyncio.run(main())


def test_unknown_method_is_a_clear_remote_error(me: Node, server: rpc.Server) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        with took(1.0), pytest.raises(RemoteError) as caught:
            client.nope(1)
        assert caught.value.type_name == "zmqkit.MethodNotFound"
        assert "'nope'" in caught.value.message and "add" in caught.value.message
        assert client.add(1, 2) == 3
    assert server.stats()["errors"] >= 1


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("add", [1], {}),  # too few
        ("add", [1, 2, 3], {}),  # too many
        ("add", [1, 2], {"c": 3}),  # unknown keyword
        ("count", [], {}),  # a generator, in the pool
        ("aadd", [1], {}),  # async def, on the loop
        ("sleep", [], {"secs": 1}),  # @blocking
    ],
)
def test_wrong_arguments_are_a_clear_remote_error(
    me: Node, method: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        with took(1.0), pytest.raises(RemoteError) as caught:
            client.call_with(method, args, kwargs)
        assert caught.value.type_name == "zmqkit.BadArguments"
        assert f"{method}(" in caught.value.message  # names the signature it expected
        assert client.add(1, 2) == 3


def test_type_error_inside_a_handler_is_not_bad_arguments(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client, pytest.raises(RemoteError) as caught:
        client.add(1, "x")
    assert caught.value.type_name == "TypeError"


def test_unencodable_result_is_a_remote_error(make_node: MakeNode) -> None:
    node = make_node("odd")
    rpc.serve(node, {"thing": lambda: object(), "ok": lambda: "ok"})
    me = make_node("caller")
    with rpc.Client(me, "odd", timeout=2) as client:
        with pytest.raises(RemoteError) as caught:
            client.thing()
        assert caught.value.type_name == "zmqkit.EncodeError"
        assert client.ok() == "ok"


# -- finding nodes, deadlines ----------------------------------------------------------------------


def test_unknown_peer_raises_peer_not_found_within_its_deadline(make_node: MakeNode) -> None:
    me = make_node("caller")
    with rpc.Client(me, "nobody") as client:
        start = time.monotonic()
        with pytest.raises(PeerNotFound, match="nobody"):
            client.call("add", 1, 2, timeout=0.5)
        assert 0.45 <= time.monotonic() - start <= 0.5 + SLACK


def test_async_unknown_peer_raises_peer_not_found_within_its_deadline(
    make_node: MakeNode,
) -> None:
    me = make_node("caller")

    async def main() -> None:
        async with rpc.AsyncClient(me, "nobody", timeout=0.5) as client:
            start = time.monotonic()
            with pytest.raises(PeerNotFound, match="nobody"):
                await client.add(1, 2)
            assert 0.45 <= time.monotonic() - start <= 0.5 + SLACK
            with pytest.raises(PeerNotFound):
                client.submit("add", 1, 2)  # submit needs a known node: it fails at once

    asyncio.run(main())


def test_a_node_of_that_name_that_serves_no_rpc_is_not_found(make_node: MakeNode) -> None:
    make_node("calc")  # discovered, but serving nothing
    me = make_node("caller")
    me.wait_for("calc", 2)
    with rpc.Client(me, "calc") as client:
        start = time.monotonic()
        with pytest.raises(PeerNotFound, match="calc"):
            client.call("add", 1, 2, timeout=0.4)
        assert time.monotonic() - start <= 0.4 + SLACK


def test_call_finds_a_server_that_starts_late(make_node: MakeNode, calc: Calc) -> None:
    me = make_node("caller")

    def start_server() -> None:
        rpc.serve(make_node("calc"), calc)

    with rpc.Client(me, "calc") as client, after(0.3, start_server):
        assert client.call("add", 1, 2, timeout=3) == 3


def test_timeout_then_the_next_call_works_and_the_late_reply_is_dropped(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        with took(0.2 + SLACK), pytest.raises(Timeout):
            client.call("sleep", 0.5, timeout=0.2)
        time.sleep(0.5)  # the late reply (0.5) is now waiting in the client's socket
        assert client.echo("fresh") == "fresh"
        assert client.add(2, 3) == 5
        with took(0.2 + SLACK), pytest.raises(Timeout):
            client.call("sleep", 0.4, timeout=0.2)
        assert client.sleep(0.01) == 0.01  # a reply of the same method, not the stale 0.4


def test_async_timeout_then_the_next_call_works_and_the_late_reply_is_dropped(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            with took(0.2 + SLACK), pytest.raises(Timeout):
                await client.call("asleep", 0.5, timeout=0.2)
            await asyncio.sleep(0.5)
            assert await client.echo("fresh") == "fresh"
            with pytest.raises(Timeout):
                await client.submit("sleep", 0.4, timeout=0.2)
            assert await client.sleep(0.01) == 0.01

    asyncio.run(main())


def test_a_stale_view_of_the_peers_does_not_hang_a_call(me: Node) -> None:
    """``peers_version`` can run ahead of the peer list it describes (the beacon thread bumps it
    before it publishes the list). A client that noted the new version with the old, empty list
    must look again when discovery says a node is there, not spin past its deadline."""
    with rpc.Client(me, "calc", timeout=1) as client:
        # what a sync that raced the beacon leaves
        client._core.sync([], time.monotonic(), me.peers_version)
        with took(1 + SLACK):
            assert client.add(1, 2) == 3

    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=1) as client:
            client._core.sync([], time.monotonic(), me.peers_version)
            with took(1 + SLACK):
                assert await client.add(1, 2) == 3

    asyncio.run(main())


def test_a_timeout_is_a_builtin_timeout_error_too(me: Node) -> None:
    with rpc.Client(me, "calc") as client, pytest.raises(TimeoutError):
        client.call("sleep", 0.3, timeout=0.1)


def test_attribute_sugar_does_not_reach_private_names(me: Node) -> None:
    client = rpc.Client(me, "calc")
    with pytest.raises(AttributeError):
        client._secret()
    client.close()


# -- dead peers and failover -----------------------------------------------------------------------


def test_dead_peer_mid_call_fails_within_the_deadline(
    make_node: MakeNode, beacon_port: int,
) -> None:
    me = make_node("caller")
    with server_processes(beacon_port, "doomed", 1) as (child,), rpc.Client(me, "doomed") as client:
        assert client.call("whoami", timeout=5) == child.uuid
        with after(0.3, child.kill), took(1.5 + SLACK), pytest.raises((Timeout, BrokenError)):
            client.call("slow", 5, timeout=1.5)
        assert child.proc.returncode == -9


def test_async_dead_peer_mid_call_fails_within_the_deadline(
    make_node: MakeNode, beacon_port: int,
) -> None:
    me = make_node("caller")

    async def main(child: ServerProcess) -> None:
        async with rpc.AsyncClient(me, "doomed") as client:
            assert await client.call("whoami", timeout=5) == child.uuid
            asyncio.get_running_loop().call_later(0.3, child.kill)
            with took(1.5 + SLACK), pytest.raises((Timeout, BrokenError)):
                await client.call("slow", 5, timeout=1.5)
            assert child.proc.returncode == -9

    with server_processes(beacon_port, "doomed", 1) as (child,):
        asyncio.run(main(child))


def test_dead_peer_is_not_retried_without_idempotent(make_node: MakeNode, beacon_port: int) -> None:
    """Two nodes, the one with the call dies: not idempotent, so BrokenError, not a second run."""
    me = make_node("caller")
    with server_processes(beacon_port, "calc", 2) as children, rpc.Client(me, "calc") as client:
        wait_serving(me, "calc", 2)
        first, second = client.whoami(), client.whoami()
        assert {first, second} == {child.uuid for child in children}
        victim = next(child for child in children if child.uuid == first)
        with after(0.2, victim.kill), took(3 + SLACK), pytest.raises((BrokenError, Timeout)):
            client.call("slow", 0.6, timeout=3)  # round robin: goes to ``first``


def test_failover_to_the_survivor(make_node: MakeNode, beacon_port: int) -> None:
    me = make_node("caller")
    with server_processes(beacon_port, "calc", 2) as children, rpc.Client(me, "calc") as client:
        wait_serving(me, "calc", 2)
        first, second = client.whoami(), client.whoami()
        assert {first, second} == {child.uuid for child in children}
        victim = next(child for child in children if child.uuid == first)
        # the next call goes to the victim (round robin), which dies with it in flight: an
        # idempotent call is sent again to the survivor and succeeds within its deadline
        with after(0.2, victim.kill), took(3 + SLACK):
            assert client.call("slow", 0.6, idempotent=True, timeout=3) == [second, 0.6]
        for _ in range(5):
            with took(2 + SLACK):
                assert client.call("whoami", idempotent=True, timeout=2) == second
        wait_until(lambda: len(me.peers("calc")) == 1, 3, "the dead node expires")
        assert [client.whoami() for _ in range(6)] == [second] * 6


def test_async_failover_to_the_survivor(make_node: MakeNode, beacon_port: int) -> None:
    me = make_node("caller")

    async def main(children: list[ServerProcess]) -> None:
        async with rpc.AsyncClient(me, "calc", timeout=3) as client:
            first, second = await client.whoami(), await client.whoami()
            assert {first, second} == {child.uuid for child in children}
            victim = next(child for child in children if child.uuid == first)
            asyncio.get_running_loop().call_later(0.2, victim.kill)
            with took(3 + SLACK):
                assert await client.call("slow", 0.6, idempotent=True) == [second, 0.6]
            calls = (client.call("whoami", idempotent=True) for _ in range(5))
            assert await asyncio.gather(*calls) == [second] * 5
            wait_until(lambda: len(me.peers("calc")) == 1, 3, "the dead node expires")
            assert await asyncio.gather(*(client.whoami() for _ in range(6))) == [second] * 6

    with server_processes(beacon_port, "calc", 2) as children:
        wait_serving(me, "calc", 2)
        asyncio.run(main(children))


class WhoAmI:
    def __init__(self, node: Node) -> None:
        self.me = str(node.uuid)

    def whoami(self) -> str:
        return self.me


def test_load_spreads_over_same_name_nodes(make_node: MakeNode) -> None:
    servers = [make_node("calc") for _ in range(3)]
    for node in servers:
        rpc.serve(node, WhoAmI(node))
    me = make_node("caller")
    wait_serving(me, "calc", 3)
    expected = {str(node.uuid) for node in servers}
    with rpc.Client(me, "calc", timeout=2) as client:
        hits = Counter(client.whoami() for _ in range(30))
    assert set(hits) == expected
    assert all(7 <= count <= 13 for count in hits.values()), hits

    async def main() -> Counter[str]:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            return Counter(await asyncio.gather(*(client.whoami() for _ in range(30))))

    hits = asyncio.run(main())
    assert set(hits) == expected
    assert all(7 <= count <= 13 for count in hits.values()), hits


def test_a_server_that_closes_is_left_out(make_node: MakeNode) -> None:
    nodes = [make_node("calc") for _ in range(2)]
    servers = [rpc.serve(node, WhoAmI(node)) for node in nodes]
    me = make_node("caller")
    wait_serving(me, "calc", 2)
    with rpc.Client(me, "calc", timeout=2) as client:
        assert len({client.whoami() for _ in range(4)}) == 2
        servers[0].close()  # withdraws its endpoint: peers hear it at once
        wait_serving(me, "calc", 1)
        assert {client.whoami() for _ in range(4)} == {str(nodes[1].uuid)}


# -- streaming -------------------------------------------------------------------------------------


def test_sync_stream(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        assert list(client.stream("count", 5)) == [0, 1, 2, 3, 4]
        assert list(client.stream("acount", 4)) == [0, 1, 2, 3]
        assert list(client.stream("count", n=0)) == []
        assert client.add(1, 1) == 2


def test_sync_stream_error_after_items(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        received = []
        with pytest.raises(RemoteError) as caught:
            for item in client.stream("count_then_fail", 2):
                received.append(item)
        assert received == [0, 1]
        assert caught.value.type_name == "Oops" and caught.value.message == "failed after 2"
        assert client.add(1, 1) == 2


@pytest.mark.parametrize("method", ["ticks", "aticks"])
def test_sync_stream_early_stop_stops_the_server(me: Node, calc: Calc, method: str) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        received = []
        for item in client.stream(method, "sync-" + method, 0.02):
            received.append(item)
            if len(received) == 3:
                break
        assert received == [0, 1, 2]
        wait_until(lambda: "sync-" + method in calc.stopped, 2, "the generator was closed")
        produced = calc.produced["sync-" + method]
        time.sleep(0.2)
        assert calc.produced["sync-" + method] == produced < 30  # stopped, not 100 000 items
        assert client.add(1, 2) == 3  # stray items of the stopped stream are not a reply


@pytest.mark.parametrize("method", ["ticks", "aticks"])
def test_async_stream_early_stop_stops_the_server(me: Node, calc: Calc, method: str) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            received = []
            async for item in client.stream(method, "async-" + method, 0.02):
                received.append(item)
                if len(received) == 3:
                    break
            assert received == [0, 1, 2]
            await asyncio.sleep(0)  # the abandoned generator's cleanup runs on the loop
            deadline = time.monotonic() + 2
            while "async-" + method not in calc.stopped:
                assert time.monotonic() < deadline, "the server did not stop the stream"
                await asyncio.sleep(0.01)
            produced = calc.produced["async-" + method]
            await asyncio.sleep(0.2)
            assert calc.produced["async-" + method] == produced < 30
            assert await client.add(1, 2) == 3

    asyncio.run(main())


def test_async_stream(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            assert [x async for x in client.stream("acount", 5)] == [0, 1, 2, 3, 4]
            assert [x async for x in client.stream("count", 3)] == [0, 1, 2]
            received = []
            with pytest.raises(RemoteError, match="failed after 2"):
                async for item in client.stream("count_then_fail", 2):
                    received.append(item)
            assert received == [0, 1]

    asyncio.run(main())


def test_async_stream_as_the_first_use_of_a_client(me: Node) -> None:
    async def main() -> None:
        client = rpc.AsyncClient(me, "calc", timeout=2)
        try:
            assert [x async for x in client.stream("count", 3)] == [0, 1, 2]
            assert await client.add(1, 2) == 3
        finally:
            await client.aclose()

    asyncio.run(main())


def rss() -> int:
    """This process's resident memory in bytes (the server and the caller both live here)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


PAUSING_ITEMS = 500_000
MEMORY_BOUND = 64 * 2**20  # generous: 500 000 items queued anywhere would take far more


def test_a_reader_that_pauses_gets_every_item_in_order_with_bounded_memory(
    me: Node, calc: Calc
) -> None:
    # issue 16: the reader pauses after the first item; the server must wait within its window
    # (nothing queued, nothing dropped) and resume when the reader does. The per-item timeout
    # is shorter than the pause: it runs only while the reader waits, and no wait may stall.
    with rpc.Client(me, "calc", timeout=2) as client:
        items = client.stream("counted", "pausing", PAUSING_ITEMS)
        assert next(items) == 0
        before = rss()
        wait_until(lambda: calc.produced["pausing"] >= STREAM_WINDOW, 5, "the first window")
        time.sleep(3)
        assert calc.produced["pausing"] <= STREAM_WINDOW + 1, "the server ran ahead of its credit"
        peak = rss()
        expected = 1
        for item in items:
            assert item == expected
            expected += 1
            if expected % 50_000 == 0:
                peak = max(peak, rss())
        assert expected == PAUSING_ITEMS
        assert peak - before < MEMORY_BOUND, f"memory grew by {(peak - before) >> 20} MiB"
        assert "pausing" in calc.stopped and client.add(1, 2) == 3


@pytest.mark.parametrize("method", ["counted", "acounted"])
def test_an_async_reader_that_pauses_gets_every_item_and_the_server_waits(
    me: Node, calc: Calc, method: str
) -> None:
    async def main() -> None:  # items its reader task took in during the pause come at once
        async with rpc.AsyncClient(me, "calc", timeout=0.5) as client:
            items = client.stream(method, "apausing", 20_000)
            assert await items.__anext__() == 0
            deadline = time.monotonic() + 5
            while calc.produced["apausing"] < STREAM_WINDOW:
                assert time.monotonic() < deadline, "the first window was not produced"
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)  # the reader pauses (longer than its timeout)
            assert calc.produced["apausing"] <= STREAM_WINDOW + 1
            assert [item async for item in items] == list(range(1, 20_000))

    asyncio.run(main())


@pytest.mark.parametrize("method", ["counted", "acounted"])
def test_a_cancel_stops_a_fast_server_within_one_window(
    me: Node, calc: Calc, method: str
) -> None:
    with rpc.Client(me, "calc", timeout=5) as client:
        for taken, item in enumerate(client.stream(method, "fast-" + method, 10**7), 1):
            assert item == taken - 1
            if taken == 1000:
                break
        wait_until(lambda: "fast-" + method in calc.stopped, 3, "the generator was closed")
        assert calc.produced["fast-" + method] <= 1000 + STREAM_WINDOW
        assert client.add(1, 2) == 3


def test_a_plain_call_of_a_generator_gets_every_item_in_one_reply(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=10) as client:
        assert client.count(100_000) == list(range(100_000))
        assert client.call("acount", 3) == [0, 1, 2]

    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=10) as aclient:
            assert await aclient.count(50_000) == list(range(50_000))

    asyncio.run(main())


def test_a_plain_call_of_a_generator_over_one_frame_is_refused(make_node: MakeNode) -> None:
    def big() -> Iterator[bytes]:
        while True:  # endless: the server stops at one frame's worth, not at memory's end
            yield b"x" * 2**20

    rpc.serve(make_node("big"), {"big": big})
    me = make_node("caller")
    wait_serving(me, "big")
    with rpc.Client(me, "big", timeout=10) as client:
        with pytest.raises(RemoteError) as caught:
            client.big()
        assert caught.value.type_name == "zmqkit.EncodeError" and "stream" in caught.value.message
        assert list(itertools.islice(client.stream("big"), 3)) == [b"x" * 2**20] * 3


def test_streaming_a_method_that_does_not_stream_is_refused_before_it_runs(me: Node) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        with pytest.raises(RemoteError) as caught:
            list(client.stream("add", 1, 2))
        assert caught.value.type_name == "zmqkit.NotAStream"
        with pytest.raises(MethodNotFound):
            list(client.stream("nope"))

    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as aclient:
            with pytest.raises(RemoteError, match="does not stream"):
                [x async for x in aclient.stream("sleep", 0)]

    asyncio.run(main())


def test_a_stream_whose_reader_gives_no_credit_ends_after_the_idle_limit(
    me: Node, server: rpc.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zmqkit.patterns.rpc import streams

    monkeypatch.setattr(streams, "IDLE_LIMIT", 0.3)
    dealer = Socket(zmq.DEALER)
    try:
        dealer.connect(server.endpoint)
        dealer.send(codec.encode_request(5, "zmqkit.stream", ["counted", ["idle", 10], {}, 2], {}))
        assert [codec.decode(dealer.recv(2)) for _ in range(2)] == [
            [1, Kind.FLOW_ITEM, 5, 0, 0], [1, Kind.FLOW_ITEM, 5, 1, 1]]
        ended = codec.decode(dealer.recv(5))  # no CREDIT: the server gives up on the reader
        assert ended[1:4] == [Kind.ERROR, 5, "zmqkit.Timeout"]
        wait_until(lambda: not server._flows, 2, "the flow forgotten")
    finally:
        dealer.close()


OLDER_SERVER_ITEMS = [[0, "a"], [1, "b"], [2, "c"]]


def test_a_stream_from_a_server_older_than_flow_control(make_node: MakeNode) -> None:
    # section 6.7's version rule: an older server knows no zmqkit.stream (MethodNotFound with
    # the call id), so the caller sends the plain request and takes STREAM_ITEMs and STREAM_END
    me = make_node("caller")
    stop = threading.Event()
    bound: list[str] = []

    def older_server() -> None:  # its socket made, used and closed in its own thread
        router = Socket(zmq.ROUTER)
        try:
            bound.append(router.bind("127.0.0.1"))
            while not stop.is_set():
                try:
                    identity, frame = router.recv_multipart(0.05)
                except Timeout:
                    continue
                _, _, call_id, method, args, _ = codec.decode(frame)
                if method != "count":
                    router.send_multipart([identity, codec.encode_error(
                        call_id, "zmqkit.MethodNotFound", f"no method {method!r}")])
                    continue
                for item in OLDER_SERVER_ITEMS[:args[0]]:
                    router.send_multipart([identity, codec.encode_stream_item(call_id, item)])
                router.send_multipart([identity, codec.encode_stream_end(call_id)])
        finally:
            router.close()

    thread = threading.Thread(target=older_server)
    thread.start()
    try:
        wait_until(lambda: bound, 2, "the older server bound")
        with Node("older", port=me.port, **FAST) as older:
            older.advertise("rpc", bound[0])
            wait_serving(me, "older")
            with rpc.Client(me, "older", timeout=2) as client:
                assert list(client.stream("count", 3)) == OLDER_SERVER_ITEMS
                with pytest.raises(MethodNotFound):
                    list(client.stream("nope"))

            async def main() -> list[Any]:
                async with rpc.AsyncClient(me, "older", timeout=2) as aclient:
                    return [item async for item in aclient.stream("count", 2)]

            assert asyncio.run(main()) == OLDER_SERVER_ITEMS[:2]
    finally:
        stop.set()
        thread.join()


def test_sync_stream_per_item_timeout(me: Node, calc: Calc) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        items = client.stream("one_then_wait", 5, timeout=0.3)
        assert next(items) == 0
        with took(0.3 + SLACK), pytest.raises(Timeout):
            next(items)
        calc.release.set()
        assert client.add(1, 2) == 3


def test_async_stream_per_item_timeout(me: Node, calc: Calc) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            items = client.stream("one_then_wait", 5, timeout=0.3)
            assert await items.__anext__() == 0
            with took(0.3 + SLACK), pytest.raises(Timeout):
                await items.__anext__()
            await items.aclose()
            calc.release.set()
            assert await client.add(1, 2) == 3

    asyncio.run(main())


# -- concurrency -----------------------------------------------------------------------------------


def test_blocking_handler_does_not_block_other_calls(calc: Calc, me: Node) -> None:
    results: list[Any] = []

    def slow_caller() -> None:
        with rpc.Client(me, "calc", timeout=3) as client:
            start = time.monotonic()
            results.append(client.hold(1.0))
            results.append(time.monotonic() - start)

    thread = threading.Thread(target=slow_caller)
    thread.start()
    try:
        assert calc.entered.wait(2), "the blocking call never started"
        with rpc.Client(me, "calc", timeout=2) as client, took(0.3):
            assert client.add(1, 2) == 3
            assert client.aadd(1, 2) == 3
    finally:
        thread.join(5)
    assert results[0] == "held" and results[1] >= 0.9  # it really was in flight all along


def test_async_pipelining_with_gather(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=5) as client:
            results = await asyncio.gather(*(client.add(i, 1) for i in range(500)))
            assert results == [i + 1 for i in range(500)]
            # replies out of order (random pauses on the server) still reach the right call
            values = [{"i": i, "tag": f"v{i}"} for i in range(300)]
            assert await asyncio.gather(*(client.jitter(v) for v in values)) == values

    asyncio.run(main())


def test_async_pipelining_with_submit(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=5) as client:
            assert await client.add(0, 0) == 0  # submit needs a known, connected node
            futures = [client.submit("add", i, i) for i in range(500)]
            assert await asyncio.gather(*futures) == [2 * i for i in range(500)]
            futures = [client.submit("jitter", [i]) for i in range(300)]
            assert await asyncio.gather(*futures) == [[i] for i in range(300)]
            futures = [client.submit("echo", x=i) for i in range(200)]
            assert await asyncio.gather(*futures) == list(range(200))

    asyncio.run(main())


# -- bad input -------------------------------------------------------------------------------------


def test_garbage_requests_do_not_stop_the_server(me: Node, server: rpc.Server) -> None:
    rng = random.Random(1234)
    bad_frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) for _ in range(40)]
    bad_frames += [
        b"",
        cbor2.dumps({"not": "a list"}),
        cbor2.dumps([1, 1]),  # too short
        cbor2.dumps([2, 1, 7, "add", [1, 2], {}]),  # unknown version
        cbor2.dumps([1, 99, 7]),  # unknown kind
        cbor2.dumps([1, 1, 7, "add", [1, 2]]),  # a request missing kwargs
        cbor2.dumps([1, 1, -7, "add", [1, 2], {}]),  # negative call id
        cbor2.dumps([1, 1, 7, 42, [1, 2], {}]),  # method not text
        cbor2.dumps([1, 1, 7, "add", "1, 2", {}]),  # args not an array
        cbor2.dumps([1, 1, 7, "add", [], {1: 2}]),  # kwargs with a non-text key
        codec.encode_reply(7, 3),  # a reply sent to a server
        codec.encode_stream_end(7),
    ]
    dealer = Socket(zmq.DEALER)
    try:
        dealer.connect(server.endpoint)
        for frame in bad_frames:
            dealer.send(frame)
        dealer.send_multipart([b"two", b"frames"])
        dealer.send_multipart([b"three", b"frames", b"here"])
        replies = [codec.decode(dealer.recv(2)) for _ in range(len(bad_frames) + 2)]
        assert all(reply[1] == Kind.ERROR for reply in replies)
        assert {reply[3] for reply in replies} == {"zmqkit.ProtocolError"}
        # CANCELs and CREDITs for calls that do not exist get no answer and leave nothing behind
        for call_id in range(100):
            dealer.send(codec.encode_cancel(call_id))
            dealer.send(codec.encode_credit(call_id, 10**6))
        # a good request on the same connection still gets its answer
        dealer.send(codec.encode_request(8, "add", [20, 22], {}))
        assert codec.decode(dealer.recv(2)) == [1, Kind.REPLY, 8, 42]
        # an oversized frame: ZeroMQ drops the connection; the DEALER reconnects by itself.
        # (copied: a zero-copy send would start pyzmq's garbage collector thread for good)
        dealer.raw.send(b"\0" * (DEFAULT_MAX_MESSAGE_SIZE + 1), copy=True)
        time.sleep(0.3)
        dealer.send(codec.encode_request(9, "add", [1, 1], {}))
        assert codec.decode(dealer.recv(2)) == [1, Kind.REPLY, 9, 2]
    finally:
        dealer.close()
    assert server.stats()["bad-requests"] >= len(bad_frames) + 2
    assert not server._flows  # no stray CANCEL or CREDIT was remembered
    with rpc.Client(me, "calc", timeout=2) as client:
        assert client.add(1, 2) == 3
        assert client.sleep(0.01) == 0.01


# -- describing a service --------------------------------------------------------------------------


def test_methods_lists_names_signatures_and_docs(me: Node, calc: Calc) -> None:
    with rpc.Client(me, "calc", timeout=2) as client:
        methods = {entry["name"]: entry for entry in client.methods()}
    assert set(methods) == {name for name in dir(calc) if not name.startswith("_")
                            and callable(getattr(calc, name))}
    assert unquoted(methods["add"]["signature"]) == "add(a: float, b: float) -> float"
    assert methods["add"]["doc"] == "Add two numbers."
    assert unquoted(methods["sub"]["signature"]) == "sub(a: float, b: float = 0) -> float"
    assert methods["count"]["signature"].startswith("count(n: ")
    assert methods["hold"]["doc"] == "Wait up to ``seconds`` for the test to release it."
    assert methods["echo"]["doc"] == ""
    assert {methods[name]["mode"] for name in ("add", "sleep", "count", "aadd", "acount")} == {
        "inline", "blocking", "stream", "async", "async-stream",
    }
    assert methods["sleep"]["mode"] == "blocking" and methods["acount"]["mode"] == "async-stream"

    async def main() -> list[dict[str, str]]:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            return await client.methods()

    assert {entry["name"]: entry for entry in asyncio.run(main())} == methods


def unquoted(signature: str) -> str:
    """A signature without the quotes that string annotations may (or may not) show."""
    return signature.replace("'", "")


def test_serve_a_mapping_and_a_list_of_functions(make_node: MakeNode) -> None:
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    rpc.serve(make_node("maps"), {"twice": double, "neg": lambda x: -x})
    rpc.serve(make_node("funcs"), [double])
    me = make_node("caller")
    with rpc.Client(me, "maps", timeout=2) as maps, rpc.Client(me, "funcs", timeout=2) as funcs:
        assert maps.twice(4) == 8 and maps.neg(3) == -3
        assert funcs.double(5) == 10
        assert [unquoted(m["signature"]) for m in funcs.methods()] == ["double(x: int) -> int"]
        assert [m["doc"] for m in funcs.methods()] == ["Twice x."]
        assert {m["name"] for m in maps.methods()} == {"twice", "neg"}


# -- misuse ----------------------------------------------------------------------------------------


def test_serving_on_a_node_that_is_not_started_raises_closed_error(
    beacon_port: int, calc: Calc,
) -> None:
    node = Node("calc", port=beacon_port, **FAST)
    with pytest.raises(ClosedError):
        rpc.serve(node, calc)
    assert "rpc" not in node.endpoints
    with node:
        pass
    with pytest.raises(ClosedError):
        rpc.serve(node, calc)  # and one that is closed already


def test_serving_twice_on_one_node_raises_config_error(make_node: MakeNode,
                                                       calc: Calc) -> None:
    node = make_node("calc")
    first = rpc.serve(node, calc)
    with pytest.raises(ConfigError, match="already serves"):
        rpc.serve(node, calc)
    assert node.endpoints["rpc"] == first.endpoint


def test_serving_nothing_raises_config_error(make_node: MakeNode) -> None:
    with pytest.raises(ConfigError):
        rpc.serve(make_node("empty"), object())


def test_a_client_made_here_works_from_another_thread(me: Node) -> None:
    outcomes: list[object] = []

    def use(client: rpc.Client) -> None:
        try:
            outcomes.append(client.add(1, 2))
            outcomes.append(list(client.stream("count", 3)))
        except BaseException as exc:  # handed to the test's thread to check
            outcomes.append(exc)

    with rpc.Client(me, "calc", timeout=2) as client:
        assert client.add(1, 1) == 2
        thread = threading.Thread(target=use, args=(client,))
        thread.start()
        thread.join(5)
        assert outcomes == [3, [0, 1, 2]]
        assert client.add(2, 2) == 4  # and still in its own thread

    fresh = rpc.Client(me, "calc", timeout=2)  # made here, first used elsewhere
    try:
        thread = threading.Thread(target=use, args=(fresh,))
        thread.start()
        thread.join(5)
        assert outcomes[2:] == [3, [0, 1, 2]]
        assert fresh.add(3, 3) == 6
    finally:
        fresh.close()


def test_client_after_close_raises_closed_error(me: Node) -> None:
    client = rpc.Client(me, "calc", timeout=1)
    assert client.add(1, 2) == 3
    client.close()
    with took(0.5), pytest.raises(ClosedError):
        client.add(1, 2)
    with pytest.raises(ClosedError):
        list(client.stream("count", 2))
    client.close()  # twice is fine


def test_async_client_after_aclose_raises_closed_error(me: Node) -> None:
    async def main() -> None:
        client = rpc.AsyncClient(me, "calc", timeout=1)
        assert await client.add(1, 2) == 3
        await client.aclose()
        with pytest.raises(ClosedError):
            await client.add(1, 2)
        with pytest.raises(ClosedError):
            client.submit("add", 1, 2)
        with pytest.raises(ClosedError):
            await client.methods()
        with pytest.raises(ClosedError):
            async for _ in client.stream("count", 2):
                pass
        await client.aclose()  # twice is fine

    asyncio.run(main())


def test_aclose_fails_calls_and_streams_in_flight_with_closed_error(me: Node, calc: Calc) -> None:
    async def main() -> None:
        client = rpc.AsyncClient(me, "calc", timeout=3)
        call = asyncio.ensure_future(client.hold(3))
        items = client.stream("one_then_wait", 3)
        assert await items.__anext__() == 0
        assert calc.entered.wait(2)
        await client.aclose()
        with pytest.raises(ClosedError):
            await call
        with pytest.raises(ClosedError):
            await items.__anext__()

    asyncio.run(main())


def test_async_client_belongs_to_one_loop(me: Node) -> None:
    client = rpc.AsyncClient(me, "calc", timeout=2)
    home = asyncio.new_event_loop()
    try:
        assert home.run_until_complete(client.add(1, 2)) == 3
        with pytest.raises(WrongThread, match=r"rpc\.Client"):
            asyncio.run(client.add(1, 2))  # another loop
        assert home.run_until_complete(client.add(2, 2)) == 4
    finally:
        home.run_until_complete(client.aclose())
        home.close()


def test_bad_timeout_is_a_config_error(me: Node) -> None:
    with rpc.Client(me, "calc") as client:
        for bad in (-1, float("nan"), float("inf")):
            with pytest.raises(ConfigError):
                client.call("add", 1, 2, timeout=bad)


def test_closing_the_node_closes_its_server(make_node: MakeNode, calc: Calc) -> None:
    node = make_node("calc")
    server = rpc.serve(node, calc)
    me = make_node("caller")
    wait_serving(me, "calc")
    node.close()
    assert "rpc" not in node.endpoints
    assert not any(t.name.startswith("zmqkit-rpc") and t.is_alive() for t in threading.enumerate())
    with rpc.Client(me, "calc") as client, pytest.raises((PeerNotFound, Timeout, BrokenError)):
        client.call("add", 1, 2, timeout=0.5)
    server.close()  # closing again is harmless


def test_closing_a_server_with_an_endless_stream_in_flight(make_node: MakeNode,
                                                           calc: Calc) -> None:
    node = make_node("calc")
    server = rpc.serve(node, calc)
    me = make_node("caller")
    with rpc.Client(me, "calc", timeout=2) as client:
        items = client.stream("ticks", "endless", 0.01)
        assert next(items) == 0
        with took(1.0):
            server.close()
        assert "endless" in calc.stopped
        with pytest.raises((BrokenError, Timeout)):
            list(items)


# -- any thread, any handler; async clients on their loop ------------------------------------------


def test_one_client_from_many_threads_at_once(me: Node) -> None:
    """Eight threads share one Client: each gets its own sockets, the routing is shared."""
    errors: list[BaseException] = []
    results: dict[int, list[Any]] = {}
    barrier = threading.Barrier(8)

    with rpc.Client(me, "calc", timeout=5) as client:

        def worker(n: int) -> None:
            try:
                barrier.wait(5)
                results[n] = [client.add(n, i) for i in range(40)]
                results[n].append(list(client.stream("count", 3)))
                results[n].append(client.sleep(0.05))
            except BaseException as exc:  # handed to the test's thread to check
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not errors, errors
        assert results == {n: [*(n + i for i in range(40)), [0, 1, 2], 0.05] for n in range(8)}
        stats = client.stats()
        assert stats["calls"] == stats["answered"] == 8 * 42
        assert client.add(1, 1) == 2


class Relay:
    """A service whose handlers of every kind call another service through one Client that
    ``main`` made."""

    def __init__(self, client: rpc.Client) -> None:
        self.client = client

    def plain(self, a: int, b: int) -> int:
        return int(self.client.add(a, b))

    @rpc.blocking
    def blocking(self, a: int, b: int) -> int:
        return int(self.client.add(a, b))

    async def asynchronous(self, a: int, b: int) -> int:
        return int(self.client.add(a, b))  # blocks this loop for one call: allowed, not advised

    @rpc.blocking
    def streamed(self, n: int) -> list[int]:
        return list(self.client.stream("count", n))


def test_a_client_made_in_main_works_inside_every_kind_of_handler(
    make_node: MakeNode, server: rpc.Server,
) -> None:
    relay_node = make_node("relay")
    wait_serving(relay_node, "calc")
    client = rpc.Client(relay_node, "calc", timeout=3)  # made here, in the test's thread
    rpc.serve(relay_node, Relay(client))
    caller = make_node("caller")
    wait_serving(caller, "relay")
    with rpc.Client(caller, "relay", timeout=5) as relay:
        assert relay.plain(1, 2) == 3  # on the relay's server thread
        assert relay.blocking(2, 3) == 5  # in its worker pool
        assert relay.asynchronous(3, 4) == 7  # on its asyncio loop
        assert relay.streamed(3) == [0, 1, 2]
        assert [relay.plain(i, i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert client.add(4, 5) == 9  # and still here
    client.close()  # closes the sockets the handler threads made, from this thread
    with pytest.raises(ClosedError):
        client.add(1, 1)


def test_close_from_another_thread_ends_the_calls_in_flight(me: Node, calc: Calc) -> None:
    client = rpc.Client(me, "calc", timeout=5)
    outcomes: list[BaseException] = []

    def hold() -> None:
        try:
            client.hold(3)
        except ClosedError as exc:
            outcomes.append(exc)

    thread = threading.Thread(target=hold)
    thread.start()
    assert calc.entered.wait(2)
    with took(1.0):
        client.close()  # from this thread, while the other waits for its answer
    thread.join(2)
    assert len(outcomes) == 1 and "closed" in str(outcomes[0])
    client.close()  # twice is fine


def test_async_client_off_its_loop_raises_wrong_thread_saying_what_to_do(me: Node) -> None:
    async def main() -> None:
        async with rpc.AsyncClient(me, "calc", timeout=2) as client:
            assert await client.add(1, 2) == 3
            loop = asyncio.get_running_loop()

            def elsewhere() -> int:
                with pytest.raises(WrongThread, match=r"rpc\.Client") as caught:
                    client.submit("add", 1, 2)  # no loop runs in this thread
                assert "run_coroutine_threadsafe" in str(caught.value)
                with pytest.raises(WrongThread, match="another loop"):
                    asyncio.run(client.add(1, 2))
                # what the message says to do works
                result: int = asyncio.run_coroutine_threadsafe(client.add(2, 3), loop).result(5)
                return result

            assert await asyncio.to_thread(elsewhere) == 5
            assert await client.add(3, 4) == 7

    asyncio.run(main())


class Collider:
    """Remote methods named like the clients' own."""

    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> str:
        self.closes += 1
        return "remote close"

    def stats(self) -> str:
        return "remote stats"

    def submit(self) -> str:
        return "remote submit"

    def add(self, a: int, b: int) -> int:
        return a + b


def test_own_methods_are_never_shadowed_by_remote_calls(make_node: MakeNode) -> None:
    service = Collider()
    rpc.serve(make_node("odd"), service)
    me = make_node("caller")
    wait_serving(me, "odd")
    client = rpc.Client(me, "odd", timeout=2)
    assert client.add(1, 2) == 3
    assert client.call("close") == "remote close"  # a colliding name, called by name
    assert client.call("stats") == "remote stats"
    assert client.call("submit") == "remote submit"
    assert isinstance(client.stats(), dict)  # its own
    for name in ("aclose", "submit", "primary"):  # other clients' names: never remote by sugar
        with pytest.raises(AttributeError, match=rf"client\.call\('{name}'"):
            getattr(client, name)
    client.close()  # its own close
    assert service.closes == 1

    async def main() -> None:
        aclient = rpc.AsyncClient(me, "odd", timeout=2)
        assert await aclient.add(1, 2) == 3
        assert await aclient.call("close") == "remote close"
        aclient.close()  # its own close, without await: no remote call
        with pytest.raises(ClosedError):
            await aclient.add(1, 2)

    asyncio.run(main())
    assert service.closes == 2
    from zmqkit.patterns.rpc.proxy import RESERVED

    own = {name for cls in (rpc.Client, rpc.AsyncClient) for name in dir(cls)
           if not name.startswith("_")} | {"node", "name", "timeout"}
    assert own <= RESERVED, own - RESERVED


@contextlib.contextmanager
def zero_answering(make_node: MakeNode, batch: int) -> Iterator[Node]:
    """A fake RPC node (called "zero") that answers every request with an ERROR of call id 0,
    as a server answers a request it could not read; it answers once ``batch`` have come."""
    node = make_node("zero")
    ready, stop = threading.Event(), threading.Event()
    endpoint: list[str] = []

    def serve() -> None:
        router = Socket(zmq.ROUTER)
        try:
            endpoint.append(router.bind("127.0.0.1"))
            ready.set()
            waiting: list[bytes] = []
            while not stop.is_set():
                if not router.poll(0.05):
                    continue
                waiting.append(router.recv_multipart(1)[0])
                if len(waiting) >= batch:
                    for identity in waiting:
                        router.send_multipart([identity, codec.encode_error(
                            0, "zmqkit.ProtocolError", "a request it could not read")])
                    waiting.clear()
        finally:
            router.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(5)
        node.advertise("rpc", endpoint[0])
        yield node
    finally:
        stop.set()
        thread.join(5)


def test_an_error_with_call_id_0_is_the_answer_only_when_one_call_waits(
    make_node: MakeNode,
) -> None:
    """docs/protocol.md 6.3: an ERROR with call id 0 answers the one call in flight on that
    connection; with several in flight it cannot say which, so both clients drop it."""
    me = make_node("caller")
    with zero_answering(make_node, batch=1):
        wait_serving(me, "zero")
        with rpc.Client(me, "zero", timeout=2) as client, took(1.0), \
                pytest.raises(RemoteError, match="could not read"):
            client.call("add", 1, 2)

        async def one() -> None:
            async with rpc.AsyncClient(me, "zero", timeout=2) as client:
                with took(1.0), pytest.raises(RemoteError, match="could not read"):
                    await client.call("add", 1, 2)

        asyncio.run(one())

    with zero_answering(make_node, batch=2):
        wait_serving(me, "zero")
        # two threads of one Client: one connection each, one call on each: each takes its own
        with rpc.Client(me, "zero", timeout=2) as client:
            outcomes: list[BaseException] = []

            def call() -> None:
                try:
                    client.call("add", 1, 2)
                except ZmqkitError as exc:
                    outcomes.append(exc)

            threads = [threading.Thread(target=call) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(5)
            assert [type(outcome) for outcome in outcomes] == [RemoteError, RemoteError]

        async def two() -> None:  # two calls in flight on one connection: it cannot say which
            async with rpc.AsyncClient(me, "zero", timeout=0.6) as client:
                outcomes = await asyncio.gather(client.call("add", 1, 2),
                                                client.call("add", 3, 4), return_exceptions=True)
                assert [type(outcome) for outcome in outcomes] == [Timeout, Timeout]
                assert client.stats()["dropped-stale"] == 2

        asyncio.run(two())


class Caller:
    """A service whose async handlers make AsyncClients of their own."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.kept: list[rpc.AsyncClient] = []

    async def closed_here(self, a: int, b: int) -> int:
        async with rpc.AsyncClient(self.node, "calc", timeout=3) as client:
            return int(await client.add(a, b))

    async def left_open(self, a: int, b: int) -> int:
        client = rpc.AsyncClient(self.node, "calc", timeout=3)  # its node closes it
        self.kept.append(client)
        return int(await client.add(a, b))


def test_an_async_client_made_in_a_handler_closes_cleanly(
    make_node: MakeNode, server: rpc.Server, caplog: pytest.LogCaptureFixture,
) -> None:
    node = make_node("caller-service")
    wait_serving(node, "calc")
    service = Caller(node)
    rpc.serve(node, service)
    me = make_node("me")
    wait_serving(me, "caller-service")
    with rpc.Client(me, "caller-service", timeout=5) as client:
        assert client.closed_here(1, 2) == 3
        assert client.left_open(2, 3) == 5
    assert not service.kept[0].closed
    node.close()  # from this thread: the client is closed on the handler's loop
    assert service.kept[0].closed
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()]


def test_node_close_from_another_thread_closes_an_async_client_on_its_loop(
    me: Node, calc: Calc,
) -> None:
    outcomes: list[BaseException] = []
    made = threading.Event()

    async def main() -> None:
        client = rpc.AsyncClient(me, "calc", timeout=5)
        assert await client.add(1, 2) == 3
        made.set()
        try:
            await client.hold(3)
        except ClosedError as exc:
            outcomes.append(exc)

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    assert made.wait(5) and calc.entered.wait(5)
    with took(1.0):
        me.close()  # from this thread, while the client's loop waits on a call
    thread.join(5)
    assert len(outcomes) == 1


def test_server_is_a_part_usable_once_made(make_node: MakeNode, calc: Calc) -> None:
    node = make_node("calc")
    with rpc.Server(node, calc) as server:  # serving once made: no start()
        assert node.endpoints["rpc"] == server.endpoint
        assert server in node.parts
        me = make_node("caller")
        wait_serving(me, "calc")
        with rpc.Client(me, "calc", timeout=2) as client:
            assert client.add(1, 2) == 3
            assert client in me.parts
        assert client not in me.parts  # closed: detached
        stats = server.stats()
        assert stats["calls"] == 1 and stats is not server.stats()  # a fresh dict each time
    assert "rpc" not in node.endpoints and server not in node.parts
    server.close()  # twice is fine

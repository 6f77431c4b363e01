"""Parts used from any thread, and a node closed from any thread while its parts are busy.

What a user's first real service does: a ``Publisher`` and a ``Client`` made in ``main`` and used
from RPC handlers of every kind (plain, ``@rpc.blocking``, ``async def``) and from threads of the
user's own; and a node closed from a signal handler or a watchdog thread while everything on it
is in full swing. Each socket still has one owner: the parts hand the work over (or keep a socket
per thread), and ``Node.close`` closes each part on its owner thread or loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from conftest import wait_until
from zmqkit.patterns import farm, groups, pubsub, rpc, state

from zmqkit import ClosedError, Node, Timeout, ZmqkitError
from zmqkit.sockets import open_sockets

FAST = {"interval": 0.2, "expiry": 0.6}
WAIT = 5.0
REPLICA = {"heartbeat": 0.2, "sync_timeout": 1.0, "join_wait": 0.3, "give_up": 2.0}
MakeNode = Callable[[str], Node]


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[MakeNode]:
    with contextlib.ExitStack() as nodes:

        def make(name: str) -> Node:
            return nodes.enter_context(Node(name, port=beacon_port, **FAST))

        yield make



def warm_up(publisher: pubsub.Publisher, subscriber: pubsub.Subscriber, topic: str) -> None:
    """Publish until ``subscriber`` receives: its subscription has reached the publisher."""
    subscriber.wait_for_publishers(timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while True:
        publisher.publish(topic, "warm-up")
        with contextlib.suppress(Timeout):
            if subscriber.recv(0.05).data == "warm-up":
                return
        assert time.monotonic() < deadline, "the subscription never reached the publisher"


def receive(subscriber: pubsub.Subscriber, count: int, timeout: float = WAIT) -> list[Any]:
    """The data of the next ``count`` messages that are not warm-ups."""
    deadline = time.monotonic() + timeout
    received: list[Any] = []
    while len(received) < count:
        message = subscriber.recv(max(0.0, deadline - time.monotonic()))
        if message.data != "warm-up":
            received.append(message.data)
    return received


# -- handlers of every kind publish and call ----------------------------------------------------


class Backend:
    def double(self, x: int) -> int:
        return 2 * x


class Front:
    """Each handler publishes an event and calls the backend, with parts made in main."""

    def __init__(self, publisher: pubsub.Publisher, backend: rpc.Client) -> None:
        self.publisher = publisher
        self.backend = backend
        self.threads: dict[str, str] = {}

    def plain(self, x: int) -> int:
        self.threads["plain"] = threading.current_thread().name
        self.publisher.publish("events", f"plain:{x}")
        return int(self.backend.call("double", x))

    @rpc.blocking
    def blocking(self, x: int) -> int:
        self.threads["blocking"] = threading.current_thread().name
        self.publisher.publish("events", f"blocking:{x}")
        return int(self.backend.call("double", x))

    async def asynchronous(self, x: int) -> int:
        self.threads["asynchronous"] = threading.current_thread().name
        self.publisher.publish("events", f"asynchronous:{x}")
        return int(self.backend.call("double", x))


def test_handlers_of_every_kind_publish_and_call_with_parts_made_in_main(
    make_node: MakeNode,
) -> None:
    front, back, app, watcher = (make_node(n) for n in ("front", "back", "app", "watcher"))
    rpc.serve(back, Backend())
    front.wait_for("back", role="rpc", timeout=WAIT)
    with pubsub.Publisher(front) as publisher, \
            rpc.Client(front, "back", timeout=WAIT) as backend, \
            pubsub.Subscriber(watcher, "events") as events:
        service = Front(publisher, backend)
        rpc.serve(front, service)
        warm_up(publisher, events, "events")
        app.wait_for("front", role="rpc", timeout=WAIT)
        with rpc.Client(app, "front", timeout=WAIT) as client:
            results = {kind: client.call(kind, n)
                       for n, kind in enumerate(("plain", "blocking", "asynchronous"), 1)}
        assert results == {"plain": 2, "blocking": 4, "asynchronous": 6}
        assert sorted(receive(events, 3)) == ["asynchronous:3", "blocking:2", "plain:1"]
        main = threading.current_thread().name
        assert main not in service.threads.values(), service.threads  # they ran elsewhere
        assert backend.call("double", 21) == 42  # and main still uses both
        publisher.publish("events", "from main")
        assert receive(events, 1) == ["from main"]


# -- a user's thread publishes while the owner does ------------------------------------------------


def test_a_user_thread_publishes_while_the_owner_thread_does(make_node: MakeNode) -> None:
    ticker, screen = make_node("ticker"), make_node("screen")
    count = 2000
    with pubsub.Publisher(ticker) as publisher, pubsub.Subscriber(screen, "load") as load:
        warm_up(publisher, load, "load")
        failures: list[BaseException] = []
        go = threading.Barrier(2)

        def publish_from_a_thread() -> None:
            try:
                go.wait(WAIT)
                for i in range(count):
                    publisher.publish("load", ["thread", i])
            except BaseException as exc:  # reported by the test below
                failures.append(exc)

        thread = threading.Thread(target=publish_from_a_thread, name="user-publisher")
        thread.start()
        go.wait(WAIT)
        for i in range(count):
            publisher.publish("load", ["main", i])
        thread.join(WAIT)
        assert not thread.is_alive() and failures == []

        received = receive(load, 2 * count, timeout=10.0)
        for source in ("main", "thread"):
            mine = [i for who, i in received if who == source]
            assert mine == list(range(count)), f"{source}: lost or out of order"
        with pytest.raises(Timeout):
            load.recv(0.2)  # nothing more, nothing twice
        assert load.stats().get("gaps", 0) == 0


# -- Node.close from another thread while everything is busy ----------------------------------


class Slow:
    def __init__(self) -> None:
        self.running = threading.Event()

    @rpc.blocking
    def slow(self, seconds: float) -> float:
        self.running.set()
        time.sleep(seconds)
        return seconds


class Loop:
    """A user's thread doing ``step`` over and over, until told to stop or until it raises.

    ``ends_with``: errors that end the loop as expected (kept in ``ended``); any other error is
    kept in ``error``; ``tolerate``: errors that do not end it (kept in ``tolerated``).
    """

    def __init__(self, name: str, step: Callable[[], object], *,
                 ends_with: tuple[type[BaseException], ...] = (ClosedError,),
                 tolerate: tuple[type[BaseException], ...] = (),
                 setup: Callable[[], Callable[[], object]] | None = None) -> None:
        self.step = step
        self.setup = setup
        self.ends_with = ends_with
        self.tolerate = tolerate
        self.count = 0
        self.ended: BaseException | None = None
        self.error: BaseException | None = None
        self.tolerated: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name)
        self.thread.start()

    def _run(self) -> None:
        try:
            step = self.setup() if self.setup is not None else self.step
            while not self.stop.is_set():
                try:
                    step()
                except self.tolerate as exc:
                    self.tolerated.append(exc)
                self.count += 1
                time.sleep(0.002)
        except self.ends_with as exc:
            self.ended = exc
        except BaseException as exc:  # reported by the test
            self.error = exc

    def join(self, timeout: float = WAIT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} did not end"
        assert self.error is None, f"{self.thread.name} failed: {self.error!r}"


def report(loops: list[Loop]) -> list[str]:
    """What each loop did, for a failure's message."""
    return [f"{loop.thread.name}: {loop.count} steps, error {loop.error!r}, ended {loop.ended!r},"
            f" first tolerated {loop.tolerated[:1]!r}" for loop in loops]


def leftovers(threads_before: set[threading.Thread], sockets_before: set[Any],
              grace: float = 3.0) -> tuple[list[threading.Thread], list[Any]]:
    deadline = time.monotonic() + grace
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        sockets = [s for s in open_sockets() if s not in sockets_before]
        if not (threads or sockets) or time.monotonic() > deadline:
            return threads, sockets
        time.sleep(0.02)


def test_node_close_from_another_thread_while_its_parts_are_busy(beacon_port: int) -> None:
    threads_before = set(threading.enumerate())
    sockets_before = set(open_sockets())
    busy = Node("busy", port=beacon_port, **FAST).start()
    peer = Node("peer", port=beacon_port, **FAST).start()
    loops: list[Loop] = []
    try:
        # the other side, on the peer: a caller, a publisher, a worker, a replica, a member
        peer_publisher = pubsub.Publisher(peer)
        worker_ran = threading.Event()

        def work(seconds: float) -> float:
            worker_ran.set()
            time.sleep(seconds)
            return seconds

        farm.serve_worker(peer, work, farm="jobs", slots=2)
        state.State(peer, "inventory", **REPLICA)  # a replica to replicate with
        peer_member = groups.Groups(peer)
        peer_member.join("ops")

        # the busy node's parts, made in main
        slow = Slow()
        rpc.serve(busy, slow)
        publisher = pubsub.Publisher(busy)
        submitter = farm.Submitter(busy, "jobs")
        replica = state.State(busy, "inventory", **REPLICA)
        member = groups.Groups(busy)
        member.join("ops")
        peer.wait_for("busy", role="rpc", timeout=WAIT)

        def call_slowly() -> Callable[[], object]:
            caller = rpc.Client(peer, "busy", timeout=3.0)  # the peer's: closed with the peer
            return lambda: caller.call("slow", 0.3)

        def subscribe_and_receive() -> Callable[[], object]:
            subscriber = pubsub.Subscriber(busy, "ticks")  # owned by the loop's thread
            return lambda: subscriber.recv(0.1)

        loops += [
            Loop("user-caller", lambda: None, setup=call_slowly, ends_with=(),
                 tolerate=(ZmqkitError,)),  # its server goes away mid-call: an error, not a hang
            Loop("user-publisher", lambda: publisher.publish("news", "busy")),
            Loop("user-subscriber", lambda: None, setup=subscribe_and_receive,
                 tolerate=(Timeout,)),
            Loop("user-submitter", lambda: submitter.submit(0.05)),
            Loop("user-writer", lambda: replica.set("apples", time.monotonic())),
            Loop("user-shouter", lambda: member.shout("ops", "busy")),
            Loop("peer-publisher", lambda: peer_publisher.publish("ticks", "tick"), ends_with=()),
        ]
        assert slow.running.wait(WAIT), f"the server never got a call: {report(loops)}"
        assert worker_ran.wait(WAIT), f"no task reached the worker: {report(loops)}"
        wait_until(lambda: all(loop.count or loop.error for loop in loops), WAIT,
                   f"every loop running: {report(loops)}")

        # close the busy node from a thread of its own, mid-call
        closing_errors: list[BaseException] = []

        def close_busy() -> None:
            try:
                busy.close()
            except BaseException as exc:  # the assertion below reports it
                closing_errors.append(exc)

        closer = threading.Thread(target=close_busy, name="closer")
        closer.start()
        closer.join(10.0)
        assert not closer.is_alive(), "Node.close() hangs"
        assert closing_errors == []
        assert busy.parts == []

        # every write path on the busy node now says it is closed, from every thread
        for loop in loops:
            if loop.ends_with:
                loop.join()
                assert isinstance(loop.ended, ClosedError), report(loops)
        with pytest.raises(ClosedError):
            publisher.publish("news", "after close")
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.join()  # the others: stopped, and none failed (the caller's errors tolerated)
    finally:
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.thread.join(WAIT)
        busy.close()
        peer.close()
    threads, sockets = leftovers(threads_before, sockets_before)
    assert threads == [], f"threads left running: {threads}"
    assert sockets == [], f"sockets left open: {sockets}"


def test_node_close_from_another_thread_closes_async_parts_on_their_loop(
    beacon_port: int,
) -> None:
    threads_before = set(threading.enumerate())
    sockets_before = set(open_sockets())
    busy = Node("busy", port=beacon_port, **FAST).start()
    peer = Node("peer", port=beacon_port, **FAST).start()
    try:
        rpc.serve(peer, Slow())
        busy.wait_for("peer", role="rpc", timeout=WAIT)
        running = threading.Event()
        outcome: dict[str, BaseException | None] = {}

        async def main() -> None:
            client = rpc.AsyncClient(busy, "peer", timeout=WAIT)
            submitter = farm.AsyncSubmitter(busy, "jobs")  # no worker: its waits are pending
            assert await client.call("slow", 0.0) == 0.0
            running.set()

            async def keep_calling() -> None:
                while True:
                    await client.call("slow", 0.2)

            async def wait_for_a_result() -> None:
                await submitter.result(submitter.submit(1), timeout=WAIT)

            async def note(name: str, work: Coroutine[Any, Any, None]) -> None:
                try:
                    await asyncio.wait_for(work, WAIT)
                    outcome[name] = None
                except BaseException as exc:  # looked at below
                    outcome[name] = exc

            await asyncio.gather(note("call", keep_calling()), note("result", wait_for_a_result()))

        def run_loop() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # looked at below
                outcome["loop"] = exc

        thread = threading.Thread(target=run_loop, name="user-loop")
        thread.start()
        assert running.wait(WAIT), outcome
        time.sleep(0.1)  # a call in flight, a result awaited
        busy.close()  # from main: the parts live on the user's loop
        thread.join(WAIT + 2.0)
        assert not thread.is_alive(), "the user's loop did not end after its node closed"
        assert "loop" not in outcome, outcome
        assert isinstance(outcome["call"], ClosedError), outcome
        assert isinstance(outcome["result"], ClosedError), outcome
    finally:
        busy.close()
        peer.close()
    threads, sockets = leftovers(threads_before, sockets_before)
    assert threads == [], f"threads left running: {threads}"
    assert sockets == [], f"sockets left open: {sockets}"

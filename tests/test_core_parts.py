"""The core pieces patterns are built from: what each one promises, one test at a time.

``Socket``'s non-blocking and option methods, ``Poller`` over sockets and ``Wakeup``s, the node's
socket factory (CURVE applied by construction), ``ServiceThread``, ``LoopWakeup``,
``call_on_loop``, ``check_timeout``, and ``WrongThread`` for a socket touched by a
thread that does not own it. Everything runs in-process, on inproc endpoints or loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zmqkit import (
    BrokenError,
    ClosedError,
    ConfigError,
    Deadline,
    Keypair,
    Keyring,
    LoopWakeup,
    Node,
    Poller,
    SecurityError,
    ServiceThread,
    Socket,
    SocketKind,
    SocketOptions,
    Timeout,
    Wakeup,
    WrongThread,
    call_on_loop,
    check_timeout,
)

FAST = {"interval": 0.2, "expiry": 0.6}
WAIT = 5.0
_names = itertools.count()


def inproc() -> str:
    return f"inproc://core-parts-{next(_names)}"


@contextlib.contextmanager
def linked(kind_a: SocketKind, kind_b: SocketKind) -> Iterator[tuple[Socket, Socket]]:
    """``a`` bound on a fresh inproc endpoint, ``b`` connected to it."""
    with Socket(kind_a) as a, Socket(kind_b) as b:
        b.connect(a.bind_endpoint(inproc()))
        yield a, b


def in_thread(action: Callable[[], Any]) -> BaseException | None:
    """Run ``action`` in a fresh thread, join it, and return what it raised (None if nothing)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed back to the test, which asserts on it
            raised.append(exc)

    thread = threading.Thread(target=run, name="other-thread")
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    return raised[0] if raised else None


def recv_within(sock: Socket, timeout: float = WAIT) -> bytes:
    """``try_recv`` until a frame comes (the frame is in flight on another thread)."""
    deadline = time.monotonic() + timeout
    while (frame := sock.try_recv()) is None:
        assert time.monotonic() < deadline, f"nothing arrived on {sock!r}"
        sock.poll(0.05)
    return frame


# -- Socket: non-blocking sends and receives --------------------------------------------------


def test_try_recv_gives_none_when_nothing_is_queued_and_never_waits() -> None:
    with linked(SocketKind.PAIR, SocketKind.PAIR) as (a, _):
        start = time.monotonic()
        assert a.try_recv() is None
        assert a.try_recv_multipart() is None
        assert time.monotonic() - start < 0.1


def test_try_send_and_try_recv_round_trip() -> None:
    with linked(SocketKind.PAIR, SocketKind.PAIR) as (a, b):
        assert b.try_send(b"one") is True
        assert recv_within(a) == b"one"
        assert a.try_send(b"two") is True
        assert recv_within(b) == b"two"


def test_try_send_with_more_and_try_send_multipart_make_multipart_messages() -> None:
    with linked(SocketKind.PAIR, SocketKind.PAIR) as (a, b):
        assert b.try_send(b"head", more=True) and b.try_send(b"tail")
        assert b.try_send_multipart([b"x", b"y", b"z"])
        assert a.poll(WAIT)
        assert a.try_recv_multipart() == [b"head", b"tail"]
        assert a.poll(WAIT)
        assert a.try_recv_multipart() == [b"x", b"y", b"z"]
        assert a.try_recv_multipart() is None


def test_try_send_says_false_when_a_send_would_block() -> None:
    with Socket(SocketKind.DEALER) as lonely:  # no peer: nowhere to queue a message
        start = time.monotonic()
        assert lonely.try_send(b"x") is False
        assert lonely.try_send_multipart([b"x", b"y"]) is False
        assert time.monotonic() - start < 0.5  # not the send timeout


def test_try_send_says_false_once_the_queue_is_full() -> None:
    options = SocketOptions(send_hwm=5, recv_hwm=5)
    with Socket(SocketKind.PULL, options=options) as pull, \
            Socket(SocketKind.PUSH, options=options) as push:
        push.connect(pull.bind_endpoint(inproc()))
        sent = 0
        while push.try_send(b"x"):
            sent += 1
            assert sent < 1000, "a full queue never refused"
        assert sent >= 5
        assert not push.writable
        assert push.poll_writable(0.05) is False
        while pull.try_recv() is not None:  # the reader takes everything: room again
            pass
        assert push.poll_writable(WAIT) is True
        assert push.try_send(b"x") is True


# -- Socket: subscriptions, readiness, endpoints --------------------------------------------


def test_subscribe_and_unsubscribe_filter_by_prefix() -> None:
    with linked(SocketKind.PUB, SocketKind.SUB) as (pub, sub):
        sub.subscribe(b"a")
        deadline = time.monotonic() + WAIT
        while True:  # the subscription travels to the publisher: publish until it arrived
            pub.try_send(b"b-not-wanted")
            pub.try_send(b"a-first")
            if sub.poll(0.02):
                break
            assert time.monotonic() < deadline, "the subscription never reached the publisher"
        assert recv_within(sub) == b"a-first"  # never b-not-wanted: it was filtered out
        sub.unsubscribe(b"a")
        sub.subscribe(b"z")  # taken after the unsubscribe: its first match says it is done
        received: list[bytes] = []
        while b"z-mark" not in received:
            pub.try_send(b"a-late")
            pub.try_send(b"z-mark")
            if sub.poll(0.02):
                while (frame := sub.try_recv()) is not None:
                    received.append(frame)
            assert time.monotonic() < deadline, "the subscription to z never arrived"
        pub.try_send(b"a-after")
        pub.try_send(b"z-end")
        tail = []
        while b"z-end" not in tail:
            tail.append(recv_within(sub))
        assert tail[-1] == b"z-end" and all(f.startswith(b"z") for f in tail), tail
        assert not any(f.startswith(b"b") for f in received)


def test_readable_and_writable_say_what_a_call_would_do_now() -> None:
    with linked(SocketKind.PAIR, SocketKind.PAIR) as (a, b):
        assert a.readable is False
        assert b.writable is True
        b.send(b"x")
        assert a.poll(WAIT)
        assert a.readable is True
        assert a.try_recv() == b"x"
        assert a.readable is False
    with Socket(SocketKind.DEALER) as lonely:
        assert lonely.writable is False
        assert lonely.poll_writable(0.05) is False


def test_bind_endpoint_and_unbind() -> None:
    with Socket(SocketKind.PULL) as pull, Socket(SocketKind.PUSH) as push:
        endpoint = pull.bind_endpoint("tcp://127.0.0.1:*")
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")
        assert pull.endpoint == endpoint and endpoint in pull.endpoints
        name = inproc()
        assert pull.bind_endpoint(name) == name
        assert pull.endpoints == [endpoint, name]
        push.connect(name)
        push.send(b"via inproc")
        assert pull.recv(WAIT) == b"via inproc"
        pull.unbind(endpoint)
        assert pull.endpoints == [name] and pull.endpoint == name
        pull.unbind(endpoint)  # not bound any more: quiet
        pull.unbind("tcp://127.0.0.1:1")  # never bound: quiet
        with Socket(SocketKind.PULL) as other:  # the port is free again (once libzmq has
            deadline = time.monotonic() + WAIT  # closed the listener, on its I/O thread)
            while True:
                try:
                    assert other.bind_endpoint(endpoint) == endpoint
                    break
                except ConfigError:
                    assert time.monotonic() < deadline, f"{endpoint} is still bound"
                    time.sleep(0.02)


def test_bind_endpoint_refuses_what_cannot_be_bound() -> None:
    name = inproc()
    with Socket(SocketKind.PULL) as first, Socket(SocketKind.PULL) as second:
        first.bind_endpoint(name)
        with pytest.raises(ConfigError):
            second.bind_endpoint(name)  # taken
        with pytest.raises(ConfigError):
            second.bind_endpoint("nonsense://here")
        assert second.endpoints == []


# -- Poller -----------------------------------------------------------------------------------


def test_poller_returns_the_ready_sockets_and_wakeups() -> None:
    wakeup = Wakeup()
    try:
        with linked(SocketKind.PAIR, SocketKind.PAIR) as (a, b), \
                linked(SocketKind.PAIR, SocketKind.PAIR) as (c, d):
            poller = Poller([a, wakeup])
            poller.register(c)
            assert a in poller and c in poller and wakeup in poller and b not in poller
            start = time.monotonic()
            assert poller.poll(0.1) == []
            assert 0.08 <= time.monotonic() - start < 1.0
            b.send(b"x")
            assert poller.poll(WAIT) == [a]
            assert poller.poll(0) == [a]  # level: still unread
            assert a.try_recv() == b"x"
            d.send(b"y")
            assert poller.poll(WAIT) == [c]
            poller.unregister(c)
            assert c not in poller
            assert poller.poll(0) == []
            poller.unregister(c)  # not watched: quiet
            assert c.try_recv() == b"y"
    finally:
        wakeup.close()


def test_a_wakeup_set_from_another_thread_wakes_the_poll_and_is_drained() -> None:
    wakeup = Wakeup()
    try:
        poller = Poller([wakeup])
        timer = threading.Timer(0.1, wakeup.set)
        start = time.monotonic()
        timer.start()
        assert poller.poll(WAIT) == [wakeup]
        assert time.monotonic() - start < 1.0
        timer.join()
        assert poller.poll(0) == []  # drained: quiet until the next set
        for _ in range(5):  # a burst of sets wakes once
            in_thread(wakeup.set)
        assert poller.poll(WAIT) == [wakeup]
        assert poller.poll(0) == []
        wakeup.set()
        assert poller.poll(WAIT) == [wakeup]  # and the next set wakes again
    finally:
        wakeup.close()
    wakeup.set()  # closed: quiet


# -- the node's sockets: CURVE by construction ------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Keypair]:
    return {who: Keypair.generate() for who in ("server", "client", "stranger")}


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[Callable[..., Node]]:
    with contextlib.ExitStack() as nodes:

        def make(name: str, **security: Any) -> Node:
            return nodes.enter_context(Node(name, port=beacon_port, **FAST, **security))

        yield make


def serve_router(node: Node, stack: contextlib.ExitStack) -> Socket:
    router = stack.enter_context(node.server_socket(SocketKind.ROUTER))
    node.advertise("test", router.endpoint)
    return router


def test_a_keyed_nodes_server_socket_talks_to_a_client_in_its_ring(
    make_node: Callable[..., Node], keys: dict[str, Keypair]
) -> None:
    server = make_node("server", keys=keys["server"], keyring=Keyring([keys["client"].public]))
    client = make_node("client", keys=keys["client"], keyring=Keyring([keys["server"].public]))
    with contextlib.ExitStack() as stack:
        router = serve_router(server, stack)
        assert router.endpoint.startswith(f"tcp://{server.host}:")
        [peer] = client.wait_for("server", role="test", timeout=WAIT)
        dealer = stack.enter_context(client.client_socket(SocketKind.DEALER))
        assert dealer.connect_peer(peer, "test") == router.endpoint
        dealer.send(b"hello")
        routing_id, frame = router.recv_multipart(WAIT)
        assert frame == b"hello"
        router.send_multipart([routing_id, b"welcome"])
        assert dealer.recv(WAIT) == b"welcome"


@pytest.mark.parametrize("who", ["stranger", "plain"])
def test_a_keyed_nodes_server_socket_gives_an_outsider_nothing(
    make_node: Callable[..., Node], keys: dict[str, Keypair], who: str
) -> None:
    """A stranger (keys not in the ring) completes no handshake; a plain socket that connects
    by hand (connect_peer would refuse it) gets through to nothing either."""
    server = make_node("server", keys=keys["server"], keyring=Keyring([keys["client"].public]))
    with contextlib.ExitStack() as stack:
        router = serve_router(server, stack)
        if who == "stranger":
            outsider = make_node("stranger", keys=keys["stranger"],
                                 keyring=Keyring([keys["server"].public]))
            [peer] = outsider.wait_for("server", role="test", timeout=WAIT)
            dealer = stack.enter_context(outsider.client_socket(SocketKind.DEALER))
            dealer.connect_peer(peer, "test")  # it trusts the server: the server refuses it
        else:
            dealer = stack.enter_context(Socket(SocketKind.DEALER))
            dealer.connect(router.endpoint)
        for _ in range(10):
            dealer.try_send(b"let me in")
        assert not router.poll(0.5), f"a {who} socket reached a CURVE server"
        assert router.try_recv_multipart() is None


@pytest.mark.parametrize("keyed_side", ["server", "client"])
def test_connect_peer_refuses_when_one_side_has_keys_and_the_other_none(
    make_node: Callable[..., Node], keys: dict[str, Keypair], keyed_side: str
) -> None:
    keyed = {"keys": keys["server"], "keyring": Keyring([keys["server"].public])}
    server = make_node("server", **(keyed if keyed_side == "server" else {}))
    client = make_node("client", **(keyed if keyed_side == "client" else {}))
    with contextlib.ExitStack() as stack:
        serve_router(server, stack)
        [peer] = client.wait_for("server", role="test", timeout=WAIT)
        dealer = stack.enter_context(client.client_socket(SocketKind.DEALER))
        with pytest.raises(SecurityError):
            dealer.connect_peer(peer, "test")


def test_connect_peer_refuses_a_key_that_is_not_in_the_ring_or_a_role_not_served(
    make_node: Callable[..., Node], keys: dict[str, Keypair]
) -> None:
    server = make_node("server", keys=keys["server"], keyring=Keyring([keys["client"].public]))
    wary = make_node("wary", keys=keys["client"], keyring=Keyring([keys["stranger"].public]))
    with contextlib.ExitStack() as stack:
        serve_router(server, stack)
        [peer] = wary.wait_for("server", role="test", timeout=WAIT)
        dealer = stack.enter_context(wary.client_socket(SocketKind.DEALER))
        with pytest.raises(SecurityError, match="not in the keyring"):
            dealer.connect_peer(peer, "test")
        with pytest.raises(ConfigError):
            dealer.connect_peer(peer, "not-served")


def test_server_socket_needs_a_running_node(beacon_port: int) -> None:
    node = Node("idle", port=beacon_port, **FAST)
    with pytest.raises(ClosedError):
        node.server_socket(SocketKind.ROUTER)
    with node:
        pass
    with pytest.raises(ClosedError):
        node.server_socket(SocketKind.ROUTER)


# -- ServiceThread ----------------------------------------------------------------------------


def poll_until_stopped(service: ServiceThread) -> None:
    poller = Poller([service.wakeup])
    service.ready()
    while not service.stopping:
        poller.poll(WAIT)


@pytest.mark.parametrize("error", [ConfigError("bad option"), ValueError("not ours")],
                         ids=["zmqkit-error", "other-error"])
def test_service_thread_reraises_a_startup_error_and_is_joined(error: Exception) -> None:
    def run(service: ServiceThread) -> None:
        raise error

    service = ServiceThread("test-failing", run)
    with pytest.raises((ConfigError, BrokenError)) as raised:
        service.start()
    if isinstance(error, ConfigError):
        assert raised.value is error
    else:
        assert isinstance(raised.value, BrokenError) and raised.value.__cause__ is error
    assert not service.alive


def test_service_thread_start_returns_when_ready_and_stop_joins() -> None:
    seen: dict[str, Any] = {}

    def run(service: ServiceThread) -> None:
        seen["current"] = service.is_current
        poll_until_stopped(service)

    service = ServiceThread("test-service", run)
    service.start()
    assert service.alive and seen["current"] is True and not service.is_current
    assert any(t.name == "test-service" for t in threading.enumerate())
    start = time.monotonic()
    assert service.stop() is True
    assert time.monotonic() - start < 1.0  # woken, not waited out
    assert not service.alive and service.error is None
    assert service.stop() is True  # again: fine


def test_service_thread_stopped_from_inside_ends_when_its_loop_returns() -> None:
    asked: list[bool] = []

    def run(service: ServiceThread) -> None:
        service.ready()
        asked.append(service.stop())  # a callback closing its own part: only asks
        assert service.stopping
        poll_until_stopped(service)

    service = ServiceThread("test-self-stop", run)
    service.start()
    deadline = time.monotonic() + WAIT
    while service.alive:
        assert time.monotonic() < deadline, "the service did not end"
        time.sleep(0.01)
    assert asked == [False] and service.error is None


def test_service_thread_keeps_an_error_raised_after_ready(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="zmqkit.service")
    failure = RuntimeError("broke while serving")

    go = threading.Event()

    def run(service: ServiceThread) -> None:
        service.ready()
        go.wait(WAIT)
        raise failure

    service = ServiceThread("test-late-failure", run)
    service.start()
    go.set()
    assert service.stop() is True
    assert service.error is failure
    assert any("test-late-failure" in record.getMessage() for record in caplog.records)


def test_service_thread_start_does_not_take_an_error_raised_just_after_ready_for_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The thread was ready, so ``start`` succeeded: an error right after is the service's
    (kept and logged once), not a failure to start, however the two threads interleave."""
    caplog.set_level(logging.ERROR, logger="zmqkit.service")
    failure = RuntimeError("broke at once")

    def run(service: ServiceThread) -> None:
        service.ready()
        raise failure

    for _ in range(20):
        service = ServiceThread("test-early-failure", run)
        service.start()  # ready: it started
        assert service.stop() is True
        assert service.error is failure


def test_service_thread_not_ready_in_time_is_a_timeout_and_stopped() -> None:
    def run(service: ServiceThread) -> None:
        while not service.stopping:  # never ready
            time.sleep(0.01)

    service = ServiceThread("test-slow-start", run)
    start = time.monotonic()
    with pytest.raises(Timeout):
        service.start(timeout=0.2)
    assert time.monotonic() - start < 2.0
    deadline = time.monotonic() + WAIT
    while service.alive:
        assert time.monotonic() < deadline
        time.sleep(0.01)


# -- LoopWakeup and call_on_loop --------------------------------------------------------------


def test_loop_wakeup_set_from_another_thread_wakes_the_loop() -> None:
    async def main() -> None:
        wakeup = LoopWakeup()
        assert await wakeup.wait(0.05) is False  # nothing set: times out
        timer = threading.Timer(0.1, wakeup.set)
        start = time.monotonic()
        timer.start()
        assert await wakeup.wait(WAIT) is True
        assert time.monotonic() - start < 1.0
        timer.join()
        for _ in range(5):  # coalesced: one wake-up
            in_thread(wakeup.set)
        assert await wakeup.wait(WAIT) is True
        assert await wakeup.wait(0.05) is False
        wakeup.set()  # from the loop itself, too
        assert await wakeup.wait(WAIT) is True

    asyncio.run(main())


def test_loop_wakeup_set_after_its_loop_closed_is_quiet() -> None:
    async def make() -> LoopWakeup:
        return LoopWakeup()

    wakeup = asyncio.run(make())  # its loop is closed now
    wakeup.set()
    assert in_thread(wakeup.set) is None


@contextlib.contextmanager
def loop_in_a_thread() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop")
    thread.start()
    try:
        yield loop, thread
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def test_call_on_loop_from_another_thread_runs_there_and_returns_the_result() -> None:
    with loop_in_a_thread() as (loop, thread):
        ran_in: list[threading.Thread] = []

        def work() -> int:
            ran_in.append(threading.current_thread())
            return 42

        assert call_on_loop(loop, work) == 42
        assert ran_in == [thread]

        def fail() -> None:
            raise ValueError("raised on the loop")

        with pytest.raises(ValueError, match="raised on the loop"):
            call_on_loop(loop, fail)


def test_call_on_loop_from_the_loop_itself_runs_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        assert call_on_loop(loop, lambda: order.append("ran") or "done") == "done"
        order.append("after")
        assert order == ["ran", "after"]  # it did not wait for the loop's next turn

    asyncio.run(main())


def test_call_on_loop_on_a_closed_or_stopped_loop_runs_at_once() -> None:
    loop = asyncio.new_event_loop()
    assert call_on_loop(loop, lambda: "not running") == "not running"
    loop.close()
    assert call_on_loop(loop, lambda: "closed") == "closed"
    assert in_thread(lambda: call_on_loop(loop, lambda: "closed, from a thread")) is None


def test_call_on_loop_gives_up_on_a_stuck_loop() -> None:
    with loop_in_a_thread() as (loop, _):
        release = threading.Event()
        loop.call_soon_threadsafe(release.wait, WAIT)  # the loop is stuck in a callback
        start = time.monotonic()
        assert call_on_loop(loop, lambda: "too late", timeout=0.2) is None
        assert time.monotonic() - start < 2.0
        release.set()


# -- check_timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, 0.0, 0.001, 1, 2.5, 9_999_999.0])
def test_check_timeout_passes_a_finite_number_of_seconds(seconds: float) -> None:
    assert check_timeout(seconds) == seconds


@pytest.mark.parametrize("seconds", [-0.001, -1, math.nan, math.inf, -math.inf, 1e7, 1e300,
                                     10**400, "1", None])
def test_check_timeout_refuses_what_is_not_a_finite_wait(seconds: Any) -> None:
    with pytest.raises(ConfigError):
        check_timeout(seconds)
    with pytest.raises(ConfigError):
        Deadline.after(seconds)


# -- WrongThread -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda s: s.try_send(b"x"), id="try_send"),
        pytest.param(lambda s: s.try_send_multipart([b"x"]), id="try_send_multipart"),
        pytest.param(lambda s: s.try_recv(), id="try_recv"),
        pytest.param(lambda s: s.try_recv_multipart(), id="try_recv_multipart"),
        pytest.param(lambda s: s.poll_writable(0), id="poll_writable"),
        pytest.param(lambda s: s.readable, id="readable"),
        pytest.param(lambda s: s.writable, id="writable"),
        pytest.param(lambda s: s.subscribe(b"a"), id="subscribe"),
        pytest.param(lambda s: s.unsubscribe(b"a"), id="unsubscribe"),
        pytest.param(lambda s: s.bind_endpoint(inproc()), id="bind_endpoint"),
        pytest.param(lambda s: s.unbind("inproc://nowhere"), id="unbind"),
        pytest.param(lambda s: s.recv(0), id="recv"),
        pytest.param(lambda s: s.send(b"x"), id="send"),
        pytest.param(lambda s: Poller([s]).poll(0), id="poller"),
    ],
)
def test_a_socket_used_off_its_owner_thread_raises_wrong_thread(
    use: Callable[[Socket], Any],
) -> None:
    with Socket(SocketKind.SUB) as sub:
        raised = in_thread(lambda: use(sub))
        assert isinstance(raised, WrongThread), raised
        assert "thread" in str(raised)
        assert sub.endpoints == []
        assert sub.try_recv() is None  # still fine in its own thread

"""Socket blocks and deadlines, on loopback only (127.0.0.1 and ::1)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import zmqkit
from zmqkit.codec import (
    Kind,
    decode,
    encode_publish,
    encode_reply,
    encode_request,
    publish_prefixes,
)
from zmqkit.deadline import Deadline
from zmqkit.errors import ClosedError, ConfigError, Timeout, WrongThread, ZmqkitError
from zmqkit.sockets import AsyncSocket, Socket, SocketOptions, format_endpoint, open_sockets

SENDER = bytes(16)
ENDPOINT_V4 = re.compile(r"^tcp://127\.0\.0\.1:(\d+)$")


@pytest.fixture
def pair() -> Iterator[tuple[Socket, Socket]]:
    """A bound PULL and a PUSH connected to it."""
    with Socket(zmq.PULL) as pull, Socket(zmq.PUSH) as push:
        push.connect(pull.bind())
        yield pull, push


def elapsed(action: Callable[[], Any]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def time_out(action: Callable[[], Any]) -> float:
    """Seconds ``action`` took to raise Timeout (failing the test if it did not)."""
    start = time.monotonic()
    with pytest.raises(Timeout):
        action()
    return time.monotonic() - start


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
    thread.join(timeout=10)
    assert not thread.is_alive()
    return raised[0] if raised else None


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- binding and endpoints -----------------------------------------------------------------------


def test_bind_on_loopback_returns_a_tcp_endpoint_with_the_chosen_port() -> None:
    with Socket(zmq.REP) as rep:
        endpoint = rep.bind("127.0.0.1")
        match = ENDPOINT_V4.match(endpoint)
        assert match, endpoint
        assert 0 < int(match.group(1)) < 65536
        assert rep.endpoints == [endpoint]
        assert endpoint in repr(rep)
        second = rep.bind()  # the default host is loopback too
        assert ENDPOINT_V4.match(second)
        assert rep.endpoints == [endpoint, second]


def test_binding_a_port_in_use_raises_config_error() -> None:
    with Socket(zmq.REP) as first, Socket(zmq.REP) as second:
        port = int(first.bind().rsplit(":", 1)[1])
        with pytest.raises(ConfigError) as info:
            second.bind("127.0.0.1", port)
        assert isinstance(info.value.__cause__, zmq.ZMQError)
        assert second.endpoints == []


@pytest.mark.parametrize("host", ["zk-no-such-if0", "not an address"])
def test_binding_an_address_that_is_not_local_raises_config_error(host: str) -> None:
    # An interface name that this host does not have: refused like a foreign IP address, but
    # without naming any address other than loopback in the tests.
    with Socket(zmq.REP) as rep:
        with pytest.raises(ConfigError):
            rep.bind(host)
        assert rep.endpoints == []


def test_connecting_to_a_malformed_endpoint_raises_config_error() -> None:
    with Socket(zmq.REQ) as req:
        with pytest.raises(ConfigError):
            req.connect("nonsense")
        with pytest.raises(ConfigError):
            req.connect("tcp://127.0.0.1")


@pytest.mark.skipif(not ipv6_loopback_available(), reason="::1 is not available on this host")
def test_bind_on_ipv6_loopback_gives_a_bracketed_endpoint_that_works() -> None:
    with Socket(zmq.REP) as rep, Socket(zmq.REQ) as req:
        endpoint = rep.bind("::1")
        assert re.match(r"^tcp://\[::1\]:\d+$", endpoint), endpoint
        req.connect(endpoint)
        req.send(b"ping")
        assert rep.recv(timeout=5) == b"ping"
        rep.send(b"pong")
        assert req.recv(timeout=5) == b"pong"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 5555, "tcp://127.0.0.1:5555"),
        ("127.0.0.1", "*", "tcp://127.0.0.1:*"),
        ("::1", 5555, "tcp://[::1]:5555"),
        ("[::1]", 5555, "tcp://[::1]:5555"),
        ("fe80::1%lo", 1, "tcp://[fe80::1%lo]:1"),
        ("lo", 7, "tcp://lo:7"),
    ],
)
def test_format_endpoint(host: str, port: int | str, expected: str) -> None:
    assert format_endpoint(host, port) == expected


# -- sending and receiving -----------------------------------------------------------------------


def test_req_rep_round_trip() -> None:
    with Socket(zmq.REP) as rep, Socket(zmq.REQ) as req:
        req.connect(rep.bind())
        for call_id in range(3):
            req.send(encode_request(call_id, "add", [call_id, 2], {}))
            request = decode(rep.recv(timeout=5))
            assert request == [1, Kind.REQUEST, call_id, "add", [call_id, 2], {}]
            rep.send(encode_reply(call_id, request[4][0] + request[4][1]))
            assert decode(req.recv(timeout=5)) == [1, Kind.REPLY, call_id, call_id + 2]


def test_multipart_round_trip(pair: tuple[Socket, Socket]) -> None:
    pull, push = pair
    push.send_multipart([b"a", b"", b"c" * 100_000])
    assert pull.recv_multipart(timeout=5) == [b"a", b"", b"c" * 100_000]
    push.send(b"head", more=True)
    push.send(b"tail")
    assert pull.recv_multipart(timeout=5) == [b"head", b"tail"]


def test_a_large_frame_arrives_intact(pair: tuple[Socket, Socket]) -> None:
    pull, push = pair
    payload = bytes(range(256)) * 4096  # 1 MiB: sent without a copy
    push.send(payload)
    assert pull.recv(timeout=5) == payload


def test_recv_times_out_with_zmqkit_timeout_after_about_its_timeout(
    pair: tuple[Socket, Socket],
) -> None:
    pull, _ = pair
    with pytest.raises(Timeout) as info:
        start = time.monotonic()
        pull.recv(timeout=0.2)
    took = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, ZmqkitError)
    assert 0.18 <= took < 0.2 + 0.5, took


def test_recv_multipart_and_poll_time_out_too(pair: tuple[Socket, Socket]) -> None:
    pull, push = pair
    with pytest.raises(TimeoutError):
        pull.recv_multipart(timeout=0.05)
    assert pull.poll(timeout=0.05) is False
    push.send(b"x")
    assert pull.poll(timeout=5) is True
    assert pull.recv(timeout=0) == b"x"


def test_a_zero_timeout_does_not_wait(pair: tuple[Socket, Socket]) -> None:
    pull, _ = pair
    took = time_out(lambda: pull.recv(timeout=0))
    assert took < 0.1


def test_a_timeout_changes_between_receives(pair: tuple[Socket, Socket]) -> None:
    pull, push = pair
    assert time_out(lambda: pull.recv(timeout=0.01)) < 0.3
    push.send(b"late")
    assert pull.recv(timeout=5) == b"late"
    took = time_out(lambda: pull.recv(timeout=0.15))
    assert 0.13 <= took < 0.65


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 1e7, 1e300])
def test_a_timeout_that_is_not_finite_or_absurdly_long_raises_config_error(
    pair: tuple[Socket, Socket], timeout: float
) -> None:
    pull, _ = pair
    with pytest.raises(ConfigError):
        pull.recv(timeout=timeout)
    with pytest.raises(ConfigError):
        pull.recv_multipart(timeout=timeout)
    with pytest.raises(ConfigError):
        pull.poll(timeout=timeout)


@pytest.mark.parametrize("timeout", [-1, -0.001, -math.inf])
def test_a_negative_timeout_is_a_config_error(pair: tuple[Socket, Socket], timeout: float) -> None:
    # the same rule as Deadline.after: a timeout is a finite number of seconds >= 0
    pull, push = pair
    with pytest.raises(ConfigError):
        pull.recv(timeout=timeout)
    with pytest.raises(ConfigError):
        pull.poll(timeout=timeout)
    push.send(b"here")
    assert pull.recv(timeout=5) == b"here", "the socket still works"


def test_a_very_long_timeout_still_receives_a_waiting_message(pair: tuple[Socket, Socket]) -> None:
    # 30 days is over ZMQ_RCVTIMEO's 2**31 - 1 ms: cut to that, not an OverflowError
    pull, push = pair
    push.send(b"ready")
    assert pull.poll(timeout=5)
    assert pull.recv(timeout=30 * 24 * 3600) == b"ready"
    push.send_multipart([b"a", b"b"])
    assert pull.poll(timeout=5)
    assert pull.recv_multipart(timeout=30 * 24 * 3600) == [b"a", b"b"]


def test_a_send_with_nobody_to_take_it_times_out_instead_of_hanging() -> None:
    with Socket(zmq.PUSH, options=SocketOptions(send_timeout=0.1)) as push:
        took = time_out(lambda: push.send(b"nobody listens"))
        assert took < 0.1 + 0.5


def test_disconnecting_an_endpoint_that_is_not_connected_is_quiet() -> None:
    with Socket(zmq.PUSH) as push, Socket(zmq.PULL) as pull:
        endpoint = pull.bind()
        push.disconnect(endpoint)  # never connected
        push.connect(endpoint)
        push.disconnect(endpoint)
        push.disconnect(endpoint)


# -- maximum message size ------------------------------------------------------------------------


def test_a_message_over_the_maximum_size_is_dropped_and_the_socket_keeps_working() -> None:
    limit = 1000
    with Socket(zmq.PULL, options=SocketOptions(max_message_size=limit)) as pull, \
            Socket(zmq.PUSH) as push:
        push.connect(pull.bind())
        push.send(b"x" * (limit + 1))
        with pytest.raises(Timeout):
            pull.recv(timeout=0.3)
        # libzmq drops the offending connection; the sender reconnects and carries on
        push.send(b"y" * limit)
        assert pull.recv(timeout=5) == b"y" * limit
        push.send(b"z")
        assert pull.recv(timeout=5) == b"z"


def test_socket_options_are_frozen_with_safe_defaults() -> None:
    options = SocketOptions()
    assert 0 < options.linger <= 1
    assert 0 < options.send_timeout < math.inf
    assert options.max_message_size > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.linger = -1  # type: ignore[misc]
    with Socket(zmq.DEALER) as dealer:
        assert dealer.raw.linger == int(options.linger * 1000)
        assert dealer.raw.getsockopt(zmq.MAXMSGSIZE) == options.max_message_size
        assert dealer.raw.sndtimeo == int(options.send_timeout * 1000)


def test_a_routing_id_is_applied() -> None:
    with Socket(zmq.ROUTER) as router, Socket(zmq.DEALER, routing_id=b"worker-1") as dealer:
        dealer.connect(router.bind())
        dealer.send(b"hi")
        assert router.recv_multipart(timeout=5) == [b"worker-1", b"hi"]


# -- PUB/SUB with exact topic prefixes -----------------------------------------------------------


def test_subscribing_to_publish_prefixes_matches_the_topic_exactly() -> None:
    with Socket(zmq.PUB) as pub, Socket(zmq.SUB) as sub:
        for prefix in publish_prefixes("news"):
            sub.raw.subscribe(prefix)
        sub.connect(pub.bind())
        received: list[bytes] = []
        deadline = Deadline.after(5)
        seq = 0
        while len(received) < 3 and not deadline.expired():
            # a SUB joins late: keep publishing until its subscription has reached the PUB
            pub.send(encode_publish("newsletter", SENDER, seq, "no"))
            pub.send(encode_publish("new", SENDER, seq, "no"))
            pub.send(encode_publish("news", SENDER, seq, "yes"))
            seq += 1
            while sub.poll(timeout=0.01):
                received.append(sub.recv(timeout=0))
        assert len(received) >= 3
        assert {decode(frame)[2] for frame in received} == {"news"}


# -- ownership and closing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "use",
    [
        lambda s: s.recv(timeout=0.01),
        lambda s: s.recv_multipart(timeout=0.01),
        lambda s: s.poll(timeout=0.01),
        lambda s: s.send(b"x"),
        lambda s: s.send_multipart([b"x"]),
        lambda s: s.bind(),
        lambda s: s.connect("tcp://127.0.0.1:1"),
        lambda s: s.disconnect("tcp://127.0.0.1:1"),
    ],
    ids=["recv", "recv_multipart", "poll", "send", "send_multipart", "bind", "connect",
         "disconnect"],
)
def test_using_a_socket_from_another_thread_raises_wrong_thread(
    use: Callable[[Socket], Any],
) -> None:
    with Socket(zmq.DEALER) as dealer:
        raised = in_thread(lambda: use(dealer))
        assert isinstance(raised, WrongThread), raised
        assert dealer.endpoints == []
        assert dealer.poll(timeout=0) is False  # still fine in its own thread


def test_a_socket_made_in_another_thread_is_wrong_thread_here() -> None:
    handed: queue.Queue[Socket] = queue.Queue()
    release = threading.Event()

    def owner() -> None:
        with Socket(zmq.PULL) as pull:
            handed.put(pull)
            release.wait(timeout=10)

    thread = threading.Thread(target=owner, name="socket-owner")
    thread.start()
    try:
        pull = handed.get(timeout=10)
        with pytest.raises(WrongThread):
            pull.recv(timeout=0)
        with pytest.raises(WrongThread):
            pull.bind()
    finally:
        release.set()
        thread.join(timeout=10)
    assert pull.closed


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda s: s.recv(timeout=0.01), id="recv"),
        pytest.param(lambda s: s.recv_multipart(timeout=0.01), id="recv_multipart"),
        pytest.param(lambda s: s.poll(timeout=0.01), id="poll"),
        pytest.param(lambda s: s.send(b"x"), id="send"),
        pytest.param(lambda s: s.send_multipart([b"x"]), id="send_multipart"),
        pytest.param(lambda s: s.bind(), id="bind"),
        pytest.param(lambda s: s.connect("tcp://127.0.0.1:1"), id="connect"),
        pytest.param(lambda s: s.disconnect("tcp://127.0.0.1:1"), id="disconnect"),
    ],
)
def test_using_a_socket_after_close_raises_closed_error(use: Callable[[Socket], Any]) -> None:
    dealer = Socket(zmq.DEALER)
    dealer.close()
    with pytest.raises(ClosedError):
        use(dealer)


def test_recv_after_close_raises_closed_error_when_the_timeout_is_unchanged() -> None:
    pull = Socket(zmq.PULL)
    pull.bind()
    with pytest.raises(Timeout):
        pull.recv(timeout=0.01)
    pull.close()
    with pytest.raises(ClosedError):
        pull.recv(timeout=0.01)


def test_close_twice_is_fine_and_the_state_shows() -> None:
    dealer = Socket(zmq.DEALER)
    dealer.bind()
    assert not dealer.closed
    dealer.close()
    dealer.close()
    assert dealer.closed
    assert "closed" in repr(dealer)


def test_a_closed_socket_is_still_closed_when_used_from_another_thread() -> None:
    dealer = Socket(zmq.DEALER)
    dealer.close()
    assert isinstance(in_thread(lambda: dealer.send(b"x")), (WrongThread, ClosedError))


def test_open_sockets_tracks_open_sockets() -> None:
    first = Socket(zmq.PUSH)
    second = AsyncSocket(zmq.PULL)
    try:
        assert first in open_sockets()
        assert second in open_sockets()
        first.close()
        assert first not in open_sockets()
        assert second in open_sockets()
    finally:
        first.close()
        second.close()
    assert second not in open_sockets()
    with Socket(zmq.PAIR) as third:
        assert third in open_sockets()
    assert third not in open_sockets()


def test_close_does_not_hang_on_unsent_messages() -> None:
    push = Socket(zmq.PUSH, options=SocketOptions(linger=0.1))
    push.connect("tcp://127.0.0.1:1")  # nobody there: the message can never leave
    push.send(b"stuck")
    assert elapsed(push.close) < 0.1 + 0.5
    assert push.closed


# -- AsyncSocket ---------------------------------------------------------------------------------


def test_async_recv_times_out_after_about_its_timeout() -> None:
    async def main() -> float:
        with AsyncSocket(zmq.PULL) as pull:
            pull.bind()
            start = time.monotonic()
            with pytest.raises(Timeout):
                await pull.recv_async(timeout=0.2)
            took = time.monotonic() - start
            with pytest.raises(TimeoutError):
                await pull.recv_multipart_async(timeout=0.05)
            with pytest.raises(Timeout):
                await pull.recv_async(timeout=0)
            return took

    took = asyncio.run(main())
    assert 0.18 <= took < 0.2 + 0.5, took


def test_async_receives_a_message_that_arrives_while_waiting() -> None:
    async def main() -> tuple[bytes, list[bytes], float]:
        with AsyncSocket(zmq.PULL) as pull, Socket(zmq.PUSH) as push:
            push.connect(pull.bind())
            waiting = asyncio.ensure_future(pull.recv_async(timeout=10))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            start = time.monotonic()
            push.send(b"wake up")
            single = await waiting
            took = time.monotonic() - start
            push.send_multipart([b"a", b"b"])
            multi = await pull.recv_multipart_async(timeout=10)
            return single, multi, took

    single, multi, took = asyncio.run(main())
    assert single == b"wake up"
    assert multi == [b"a", b"b"]
    assert took < 2


def test_async_drains_a_burst_in_order() -> None:
    async def main() -> list[bytes]:
        with AsyncSocket(zmq.ROUTER) as router, AsyncSocket(zmq.DEALER) as dealer:
            dealer.connect(router.bind())
            for index in range(100):
                dealer.send(b"%d" % index)
            return [(await router.recv_multipart_async(timeout=5))[1] for _ in range(100)]

    assert asyncio.run(main()) == [b"%d" % index for index in range(100)]


def test_async_recv_after_close_raises_closed_error() -> None:
    async def main() -> None:
        pull = AsyncSocket(zmq.PULL)
        pull.close()
        pull.close()
        with pytest.raises(ClosedError):
            await pull.recv_async(timeout=0.01)
        with pytest.raises(ClosedError):
            await pull.recv_multipart_async(timeout=0.01)

    asyncio.run(main())


def test_async_recv_from_another_thread_raises_wrong_thread() -> None:
    with AsyncSocket(zmq.PULL) as pull:
        pull.bind()
        raised = in_thread(lambda: asyncio.run(pull.recv_async(timeout=0.05)))
        assert isinstance(raised, WrongThread), raised


def test_async_recv_from_another_thread_is_wrong_thread_even_when_a_message_waits() -> None:
    with AsyncSocket(zmq.PULL) as pull, Socket(zmq.PUSH) as push:
        push.connect(pull.bind())
        push.send(b"mine")
        assert pull.poll(timeout=5)
        for receive in (pull.recv_async, pull.recv_multipart_async):
            raised = in_thread(lambda: asyncio.run(receive(timeout=0.05)))  # noqa: B023
            assert isinstance(raised, WrongThread), raised
        assert pull.recv(timeout=0) == b"mine"  # still there for its owner


def test_async_send_nowait_and_wait_writable() -> None:
    async def main() -> list[bytes]:
        with AsyncSocket(zmq.PUSH, options=SocketOptions(send_hwm=1, immediate=True)) as push, \
                AsyncSocket(zmq.PULL) as pull:
            assert push.try_send(b"nobody yet") is False  # immediate: no connection, no queue
            push.connect(pull.bind())
            assert await push.wait_writable(timeout=5)
            assert push.try_send(b"one")
            return [await pull.recv_async(timeout=5)]

    assert asyncio.run(main()) == [b"one"]


def test_async_a_wait_for_reading_does_not_strand_a_parked_writer() -> None:
    async def main() -> bool:
        with AsyncSocket(zmq.DEALER, options=SocketOptions(immediate=True)) as dealer, \
                Socket(zmq.ROUTER) as router:
            writable = asyncio.ensure_future(dealer.wait_writable(timeout=5))
            await asyncio.sleep(0.01)  # parked: no connection yet
            dealer.connect(router.bind())
            time.sleep(0.1)  # connected, and the loop has not looked yet
            assert not await dealer.wait_readable(timeout=0.01)  # its EVENTS read takes the signal
            return await asyncio.wait_for(writable, 1.0)

    assert asyncio.run(main()) is True


def test_async_waiters_of_a_loop_closed_without_cancelling_them_do_not_trouble_the_next(
) -> None:
    with AsyncSocket(zmq.DEALER, options=SocketOptions(immediate=True)) as dealer, \
            Socket(zmq.ROUTER) as router:
        first = asyncio.new_event_loop()
        parked = first.create_task(dealer.wait_writable(timeout=5))
        first.run_until_complete(asyncio.sleep(0.01))  # parked in the first loop
        first.close()  # closed with the wait still parked (asyncio.run would cancel it)
        assert not parked.done()
        dealer.connect(router.bind())
        time.sleep(0.1)
        assert asyncio.run(dealer.wait_writable(timeout=1)) is True


def test_async_send_nowait_wakes_a_reader_parked_on_the_same_socket() -> None:
    async def main() -> bytes:
        with AsyncSocket(zmq.DEALER) as dealer, Socket(zmq.ROUTER) as router:
            dealer.connect(router.bind())
            assert dealer.try_send(b"hello")
            routing_id, _ = router.recv_multipart(timeout=5)
            waiting = asyncio.ensure_future(dealer.recv_async(timeout=0.5))
            await asyncio.sleep(0.01)  # parked on the descriptor
            router.send_multipart([routing_id, b"reply"])
            time.sleep(0.05)  # the reply is in, and the loop has not looked yet
            assert dealer.try_send(b"more")  # may swallow the descriptor's signal
            return await waiting

    assert asyncio.run(main()) == b"reply"


def test_async_a_plain_send_does_not_strand_a_parked_reader() -> None:
    async def main() -> bytes:
        with AsyncSocket(zmq.DEALER) as dealer, Socket(zmq.ROUTER) as router:
            dealer.connect(router.bind())
            dealer.send(b"hello")
            routing_id, _ = router.recv_multipart(timeout=5)
            waiting = asyncio.ensure_future(dealer.recv_async(timeout=0.5))
            await asyncio.sleep(0.01)
            router.send_multipart([routing_id, b"reply"])
            time.sleep(0.05)
            dealer.send(b"more")
            return await waiting

    assert asyncio.run(main()) == b"reply"


def test_async_closing_while_a_task_waits_raises_closed_error_in_that_task() -> None:
    async def main() -> None:
        pull = AsyncSocket(zmq.PULL)
        pull.bind()
        waiting = asyncio.ensure_future(pull.recv_async(timeout=5))
        await asyncio.sleep(0.01)
        pull.close()
        with pytest.raises(ClosedError):
            await waiting

    asyncio.run(main())


def test_async_socket_used_in_a_second_event_loop_still_wakes() -> None:
    with AsyncSocket(zmq.PULL) as pull, Socket(zmq.PUSH) as push:
        push.connect(pull.bind())

        async def wait_then_send(payload: bytes) -> bytes:
            waiting = asyncio.ensure_future(pull.recv_async(timeout=0.5))
            await asyncio.sleep(0.02)
            push.send(payload)
            return await waiting

        assert asyncio.run(wait_then_send(b"first loop")) == b"first loop"
        assert asyncio.run(wait_then_send(b"second loop")) == b"second loop"


# -- Deadline ------------------------------------------------------------------------------------


def test_deadline_after_uses_the_given_now() -> None:
    assert Deadline.after(2.5, now=100.0) == Deadline(102.5)
    assert Deadline.after(0, now=7.0).at == 7.0
    assert Deadline.after(3, now=1.0).at == 4.0


def test_deadline_after_defaults_to_the_monotonic_clock() -> None:
    before = time.monotonic()
    deadline = Deadline.after(2.0)
    after = time.monotonic()
    assert before + 2.0 <= deadline.at <= after + 2.0
    assert 1.0 < deadline.remaining() <= 2.0
    assert not deadline.expired()
    assert Deadline.after(0).expired()


def test_remaining_counts_down_and_never_goes_negative() -> None:
    deadline = Deadline.after(1.5, now=10.0)
    assert deadline.remaining(now=10.0) == 1.5
    assert deadline.remaining(now=11.0) == 0.5
    assert deadline.remaining(now=11.5) == 0.0
    assert deadline.remaining(now=50.0) == 0.0


@pytest.mark.parametrize(
    ("seconds", "now", "expected_ms"),
    [
        (0.5, 10.0, 500),
        (1.0, 0.0, 1000),
        (0.0015, 0.0, 2),  # 1.5 ms rounds up
        (0.0001, 0.0, 1),  # a tenth of a millisecond still waits one
        (0.0, 0.0, 0),
        (2.0, 1000.0, 2000),
    ],
)
def test_remaining_ms_rounds_up(seconds: float, now: float, expected_ms: int) -> None:
    assert Deadline.after(seconds, now=now).remaining_ms(now=now) == expected_ms


def test_remaining_ms_never_ends_a_wait_before_the_deadline() -> None:
    deadline = Deadline.after(0.5, now=10.0)
    for now in (10.0, 10.1234567, 10.4999, 10.49999999):
        milliseconds = deadline.remaining_ms(now=now)
        assert isinstance(milliseconds, int)
        assert now + milliseconds / 1000 >= deadline.at
        assert milliseconds - 1 < deadline.remaining(now=now) * 1000 + 1e-6
    assert deadline.remaining_ms(now=10.5) == 0
    assert deadline.remaining_ms(now=99.0) == 0


def test_expired_at_exactly_the_deadline_and_not_before() -> None:
    deadline = Deadline.after(1.0, now=5.0)
    assert not deadline.expired(now=5.0)
    assert not deadline.expired(now=5.999999)
    assert deadline.expired(now=6.0)
    assert deadline.expired(now=60.0)


@pytest.mark.parametrize(
    "seconds",
    [-1, -0.001, -math.inf, math.nan, math.inf, 10**400, "1", None, [1]],
    ids=["-1", "-1ms", "-inf", "nan", "inf", "huge-int", "text", "none", "list"],
)
def test_deadline_after_refuses_what_is_not_a_finite_time(seconds: Any) -> None:
    with pytest.raises(ConfigError):
        Deadline.after(seconds, now=0.0)
    with pytest.raises(ConfigError):
        Deadline.after(seconds)


def test_a_deadline_is_a_frozen_value() -> None:
    deadline = Deadline.after(1, now=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        deadline.at = 5.0  # type: ignore[misc]
    assert deadline == Deadline(1.0)
    assert hash(deadline) == hash(Deadline(1.0))


def test_the_public_names_are_exported() -> None:
    for name in ("AsyncSocket", "Socket", "SocketOptions", "Deadline", "Timeout", "WrongThread",
                 "ClosedError", "ConfigError"):
        assert name in zmqkit.__all__
    assert zmqkit.Socket is Socket
    assert zmqkit.Timeout is Timeout


def test_a_wakeup_is_never_lost_when_set_races_take() -> None:
    """A ``set`` that lands while the woken thread takes its wake-up must not leave the Wakeup
    deaf: a later ``set`` must still wake the poller (it once went deaf for good)."""
    from zmqkit import Poller, Wakeup

    wakeup = Wakeup()
    reader = wakeup._reader

    class SetLandsDuringTake:
        """The reader, with another thread's ``set`` arriving just as the drain begins."""

        def fileno(self) -> int:
            return reader.fileno()

        def recv(self, size: int) -> bytes:
            wakeup.set()
            return reader.recv(size)

        def close(self) -> None:
            reader.close()

    wakeup._reader = SetLandsDuringTake()  # type: ignore[assignment]
    poller = Poller([wakeup])
    try:
        wakeup.set()
        assert wakeup in poller.poll(1.0)  # taken: the racing set() lands inside the drain
        wakeup.set()
        assert wakeup in poller.poll(1.0), "the set() after the race did not wake the poller"
    finally:
        wakeup.close()

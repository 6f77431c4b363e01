"""``zmqkit bench``: each pattern against the best plain pyzmq code doing the same work.

Every workload runs both ways in the same invocation, two processes over TCP loopback, with the
same CBOR-encoded payloads. Rounds alternate raw and zmqkit; each figure is the median of the
rounds, and ``ratio = zmqkit / raw`` (higher is better). The raw side of each workload is a few
plain pyzmq lines with no zmqkit code on its path, so that the comparison can be read at a glance.

    workload    raw pyzmq                                  zmqkit
    rpc         REQ/REP, one call at a time                rpc.Client -> rpc.serve
    async-rpc   DEALER/ROUTER, 1000 calls in flight         rpc.AsyncClient.submit -> rpc.serve
    pubsub      PUB/SUB, one frame per message + prefix    Publisher(batch=False) -> Subscriber
    pubsub-batched  the same raw side                      Publisher() (batches while busy) ->
                                                           Subscriber
    large       PUB/SUB, 1 MiB binary payloads, no copy    pubsub.Publisher -> pubsub.Subscriber
    fanout      one PUB, 8 SUB processes: total received   Publisher -> 8 Subscriber processes
    clients     16 threads, a REQ each, one ROUTER server  16 threads sharing one rpc.Client
    latency     REQ/REP round trips, p50 and p99            rpc.Client.call, one at a time
                (ratio = raw / zmqkit: lower latency is better)
    discovery   (no raw side: the targets are the scale)   20 nodes to a full mesh; idle CPU/node
    codec       cbor2.dumps + loads of the payload         encode_reply + decode (one process; not
                                                           in "all")
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import cbor2
import zmq

import zmqkit
from zmqkit import SocketOptions, codec
from zmqkit.patterns import pubsub, rpc

__all__ = ["WORKLOADS", "Result", "run"]

PAYLOAD = {"seq": 0, "sym": "ABC", "px": 101.25, "qty": 100}
TOPIC = "ticks"
RAW_TOPIC = b"ticks\0"
BIG = 1 << 20
DEEP_QUEUE = SocketOptions(send_hwm=0, recv_hwm=0)  # a benchmark counts what arrives: no drops
STOP_POLL_MS = 100


@dataclass(frozen=True)
class Result:
    workload: str
    raw: float
    ours: float
    ratio: float
    unit: str
    note: str = ""


def _spawn(
    target: Callable[..., None], *args: Any
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """Start ``target(conn, *args)`` in a fresh process; return it and our end of its pipe."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(theirs, *args), daemon=True)
    process.start()
    return process, ours


def _finish(process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
    with contextlib.suppress(OSError):  # it may have ended already (or failed: joined below)
        conn.send("stop")
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)
    conn.close()


def _expect(conn: Connection, timeout: float = 30.0) -> Any:
    if not conn.poll(timeout):
        raise zmqkit.Timeout(f"benchmark helper process said nothing in {timeout} s")
    return conn.recv()


# -- rpc: REQ/REP round trips ------------------------------------------------------------------


def raw_rpc_server(conn: Connection) -> None:
    """Raw pyzmq REP server process: answer each request until told to stop."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    rep.rcvtimeo = STOP_POLL_MS
    conn.send(rep.bind_to_random_port("tcp://127.0.0.1"))
    while not conn.poll():
        try:
            request = rep.recv()
        except zmq.Again:
            continue
        rep.send(cbor2.dumps(cbor2.loads(request)))
    rep.close()


def raw_rpc_client(port: int, calls: int) -> float:
    """Raw pyzmq REQ client: ``calls`` round trips; returns the seconds they took."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = 5000
    req.connect(f"tcp://127.0.0.1:{port}")
    req.send(cbor2.dumps(PAYLOAD))
    req.recv()
    started = time.perf_counter()
    for _ in range(calls):
        req.send(cbor2.dumps(PAYLOAD))
        cbor2.loads(req.recv())
    elapsed = time.perf_counter() - started
    req.close()
    return calls / elapsed


def _echo(x: Any) -> Any:
    return x


def zmqkit_rpc_server(conn: Connection, beacon_port: int) -> None:
    """zmqkit RPC server process: ``rpc.serve`` an echo until told to stop."""
    with zmqkit.Node("bench-echo", port=beacon_port) as node:
        rpc.serve(node, [_echo])
        conn.send("ready")
        conn.poll(600)


def zmqkit_rpc_client(beacon_port: int, calls: int) -> float:
    """``rpc.Client``: ``calls`` round trips; returns the seconds they took."""
    with (
        zmqkit.Node("bench-caller", port=beacon_port, announce=False) as node,
        rpc.Client(node, "bench-echo") as client,
    ):
        client.call("_echo", PAYLOAD)
        started = time.perf_counter()
        for _ in range(calls):
            client.call("_echo", PAYLOAD)
        return calls / (time.perf_counter() - started)


# -- async-rpc: DEALER/ROUTER, many calls in flight --------------------------------------------


def raw_router_server(conn: Connection) -> None:
    """Raw pyzmq ROUTER server process: answer each request until told to stop."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.sndhwm = router.rcvhwm = 0
    router.rcvtimeo = STOP_POLL_MS
    conn.send(router.bind_to_random_port("tcp://127.0.0.1"))
    while not conn.poll():
        try:
            identity, request = router.recv_multipart()
        except zmq.Again:
            continue
        router.send_multipart([identity, cbor2.dumps(cbor2.loads(request))])
    router.close()


def raw_dealer_client(port: int, calls: int, window: int) -> float:
    """Raw pyzmq DEALER client: ``calls`` requests, ``window`` in flight; returns seconds."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = dealer.rcvhwm = 0
    dealer.rcvtimeo = 5000
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(cbor2.dumps(PAYLOAD))
    dealer.recv()
    started = time.perf_counter()
    for _ in range(min(window, calls)):
        dealer.send(cbor2.dumps(PAYLOAD))
    for sent in range(window, calls + window):
        cbor2.loads(dealer.recv())
        if sent < calls:
            dealer.send(cbor2.dumps(PAYLOAD))
    elapsed = time.perf_counter() - started
    dealer.close()
    return calls / elapsed


def zmqkit_async_client(beacon_port: int, calls: int, window: int) -> float:
    """``rpc.AsyncClient``: ``calls`` requests, ``window`` in flight; returns seconds."""
    async def pipeline() -> float:
        with zmqkit.Node("bench-caller", port=beacon_port, announce=False) as node:
            async with rpc.AsyncClient(node, "bench-echo") as client:
                await client.call("_echo", PAYLOAD)
                started = time.perf_counter()
                in_flight = deque(
                    client.submit("_echo", PAYLOAD) for _ in range(min(window, calls))
                )
                for _ in range(window, calls):
                    await in_flight.popleft()
                    in_flight.append(client.submit("_echo", PAYLOAD))
                while in_flight:
                    await in_flight.popleft()
                return calls / (time.perf_counter() - started)

    return asyncio.run(pipeline())


# -- pubsub and large: one topic, one subscriber -----------------------------------------------


def raw_publisher(conn: Connection, count: int, big: bool) -> None:
    """Raw pyzmq PUB process: publish ``count`` messages (1 MiB each if ``big``)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 1000
    pub.sndhwm = 0
    conn.send(pub.bind_to_random_port("tcp://127.0.0.1"))
    _expect(conn)  # the subscriber is connected
    if big:
        frame = RAW_TOPIC + cbor2.dumps(b"x" * BIG)
        for _ in range(count):
            pub.send(frame, copy=False)
    else:
        for seq in range(count):
            pub.send(RAW_TOPIC + cbor2.dumps({**PAYLOAD, "seq": seq}))
    _expect(conn)
    pub.close()


def raw_subscriber(conn: Connection, count: int, big: bool) -> tuple[float, int]:
    """Raw pyzmq SUB: receive ``count`` messages; returns (seconds, bytes received)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    sub.rcvtimeo = 2000
    sub.subscribe(RAW_TOPIC)
    sub.connect(f"tcp://127.0.0.1:{_expect(conn)}")
    time.sleep(0.3)
    conn.send("go")
    received, started = 0, 0.0
    try:
        while received < count:
            if big:  # no copy of a large frame; a small one is faster copied (pyzmq's advice)
                cbor2.loads(sub.recv(copy=False).buffer[len(RAW_TOPIC) :])
            else:
                cbor2.loads(sub.recv()[len(RAW_TOPIC) :])
            received += 1
            if received == 1:
                started = time.perf_counter()
    except zmq.Again:
        pass
    elapsed = time.perf_counter() - started
    sub.close()
    return (received - 1) / elapsed if received > 1 else 0.0, count - received


def zmqkit_publisher(
    conn: Connection, beacon_port: int, count: int, big: bool, batch: bool = True
) -> None:
    """``pubsub.Publisher`` process: publish ``count`` messages (``batch``: the default)."""
    with zmqkit.Node("bench-pub", port=beacon_port) as node:
        publisher = pubsub.Publisher(node, options=DEEP_QUEUE, batch=batch)
        conn.send("ready")
        _expect(conn)
        if big:
            blob = b"x" * BIG
            for _ in range(count):
                publisher.publish(TOPIC, blob)
        else:
            for seq in range(count):
                publisher.publish(TOPIC, {**PAYLOAD, "seq": seq})
        _expect(conn)


def zmqkit_subscriber(conn: Connection, beacon_port: int, count: int) -> tuple[float, int]:
    """``pubsub.Subscriber``: receive ``count`` messages; returns (seconds, bytes received)."""
    with (
        zmqkit.Node("bench-sub", port=beacon_port, announce=False) as node,
        pubsub.Subscriber(node, TOPIC, options=DEEP_QUEUE) as subscriber,
    ):
        _expect(conn)
        subscriber.wait_for_publishers(timeout=10.0)
        time.sleep(0.25)
        conn.send("go")
        received, started = 0, 0.0
        try:
            while received < count:
                subscriber.recv(2.0)
                received += 1
                if received == 1:
                    started = time.perf_counter()
        except zmqkit.Timeout:
            pass
        elapsed = time.perf_counter() - started
        return (received - 1) / elapsed if received > 1 else 0.0, count - received


# -- fanout: one publisher, eight subscriber processes ------------------------------------------

FANOUT = 8


def fanout_subscriber(conn: Connection, raw: bool, where: int, count: int) -> None:
    """A subscriber process of the fanout: receive up to ``count`` messages; report how many
    and when the first and the last arrived (``time.monotonic``: one clock for all processes)."""
    if raw:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 0
        sub.rcvtimeo = 2000
        sub.subscribe(RAW_TOPIC)
        sub.connect(f"tcp://127.0.0.1:{where}")
        time.sleep(0.3)
        conn.send("ready")
        received, first = 0, 0.0
        try:
            while received < count:
                cbor2.loads(sub.recv()[len(RAW_TOPIC) :])
                received += 1
                if received == 1:
                    first = time.monotonic()
        except zmq.Again:
            pass
        conn.send((received, first, time.monotonic()))
        sub.close()
        _expect(conn)  # told to stop
        return
    with (
        zmqkit.Node("bench-fan", port=where, announce=False) as node,
        pubsub.Subscriber(node, TOPIC, options=DEEP_QUEUE) as subscriber,
    ):
        subscriber.wait_for_publishers(timeout=10.0)
        time.sleep(0.25)
        conn.send("ready")
        received, first = 0, 0.0
        try:
            while received < count:
                subscriber.recv(2.0)
                received += 1
                if received == 1:
                    first = time.monotonic()
        except zmqkit.Timeout:
            pass
        conn.send((received, first, time.monotonic()))
        _expect(conn)  # told to stop


def _fanout_round(sizes: Sizes, raw: bool) -> tuple[float, int]:
    """Messages received per second by all subscribers together, and how many were lost."""
    count = sizes.fanout_messages
    port = _free_port()
    if raw:
        publisher, pub_conn = _spawn(raw_publisher, count, False)
        where = _expect(pub_conn)
    else:
        publisher, pub_conn = _spawn(zmqkit_publisher, port, count, False)
        _expect(pub_conn)
        where = port
    subscribers = [_spawn(fanout_subscriber, raw, where, count) for _ in range(FANOUT)]
    try:
        for _, conn in subscribers:
            _expect(conn)
        pub_conn.send("go")
        reports = [_expect(conn, 60) for _, conn in subscribers]
    finally:
        for process, conn in subscribers:
            _finish(process, conn)
        _finish(publisher, pub_conn)
    received = sum(report[0] for report in reports)
    started = min(report[1] for report in reports if report[0])
    ended = max(report[2] for report in reports)
    return received / (ended - started) if ended > started else 0.0, FANOUT * count - received


# -- clients: sixteen threads calling one server ---------------------------------------------

CLIENT_THREADS = 16


def _in_threads(calls_per_thread: Callable[[], None]) -> float:
    """Run ``calls_per_thread`` in CLIENT_THREADS threads at once; the seconds they took."""
    barrier = threading.Barrier(CLIENT_THREADS + 1)

    def thread() -> None:
        barrier.wait()
        calls_per_thread()

    threads = [threading.Thread(target=thread) for _ in range(CLIENT_THREADS)]
    for each in threads:
        each.start()
    barrier.wait()
    started = time.perf_counter()
    for each in threads:
        each.join()
    return time.perf_counter() - started


def raw_clients(port: int, calls: int) -> float:
    """CLIENT_THREADS threads, a REQ socket each, ``calls`` round trips in all: calls/s."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    each = calls // CLIENT_THREADS

    def calls_per_thread() -> None:
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.rcvtimeo = 5000
        req.connect(f"tcp://127.0.0.1:{port}")
        for _ in range(each):
            req.send(cbor2.dumps(PAYLOAD))
            cbor2.loads(req.recv())
        req.close()

    return each * CLIENT_THREADS / _in_threads(calls_per_thread)


def zmqkit_clients(beacon_port: int, calls: int) -> float:
    """CLIENT_THREADS threads sharing one ``rpc.Client``, ``calls`` in all: calls/s."""
    each = calls // CLIENT_THREADS
    with (
        zmqkit.Node("bench-callers", port=beacon_port, announce=False) as node,
        rpc.Client(node, "bench-echo") as client,
    ):
        client.call("_echo", PAYLOAD)

        def calls_per_thread() -> None:
            for _ in range(each):
                client.call("_echo", PAYLOAD)

        return each * CLIENT_THREADS / _in_threads(calls_per_thread)


def _clients_round(sizes: Sizes, raw: bool) -> float:
    if raw:  # a REP socket answers many REQ peers, one request at a time, as the server does
        process, conn = _spawn(raw_rpc_server)
        try:
            return raw_clients(_expect(conn), sizes.rpc_calls)
        finally:
            _finish(process, conn)
    port = _free_port()
    process, conn = _spawn(zmqkit_rpc_server, port)
    try:
        _expect(conn)
        return zmqkit_clients(port, sizes.rpc_calls)
    finally:
        _finish(process, conn)


# -- latency: one call at a time, each one timed ----------------------------------------------


def raw_latencies(port: int, calls: int) -> list[float]:
    """REQ/REP round trips, one at a time: the seconds each took."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = 5000
    req.connect(f"tcp://127.0.0.1:{port}")
    req.send(cbor2.dumps(PAYLOAD))
    req.recv()
    clock, took = time.perf_counter, []
    for _ in range(calls):
        started = clock()
        req.send(cbor2.dumps(PAYLOAD))
        cbor2.loads(req.recv())
        took.append(clock() - started)
    req.close()
    return took


def zmqkit_latencies(beacon_port: int, calls: int) -> list[float]:
    """``rpc.Client.call``, one at a time: the seconds each took."""
    with (
        zmqkit.Node("bench-caller", port=beacon_port, announce=False) as node,
        rpc.Client(node, "bench-echo") as client,
    ):
        client.call("_echo", PAYLOAD)
        clock, took = time.perf_counter, []
        for _ in range(calls):
            started = clock()
            client.call("_echo", PAYLOAD)
            took.append(clock() - started)
        return took


def _latency_round(sizes: Sizes, raw: bool) -> tuple[float, float]:
    """The p50 and p99 of one round's round trips, in microseconds."""
    if raw:
        process, conn = _spawn(raw_rpc_server)
        try:
            took = raw_latencies(_expect(conn), sizes.rpc_calls)
        finally:
            _finish(process, conn)
    else:
        port = _free_port()
        process, conn = _spawn(zmqkit_rpc_server, port)
        try:
            _expect(conn)
            took = zmqkit_latencies(port, sizes.rpc_calls)
        finally:
            _finish(process, conn)
    cuts = statistics.quantiles(took, n=100)
    return 1e6 * cuts[49], 1e6 * cuts[98]


# -- the workloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    rpc_calls: int
    async_calls: int
    messages: int
    big_messages: int
    fanout_messages: int
    discovery_nodes: int
    idle_seconds: float


FULL = Sizes(  # five rounds of each fit in about three minutes here; more short rounds beat
    rpc_calls=10_000,  # fewer long ones on a machine whose load drifts
    async_calls=50_000,
    messages=200_000,
    big_messages=1000,
    fanout_messages=20_000,  # to each of the 8 subscribers
    discovery_nodes=20,
    idle_seconds=10.0,
)
QUICK = Sizes(
    rpc_calls=300,
    async_calls=2_000,
    messages=2_000,
    big_messages=10,
    fanout_messages=300,
    discovery_nodes=5,
    idle_seconds=1.0,
)


def _rpc_round(sizes: Sizes, raw: bool) -> float:
    if raw:
        process, conn = _spawn(raw_rpc_server)
        try:
            return raw_rpc_client(_expect(conn), sizes.rpc_calls)
        finally:
            _finish(process, conn)
    port = _free_port()
    process, conn = _spawn(zmqkit_rpc_server, port)
    try:
        _expect(conn)
        return zmqkit_rpc_client(port, sizes.rpc_calls)
    finally:
        _finish(process, conn)


def _async_round(sizes: Sizes, raw: bool) -> float:
    window = 1000
    if raw:
        process, conn = _spawn(raw_router_server)
        try:
            return raw_dealer_client(_expect(conn), sizes.async_calls, window)
        finally:
            _finish(process, conn)
    port = _free_port()
    process, conn = _spawn(zmqkit_rpc_server, port)
    try:
        _expect(conn)
        return zmqkit_async_client(port, sizes.async_calls, window)
    finally:
        _finish(process, conn)


def _pubsub_round(count: int, big: bool, raw: bool, batch: bool = True) -> tuple[float, int]:
    if raw:
        process, conn = _spawn(raw_publisher, count, big)
        try:
            return raw_subscriber(conn, count, big)
        finally:
            _finish(process, conn)
    port = _free_port()
    process, conn = _spawn(zmqkit_publisher, port, count, big, batch)
    try:
        return zmqkit_subscriber(conn, port, count)
    finally:
        _finish(process, conn)


def _free_port() -> int:
    """A random beacon port, so a benchmark never meets other nodes on the machine."""
    return random.randint(20_000, 40_000)


def _discovery(sizes: Sizes) -> tuple[float, float]:
    """Seconds for ``discovery_nodes`` nodes started at once to see each other, and the CPU
    share of one more idle node (in its own process) while that mesh keeps beaconing."""
    port = _free_port()
    nodes = [zmqkit.Node(f"mesh-{i}", port=port) for i in range(sizes.discovery_nodes)]
    started = time.perf_counter()
    try:
        for node in nodes:
            node.start()
        deadline = zmqkit.Deadline.after(10.0)
        while any(len(node.peers()) < len(nodes) - 1 for node in nodes) and not deadline.expired():
            time.sleep(0.001)
        mesh_seconds = time.perf_counter() - started
        process, conn = _spawn(idle_node, port, sizes.idle_seconds)
        try:
            idle_percent = float(_expect(conn, sizes.idle_seconds + 30))
        finally:
            _finish(process, conn)
    finally:
        for node in nodes:
            node.close()
    return mesh_seconds, idle_percent


def idle_node(conn: Connection, beacon_port: int, seconds: float) -> None:
    """Run one idle node and report the share of a core its process used, in percent."""
    with zmqkit.Node("idle", port=beacon_port):
        time.sleep(0.5)
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        conn.send(100.0 * (time.process_time() - cpu) / (time.perf_counter() - wall))
    _expect(conn)


def _codec_round(sizes: Sizes, raw: bool) -> float:
    """Encode and decode ``messages`` times in this process: round trips per second."""
    count = sizes.messages // 2
    started = time.perf_counter()
    if raw:
        for seq in range(count):
            cbor2.loads(cbor2.dumps(PAYLOAD | {"seq": seq}))
    else:
        for seq in range(count):
            codec.decode(codec.encode_reply(seq, PAYLOAD | {"seq": seq}))
    return count / (time.perf_counter() - started)


WORKLOADS = ("rpc", "async-rpc", "pubsub", "pubsub-batched", "large", "fanout", "clients",
             "latency", "discovery")
UNITS = {
    "rpc": "calls/s", "async-rpc": "calls/s", "clients": "calls/s", "codec": "round trips/s",
    "pubsub": "msg/s", "pubsub-batched": "msg/s", "fanout": "msg/s", "large": "MiB/s",
}
LOSSY = frozenset({"pubsub", "pubsub-batched", "large", "fanout"})  # their notes count losses


def run(
    workloads: list[str],
    *,
    rounds: int = 5,
    quick: bool = False,
    progress: Callable[[str], None] = lambda step: None,
) -> list[Result]:
    """Run ``workloads`` and return one Result per figure."""
    sizes = QUICK if quick else FULL
    results = []
    for workload in workloads:
        if workload == "discovery":
            progress("discovery")
            mesh, idle = _discovery(sizes)
            results.append(
                Result(
                    f"discovery-{sizes.discovery_nodes}",
                    1.0,
                    mesh,
                    1.0 / mesh if mesh else 0.0,
                    "s to full mesh",
                    "raw = the 1 s target; ratio = target / ours",
                )
            )
            results.append(
                Result(
                    "idle-cpu",
                    1.0,
                    idle,
                    1.0 / idle if idle else float("inf"),
                    "% of a core per node",
                    "raw = the 1 % target; ratio = target / ours",
                )
            )
            continue
        raw_figures: list[float] = []
        our_figures: list[float] = []
        raw_p99: list[float] = []
        our_p99: list[float] = []
        lost = [0, 0]
        for index in range(rounds):
            for raw in (index % 2 == 0, index % 2 == 1):
                progress(f"{workload} round {index + 1}/{rounds} {'raw' if raw else 'zmqkit'}")
                if workload == "rpc":
                    figure = _rpc_round(sizes, raw)
                elif workload == "async-rpc":
                    figure = _async_round(sizes, raw)
                elif workload == "clients":
                    figure = _clients_round(sizes, raw)
                elif workload == "codec":
                    figure = _codec_round(sizes, raw)
                elif workload == "latency":
                    p50, p99 = _latency_round(sizes, raw)
                    (raw_p99 if raw else our_p99).append(p99)
                    figure = p50
                elif workload == "fanout":
                    figure, missing = _fanout_round(sizes, raw)
                    lost[raw] += missing
                else:
                    big = workload == "large"
                    count = sizes.big_messages if big else sizes.messages
                    figure, missing = _pubsub_round(count, big, raw, workload != "pubsub")
                    lost[raw] += missing
                    if big:
                        figure = figure * BIG / (1 << 20)
                (raw_figures if raw else our_figures).append(figure)
        raw_median, our_median = statistics.median(raw_figures), statistics.median(our_figures)
        if workload == "latency":  # lower is better: ratio = raw / zmqkit
            for name, raws, ours in (("latency-p50", raw_figures, our_figures),
                                     ("latency-p99", raw_p99, our_p99)):
                raw_median, our_median = statistics.median(raws), statistics.median(ours)
                results.append(Result(name, raw_median, our_median,
                                      raw_median / our_median if our_median else 0.0,
                                      "µs per call", "ratio = raw / zmqkit (lower is better)"))
            continue
        unit = UNITS[workload]
        note = f"lost raw {lost[1]}, zmqkit {lost[0]}" if workload in LOSSY else ""
        results.append(
            Result(
                workload,
                raw_median,
                our_median,
                our_median / raw_median if raw_median else 0.0,
                unit,
                note,
            )
        )
    return results


def as_json(results: list[Result]) -> list[dict[str, Any]]:
    """The results as JSON-ready dicts (``zmqkit bench --json``)."""
    return [asdict(result) for result in results]

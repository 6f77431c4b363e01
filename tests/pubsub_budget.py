"""Pub/sub's per-message budget: the CPU each thread spends per message, raw pyzmq against
zmqkit, and how late a message published on an idle publisher arrives.

    python tests/pubsub_budget.py cpu [--messages 200000] [--runs 3] [--big]
    python tests/pubsub_budget.py idle [--messages 2000] [--runs 3]
    python tests/pubsub_budget.py steps

``cpu`` runs a publisher process and a subscriber process per side, as ``zmqkit bench pubsub``
does (the same payload, one topic, tcp loopback, no high-water marks), and reads the CPU clock
of every thread of both processes before and after the messages: the Python threads by
``time.thread_time()`` (the publisher's sending thread by its own CPU clock), ZeroMQ's I/O
threads from ``/proc``. The sides: ``raw`` (the bench's plain pyzmq loops), ``per-message``
(``Publisher(batch=False)``) and ``default`` (``Publisher()``). Each figure is the median of the
runs, in microseconds per message received; ``rate`` is what the subscriber received per second.
With ``--big`` the messages are 1 MiB byte strings, as in ``zmqkit bench large``.

``idle`` publishes one message at a time, waiting 2 to 4 ms between them (an idle publisher),
each carrying ``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for both processes), and
reports the p50 and p99 of the time from the call to its arrival at the subscriber's ``recv``.

``steps`` times each step of one message on its own, in one process (best of 5 runs, in
nanoseconds): encoding and framing, a send and a receive on an inproc pair, the decode, and
zmqkit's intake of frames, per message and in batches of 1024.

Prints one JSON object. Not a test: a benchmark, perturbed by whatever else the machine runs
(the load average is printed with the figures). The figures live in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import threading
import time
import timeit
import types
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cbor2
import zmq
from zmqkit.patterns import pubsub

import zmqkit
from zmqkit import codec
from zmqkit.bench import BIG, DEEP_QUEUE, PAYLOAD, RAW_TOPIC, TOPIC

BLOB = b"x" * BIG  # --big: the payload of the bench's large workload
SIDES = ("raw", "per-message", "default")
PUBLISHER_FLAGS: dict[str, dict[str, Any]] = {"per-message": {"batch": False}, "default": {},
                                              "batched": {"batch": True}}


# -- CPU clocks of every thread of this process ----------------------------------------------


def _role(name: str) -> str:
    if name == "MainThread":
        return "main"
    if name.startswith("zmqkit-pub:"):
        return "sending thread"
    if name.startswith("ZMQbg/IO"):
        return "zmq I/O"
    return "other"


def thread_clocks() -> dict[str, float]:
    """Seconds of CPU per role of thread: main (``time.thread_time()``), sending thread (its
    CPU clock), zmq I/O and other (``/proc``, in nanoseconds), of this process so far."""
    clocks = {"main": time.thread_time(), "sending thread": 0.0, "zmq I/O": 0.0, "other": 0.0}
    python = {thread.native_id: thread for thread in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
        thread = python.get(int(tid))
        if thread is not None and thread is threading.main_thread():
            continue
        if thread is not None and thread.ident is not None:
            role = _role(thread.name)
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        else:
            try:
                with open(f"/proc/self/task/{tid}/comm") as comm:
                    role = _role(comm.read().strip())
                with open(f"/proc/self/task/{tid}/schedstat") as schedstat:
                    seconds = int(schedstat.read().split()[0]) / 1e9
            except OSError:  # the thread ended meanwhile
                continue
        clocks[role] += seconds
    return clocks


def _spent(before: dict[str, float]) -> dict[str, float]:
    after = thread_clocks()
    return {role: after[role] - before[role] for role in after}


def _spawn(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(theirs, *args), daemon=True)
    process.start()
    return process, ours


def _expect(conn: Connection, timeout: float = 60.0) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"a benchmark process said nothing in {timeout} s")
    return conn.recv()


# -- the two processes of one run -------------------------------------------------------------


def _raw_socket(kind: int, linger: int) -> zmq.Socket[bytes]:
    """A plain pyzmq socket, as the bench's raw side makes it: no high-water mark."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(kind)
    sock.linger = linger
    sock.sndhwm = sock.rcvhwm = 0
    return sock


def publisher_process(conn: Connection, side: str, port: int, count: int, mode: str) -> None:
    """Publish ``count`` messages when told; report the CPU of each thread once told again."""
    if side == "raw":
        pub = _raw_socket(zmq.PUB, linger=1000)
        conn.send(pub.bind_to_random_port("tcp://127.0.0.1"))
        big_frame = RAW_TOPIC + cbor2.dumps(BLOB)

        def publish(data: Any) -> None:
            if data is BLOB:  # as the bench does: one frame, sent again and again, no copy
                pub.send(big_frame, copy=False)
            else:
                pub.send(RAW_TOPIC + cbor2.dumps(data))

        _publish(conn, publish, count, mode)
        pub.close()
        return
    with zmqkit.Node("budget-pub", port=port) as node:
        publisher = pubsub.Publisher(node, options=DEEP_QUEUE, **PUBLISHER_FLAGS[side])
        conn.send(port)
        _publish(conn, lambda data: publisher.publish(TOPIC, data), count, mode)


def _publish(conn: Connection, publish: Callable[[Any], object], count: int, mode: str) -> None:
    _expect(conn)  # the subscriber is connected
    if mode == "idle":
        for seq in range(count):
            time.sleep(random.uniform(0.002, 0.004))
            publish({**PAYLOAD, "seq": seq, "t": time.perf_counter()})
        _expect(conn)
        return
    before = thread_clocks()
    for seq in range(count):
        publish(BLOB if mode == "big" else {**PAYLOAD, "seq": seq})
    _expect(conn)  # everything arrived
    conn.send(_spent(before))


def subscriber_process(conn: Connection, side: str, where: int, count: int, mode: str) -> None:
    """Receive ``count`` messages; report the rate and the CPU of each thread, or the delays."""
    if side == "raw":
        sub = _raw_socket(zmq.SUB, linger=0)
        sub.rcvtimeo = 5000
        sub.subscribe(RAW_TOPIC)
        sub.connect(f"tcp://127.0.0.1:{where}")
        time.sleep(0.3)
        skip = len(RAW_TOPIC)
        if mode == "big":  # as the bench does: no copy of a large frame
            _receive(conn, lambda: cbor2.loads(sub.recv(copy=False).buffer[skip:]), count, mode)
        else:
            _receive(conn, lambda: cbor2.loads(sub.recv()[skip:]), count, mode)
        sub.close()
        return
    with (
        zmqkit.Node("budget-sub", port=where, announce=False) as node,
        pubsub.Subscriber(node, TOPIC, options=DEEP_QUEUE) as subscriber,
    ):
        subscriber.wait_for_publishers(timeout=10.0)
        time.sleep(0.25)
        _receive(conn, lambda: subscriber.recv(5.0).data, count, mode)


def _receive(conn: Connection, receive: Callable[[], Any], count: int, mode: str) -> None:
    conn.send("ready")
    clock = time.perf_counter
    if mode == "idle":
        delays = []
        for _ in range(count):
            data = receive()
            delays.append(clock() - data["t"])
        conn.send(delays)
        return
    receive()
    started, before = clock(), thread_clocks()
    for _ in range(count - 1):
        receive()
    spent = _spent(before)
    conn.send((count - 1) / (clock() - started))
    conn.send(spent)


def one_run(side: str, count: int, mode: str) -> dict[str, Any]:
    port = random.randint(20_000, 40_000)
    publisher, pub_conn = _spawn(publisher_process, side, port, count, mode)
    try:
        where = _expect(pub_conn)
        subscriber, sub_conn = _spawn(subscriber_process, side, where, count, mode)
        try:
            _expect(sub_conn)
            pub_conn.send("go")
            if mode == "idle":
                delays = _expect(sub_conn, 120)
                pub_conn.send("done")
                return {"delays": delays}
            rate = _expect(sub_conn, 120)
            receiving = _expect(sub_conn)
            pub_conn.send("done")
            publishing = _expect(pub_conn)
            return {"rate": rate, "publisher": publishing, "subscriber": receiving}
        finally:
            subscriber.join(10)
    finally:
        publisher.join(10)


def cpu(count: int, runs: int, sides: tuple[str, ...], mode: str) -> dict[str, Any]:
    """Median microseconds of CPU per message, per side and per role of thread."""
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for index in range(runs):
        order = sides if index % 2 == 0 else tuple(reversed(sides))
        for side in order:
            results[side].append(one_run(side, count, mode))
    table: dict[str, Any] = {}
    for side, rows in results.items():
        figures: dict[str, float] = {"rate": statistics.median(row["rate"] for row in rows)}
        for process in ("publisher", "subscriber"):
            for role in ("main", "sending thread", "zmq I/O", "other"):
                spent = [row[process][role] / (count - 1) * 1e6 for row in rows]
                figures[f"{process}: {role}"] = round(statistics.median(spent), 3)
        figures["total"] = round(sum(v for k, v in figures.items() if ":" in k), 3)
        table[side] = figures
    return table


def idle(count: int, runs: int, sides: tuple[str, ...]) -> dict[str, Any]:
    """p50 and p99 microseconds from publish to arrival, on an idle publisher, per side."""
    delays: dict[str, list[float]] = {side: [] for side in sides}
    for index in range(runs):
        order = sides if index % 2 == 0 else tuple(reversed(sides))
        for side in order:
            delays[side] += one_run(side, count, "idle")["delays"][10:]  # past the warm-up
    table = {}
    for side, took in delays.items():
        cuts = statistics.quantiles(took, n=100)
        table[side] = {"p50": round(cuts[49] * 1e6, 1), "p99": round(cuts[98] * 1e6, 1),
                       "messages": len(took)}
    return table


def steps() -> dict[str, float]:
    """Nanoseconds per message of each step, raw and zmqkit, timed alone in this process."""
    sender, seq, data = bytes(range(16)), 123_456, {**PAYLOAD, "seq": 123_456}
    head, encoded = codec.publish_head(TOPIC, sender), cbor2.dumps(data)
    frame, raw_frame = codec.encode_publish_after(head, seq, data), RAW_TOPIC + encoded
    data_bytes = frame[len(head) + len(cbor2.dumps(seq)):]
    assert data_bytes == encoded
    items = [{**PAYLOAD, "seq": n} for n in range(1024)]
    batch = codec.encode_publish_batch(TOPIC, sender, seq, items)
    stand_in = types.SimpleNamespace(name="me", uuid=uuid.UUID(int=1), peers=lambda: [])
    intake = pubsub.Intake(stand_in, (TOPIC,))  # type: ignore[arg-type]
    intake.take(frame)  # the stream is known from here on
    frames = [frame] * 256
    out = _raw_socket(zmq.PAIR, linger=0)
    out.bind("inproc://budget-steps")
    into = _raw_socket(zmq.PAIR, linger=0)
    into.connect("inproc://budget-steps")
    ours_out = zmqkit.Socket(zmqkit.SocketKind.PAIR, options=DEEP_QUEUE)
    ours_out.bind_endpoint("inproc://budget-steps-ours")
    ours_in = zmqkit.Socket(zmqkit.SocketKind.PAIR, options=DEEP_QUEUE)
    ours_in.connect("inproc://budget-steps-ours")

    def each(step: Callable[[], object], per: int = 1, number: int = 20_000) -> float:
        best = min(timeit.repeat(step, number=number, repeat=5))
        return round(best / number / per * 1e9)

    def sent_and_received() -> None:
        out.send(raw_frame)
        into.recv()

    def sent_and_received_ours() -> None:
        ours_out.send_each(frames)
        ours_in.try_recv_many(len(frames))

    def take(taken: list[bytes]) -> None:
        intake.take_all(taken)
        intake.ready.clear()

    figures = {
        "raw: cbor2.dumps(data)": each(lambda: cbor2.dumps(data)),
        "raw: topic + encoded": each(lambda: RAW_TOPIC + encoded),
        "raw: send + recv (inproc)": each(sent_and_received),
        "zmqkit: send_each + try_recv_many (inproc)": each(sent_and_received_ours, 256, 100),
        "raw: cbor2.loads(frame[6:])": each(lambda: cbor2.loads(raw_frame[len(RAW_TOPIC):])),
        "zmqkit: encode_publish_after": each(lambda: codec.encode_publish_after(head, seq, data)),
        "zmqkit: codec.dumps(data)": each(lambda: codec.dumps(data)),
        "zmqkit: decode_publish_data": each(lambda: codec.decode_publish_data(data_bytes)),
        "zmqkit: decode_publish (whole frame)": each(lambda: codec.decode_publish(frame)),
        "zmqkit: take_all, per message": each(lambda: take(frames), 256, 100),
        "zmqkit: take_all, batches of 1024": each(lambda: take([batch]), 1024, 100),
    }
    for sock in (out, into, ours_out, ours_in):
        sock.close()
    with zmqkit.Node("budget-steps", port=random.randint(20_000, 40_000), announce=False) as node:
        for label, flags in (("a frame per message", {"batch": False}), ("default", {})):
            with pubsub.Publisher(node, options=DEEP_QUEUE, **flags) as publisher:
                figures[f"zmqkit: Publisher.publish, {label} (with its thread)"] = each(
                    lambda: publisher.publish(TOPIC, data), number=100_000
                )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("cpu", "idle", "steps"))
    parser.add_argument("--big", action="store_true", help="cpu: 1 MiB byte strings")
    parser.add_argument("--messages", type=int)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated, of raw and {', '.join(PUBLISHER_FLAGS)}")
    args = parser.parse_args()
    sides = tuple(args.sides.split(","))
    load_before = os.getloadavg()[0]
    if args.what == "cpu":
        count = args.messages or (1_000 if args.big else 200_000)
        figures = cpu(count, args.runs, sides, "big" if args.big else "small")
    elif args.what == "idle":
        figures = idle(args.messages or 2_000, args.runs, sides)
    else:
        figures = steps()
    print(json.dumps({"what": args.what, "runs": args.runs, "figures": figures,
                      "load": [load_before, os.getloadavg()[0]]}, indent=1))


if __name__ == "__main__":
    main()

"""The self-contained show: two nodes find each other by name, then talk REQ/REP and PUB/SUB.

Everything runs over loopback on a random beacon port, so it never meets other nodes on the
machine, and it ends by itself.
"""

from __future__ import annotations

import random
import threading
import time

import zmq
from rich.console import Console
from rich.table import Table

import zmqkit
from zmqkit import codec

ROUNDS = 5


def _serve_requests(node: zmqkit.Node, ready: threading.Event, count: int) -> None:
    """Answer ``count`` requests with the sum of their arguments, in this thread's own socket."""
    with zmqkit.Socket(zmq.REP) as rep:
        node.advertise("rpc", rep.bind(node.host))
        ready.set()
        for _ in range(count):
            _, _, call_id, method, args, _ = codec.decode(rep.recv(timeout=5.0))
            rep.send(codec.encode_reply(call_id, sum(args)))


def run(console: Console | None = None, port: int | None = None) -> int:
    """Run the show; return the process exit code."""
    console = console or Console()
    port = port or random.randint(20000, 40000)
    table = Table(title="zmqkit: two nodes, no broker")
    for column in ("step", "what happened", "ms"):
        table.add_column(column)
    with zmqkit.Node("alice", port=port) as alice, zmqkit.Node("bob", port=port) as bob:
        ready = threading.Event()
        server = threading.Thread(target=_serve_requests, args=(alice, ready, ROUNDS), name="alice-rep")
        server.start()
        try:
            ready.wait(5.0)
            started = time.perf_counter()
            found = bob.wait_for("alice", timeout=5.0)[0]
            while "rpc" not in found.endpoints:
                found = bob.wait_for("alice", timeout=5.0)[0]
            table.add_row("discovery", f"bob found alice at {found.endpoints['rpc']}", _ms(started))
            with zmqkit.Socket(zmq.REQ) as req:
                req.connect(found.endpoints["rpc"])
                for call_id in range(ROUNDS):
                    started = time.perf_counter()
                    req.send(codec.encode_request(call_id, "add", [call_id, 10], {}))
                    reply = codec.decode(req.recv(timeout=5.0))
                    table.add_row("REQ/REP", f"add({call_id}, 10) = {reply[3]}", _ms(started))
        finally:
            server.join(5.0)
        with zmqkit.Socket(zmq.PUB) as pub, zmqkit.Socket(zmq.SUB) as sub:
            endpoint = pub.bind(alice.host)
            sub.raw.subscribe(codec.publish_prefixes("ticks")[0])
            sub.connect(endpoint)
            started = time.perf_counter()
            received = 0
            for seq in range(1000):  # the first few go out before the subscription arrives
                pub.send(codec.encode_publish("ticks", alice.uuid.bytes, seq, {"px": 100 + seq}))
                if sub.poll(0.001):
                    received += 1
                    _, _, topic, _, got_seq, data = codec.decode(sub.recv(timeout=1.0))
                    if received <= 3:
                        table.add_row("PUB/SUB", f"{topic} #{got_seq}: {data}", _ms(started))
                if received >= 3:
                    break
    console.print(table)
    console.print("[green]done[/]: both nodes said goodbye and closed their sockets.")
    return 0


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.2f}"

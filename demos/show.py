"""The self-contained show: two nodes find each other by name, call each other and publish.

Everything runs over loopback on a random beacon port, so it never meets other nodes on the
machine, and it ends by itself.
"""

from __future__ import annotations

import random
import time

from rich.console import Console
from rich.table import Table

import zmqkit
from patterns import pubsub, rpc

from .calc import Calculator


def run(console: Console | None = None, port: int | None = None) -> int:
    """Run the show; return the process exit code."""
    console = console or Console()
    port = port or random.randint(20000, 40000)
    table = Table(title="zmqkit: two nodes, no broker")
    for column in ("step", "what happened", "ms"):
        table.add_column(column)

    def step(name: str, what: str, started: float) -> None:
        table.add_row(name, what, f"{(time.perf_counter() - started) * 1000:.2f}")

    with zmqkit.Node("alice", port=port) as alice, zmqkit.Node("bob", port=port) as bob:
        started = time.perf_counter()
        rpc.serve(alice, Calculator())
        found = bob.wait_for("alice", role="rpc", timeout=5.0)[0]
        step("discovery", f"bob found alice serving rpc at {found.endpoints['rpc']}", started)
        with rpc.Client(bob, "alice", timeout=5.0) as calc:
            for a, b in ((1, 2), (20, 22), (6, 7)):
                started = time.perf_counter()
                step("rpc", f"alice.add({a}, {b}) = {calc.add(a, b)}", started)
            started = time.perf_counter()
            step("stream", f"alice.count(4) streams {list(calc.stream('count', 4))}", started)
            started = time.perf_counter()
            try:
                calc.div(1, 0)
            except zmqkit.RemoteError as error:
                step("error", f"alice.div(1, 0) raised {error.type_name}: {error.message}", started)
        publisher = pubsub.Publisher(alice)
        with pubsub.Subscriber(bob, "ticks") as ticks:
            ticks.wait_for_publishers(timeout=5.0)
            for seq, price in enumerate((101.25, 101.5, 100.75)):
                started = time.perf_counter()
                publisher.publish("ticks", {"sym": "ABC", "px": price, "n": seq})
                message = ticks.recv(timeout=5.0)
                step("pub/sub", f"{message.topic} #{message.seq} from {message.publisher}: {message.data}",
                     started)
    console.print(table)
    console.print("[green]done[/]: both nodes said goodbye and closed their sockets.")
    return 0

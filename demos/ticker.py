"""The ticker node: publishes made-up market ticks; ``--watch`` shows them as a live table.

``zmqkit demo ticker`` publishes ``{"sym", "px", "qty"}`` on the topic ``ticks`` at ``--rate``
per second; ``zmqkit demo ticker --watch`` subscribes and shows the latest price per symbol, the
message rate and any sequence gaps (a live table on a terminal, timestamped lines otherwise).
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from zmqkit.patterns import pubsub

from zmqkit import Node, Timeout

from .common import line, run_until, value_text

SYMBOLS = ("ABC", "XYZ", "ZMQ", "PY", "CBOR")
TOPIC = "ticks"


def publish(
    node_options: dict[str, Any],
    *,
    name: str = "ticker",
    rate: float = 20.0,
    duration: float | None = None,
) -> int:
    """Publish random-walk ticks at ``rate`` per second until ``duration`` passes."""
    console = Console()
    prices = {symbol: 100.0 + 10 * index for index, symbol in enumerate(SYMBOLS)}
    with Node(name, **node_options) as node:
        publisher = pubsub.Publisher(node)
        started = f"{name} publishing {TOPIC!r} at {rate:g}/s from {publisher.endpoint}"
        if console.is_terminal:
            console.print(escape(started), highlight=False)
        else:
            print(started, flush=True)
        interval = 1.0 / rate if rate > 0 else 0.0
        next_at = time.monotonic()

        def tick() -> None:
            nonlocal next_at
            symbol = random.choice(SYMBOLS)
            prices[symbol] = round(max(1.0, prices[symbol] * random.uniform(0.995, 1.005)), 2)
            seq = publisher.publish(
                TOPIC, {"sym": symbol, "px": prices[symbol], "qty": random.randint(1, 10) * 100}
            )
            if not console.is_terminal and seq % max(1, int(rate)) == 0:
                line(f"published {seq} ticks")
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

        run_until(duration, tick)
    return 0


def watch(
    node_options: dict[str, Any], *, name: str = "ticker-view", duration: float | None = None
) -> int:
    """Show the latest tick per symbol, the rate and the gaps, until ``duration`` passes."""
    console = Console()
    latest: dict[str, tuple[float, int, str, int]] = {}
    arrivals: deque[float] = deque(maxlen=2000)
    node = Node(name, announce=False, **node_options)
    with node, pubsub.Subscriber(node, TOPIC) as ticks:

        def table() -> Table:
            now = time.monotonic()
            rate = sum(1 for t in arrivals if now - t < 1.0)
            view = Table(title=f"ticks: {rate} msg/s, {ticks.gaps} missed")
            for column in ("symbol", "price", "qty", "from", "seq"):
                view.add_column(column, justify="right" if column != "from" else "left")
            for symbol, (price, qty, publisher, seq) in sorted(latest.items()):
                view.add_row(escape(str(symbol)), f"{price:,.2f}", escape(str(qty)),
                             escape(publisher), str(seq))
            return view

        def receive() -> None:
            try:
                message = ticks.recv(0.1)
            except Timeout:
                return
            arrivals.append(time.monotonic())
            data = message.data if isinstance(message.data, dict) else {}
            latest[str(data.get("sym", "?"))] = (
                float(data.get("px", 0.0)),
                int(data.get("qty", 0)),
                message.publisher,
                message.seq,
            )
            if not console.is_terminal:
                gap = f" (missed {message.gap})" if message.gap else ""
                line(f"{message.publisher}#{message.seq}{gap} {value_text(message.data)}")

        if console.is_terminal:
            with Live(table(), console=console, refresh_per_second=8) as live:
                run_until(duration, receive, every=lambda: live.update(table()))
        else:
            run_until(duration, receive)
    return 0

"""``zmqkit hz`` and ``zmqkit bw``: a topic's message rate and its bytes per second.

Like ros2's ``topic hz`` and ``topic bw``: figures over a sliding window of the last N messages,
once a second, as a live table on a terminal and as one line per second in a pipe.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.live import Live
from rich.table import Table

from ..codec import dumps as cbor
from ..errors import Timeout
from .output import Output
from .parsing import CommandParser, add_command, seconds, window
from .scope import make_node
from .window import Figures, Window

__all__ = ["register"]

REPORT_EVERY = 1.0  # seconds between lines in a pipe (a terminal's table refreshes faster)


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``hz`` and ``bw``."""
    hz = add_command(
        commands,
        "hz",
        summary="a topic's message rate, with min/max/std of the intervals",
        description="Measure the rate of messages on TOPIC, and the min, max and standard "
        "deviation of the intervals between them, over the last N messages.",
        examples=[
            ("zmqkit hz ticks", "a live table until Ctrl-C"),
            ("zmqkit hz ticks --window 50 --duration 10", "over the last 50 messages, 10 s"),
            ("zmqkit hz ticks --json | jq .rate", "a JSON object per second in a pipe"),
        ],
        parents=[scope],
    )
    bw = add_command(
        commands,
        "bw",
        summary="a topic's bytes per second",
        description="Measure the bytes per second on TOPIC (each message's data, CBOR-encoded "
        "as it travels), with the mean, min and max message size, over the last N messages.",
        examples=[
            ("zmqkit bw ticks", "a live table until Ctrl-C"),
            ("zmqkit bw video --window 20 --duration 5", "over the last 20 messages, 5 s"),
        ],
        parents=[scope],
    )
    for parser, run in ((hz, run_hz), (bw, run_bw)):
        parser.add_argument(
            "topic", metavar="TOPIC", help="the topic to measure, or a prefix ending in *"
        )
        parser.add_argument(
            "--window",
            type=window,
            default=100,
            metavar="N",
            help="the figures are over the last N messages (default 100)",
        )
        parser.add_argument("--duration", type=seconds, metavar="S", help="stop after S seconds")
        parser.add_argument(
            "--json", action="store_true", help="a JSON object per second (JSON Lines)"
        )
        parser.set_defaults(run=run)


def run_hz(args: argparse.Namespace, out: Output) -> int:
    """Show a topic's rate and the spread of its intervals."""
    return _measure(args, out, sizes=False)


def run_bw(args: argparse.Namespace, out: Output) -> int:
    """Show a topic's bytes per second and its message sizes."""
    return _measure(args, out, sizes=True)


def _measure(args: argparse.Namespace, out: Output, *, sizes: bool) -> int:
    from zmqkit.patterns import pubsub

    arrivals = Window(args.window)
    with (
        make_node(args, announce=False) as node,
        pubsub.Subscriber(node, args.topic) as subscriber,
    ):
        ends_at = time.monotonic() + (args.duration if args.duration is not None else 1e9)
        live = None
        if out.terminal and not args.json:
            live = Live(_table(args.topic, None, 0, 0, sizes), console=out.console,
                        refresh_per_second=4)
            live.start()
        try:
            next_report = time.monotonic() + REPORT_EVERY
            reported = 0
            while (now := time.monotonic()) < ends_at:
                try:
                    message = subscriber.recv(max(0.0, min(0.1, ends_at - now, next_report - now)))
                    arrivals.add(time.monotonic(), len(cbor(message.data)) if sizes else 0)
                except Timeout:
                    pass
                if time.monotonic() < next_report:
                    continue
                next_report += REPORT_EVERY
                figures = arrivals.figures() if arrivals.total > reported else None
                reported = arrivals.total
                if live is not None:
                    live.update(_table(args.topic, figures, arrivals.total, subscriber.gaps, sizes))
                elif args.json:
                    out.value(_record(args.topic, figures, arrivals.total, subscriber.gaps, sizes),
                              compact=True)
                else:
                    out.line(_line(figures, arrivals.total, subscriber.gaps, sizes))
        finally:
            if live is not None:
                live.stop()
    return 0


def _record(topic: str, figures: Figures | None, total: int, missed: int,
            sizes: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"topic": topic, "received": total, "missed": missed}
    if figures is None:
        return record
    if sizes:
        record.update(bytes_per_second=figures.bytes_per_second, mean_size=figures.mean_size,
                      min_size=figures.min_size, max_size=figures.max_size)
    else:
        record.update(rate=figures.rate, min=figures.min, max=figures.max, std=figures.std)
    return {**record, "window": figures.messages}


def _line(figures: Figures | None, total: int, missed: int, sizes: bool) -> str:
    if figures is None:
        return f"no new messages ({total} received, {missed} missed)"
    if sizes:
        return (
            f"{_bytes(figures.bytes_per_second)}/s  mean {_bytes(figures.mean_size)}  "
            f"min {_bytes(figures.min_size)}  max {_bytes(figures.max_size)}  "
            f"window {figures.messages}"
        )
    return (
        f"rate {figures.rate:.2f} msg/s  min {figures.min:.4f} s  max {figures.max:.4f} s  "
        f"std {figures.std:.4f} s  window {figures.messages}"
    )


def _table(topic: str, figures: Figures | None, total: int, missed: int, sizes: bool) -> Table:
    table = Table(title=f"{'bytes' if sizes else 'rate'} on {topic!r}")
    columns = (
        ("B/s", "mean", "min", "max") if sizes else ("msg/s", "min s", "max s", "std s")
    ) + ("window", "received", "missed")
    for column in columns:
        table.add_column(column, justify="right")
    if figures is None:
        cells = ["-"] * 4
    elif sizes:
        cells = [_bytes(figures.bytes_per_second), _bytes(figures.mean_size),
                 _bytes(figures.min_size), _bytes(figures.max_size)]
    else:
        cells = [f"{figures.rate:,.2f}", f"{figures.min:.4f}", f"{figures.max:.4f}",
                 f"{figures.std:.4f}"]
    window_cell = "-" if figures is None else str(figures.messages)
    table.add_row(*cells, window_cell, f"{total:,}", f"{missed:,}")
    return table


def _bytes(count: float) -> str:
    """A byte count for people: 512 B, 2.31 KiB, 1.00 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"

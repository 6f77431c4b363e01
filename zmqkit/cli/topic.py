"""``zmqkit pub`` and ``zmqkit echo``: publish JSON on a topic, print what a topic carries."""

from __future__ import annotations

import argparse
import time

from rich.text import Text

from ..deadline import Deadline
from ..errors import Timeout
from ..jsonform import dumps
from .output import Output
from .parsing import CommandParser, add_command, count, json_value, rate, seconds
from .scope import make_node

__all__ = ["register"]

TOPIC_HELP = "the topic: text, such as ticks or sensors/temp"
FOREVER = 3600.0  # one wait of an echo without --timeout; it waits again after it


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``pub`` and ``echo``."""
    pub = add_command(
        commands,
        "pub",
        summary="publish JSON data on a topic",
        description="Publish DATA on TOPIC, COUNT times at RATE per second, from a node that "
        "every subscriber of the mesh finds.",
        examples=[
            ("zmqkit pub ticks '{\"sym\": \"ABC\", \"px\": 101.25}'", "one message"),
            ("zmqkit pub greetings '\"hello\"' --count 10 --rate 2", "ten, two a second"),
        ],
        parents=[scope],
    )
    pub.add_argument("topic", metavar="TOPIC", help=TOPIC_HELP)
    pub.add_argument(
        "data",
        metavar="DATA",
        type=json_value,
        help="the message, a JSON literal: 42, '\"text\"', '{\"k\": [1, 2]}'",
    )
    pub.add_argument("--count", type=count, default=1, metavar="N", help="how many (default 1)")
    pub.add_argument(
        "--rate", type=rate, default=10.0, metavar="HZ", help="messages per second (default 10)"
    )
    pub.add_argument(
        "--wait",
        type=seconds,
        default=0.5,
        metavar="S",
        help="seconds to let subscribers connect before the first message (default 0.5)",
    )
    pub.add_argument("--name", default="zmqkit-pub", help="this node's name (default zmqkit-pub)")
    pub.set_defaults(run=run_pub)

    echo = add_command(
        commands,
        "echo",
        summary="print messages on a topic",
        description="Print the messages on TOPIC from every publisher discovery finds, one a "
        "line: topic, publisher#sequence, and the data as JSON.",
        examples=[
            ("zmqkit echo ticks", "until Ctrl-C"),
            ("zmqkit echo 'sensors/*' --count 5", "five messages on any topic under sensors/"),
            ("zmqkit echo ticks --json | jq -c .data", "JSON Lines, one object per message"),
        ],
        parents=[scope],
    )
    echo.add_argument("topic", metavar="TOPIC", help=TOPIC_HELP + ", or a prefix ending in *")
    echo.add_argument("--count", type=count, metavar="N", help="exit after N messages")
    echo.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help="exit 1 if the first message (all N, with --count) has not come within S seconds",
    )
    echo.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines: {topic, data, publisher, seq, gap} per message",
    )
    echo.set_defaults(run=run_echo)


def run_pub(args: argparse.Namespace, out: Output) -> int:
    """Publish DATA on TOPIC, COUNT times at RATE."""
    from zmqkit.patterns import pubsub

    with make_node(args, args.name, announce=True) as node:
        publisher = pubsub.Publisher(node)
        time.sleep(args.wait)  # let subscribers discover this node and connect
        next_at = time.monotonic()
        for _ in range(args.count):
            publisher.publish(args.topic, args.data)
            next_at += 1.0 / args.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(0.1)  # give the last messages time to leave before the socket closes
    return 0


def run_echo(args: argparse.Namespace, out: Output) -> int:
    """Print the messages on TOPIC until COUNT, a timeout or Ctrl-C."""
    from zmqkit.patterns import pubsub

    received = 0
    with (
        make_node(args, announce=False) as node,
        pubsub.Subscriber(node, args.topic) as subscriber,
    ):
        deadline = Deadline.after(args.timeout) if args.timeout is not None else None
        while args.count is None or received < args.count:
            try:
                message = subscriber.recv(FOREVER if deadline is None else deadline.remaining())
            except Timeout:
                if deadline is None:
                    continue
                came = "no message" if args.count is None else f"{received} of {args.count}"
                raise Timeout(f"{came} on {args.topic!r} within {args.timeout:g} s") from None
            received += 1
            if args.count is None:
                deadline = None  # without --count, --timeout bounds the wait for the first
            if args.json:
                out.value(
                    {
                        "topic": message.topic,
                        "data": message.data,
                        "publisher": message.publisher,
                        "seq": message.seq,
                        "gap": message.gap,
                    },
                    compact=True,
                )
                continue
            gap = f" (missed {message.gap})" if message.gap else ""
            if out.terminal:
                line = Text()
                line.append(message.topic, style="cyan")
                line.append(f" {message.publisher}#{message.seq}", style="dim")
                line.append(gap, style="red")
                line.append(f" {dumps(message.data)}")
                out.show(line)
            else:
                out.line(f"{message.topic} {message.publisher}#{message.seq}{gap} "
                         f"{dumps(message.data)}")
    return 0

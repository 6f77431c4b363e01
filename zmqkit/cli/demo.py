"""``zmqkit demo``: run one demo node, or with no NAME the self-contained show."""

from __future__ import annotations

import argparse
import os

from .output import Output
from .parsing import CommandParser, add_command, at_least_one, rate, seconds
from .scope import node_options

__all__ = ["register"]

DEMOS = ("calc", "ticker", "chat", "farm")


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``demo``."""
    demo = add_command(
        commands,
        "demo",
        summary="run a demo node, or the whole show",
        description="Run a demo node in this terminal, or with no NAME the show: demo nodes as "
        "processes on a private beacon port, driven through every pattern, then stopped.",
        examples=[
            ("zmqkit demo", "the show; ends by itself (what make demo runs)"),
            ("zmqkit demo calc", "a calculator node; try: zmqkit call calc add 1 2"),
            ("printf 'hi\\nbye\\n' | zmqkit demo chat --name ann", "say two lines, then leave"),
        ],
        parents=[scope],
    )
    demo.add_argument(
        "demo",
        metavar="NAME",
        nargs="?",
        choices=DEMOS,
        help="calc (serves add, mul, div, echo, sleep, count), ticker (publishes ticks), chat "
        "(a group chat), farm (a task farm, one worker killed); none: the show",
    )
    demo.add_argument("--name", metavar="NODE", help="the node's name (default: the demo's)")
    demo.add_argument(
        "--duration",
        type=seconds,
        metavar="S",
        help="end after S seconds (default: at Ctrl-C; the show ends by itself within 60)",
    )
    demo.add_argument(
        "--rate",
        type=rate,
        default=20.0,
        metavar="HZ",
        help="ticker: ticks per second (default 20)",
    )
    demo.add_argument(
        "--watch",
        action="store_true",
        help="ticker: show the ticks as a live table instead of publishing",
    )
    demo.add_argument(
        "--script",
        metavar="FILE",
        type=script_lines,
        help="chat: say these lines, one every 0.7 s, instead of reading standard input",
    )
    demo.add_argument(
        "--workers",
        type=at_least_one,
        default=3,
        metavar="N",
        help="farm: worker processes (default 3)",
    )
    demo.add_argument(
        "--worker", action="store_true", help="farm: be one worker (what --workers starts)"
    )
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the demo node asked for, or the show."""
    from zmqkit.demos import common

    common.stop_on_sigterm()
    if args.demo is None:
        from zmqkit.demos import show

        return show.run(port=args.port, duration=args.duration)
    options = node_options(args)
    name = args.name or args.demo
    if args.demo == "calc":
        from zmqkit.demos import calc

        return calc.run(options, name=name, duration=args.duration)
    if args.demo == "ticker":
        from zmqkit.demos import ticker

        if args.watch:
            return ticker.watch(options, name=args.name or "ticker-view", duration=args.duration)
        return ticker.publish(options, name=name, rate=args.rate, duration=args.duration)
    if args.demo == "farm":
        from zmqkit.demos import farm

        if args.worker:
            return farm.work(
                options, name=args.name or f"worker-{os.getpid()}", duration=args.duration
            )
        return farm.run(options, workers=args.workers, duration=args.duration)
    from zmqkit.demos import chat

    return chat.run(
        options,
        name=args.name or f"chat-{os.getpid()}",
        duration=args.duration,
        script=args.script,
    )


def script_lines(path: str) -> list[str]:
    """The lines of a chat script (blank ones left out), read when the options are parsed."""
    try:
        with open(path, encoding="utf-8") as lines:
            return [line.rstrip("\n") for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {exc}") from exc

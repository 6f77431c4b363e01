"""The ``zmqkit`` command: discovery and the patterns from a shell.

Exit codes: 0 success, 1 the operation failed (timeout, remote error, not found), 2 usage error.
Only this module (and the demos) print or read the environment, but for the one variable the
library reads itself: ZMQKIT_PORT, the default beacon port (``zmqkit.beacon.default_port``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.pretty import Pretty
from rich.table import Table

from . import __version__
from .beacon import DEFAULT_PORT, PORT_VARIABLE
from .deadline import Deadline
from .errors import ConfigError, Timeout, ZmqkitError
from .node import Node
from .peers import Peer

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C during a command that was not meant to run until Ctrl-C

Command = Callable[[argparse.Namespace], int]


def _scope_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("discovery")
    group.add_argument(
        "--scope",
        choices=["localhost", "subnet"],
        default="localhost",
        help="where beacons go (default: localhost, nothing leaves this host)",
    )
    group.add_argument("--interface", metavar="IF", help="the interface for --scope subnet")
    group.add_argument(
        "--seed",
        metavar="HOST[:PORT]",
        action="append",
        default=[],
        help="also send unicast beacons to HOST (repeatable)",
    )
    group.add_argument(
        "--port",
        type=int,
        default=None,
        metavar="P",
        help=f"the UDP beacon port (default ${PORT_VARIABLE} if set, else {DEFAULT_PORT})",
    )
    secure = common.add_argument_group("security (CURVE)")
    secure.add_argument("--keys", metavar="PATH", help="this node's keypair (from zmqkit keys new)")
    secure.add_argument("--keyring", metavar="DIR", help="a directory of *.pub keys to accept")
    return common


def make_node(args: argparse.Namespace, name: str, *, announce: bool) -> Node:
    """A node from the scope options; ``announce=False`` for commands that only look around."""
    return Node(name, announce=announce, **node_options(args))


def node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Node keyword arguments that the discovery and security options give."""
    return {
        "port": args.port,
        "scope": args.scope,
        "interface": args.interface,
        "seeds": args.seed,
        "keys": args.keys,
        "keyring": args.keyring,
    }


def _peer_rows(peers: Sequence[Peer]) -> list[dict[str, object]]:
    now = time.monotonic()
    return [
        {
            "name": p.name,
            "uuid": str(p.uuid),
            "endpoints": dict(p.endpoints),
            "age": round(p.age(now), 3),
            "address": p.address,
            "headers": dict(p.headers),
        }
        for p in sorted(peers, key=lambda p: (p.name, str(p.uuid)))
    ]


def _peer_table(peers: Sequence[Peer]) -> Table:
    table = Table(title=f"{len(peers)} peer{'' if len(peers) == 1 else 's'}")
    for column in ("name", "uuid", "endpoints", "age"):
        table.add_column(column)
    for row in _peer_rows(peers):
        endpoints = "\n".join(f"{role} {ep}" for role, ep in row["endpoints"].items())  # type: ignore[attr-defined]
        table.add_row(  # what peers say is text, never rich markup
            escape(str(row["name"])), str(row["uuid"])[:8], escape(endpoints), f"{row['age']:.1f}s"
        )
    return table


def cmd_peers(args: argparse.Namespace) -> int:
    """List discovered peers after waiting ``--wait`` seconds (or watch them live)."""
    console = Console()
    with make_node(args, "zmqkit-cli", announce=False) as node:
        if args.watch:
            try:
                with Live(_peer_table(node.peers()), console=console, refresh_per_second=4) as live:
                    while True:
                        time.sleep(0.25)
                        live.update(_peer_table(node.peers()))
            except KeyboardInterrupt:
                return EXIT_OK
        time.sleep(args.wait)
        peers = node.peers()
    if args.json:
        print(json.dumps(_peer_rows(peers)))
    else:
        console.print(_peer_table(peers))
    return EXIT_OK


def _json_argument(text: str) -> Any:
    """A JSON literal; anything that is not JSON is taken as a plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _print_value(console: Console, value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, default=repr))
    else:
        console.print(Pretty(value))


def cmd_call(args: argparse.Namespace) -> int:
    """Call METHOD on a node called NAME and print the result."""
    from zmqkit.patterns import rpc

    console = Console()
    with (
        make_node(args, "zmqkit-cli", announce=False) as node,
        rpc.Client(node, args.name, timeout=args.timeout) as client,
    ):
        if args.list:
            methods = client.methods()
            if args.json:
                print(json.dumps(methods))
            for method in [] if args.json else methods:
                console.print(
                    f"[bold]{escape(method['signature'])}[/]  [dim]{escape(method['mode'])}[/]"
                )
                if method["doc"]:
                    console.print(f"    {escape(method['doc'])}", highlight=False)
            return EXIT_OK
        if args.method is None:
            raise UsageError("name a METHOD, or --list the methods")
        result = client.call_with(args.method, [_json_argument(a) for a in args.args])
        _print_value(console, result, args.json)
    return EXIT_OK


def cmd_pub(args: argparse.Namespace) -> int:
    """Publish DATA on TOPIC, COUNT times at RATE per second."""
    from zmqkit.patterns import pubsub

    data = _json_argument(args.data)
    with make_node(args, args.name, announce=True) as node:
        publisher = pubsub.Publisher(node)
        time.sleep(args.wait)  # let subscribers discover this node and connect
        interval = 1.0 / args.rate if args.rate > 0 else 0.0
        next_at = time.monotonic()
        for _ in range(args.count):
            publisher.publish(args.topic, data)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(0.1)  # give the last messages time to leave before the socket closes
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    """Print messages on TOPIC from every discovered publisher."""
    from zmqkit.patterns import pubsub

    console = Console()
    received = 0
    with (
        make_node(args, "zmqkit-cli", announce=False) as node,
        pubsub.Subscriber(node, args.topic) as subscriber,
    ):
        deadline = Deadline.after(args.timeout) if args.timeout is not None else None
        try:
            while args.count is None or received < args.count:
                wait = 3600.0 if deadline is None else deadline.remaining()
                message = subscriber.recv(wait)
                received += 1
                if args.json:
                    print(
                        json.dumps(
                            {
                                "topic": message.topic,
                                "data": message.data,
                                "publisher": message.publisher,
                                "seq": message.seq,
                                "gap": message.gap,
                            },
                            default=repr,
                        ),
                        flush=True,
                    )
                else:
                    gap = f" [red](missed {message.gap})[/]" if message.gap else ""
                    console.print(
                        f"[cyan]{escape(message.topic)}[/] "
                        f"[dim]{escape(message.publisher)}#{message.seq}[/]"
                        f"{gap} {escape(repr(message.data))}",
                        highlight=False,
                    )
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_hz(args: argparse.Namespace) -> int:
    """Show the message rate on TOPIC, once a second."""
    from zmqkit.patterns import pubsub

    console = Console()
    with (
        make_node(args, "zmqkit-cli", announce=False) as node,
        pubsub.Subscriber(node, args.topic) as subscriber,
    ):
        ends_at = time.monotonic() + args.duration if args.duration else float("inf")
        total, window_count, window_start = 0, 0, time.monotonic()
        rate = 0.0

        def view() -> Table:
            table = Table(title=f"rate on {args.topic!r}")
            for column in ("msg/s", "received", "missed", "publishers"):
                table.add_column(column, justify="right")
            table.add_row(
                f"{rate:,.1f}",
                f"{total:,}",
                f"{subscriber.gaps:,}",
                str(subscriber.stats()["publishers"]),
            )
            return table

        live = Live(view(), console=console, refresh_per_second=4) if console.is_terminal else None
        try:
            if live:
                live.start()
            while time.monotonic() < ends_at:
                try:
                    subscriber.recv(min(0.1, max(0.0, ends_at - time.monotonic())))
                    total += 1
                    window_count += 1
                except Timeout:
                    pass
                elapsed = time.monotonic() - window_start
                if elapsed >= 1.0:
                    rate, window_count, window_start = window_count / elapsed, 0, time.monotonic()
                    if live:
                        live.update(view())
                    else:
                        print(
                            f"{rate:.1f} msg/s, {total} received, {subscriber.gaps} missed",
                            flush=True,
                        )
        except KeyboardInterrupt:
            pass
        finally:
            if live:
                live.stop()
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """Write a new CURVE keypair: PATH.pub (share it) and PATH.secret (mode 0600, keep it)."""
    from .security import Keypair

    public_path, secret_path = Keypair.generate().save(args.path)
    print(f"public key: {public_path}  (copy it into the keyring directory of every peer)")
    print(f"secret key: {secret_path}  (mode 0600; pass --keys {args.path})")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure each pattern against raw pyzmq doing the same work, in this run."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from zmqkit import bench as benchmarks

    workloads = list(benchmarks.WORKLOADS) if args.workload == "all" else [args.workload]
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.json or not console.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=None)
        results = benchmarks.run(
            workloads,
            rounds=args.rounds,
            quick=args.quick,
            progress=lambda step: bar.update(task, description=step),
        )
    if args.json:
        print(json.dumps(benchmarks.as_json(results)))
        return EXIT_OK
    table = Table(
        title=f"zmqkit vs raw pyzmq, median of {args.rounds} rounds (ratio = zmqkit / raw)"
    )
    for column in ("workload", "raw pyzmq", "zmqkit", "ratio", "unit", "note"):
        table.add_column(
            column, justify="right" if column in ("raw pyzmq", "zmqkit", "ratio") else "left"
        )
    for r in results:
        table.add_row(
            r.workload, f"{r.raw:,.1f}", f"{r.ours:,.1f}", f"{r.ratio:.2f}", r.unit, r.note
        )
    Console().print(table)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a demo node, or with no NAME the self-contained show."""
    from zmqkit.demos import common

    common.stop_on_sigterm()
    if args.demo is None:
        from zmqkit.demos import show

        return show.run(
            port=args.port, duration=args.duration
        )
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
    if args.demo == "chat":
        from zmqkit.demos import chat

        return chat.run(
            options,
            name=args.name or f"chat-{os.getpid()}",
            duration=args.duration,
            script=args.script,
        )
    raise UsageError(f"no demo called {args.demo!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``zmqkit`` command's argument parser, every subcommand included."""
    scope = _scope_options()
    parser = argparse.ArgumentParser(prog="zmqkit", description="Broker-less messaging on ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"zmqkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    peers = commands.add_parser("peers", parents=[scope], help="list discovered peers")
    peers.add_argument("--json", action="store_true", help="print a JSON list")
    peers.add_argument("--watch", action="store_true", help="a live table, until Ctrl-C")
    peers.add_argument(
        "--wait",
        type=float,
        default=1.5,
        metavar="S",
        help="seconds to listen before listing (default 1.5)",
    )
    peers.set_defaults(run=cmd_peers)

    call = commands.add_parser("call", parents=[scope], help="call a method on a node by name")
    call.add_argument("name", metavar="NAME", help="the node (service) name")
    call.add_argument("method", metavar="METHOD", nargs="?", help="the method to call")
    call.add_argument("args", metavar="ARG", nargs="*", help="arguments, as JSON literals")
    call.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the node and its reply (default 5)",
    )
    call.add_argument("--json", action="store_true", help="print the result as JSON")
    call.add_argument("--list", action="store_true", help="list the node's methods instead")
    call.set_defaults(run=cmd_call)

    pub = commands.add_parser("pub", parents=[scope], help="publish JSON data on a topic")
    pub.add_argument("topic", metavar="TOPIC")
    pub.add_argument("data", metavar="DATA", help="a JSON literal (other text is sent as a string)")
    pub.add_argument("--count", type=int, default=1, metavar="N", help="how many times (default 1)")
    pub.add_argument(
        "--rate",
        type=float,
        default=10.0,
        metavar="HZ",
        help="messages per second (default 10; 0: as fast as possible)",
    )
    pub.add_argument(
        "--wait",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds to let subscribers connect before the first message (default 0.5)",
    )
    pub.add_argument("--name", default="zmqkit-pub", help="this node's name (default zmqkit-pub)")
    pub.set_defaults(run=cmd_pub)

    echo = commands.add_parser("echo", parents=[scope], help="print messages on a topic")
    echo.add_argument("topic", metavar="TOPIC", help="a topic, or a prefix ending in *")
    echo.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    echo.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="exit 1 if the messages have not come within S seconds",
    )
    echo.add_argument("--json", action="store_true", help="one JSON object per line")
    echo.set_defaults(run=cmd_echo)

    hz = commands.add_parser("hz", parents=[scope], help="measure a topic's message rate")
    hz.add_argument("topic", metavar="TOPIC")
    hz.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    hz.set_defaults(run=cmd_hz)

    keys = commands.add_parser("keys", help="make CURVE keys")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new_keys = keys_commands.add_parser("new", help="write a new keypair: PATH.pub and PATH.secret")
    new_keys.add_argument("path", metavar="PATH")
    new_keys.set_defaults(run=cmd_keys)

    bench = commands.add_parser("bench", help="measure each pattern against raw pyzmq")
    bench.add_argument(
        "workload",
        nargs="?",
        default="all",
        choices=[
            "rpc",
            "async-rpc",
            "pubsub",
            "pubsub-batched",
            "large",
            "discovery",
            "codec",
            "all",
        ],
    )
    bench.add_argument("--json", action="store_true", help="print a JSON list of results")
    bench.add_argument("--quick", action="store_true", help="tiny counts: checks that it works")
    bench.add_argument(
        "--rounds",
        type=int,
        default=5,
        metavar="R",
        help="rounds per workload, alternating raw and zmqkit (default 5)",
    )
    bench.set_defaults(run=cmd_bench)

    demo = commands.add_parser("demo", parents=[scope], help="run a demo node, or the whole show")
    demo.add_argument(
        "demo",
        metavar="NAME",
        nargs="?",
        choices=["calc", "ticker", "chat", "farm"],
        help="calc, ticker, chat or farm; none: the self-contained show",
    )
    demo.add_argument("--name", metavar="NODE", help="the node's name (default: the demo's)")
    demo.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="end after S seconds (the show: default 60 at most)",
    )
    demo.add_argument(
        "--rate",
        type=float,
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
        "--script", metavar="FILE", help="chat: send these lines instead of reading the terminal"
    )
    demo.add_argument(
        "--workers", type=int, default=3, metavar="N", help="farm: worker processes (default 3)"
    )
    demo.add_argument(
        "--worker", action="store_true", help="farm: be one worker (what --workers starts)"
    )
    demo.set_defaults(run=cmd_demo)
    return parser


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zmqkit`` command; returns its exit status (0 ok, 1 failed, 2 usage, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except (UsageError, ConfigError) as exc:  # options that cannot work as given: exit 2
        parser.error(str(exc))
    except ZmqkitError as exc:
        print(f"zmqkit {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

"""The ``zmqkit`` command: discovery and the patterns from a shell.

Exit codes: 0 success, 1 the operation failed (timeout, remote error, not found), 2 usage error.
Only this module (and the demos) read the environment or print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import __version__
from .beacon import DEFAULT_PORT
from .errors import ZmqkitError
from .node import Node
from .peers import Peer

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


def _scope_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("discovery")
    group.add_argument("--scope", choices=["localhost", "subnet"], default="localhost",
                       help="where beacons go (default: localhost, nothing leaves this host)")
    group.add_argument("--interface", metavar="IF", help="the interface for --scope subnet")
    group.add_argument("--seed", metavar="HOST[:PORT]", action="append", default=[],
                       help="also send unicast beacons to HOST (repeatable)")
    group.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="P",
                       help=f"the UDP beacon port (default {DEFAULT_PORT})")
    return common


def make_node(args: argparse.Namespace, name: str, *, announce: bool) -> Node:
    """A node from the scope options; ``announce=False`` for commands that only look around."""
    return Node(name, port=args.port, scope=args.scope, interface=args.interface,
                seeds=args.seed, announce=announce)


def _peer_rows(peers: Sequence[Peer]) -> list[dict[str, object]]:
    now = time.monotonic()
    return [
        {"name": p.name, "uuid": str(p.uuid), "endpoints": dict(p.endpoints),
         "age": round(p.age(now), 3), "address": p.address, "headers": dict(p.headers)}
        for p in sorted(peers, key=lambda p: (p.name, str(p.uuid)))
    ]


def _peer_table(peers: Sequence[Peer]) -> Table:
    table = Table(title=f"{len(peers)} peers")
    for column in ("name", "uuid", "endpoints", "age"):
        table.add_column(column)
    for row in _peer_rows(peers):
        endpoints = "\n".join(f"{role} {ep}" for role, ep in row["endpoints"].items())  # type: ignore[attr-defined]
        table.add_row(str(row["name"]), str(row["uuid"])[:8], endpoints, f"{row['age']:.1f}s")
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the self-contained show."""
    from demos import show

    return show.run(port=args.port if args.port != DEFAULT_PORT else None)


def build_parser() -> argparse.ArgumentParser:
    scope = _scope_options()
    parser = argparse.ArgumentParser(prog="zmqkit", description="Broker-less messaging on ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"zmqkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    peers = commands.add_parser("peers", parents=[scope], help="list discovered peers")
    peers.add_argument("--json", action="store_true", help="print a JSON list")
    peers.add_argument("--watch", action="store_true", help="a live table, until Ctrl-C")
    peers.add_argument("--wait", type=float, default=1.5, metavar="S",
                       help="seconds to listen before listing (default 1.5)")
    peers.set_defaults(run=cmd_peers)

    demo = commands.add_parser("demo", parents=[scope], help="run the self-contained demo")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except ZmqkitError as exc:
        print(f"zmqkit {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED

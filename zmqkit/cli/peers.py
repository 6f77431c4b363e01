"""``zmqkit peers``: the nodes this host can discover, listed once or watched."""

from __future__ import annotations

import argparse
import contextlib
import queue
import time
from collections.abc import Sequence

from rich.live import Live
from rich.table import Table

from ..node import Node
from ..peers import EventKind, Peer, PeerEvent
from .output import Output, rich_table
from .parsing import CommandParser, add_command, seconds
from .scope import make_node

__all__ = ["register"]

COLUMNS = ("name", "uuid", "endpoints", "age")


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``peers``."""
    peers = add_command(
        commands,
        "peers",
        summary="list discovered peers",
        description="List the nodes that discovery finds: name, uuid, endpoints and the age of "
        "their last beacon. Returns as soon as the nodes have answered; --wait is the most it "
        "waits.",
        examples=[
            ("zmqkit peers", "a table on a terminal, one peer a line in a pipe"),
            ("zmqkit peers --json | jq -r '.[].name'", "the names, from JSON"),
            ("zmqkit peers --watch", "a live table (events as lines in a pipe) until Ctrl-C"),
        ],
        parents=[scope],
    )
    peers.add_argument("--json", action="store_true", help="print a JSON list (JSON Lines of "
                       "events with --watch)")
    peers.add_argument("--watch", action="store_true", help="keep watching until Ctrl-C")
    peers.add_argument(
        "--wait",
        type=seconds,
        default=1.5,
        metavar="S",
        help="the most seconds to wait for answers (default 1.5)",
    )
    peers.set_defaults(run=run_peers)


def peer_rows(peers: Sequence[Peer]) -> list[dict[str, object]]:
    """The peers as JSON-ready rows, sorted by name."""
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


def _cells(row: dict[str, object], *, short: bool) -> list[str]:
    endpoints = row["endpoints"]
    assert isinstance(endpoints, dict)
    joiner = "\n" if short else " "
    return [
        str(row["name"]),
        str(row["uuid"])[:8] if short else str(row["uuid"]),
        joiner.join(f"{role}={endpoint}" for role, endpoint in endpoints.items()),
        f"{row['age']:.1f}s",
    ]


def _title(peers: Sequence[Peer]) -> str:
    return f"{len(peers)} peer{'' if len(peers) == 1 else 's'}"


def run_peers(args: argparse.Namespace, out: Output) -> int:
    """List the peers once the answers are in, or watch them."""
    with make_node(args, announce=False) as node:
        if args.watch:
            return _watch(node, args, out)
        peers = node.gather(timeout=args.wait)  # returns once the answers are in
    rows = peer_rows(peers)
    if args.json:
        out.value(rows, compact=True)
    else:
        out.table(_title(peers), COLUMNS, [_cells(row, short=out.terminal) for row in rows])
    return 0


def _watch(node: Node, args: argparse.Namespace, out: Output) -> int:
    """A live table on a terminal; in a pipe (or with --json) one line per presence event."""
    if out.terminal and not args.json:

        def view() -> Table:
            peers = node.peers()
            rows = [_cells(row, short=True) for row in peer_rows(peers)]
            return rich_table(_title(peers), COLUMNS, rows)

        with Live(view(), console=out.console, refresh_per_second=4) as live:
            while True:
                time.sleep(0.25)
                live.update(view())
    arrived: queue.Queue[PeerEvent] = queue.Queue()
    node.on_event(arrived.put)
    known = node.peers()  # those known already, then what changes
    listed = {peer.uuid for peer in known}
    for peer in known:
        _print_event(PeerEvent(EventKind.JOINED, peer), args.json, out)
    while True:
        with contextlib.suppress(queue.Empty):
            event = arrived.get(timeout=1.0)
            if event.kind is EventKind.JOINED and event.peer.uuid in listed:
                listed.discard(event.peer.uuid)  # listed above already
                continue
            _print_event(event, args.json, out)


def _print_event(event: PeerEvent, as_json: bool, out: Output) -> None:
    [row] = peer_rows([event.peer])
    if as_json:
        out.value({"event": event.kind.value, **row}, compact=True)
    else:
        out.line("\t".join([event.kind.value, *_cells(row, short=False)]))

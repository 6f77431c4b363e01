"""``zmqkit top``, ``topics``, ``services`` and ``graph``: the mesh as its nodes report it.

Each asks every discovered node for its report (``zmqkit.introspect``, see docs/protocol.md) and
shows what the reports say; the beacons stay small, the nodes answer for themselves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from ..graph import Graph, build, to_dot, to_svg
from ..introspect import ask_nodes
from ..mesh import by_uuid, services, top_rows, topics
from ..node import Node
from .output import Output
from .parsing import CommandParser, add_command, seconds
from .scope import make_node

__all__ = ["register"]

# short headers, so that the table fits 80 columns: calls served, errors, latency p50 and p99
# in milliseconds, messages published ("sent") and received, each with its rate; drops, peers
TOP_COLUMNS = ("node", "calls", "/s", "err", "p50", "p99", "sent", "/s", "recv", "/s", "drop",
               "peer")
SORT_KEYS = ("name", "calls", "errors", "p99", "published", "received", "dropped")


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``top``, ``topics``, ``services`` and ``graph``."""
    top = add_command(
        commands,
        "top",
        summary="a live table of every node: rates, errors, latency, drops",
        description="Ask every node in the mesh how it is doing and show one row per node, "
        "refreshed: calls served and their rate, errors, latency percentiles, messages out and "
        "in, drops. Rates need two readings: --once takes them --interval apart.",
        examples=[
            ("zmqkit top", "a live table until Ctrl-C, busiest first"),
            ("zmqkit top --once --json | jq '.[].name'", "one reading, as JSON"),
            ("zmqkit top --sort errors", "the nodes with the most errors first"),
        ],
        parents=[scope],
    )
    top.add_argument("--once", action="store_true", help="print one reading and end")
    top.add_argument("--json", action="store_true", help="a JSON list of node objects (with "
                     "--once; JSON Lines of readings without)")
    top.add_argument("--sort", choices=SORT_KEYS, default="calls",
                     help="the column to sort by, largest first (name: A to Z; default calls)")
    top.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                     help="seconds between readings (default 1)")
    _add_wait(top)
    top.set_defaults(run=run_top)

    for name, summary, what in (
        ("topics", "every topic published in the mesh", "topic with its publishers, "
         "subscribers and the messages published so far"),
        ("services", "every RPC service in the mesh", "RPC service by name, with its nodes, "
         "its methods and the calls each served"),
    ):
        parser = add_command(
            commands, name, summary=summary,
            description=f"Ask every node in the mesh and list each {what}.",
            examples=[(f"zmqkit {name}", "a table on a terminal, a line each in a pipe"),
                      (f"zmqkit {name} --json", "the same as a JSON list")],
            parents=[scope],
        )
        parser.add_argument("--json", action="store_true", help="print a JSON list")
        if name == "topics":
            _add_interval(parser, "the rate of each topic")
        _add_wait(parser)
        parser.set_defaults(run=run_topics if name == "topics" else run_services)

    graph = add_command(
        commands,
        "graph",
        summary="a picture of nodes, services, topics and who talks to whom",
        description="Ask every node in the mesh and draw it: the nodes, the services they serve, "
        "the topics they publish and subscribe, farms, groups and state maps, and the calls "
        "made between nodes with their counts. A tree on a terminal; Graphviz DOT with --dot; "
        "a self-contained SVG (laid out here, nothing to install) with --svg.",
        examples=[
            ("zmqkit graph", "a tree on the terminal"),
            ("zmqkit graph --dot | dot -Tpng -o mesh.png", "through Graphviz"),
            ("zmqkit graph --svg mesh.svg", "a picture to open in a browser"),
        ],
        parents=[scope],
    )
    drawing = graph.add_mutually_exclusive_group()
    drawing.add_argument("--dot", action="store_true", help="print Graphviz DOT text")
    drawing.add_argument("--svg", type=Path, metavar="FILE", help="write an SVG picture to FILE")
    _add_interval(graph, "the rate of each edge")
    _add_wait(graph)
    graph.set_defaults(run=run_graph)


def _add_interval(parser: CommandParser, what: str) -> None:
    parser.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                        help=f"seconds between the two readings that give {what} (default 1; "
                        "0: one reading, counts only)")


def _two_readings(node: Node, args: argparse.Namespace
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The reports now and, ``--interval`` earlier, the reports before (None with 0)."""
    if args.interval <= 0:
        return _reports(node, args.wait), None
    before = _reports(node, args.wait)
    time.sleep(args.interval)
    return _reports(node, args.wait, gather=False), before


def _add_wait(parser: CommandParser) -> None:
    parser.add_argument("--wait", type=seconds, default=1.5, metavar="S",
                        help="the most seconds to wait for nodes and their answers (default 1.5)")


def _reports(node: Node, wait: float, *, gather: bool = True) -> list[dict[str, Any]]:
    """Every node's report, asked at once: the nodes found within ``wait`` (``gather``: asked
    to answer now; else those discovery knows already), then their answers within ``wait``."""
    peers = node.gather(timeout=wait) if gather else node.peers()
    peers.sort(key=lambda peer: (peer.name, peer.uuid.hex))
    return ask_nodes(node, peers, timeout=wait)


# -- top -----------------------------------------------------------------------------------------


def run_top(args: argparse.Namespace, out: Output) -> int:
    """``zmqkit top``: one reading (``--once``), or readings until Ctrl-C."""
    with make_node(args, announce=False) as node:
        previous = by_uuid(top_rows(_reports(node, args.wait)))
        time.sleep(args.interval)
        if args.once:
            rows = _sorted(top_rows(_reading(node, args), previous), args.sort)
            if args.json:
                out.value(rows, compact=True)
            elif out.terminal:
                out.show(_top_table(_top_title(rows) + f", by {args.sort}", rows))
            else:
                out.table(_top_title(rows), TOP_COLUMNS, [_top_cells(row) for row in rows])
            return 0
        if out.terminal and not args.json:
            with Live(console=out.console, auto_refresh=False) as live:
                while True:
                    previous = _show_reading(node, args, previous, live)
                    time.sleep(args.interval)
        while True:  # in a pipe: one reading per line, as JSON or as a table's rows
            started = time.monotonic()
            rows = _sorted(top_rows(_reading(node, args), previous), args.sort)
            previous = by_uuid(rows)
            if args.json:
                out.value(rows, compact=True)
            else:
                out.table(_top_title(rows), TOP_COLUMNS, [_top_cells(row) for row in rows])
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


def _show_reading(node: Node, args: argparse.Namespace, previous: dict[str, Any], live: Live
                  ) -> dict[str, Any]:
    rows = _sorted(top_rows(_reading(node, args), previous), args.sort)
    live.update(_top_table(_top_title(rows) + f", by {args.sort} (ms; Ctrl-C ends)", rows),
                refresh=True)
    return by_uuid(rows)


def _top_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """The live table: no lines between columns, numbers to the right, so that it fits 80
    columns."""
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1),
                  pad_edge=False)
    for index, column in enumerate(TOP_COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*(escape(cell) for cell in _top_cells(row)))
    return table


def _reading(node: Node, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A later reading: the nodes discovery knows now (it keeps up by itself), asked again."""
    return _reports(node, args.wait, gather=False)


def _sorted(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    if key == "name":
        return sorted(rows, key=lambda row: (str(row["name"]), str(row["uuid"])))
    return sorted(rows, key=lambda row: (-float(row.get(key, 0) or 0), str(row["name"])))


def _top_title(rows: list[dict[str, Any]]) -> str:
    silent = sum(1 for row in rows if "error" in row)
    title = f"{len(rows)} node{'' if len(rows) == 1 else 's'}"
    return title + (f", {silent} not answering" if silent else "")


def _top_cells(row: dict[str, Any]) -> list[str]:
    node = f"{row['name']} {str(row['uuid'])[:6]}"
    if "error" in row:
        return [node, row["error"], *[""] * (len(TOP_COLUMNS) - 2)]

    def rate(key: str) -> str:
        return f"{row[key]:,.1f}" if key in row else "-"

    return [
        node, f"{row['calls']:,}", rate("calls/s"), f"{row['errors']:,}",
        f"{1000 * row['p50']:.2f}", f"{1000 * row['p99']:.2f}", f"{row['published']:,}",
        rate("published/s"), f"{row['received']:,}", rate("received/s"), f"{row['dropped']:,}",
        str(row["peers"]),
    ]


# -- topics and services -------------------------------------------------------------------------


def _names(nodes: list[dict[str, Any]]) -> str:
    return ", ".join(sorted(str(node["name"]) for node in nodes)) or "-"


def run_topics(args: argparse.Namespace, out: Output) -> int:
    """``zmqkit topics``: every topic, its publishers, subscribers and rate."""
    with make_node(args, announce=False) as node:
        rows = topics(*_two_readings(node, args))
    if args.json:
        out.value(rows, compact=True)
    else:
        out.table(f"{len(rows)} topics",
                  ("topic", "publishers", "subscribers", "published", "msgs/s"),
                  [[row["topic"], _names(row["publishers"]), _names(row["subscribers"]),
                    f"{row['published']:,}", f"{row['rate']:,.1f}" if "rate" in row else "-"]
                   for row in rows])
    return 0


def run_services(args: argparse.Namespace, out: Output) -> int:
    """``zmqkit services``: every RPC service, its nodes and methods."""
    with make_node(args, announce=False) as node:
        rows = services(_reports(node, args.wait))
    if args.json:
        out.value(rows, compact=True)
    else:
        out.table(f"{len(rows)} services", ("service", "nodes", "methods", "calls", "errors"),
                  [[row["service"], _names(row["nodes"]), ", ".join(sorted(row["methods"])),
                    f"{sum(m['calls'] for m in row['methods'].values()):,}",
                    f"{sum(m['errors'] for m in row['methods'].values()):,}"] for row in rows])
    return 0


# -- graph ---------------------------------------------------------------------------------------


def run_graph(args: argparse.Namespace, out: Output) -> int:
    """``zmqkit graph``: a tree, DOT text, or an SVG file."""
    with make_node(args, announce=False) as node:
        graph = build(*_two_readings(node, args))
    if args.dot:
        out.stream.write(to_dot(graph))
    elif args.svg is not None:
        args.svg.write_text(to_svg(graph), encoding="utf-8")
        out.line(f"wrote {args.svg}: {len(graph.vertices)} vertices, {len(graph.edges)} edges")
    elif out.terminal:
        out.show(_tree(graph))
    else:
        for edge in graph.edges:  # in a pipe: one edge a line
            rate = "" if edge.rate is None else f"{edge.rate:.1f}"
            out.line("\t".join([graph.vertices[edge.source].label, edge.verb,
                                graph.vertices[edge.target].label, str(edge.count), rate]))
    return 0


def _tree(graph: Graph) -> Tree:
    tree = Tree(f"[bold]mesh[/] ({sum(v.kind == 'node' for v in graph.vertices.values())} nodes)")
    for vertex in graph.vertices.values():
        if vertex.kind != "node":
            continue
        branch = tree.add(f"[bold]{escape(vertex.label)}[/] {escape(' '.join(vertex.lines))}")
        for edge in graph.edges:
            if edge.source == vertex.key:
                other = graph.vertices[edge.target]
            elif edge.target == vertex.key and edge.verb in ("subscribes", "works"):
                other = graph.vertices[edge.source]
            else:
                continue
            count = f" ({edge.label})" if edge.label else ""
            branch.add(f"{edge.verb} {other.kind} {escape(other.label)}{count}")
    return tree

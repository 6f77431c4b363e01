"""``zmqkit call``: call a method on a node by name, with JSON arguments and a JSON result."""

from __future__ import annotations

import argparse

from rich.text import Text

from .output import Output
from .parsing import CommandParser, UsageError, add_command, json_value, seconds
from .scope import make_node

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``call``."""
    call = add_command(
        commands,
        "call",
        summary="call a method on a node by name",
        description="Call METHOD on a node called NAME and print the result as JSON (indented "
        "on a terminal, one line in a pipe). Exit 0 with the result, 1 with a one-line error "
        "(no such node, timeout, remote error). Values JSON cannot hold travel in the $ forms "
        'described in the README ({"$bytes": "aGk="}, ...).',
        examples=[
            ("zmqkit call calc add 1 2", "3"),
            ("zmqkit call calc echo '\"hello\"'", "text is a JSON string, in quotes"),
            ("zmqkit call calc echo '{\"a\": [1, null]}' | jq .a", "one line of JSON in a pipe"),
            ("zmqkit call calc --list", "the methods, with signatures and docstrings"),
        ],
        parents=[scope],
    )
    call.add_argument("name", metavar="NAME", help="the node (service) name to call")
    call.add_argument(
        "method", metavar="METHOD", nargs="?", help="the method to call (omit with --list)"
    )
    call.add_argument(
        "args",
        metavar="ARG",
        nargs="*",
        type=json_value,
        default=[],
        help="the method's arguments, each a JSON literal: 1, 2.5, true, null, '\"text\"', "
        "'[1, 2]', '{\"k\": 1}'",
    )
    call.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the node and its reply (default 5)",
    )
    call.add_argument("--json", action="store_true", help="one line of JSON, on a terminal too")
    call.add_argument("--list", action="store_true", help="list the node's methods instead")
    call.set_defaults(run=run_call)


def run_call(args: argparse.Namespace, out: Output) -> int:
    """Call the method (or list the node's methods) and print the result as JSON."""
    from zmqkit.patterns import rpc

    if args.list and args.method is not None:
        raise UsageError("--list takes no METHOD")
    if not args.list and args.method is None:
        raise UsageError("name a METHOD, or --list the node's methods")
    with (
        make_node(args, announce=False) as node,
        rpc.Client(node, args.name, timeout=args.timeout) as client,
    ):
        if args.list:
            _print_methods(client.methods(), args.json, out)
        else:
            out.value(client.call_with(args.method, args.args), compact=args.json)
    return 0


def _print_methods(methods: list[dict[str, str]], as_json: bool, out: Output) -> None:
    if as_json:
        out.value(methods, compact=True)
        return
    for method in methods:
        doc = method["doc"].splitlines()[0] if method["doc"] else ""
        if out.terminal:
            out.show(_method_text(method["signature"], method["mode"], doc))
        else:
            out.line("\t".join([method["signature"], method["mode"], doc]))


def _method_text(signature: str, mode: str, doc: str) -> Text:
    text = Text()
    text.append(signature, style="bold")
    text.append(f"  {mode}", style="dim")
    if doc:
        text.append(f"\n    {doc}")
    return text

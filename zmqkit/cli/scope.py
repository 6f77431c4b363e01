"""The discovery and security options every command that runs a node takes, and that node."""

from __future__ import annotations

import argparse
from typing import Any

from ..beacon import DEFAULT_PORT, PORT_VARIABLE
from ..node import Node
from .parsing import CommandParser, UsageError, interface, port, seed

__all__ = ["check_scope", "make_node", "node_options", "scope_options"]

CLI_NODE = "zmqkit-cli"  # the name of the node a command that only looks around runs


def scope_options() -> CommandParser:
    """A parent parser: ``--scope --interface --seed --port`` and ``--keys --keyring``."""
    common = CommandParser(add_help=False)
    group = common.add_argument_group("discovery")
    group.add_argument(
        "--scope",
        choices=["localhost", "subnet"],
        default="localhost",
        help="where beacons go (default: localhost, nothing leaves this host)",
    )
    group.add_argument(
        "--interface", metavar="IF", type=interface, help="the interface for --scope subnet"
    )
    group.add_argument(
        "--seed",
        metavar="HOST[:PORT]",
        type=seed,
        action="append",
        default=[],
        help="also send unicast beacons to HOST (repeatable)",
    )
    group.add_argument(
        "--port",
        type=port,
        default=None,
        metavar="P",
        help=f"the UDP beacon port, 1 to 65535 (default ${PORT_VARIABLE} if set, else "
        f"{DEFAULT_PORT})",
    )
    secure = common.add_argument_group("security (CURVE)")
    secure.add_argument("--keys", metavar="PATH", help="this node's keypair (from zmqkit keys new)")
    secure.add_argument("--keyring", metavar="DIR", help="a directory of *.pub keys to accept")
    return common


def check_scope(args: argparse.Namespace) -> None:
    """The checks that span options.

    Raises:
        UsageError: ``--scope subnet`` without ``--interface``, an interface without subnet
            scope, or only one of ``--keys`` and ``--keyring``.
    """
    if args.scope == "subnet" and not args.interface:
        raise UsageError("--scope subnet needs --interface IF (whose broadcast address to use)")
    if args.interface and args.scope != "subnet":
        raise UsageError("--interface goes with --scope subnet")
    if (args.keys is None) != (args.keyring is None):
        raise UsageError("--keys and --keyring go together (make keys with: zmqkit keys new PATH)")


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


def make_node(args: argparse.Namespace, name: str = CLI_NODE, *, announce: bool) -> Node:
    """A node from the options; ``announce=False`` for commands that only look around."""
    return Node(name, announce=announce, **node_options(args))

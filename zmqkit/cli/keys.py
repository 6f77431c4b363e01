"""``zmqkit keys new``: make a CURVE keypair."""

from __future__ import annotations

import argparse

from .output import Output
from .parsing import CommandParser, add_command

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[CommandParser], scope: CommandParser) -> None:
    """Add ``keys`` and its action ``new``."""
    keys = add_command(
        commands,
        "keys",
        summary="make CURVE keys",
        description="Make the CURVE keys that --keys and --keyring read.",
        examples=[
            ("zmqkit keys new server", "server.pub (share it) and server.secret (mode 0600)"),
            ("mkdir ring && cp server.pub client.pub ring/", "a keyring is a directory"),
        ],
    )
    actions = keys.add_subparsers(
        dest="keys_command", metavar="ACTION", required=True, help="what to do with keys"
    )
    new_keys = add_command(
        actions,
        "new",
        summary="write a new keypair: PATH.pub and PATH.secret",
        description="Write a new CURVE keypair: PATH.pub (the public key: copy it into the "
        "keyring directory of every peer) and PATH.secret (mode 0600: keep it). Refuses to "
        "overwrite either file.",
        examples=[
            ("zmqkit keys new alice", "alice.pub and alice.secret here"),
            ("zmqkit keys new ~/.zmqkit/calc", "in another directory"),
        ],
    )
    new_keys.add_argument(
        "path", metavar="PATH", help="where to write: PATH.pub and PATH.secret"
    )
    new_keys.set_defaults(run=run_keys_new)


def run_keys_new(args: argparse.Namespace, out: Output) -> int:
    """Write a new keypair and say where it went."""
    from ..security import Keypair

    public_path, secret_path = Keypair.generate().save(args.path)
    out.line(f"public key: {public_path}  (copy it into the keyring directory of every peer)")
    out.line(f"secret key: {secret_path}  (mode 0600; pass --keys {args.path})")
    return 0

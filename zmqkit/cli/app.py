"""The ``zmqkit`` command's front door: the parser built from every command module, and the run
that turns what happens into an exit status.

Exit codes: 0 success, 1 the operation failed (timeout, remote error, not found), 2 usage error
(the subcommand's usage line and one line naming the problem, never a traceback), 130 Ctrl-C
(after the command has stopped cleanly). A reader that closes the pipe (``| head``) ends the
command quietly, with 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from .. import __version__
from ..errors import ConfigError, ZmqkitError
from . import benchmark, call, demo, keys, mesh, peers, rates, topic
from .output import Output, silence_stdout
from .parsing import CommandParser, UsageError
from .scope import check_scope, scope_options

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVELS = ("debug", "info", "warning", "error")

Register = Callable[["argparse._SubParsersAction[CommandParser]", CommandParser], None]

# Each command module adds its subcommands with ``register(commands, scope)``; ``scope`` is the
# parent parser of the discovery and security options. A new command is a module and a line here.
COMMANDS: tuple[Register, ...] = (
    peers.register,
    call.register,
    topic.register,
    rates.register,
    mesh.register,
    keys.register,
    benchmark.register,
    demo.register,
)


def build_parser() -> CommandParser:
    """The ``zmqkit`` command's argument parser, every subcommand included."""
    parser = CommandParser(
        prog="zmqkit",
        description="Broker-less messaging on ZeroMQ: find nodes by name, call them, publish "
        "and listen, from a shell. Arguments and results are JSON.",
        epilog="examples:\n"
        "  zmqkit demo calc &            # a node to talk to\n"
        "  zmqkit call calc add 1 2      # 3\n"
        "  zmqkit peers --json           # who is there, as JSON\n"
        "\n"
        "zmqkit COMMAND --help shows each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"zmqkit {__version__}")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="warning", type=str.lower,
        help="what the library's zmqkit.* loggers print on stderr (default warning)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="what to do (each has --help)"
    )
    scope = scope_options()
    for register in COMMANDS:
        register(commands, scope)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zmqkit`` command; returns its exit status (0 ok, 1 failed, 2 usage, 130 Ctrl-C)."""
    previous = signal.signal(signal.SIGINT, _stop_once)
    try:
        return _run(argv)
    except KeyboardInterrupt:  # before a command ran (or while parsing)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the library installs no handler (it only logs, under zmqkit.*); the command is the
    # application, so it says where the records go
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    usage: CommandParser = args.command_parser
    try:
        if hasattr(args, "scope"):
            check_scope(args)
        code: int = args.run(args, Output())
        return code
    except (UsageError, ConfigError) as exc:  # options that cannot work as given: exit 2
        usage.error(str(exc))
    except ZmqkitError as exc:
        print(f"{usage.prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader has gone (| head): what it wanted, it has
        silence_stdout()
        return EXIT_OK


def _stop_once(_signal: int, _frame: FrameType | None) -> None:
    """Ctrl-C: stop the command, once. Further Ctrl-Cs are ignored while it stops cleanly
    (closing a node is bounded: every close has a timeout), so no half-closed node is left and
    no traceback is printed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt

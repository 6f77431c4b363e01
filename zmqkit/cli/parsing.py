"""The parser every subcommand is built with, and the checked option values it reads.

A usage problem never reaches a node: each value is checked where it is parsed (a port is 1 to
65535, durations and counts are never negative, rates are positive, ARGs are JSON), and a bad one
ends the command with exit 2, the subcommand's own usage line and one line naming the option.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import textwrap
from collections.abc import Sequence
from typing import Any

from ..beacon import interface_addresses
from ..deadline import MAX_TIMEOUT
from ..errors import ConfigError
from ..jsonform import loads

__all__ = [
    "CommandParser",
    "UsageError",
    "add_command",
    "at_least_one",
    "count",
    "interface",
    "json_value",
    "port",
    "rate",
    "seconds",
    "seed",
    "window",
]

HELP_WIDTH = 78


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit 2)."""


class CommandParser(argparse.ArgumentParser):
    """The parser of the command and of each subcommand (argparse makes the subcommands' parsers
    of the same class). Its help keeps the examples' lines as written; its ``error`` (argparse's)
    prints this parser's own usage, then ``zmqkit SUBCOMMAND: error: ...``, and exits 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if kwargs.get("description"):  # raw, like the examples: wrapped here instead
            kwargs["description"] = textwrap.fill(kwargs["description"], HELP_WIDTH)
        super().__init__(*args, **kwargs)


def add_command(
    commands: argparse._SubParsersAction[CommandParser],
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[tuple[str, str]],
    parents: Sequence[CommandParser] = (),
) -> CommandParser:
    """A subcommand whose ``--help`` ends with ``examples``: (command line, what it does)."""
    width = max(len(line) for line, _ in examples) + 2
    epilog = "examples:\n" + "\n".join(
        f"  {line:<{width}}# {what}" if what else f"  {line}" for line, what in examples
    )
    parser = commands.add_parser(
        name, help=summary, description=description, epilog=epilog, parents=list(parents)
    )
    parser.set_defaults(command_parser=parser)
    return parser


# -- option values -------------------------------------------------------------------------------


def port(text: str) -> int:
    """A UDP port: 1 to 65535 (a beacon sent to port 0 goes nowhere)."""
    number = _integer(text, "a port")
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; a port is 1 to 65535")
    return number


def seconds(text: str) -> float:
    """A duration: a finite number of seconds, 0 or more."""
    number = _number(text, "a number of seconds")
    if not 0 <= number < MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; a duration is 0 or more seconds"
        )
    return number


def count(text: str) -> int:
    """A count: a whole number, 0 or more."""
    number = _integer(text, "a count")
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; a count is 0 or more")
    return number


def at_least_one(text: str) -> int:
    """A whole number, 1 or more (workers, rounds)."""
    number = _integer(text, "a whole number")
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is too few; give 1 or more")
    return number


def window(text: str) -> int:
    """A sliding window of messages: 2 or more (one interval needs two messages)."""
    number = _integer(text, "a number of messages")
    if number < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is too small; a window is 2 or more messages")
    return number


def rate(text: str) -> float:
    """A rate: a finite number per second, more than 0."""
    number = _number(text, "a rate")
    if not 0 < number < MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate; a rate is more than 0 per second"
        )
    return number


def seed(text: str) -> str:
    """``HOST`` or ``HOST:PORT``; the name is resolved when the node starts."""
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host.strip() or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; a seed is HOST or HOST:PORT")
    if colon:
        try:
            port(port_text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a seed; its port is 1 to 65535"
            ) from None
    return text


def interface(text: str) -> str:
    """A network interface of this host that has an IPv4 address."""
    try:
        interface_addresses(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def json_value(text: str) -> Any:
    """A JSON literal, in the ``$`` forms of ``zmqkit.jsonform`` for what JSON cannot hold."""
    try:
        return loads(text)
    except json.JSONDecodeError:
        quoted = shlex.quote(json.dumps(text, ensure_ascii=False))
        raise argparse.ArgumentTypeError(
            f"{text!r} is not JSON; text is a JSON string in quotes: {quoted}"
        ) from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _number(text: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}; give a finite number")
    return number

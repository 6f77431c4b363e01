"""The chat node: a group chat over ``zmqkit.patterns.groups``, one node per terminal.

``zmqkit demo chat --name alice`` joins the group ``lobby``: type a line and press Enter, and
every other chat node shows it with your name; joins and departures show up too. With no terminal
on stdin (or with ``--script FILE``) it sends scripted lines instead, so it can run headless.
"""

from __future__ import annotations

import contextlib
import select
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from zmqkit.patterns.groups import GroupEvent, GroupEventKind, Groups

from zmqkit import Node, Timeout

from .common import Clock, run_until

GROUP = "lobby"
SCRIPT_PAUSE = 0.7  # seconds between scripted lines
FIRST_LINE_WAIT = 3.0  # a scripted chat waits this long at most for someone to talk to
SETTLE = 0.5  # after someone joins: time for both sides to connect before the first line
DEFAULT_SCRIPT = ("hello from {name}", "anyone else here?", "{name} signing off")


def _scripted_lines(name: str, script: list[str] | None) -> Iterator[str]:
    if script is None:
        yield from (line.format(name=name) for line in DEFAULT_SCRIPT)
    else:
        yield from script


def _typed_line(stream: TextIO) -> str | None:
    """A line typed on a terminal, if one is ready (never waits)."""
    readable, _, _ = select.select([stream], [], [], 0)
    if not readable:
        return None
    line = stream.readline()
    return line.rstrip("\n") if line else None


def run(
    node_options: dict[str, Any],
    *,
    name: str = "chat",
    duration: float | None = None,
    script: list[str] | None = None,
) -> int:
    """Chat in the lobby until ``duration`` passes (None: until Ctrl-C)."""
    console = Console(highlight=False)
    interactive = script is None and sys.stdin.isatty()
    scripted = None if interactive else _scripted_lines(name, script)
    next_line_at = time.monotonic() + FIRST_LINE_WAIT

    def show(event: GroupEvent) -> None:
        stamp = "" if console.is_terminal else f"{Clock.now()} "
        peer, group, body = escape(event.peer), escape(str(event.group)), escape(str(event.body))
        if event.kind is GroupEventKind.SHOUT:
            console.print(f"{stamp}[bold cyan]<{peer}>[/] {body}")
        elif event.kind is GroupEventKind.WHISPER:
            console.print(f"{stamp}[magenta]({peer} whispers)[/] {body}")
        elif event.kind is GroupEventKind.JOIN:
            console.print(f"{stamp}[green]* {peer} joined {group}[/]")
        elif event.kind is GroupEventKind.LEAVE:
            console.print(f"{stamp}[yellow]* {peer} left {group}[/]")
        else:
            console.print(f"{stamp}[red]* {peer} is gone ({body})[/]")

    with Node(name, **node_options) as node, Groups(node) as chat:
        chat.join(GROUP)
        console.print(
            f"{name} in {GROUP!r} (beacon port {node.port})"
            + (": type a line and press Enter" if interactive else "")
        )

        waiting_for_company = scripted is not None

        def step() -> None:
            nonlocal next_line_at, scripted, waiting_for_company
            if waiting_for_company and (chat.members(GROUP) or time.monotonic() >= next_line_at):
                waiting_for_company = False  # someone to talk to, or tired of waiting
                next_line_at = min(next_line_at, time.monotonic() + SETTLE)
            line = _typed_line(sys.stdin) if interactive else None
            if (
                scripted is not None
                and not waiting_for_company
                and time.monotonic() >= next_line_at
            ):
                line = next(scripted, None)
                next_line_at = time.monotonic() + SCRIPT_PAUSE
            if line:
                chat.shout(GROUP, line)
                console.print(
                    f"{'' if console.is_terminal else Clock.now() + ' '}"
                    f"[bold]<{escape(name)}>[/] {escape(line)}"
                )
            with contextlib.suppress(Timeout):  # nothing said in this look: fine
                show(chat.recv(0.05))

        run_until(duration, step)
    return 0

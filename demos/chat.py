"""The chat node: a group chat over ``zmqkit.patterns.groups``, one node per terminal.

``zmqkit demo chat --name alice`` joins the group ``lobby`` and says each line it reads, and every
other chat node shows it with its speaker's name; joins and departures show up too. Lines come
from the terminal (type a line and press Enter; Ctrl-D leaves), from a pipe or a file on standard
input (``printf 'hi\\n' | zmqkit demo chat``: it says each line, then leaves at the end of the
input), or from ``--script`` lines, said one every 0.7 s (then it stays and listens).
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
FIRST_LINE_WAIT = 3.0  # a chat with lines to say waits this long at most for someone to hear them
SETTLE = 0.5  # after someone joins: time for both sides to connect before the first line
LAST_WORDS = 0.5  # after the end of the input: time for the last lines to reach the others


class Lines:
    """Where a chat's own lines come from: a script, or standard input (a terminal or not)."""

    def __init__(self, script: list[str] | None, stdin: TextIO) -> None:
        self._script: Iterator[str] | None = iter(script) if script is not None else None
        self._stdin = stdin
        self.typed = script is None and stdin.isatty()
        self.ended = False  # the input is over (Ctrl-D, end of a pipe or a file)

    def next(self) -> str | None:
        """The next line, if one is ready now (never waits)."""
        if self._script is not None:
            return next(self._script, None)
        if self.ended:
            return None
        readable, _, _ = select.select([self._stdin], [], [], 0)
        if not readable:
            return None
        text = self._stdin.readline()
        if not text:
            self.ended = True
            return None
        return text.rstrip("\n")


def run(
    node_options: dict[str, Any],
    *,
    name: str = "chat",
    duration: float | None = None,
    script: list[str] | None = None,
) -> int:
    """Chat in the lobby until ``duration`` passes (None: until Ctrl-C or the input ends)."""
    console = Console(highlight=False)
    lines = Lines(script, sys.stdin)
    pause = SCRIPT_PAUSE if script is not None else 0.0
    waiting_for_company = not lines.typed  # lines to say at once: wait until someone can hear
    next_line_at = time.monotonic() + FIRST_LINE_WAIT
    leave_at: float | None = None

    def say(text: str) -> None:
        if console.is_terminal:
            console.print(text)
        else:  # a pipe: plain, timestamped, never wrapped
            console.print(f"{Clock.now()} {text}", soft_wrap=True)

    def show(event: GroupEvent) -> None:
        peer, group, body = escape(event.peer), escape(str(event.group)), escape(str(event.body))
        if event.kind is GroupEventKind.SHOUT:
            say(f"[bold cyan]<{peer}>[/] {body}")
        elif event.kind is GroupEventKind.WHISPER:
            say(f"[magenta]({peer} whispers)[/] {body}")
        elif event.kind is GroupEventKind.JOIN:
            say(f"[green]* {peer} joined {group}[/]")
        elif event.kind is GroupEventKind.LEAVE:
            say(f"[yellow]* {peer} left {group}[/]")
        else:
            say(f"[red]* {peer} is gone ({body})[/]")

    with Node(name, **node_options) as node, Groups(node) as chat:
        chat.join(GROUP)
        say(
            escape(f"{name} in {GROUP!r} (beacon port {node.port})")
            + (": type a line and press Enter (Ctrl-D leaves)" if lines.typed else "")
        )

        def step() -> bool:
            nonlocal next_line_at, waiting_for_company, leave_at
            now = time.monotonic()
            if waiting_for_company and (chat.members(GROUP) or now >= next_line_at):
                waiting_for_company = False  # someone to talk to, or tired of waiting
                next_line_at = min(next_line_at, now + SETTLE)
            if not waiting_for_company and now >= next_line_at:
                text = lines.next()
                if text:
                    chat.shout(GROUP, text)
                    say(f"[bold]<{escape(name)}>[/] {escape(text)}")
                    next_line_at = now + pause
            if lines.ended and leave_at is None:
                leave_at = now + LAST_WORDS
            with contextlib.suppress(Timeout):  # nothing said in this look: fine
                show(chat.recv(0.05))
            return leave_at is None or time.monotonic() < leave_at

        run_until(duration, step)
        if lines.ended:
            say(escape(f"{name} leaves {GROUP!r}: end of input"))
    return 0

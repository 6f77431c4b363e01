"""Where a command's results go: rich on a terminal, plain lines in a pipe.

On a terminal: highlighted JSON, tables with boxes, live views, progress bars (no colour when
``NO_COLOR`` is set; rich reads it). In a pipe or a file: no boxes, no wrapping, no spinners,
one record per line (tables as a header line and tab-separated rows), flushed as it is written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.json import JSON
from rich.markup import escape
from rich.table import Table

from ..jsonform import dumps

__all__ = ["Output", "silence_stdout"]


class Output:
    """The standard output of one command run."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.terminal = self.stream.isatty()
        self.console = Console(file=self.stream, highlight=False)

    def value(self, value: Any, *, compact: bool = False) -> None:
        """``value`` as JSON: indented and highlighted on a terminal, else (or ``compact``) one
        line. What JSON cannot hold takes its ``$`` form (``zmqkit.jsonform``)."""
        if self.terminal and not compact:
            self.console.print(JSON(dumps(value), indent=2))
        else:
            self.line(dumps(value))

    def line(self, text: str) -> None:
        """One line of plain text, written at once (never read as markup, never wrapped)."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def show(self, renderable: RenderableType) -> None:
        """Something rich, for a terminal only."""
        self.console.print(renderable)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A table: boxed on a terminal; a header line and tab-separated rows in a pipe."""
        if self.terminal:
            self.show(rich_table(title, columns, rows))
            return
        self.line("\t".join(columns))
        for row in rows:
            self.line("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))


def rich_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A boxed table of text cells (never read as rich markup)."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def silence_stdout() -> None:
    """After the reader of a pipe has gone (``| head``): point stdout at /dev/null, so that
    the interpreter's last flush at exit has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)

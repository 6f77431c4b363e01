"""The show's live dashboard, laid out to the terminal: every part shows from 80x24 up.

A header line, then peers beside calls, the pub/sub and patterns lines, and the events, newest
last. Each region gets a fixed number of rows for the terminal's height and shows the newest of
what it holds that fits; no line wraps (a long one ends in an ellipsis), so nothing pushes
another region off the screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.markup import escape
from rich.padding import Padding
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from zmqkit import Peer

__all__ = ["Board", "render"]

PATTERN_LINES = 4  # ticks, farm, and the last two lines said in the lobby
TOP_MAX = 11  # rows for peers and calls: a rule, a header and up to 9 rows (9 calls)
MIN_EVENTS = 4  # a rule and three events at least
WIDE = 120  # from this width on, the peers show their uuid and age too


@dataclass
class Board:
    """What the dashboard shows, as text (values already written as JSON where they are)."""

    port: int
    act: str  # "act 2/6: rpc", or "done"
    clock: str  # "4.1 s", or "6 acts in 14.2 s"
    peers: Sequence[Peer] = ()
    calls: Sequence[tuple[str, str, str]] = ()  # call, result, ms
    patterns: Sequence[str] = ()  # lines, in rich markup (what peers said is escaped)
    events: Sequence[str] = ()
    ages: dict[str, str] = field(default_factory=dict)  # peer uuid hex -> "0.4s"


def render(board: Board, width: int, height: int) -> RenderableType:
    """The dashboard for a terminal of ``width`` x ``height`` (one row is left for the cursor)."""
    rows = max(height - 1, 1 + 2 + (1 + PATTERN_LINES) + MIN_EVENTS)
    patterns_rows = 1 + PATTERN_LINES
    top_rows = min(TOP_MAX, rows - 1 - patterns_rows - MIN_EVENTS)
    event_rows = rows - 1 - patterns_rows - top_rows
    layout = Layout()
    layout.split_column(
        Layout(_header(board, width), size=1),
        Layout(name="top", size=top_rows),
        Layout(_section("pub/sub and patterns", board.patterns, PATTERN_LINES), size=patterns_rows),
        Layout(_section("events", board.events, event_rows - 1), size=event_rows),
    )
    layout["top"].split_row(
        Layout(Padding(_peers(board, top_rows - 2, wide=width >= WIDE), (0, 1, 0, 0))),
        Layout(_calls(board.calls, top_rows - 2)),
    )
    return _Fixed(layout, rows)


class _Fixed:
    """A layout rendered at a fixed height (a Layout alone takes the whole terminal's)."""

    def __init__(self, layout: Layout, height: int) -> None:
        self.layout = layout
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from console.render(self.layout, options.update(height=self.height))


def _header(board: Board, width: int) -> Text:
    text = f" zmqkit show · beacon port {board.port} · {board.clock} · {board.act}"
    return Text(text.ljust(width), style="bold white on blue", no_wrap=True, overflow="ellipsis")


def _section(title: str, lines: Sequence[str], room: int) -> Group:
    shown = list(lines)[-room:] if room > 0 else []
    body = [Text.from_markup(line, overflow="ellipsis") for line in shown] or [Text("-")]
    for text in body:
        text.no_wrap = True
    return Group(Rule(title, style="blue", align="left"), *body)


def _table(columns: Sequence[str], ratios: Sequence[int | None] = ()) -> Table:
    """A borderless table; a column with a ratio shares the width left by those without."""
    table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
    for column, ratio in zip(columns, list(ratios) or [None] * len(columns), strict=True):
        table.add_column(column, no_wrap=True, overflow="ellipsis", ratio=ratio)
    return table


def _peers(board: Board, room: int, *, wide: bool) -> Group:
    table = _table(("name", "uuid", "serves", "age") if wide else ("name", "serves", "age"))
    peers = sorted(board.peers, key=lambda peer: peer.name)
    shown = peers if len(peers) <= room else peers[: max(room - 1, 0)]
    for peer in shown:
        serves = ", ".join(sorted(role for role in peer.endpoints if role != "admin")) or "-"
        age = board.ages.get(peer.uuid.hex, "")
        cells = [escape(peer.name), serves, age]
        table.add_row(*([cells[0], peer.uuid.hex[:8], *cells[1:]] if wide else cells))
    if len(shown) < len(peers):
        table.add_row(f"… {len(peers) - len(shown)} more", "", "", *([""] if wide else []))
    return Group(Rule(f"peers found by beacon: {len(peers)}", style="blue", align="left"), table)


def _calls(calls: Sequence[tuple[str, str, str]], room: int) -> Group:
    table = _table(("call", "result", "ms"), (1, 1, None))
    table.columns[2].justify = "right"
    for call, result, took in list(calls)[-room:] if room > 0 else []:
        table.add_row(escape(call), escape(result), took)
    return Group(Rule(f"calls: {len(calls)}", style="blue", align="left"), table)

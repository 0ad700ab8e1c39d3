"""The rich consoles the commands print to, and tables that keep their verdicts whole.

Every string that comes from a claim, a sweep or the user is printed as text, never parsed as
rich markup (``[torch]`` stays ``[torch]``): wrap it in :func:`plain` or escape it.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Width of tables written to a pipe or file, instead of rich's 80-column default.
PIPE_WIDTH = 160

#: Every verdict a table may show; the verdict column is as wide as the longest.
VERDICTS = ("PROVED", "REFUTED", "CORRECTED", "SUPPORTED", "INCONCLUSIVE", "INFORMAL", "CRASHED")

VERDICT_STYLE = {
    "PROVED": "green",
    "SUPPORTED": "cyan",
    "CORRECTED": "yellow",
    "REFUTED": "bold red",
    "INCONCLUSIVE": "yellow",
    "INFORMAL": "magenta",
    "CRASHED": "bold red",
}

VERDICT_WIDTH = max(map(len, VERDICTS))


class _Console(Console):
    """A rich Console that leaves a closed pipe to the command line (rich's own exits with 1)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError("stdout's reader has gone")


def stdout_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, else ``$COLUMNS``, else PIPE_WIDTH."""
    stream = sys.stderr if stderr else sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        return _Console(stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return _Console(stderr=stderr, width=width)


def plain(text: object, style: str = "") -> Text:
    """``text`` as a rich Text: printed as written, brackets included."""
    return Text(str(text), style=style)


def verdict_text(verdict: str) -> Text:
    """A verdict word in its colour (never truncated by the tables below)."""
    return Text(verdict, style=VERDICT_STYLE.get(verdict, "yellow"))


def print_table(console: Console, title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                *, verdict_columns: Iterable[str] = (), wide: Iterable[str] = (), compact: bool = False) -> None:
    """Print rows as a table when it fits the console, else as one block of ``column: value``
    lines per row: a verdict is never cut and a cell is never left empty for lack of room.

    Cells are str (printed as plain text) or rich Text. Verdict columns keep their width; the
    other columns give up width, widest first, and fold their text onto more lines. ``compact``
    draws no outer frame nor column rules (for tables of numbers).
    """
    rows = [[c if isinstance(c, Text) else plain(c) for c in row] for row in rows]
    keep = set(verdict_columns)
    frame = 3 * (len(columns) - 1) if compact else 3 * len(columns) + 1
    widths = column_widths(console.width - frame, columns, rows, keep, set(wide))
    if widths is None:
        console.print(plain(title, "bold"))
        for row in rows:
            console.print(plain("-" * min(console.width, 40), "dim"))
            for col, cell in zip(columns, row):
                if cell.plain:
                    console.print(Text.assemble(plain(f"{col}: ", "bold"), cell), overflow="fold")
        return
    style = dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False) if compact else {}
    table = Table(title=plain(title), **style)
    for col, width in zip(columns, widths):
        header = "\n".join(col.split()) if col in keep and cell_len(col) > width else col  # no_wrap cuts headers too
        table.add_column(header, width=width, no_wrap=col in keep, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


#: The narrowest a folding column may become before the table gives way to a list.
MIN_COLUMN = 6
#: How wide a ``wide`` column (evidence) stays while other columns can still give up width.
WIDE_COLUMN = 30


def column_widths(room: int, columns: Sequence[str], rows, keep: set, wide: set = frozenset()) -> list[int] | None:
    """Widths that fit ``room`` characters (borders and padding excluded) with every ``keep``
    column at its full width and the others at least MIN_COLUMN wide; None when none exist.

    Columns give up width widest first: down to their longest word (``wide`` ones: WIDE_COLUMN)
    first, then down to MIN_COLUMN, folding words.
    """
    natural, floors = [], []
    for i, col in enumerate(columns):
        texts = [row[i].plain for row in rows]
        longest_word = max([cell_len(w) for t in [*texts, col] for w in t.split()] + [1])
        header = longest_word if col in keep else cell_len(col)  # a verdict column's header may wrap
        width = max([cell_len(line) for t in texts for line in t.splitlines() or [""]] + [header, 1])
        natural.append(width)
        floors.append(min(width, WIDE_COLUMN if col in wide else longest_word))
    widths = list(natural)
    for floor in (floors, [MIN_COLUMN] * len(columns)):
        while sum(widths) > room:
            free = [j for j, col in enumerate(columns) if col not in keep and widths[j] > floor[j]]
            if not free:
                break
            widths[max(free, key=lambda j: widths[j])] -= 1
    return widths if sum(widths) <= room else None

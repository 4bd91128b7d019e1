"""Rich tables that read right where they go: box lines on a terminal, plain ASCII in a pipe or a log."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

# box.SIMPLE_HEAD (a rule under the header only) drawn with '-'
ASCII_SIMPLE_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
ASCII_HEADERS = {"·": "*", "÷": "/", "×": "x", "→": "->"}


def for_console(table: Table, console: Console) -> Table:
    """`table` itself, drawn in ASCII (box and headers) when `console` is not a terminal."""
    if not console.is_terminal:
        table.box = ASCII_SIMPLE_HEAD if table.box in (box.SIMPLE_HEAD, None) else box.ASCII
        for column in table.columns:
            if isinstance(column.header, str):
                for fancy, plain in ASCII_HEADERS.items():
                    column.header = column.header.replace(fancy, plain)
    return table

"""`workbench compare`: one table of every run's final step and an accuracy-against-cost
scatter with the Pareto frontier drawn. A rich table on a terminal; plain ASCII (table and
plot) when piped."""

from __future__ import annotations

import sys
from pathlib import Path

import plotext as plt

from core.atomic import atomic_path
from core.compare import COSTS, RunRow, compare, csv_text, markdown, table

BOX = str.maketrans("┌┐└┘├┤┬┴┼─│", "+++++++++-|")
UNITS = {"flops": ("MFLOPs", 1e-6), "latency": ("latency ms (CPU, batch 1)", 1.0)}


def plain_table(headers: list[str], cells: list[list[str]]) -> str:
    """Columns padded with spaces, text left and numbers right, a dashed rule under the header."""
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    left = {1, 2, 3}

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)]).rstrip() + "\n"


def draw(plot, rows: list[RunRow], by: str) -> bool:
    """Draw accuracy (%) against FLOPs or latency on `plot` (the plotext module, or a
    textual-plotext widget's `plt`): each run labelled with its row number (`N*` on the
    frontier, also drawn as a line). False when no run has both values."""
    key, (label, scale) = COSTS[by], UNITS[by]
    points = [(i, getattr(r, key) * scale, 100 * r.accuracy, r.frontier) for i, r in enumerate(rows, 1)
              if getattr(r, key) is not None and r.accuracy is not None]
    if not points:
        return False
    front = sorted((x, y) for _, x, y, on in points if on)
    if len(front) > 1:
        plot.plot([x for x, _ in front], [y for _, y in front], marker=".", label="Pareto frontier")
    for i, x, y, on in points:
        plot.text(f"{i}*" if on else str(i), x, y)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.05 or max(xs) * 0.05 or 1, (max(ys) - min(ys)) * 0.1 or 0.5
    plot.xlim(min(xs) - pad_x, max(xs) + pad_x)
    plot.ylim(min(ys) - pad_y, max(ys) + pad_y)
    plot.xlabel(label)
    plot.ylabel("accuracy %")
    return True


def scatter(rows: list[RunRow], by: str, width: int, color: bool) -> str | None:
    """The scatter as text (`color`: for a terminal; else plain ASCII), or None without points."""
    plt.clear_figure()
    plt.plotsize(width, 18)
    plt.theme("pro" if color else "clear")
    if not draw(plt, rows, by):
        return None
    text = plt.build()
    return text if color else plt.uncolorize(text).translate(BOX)


def _measured(headers: list[str], cells: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Without the columns no run has a value in (latency, when replayed with --no-latency)."""
    keep = [i for i in range(len(headers)) if i < 4 or any(row[i] != "-" for row in cells)]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in cells]


def run_compare(paths: list[Path], by: str, sort: str | None, csv_file: Path | None, md_file: Path | None,
                plot: bool = True) -> None:
    rows = compare(paths, by, sort)
    tty = sys.stdout.isatty()
    headers, cells = _measured(*table(rows, compact=tty))
    if tty:
        from rich import box
        from rich.console import Console
        from rich.table import Table

        console = Console()
        grid = Table(title=f"final steps; * the frontier of accuracy against {by}", title_justify="left",
                     box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for i, h in enumerate(headers):
            grid.add_column(h, justify="left" if i in (1, 2, 3) else "right")
        for row, cell in zip(rows, cells):
            grid.add_row(*cell, style="bold" if row.frontier else None)
        console.print(grid)
        width = console.width
    else:
        sys.stdout.write(plain_table(headers, cells))
        width = 80
    figure = scatter(rows, by, min(width, 100), tty) if plot else None
    if figure is not None:
        print()
        print(figure)
    for path, write in ((csv_file, csv_text), (md_file, lambda r: markdown(r, by))):
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(write(rows))
            print(f"wrote {path}")

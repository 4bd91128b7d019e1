"""`workbench inspect`: compute the overview with core and print it as rich tables."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core.overview import Target, gather, open_target, overview_json
from workbench.format import count, num, percent, shape

COLUMNS = ("mean", "std", "skew", "kurt", "k3", "k4", "k34")


def run_inspect(target: Target, json_out: Path | None, latency: bool) -> None:
    out, err = Console(), Console(stderr=True)
    opened = open_target(target)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("statistics", total=None)
        ov = gather(opened, latency, lambda i, n, what: progress.update(task, completed=i, total=n, description=what))
    stats, costs, accuracy = ov.stats, ov.costs, ov.accuracy
    out.print(layer_table(stats, opened.loaded.source))
    out.print(
        f"params {costs.params:,}   FLOPs {costs.flops:,} ({count(costs.flops)})   "
        f"latency {num(costs.latency.median_ms) + ' ms' if costs.latency else '-'}   accuracy {percent(accuracy)}"
    )
    out.print("T range   " + "   ".join(f"{k} [{num(a)}, {num(b)}]" for k, (a, b) in stats.t_range.items()))
    for note in opened.loaded.notes:
        out.print(f"note: {note}")
    if json_out is not None:
        write_json(json_out, overview_json(ov))
        err.print(f"wrote {json_out}")


def layer_table(stats, title: str) -> Table:
    table = Table(title=title, header_style="bold", pad_edge=False)
    table.add_column("layer", overflow="fold")
    table.add_column("shape")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for col in ("W", "p(W)", "JB", "p(JB)"):
        table.add_column(col, justify="right")
    table.add_column("notes", overflow="fold")
    for layer in stats.layers:
        table.add_row(
            layer.name, shape(layer.shape), *(num(getattr(layer, c)) for c in COLUMNS),
            num(layer.shapiro_w), num(layer.shapiro_p), num(layer.jb), num(layer.jb_p), "; ".join(layer.notes),
        )
    return table


def write_json(path: Path, document: dict) -> None:
    """Atomic write: a temp file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

"""`workbench inspect`: compute the overview with core and print it as rich tables."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core.atomic import write_json
from core.overview import Target, gather, open_target, overview_json
from workbench.format import count, num, percent, shape

# (header, LayerStats attribute); the first group always shows, the rest on wide terminals
COMPACT = (("skew", "skew"), ("kurt", "kurt"), ("k3·k4", "k34"), ("W", "shapiro_w"), ("JB", "jb"), ("p(JB)", "jb_p"))
WIDE = (("p(W)", "shapiro_p"), ("mean", "mean"), ("std", "std"), ("k3", "k3"), ("k4", "k4"))


def run_inspect(target: Target, json_out: Path | None, latency: bool) -> None:
    out, err = Console(), Console(stderr=True)
    opened = open_target(target)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("statistics", total=None)
        ov = gather(opened, latency, lambda i, n, what: progress.update(task, completed=i, total=n, description=what))
    stats, costs, accuracy = ov.stats, ov.costs, ov.accuracy
    out.print(layer_table(stats, opened.loaded.source, out.width))
    for layer in stats.layers:
        for note in layer.notes:
            out.print(f"[yellow]{layer.name}[/]: {note}", highlight=False)
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


def layer_table(stats, title: str, width: int) -> Table:
    """One row per conv layer; mean/std/k3/k4 too when the terminal is wide enough."""
    columns = COMPACT + (WIDE if width >= 130 else ())
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    table.add_column("layer", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for layer in stats.layers:
        table.add_row(layer.name, shape(layer.shape), *(num(getattr(layer, attr), 4 if attr == "shapiro_w" else 3) for _, attr in columns))
    return table

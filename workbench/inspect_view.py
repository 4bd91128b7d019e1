"""`workbench inspect`: compute the overview with core and print it as rich tables."""

from __future__ import annotations

import re
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core.atomic import write_json
from core.overview import Target, gather, open_target, overview_json
from workbench.format import count, jb_p, ms, num, percent, shape
from workbench.tables import for_console

# (header, LayerStats attribute); the first group always shows, the rest on wide terminals
COMPACT = (("skew", "skew"), ("kurt", "kurt"), ("k3·k4", "k34"), ("W", "shapiro_w"), ("JB", "jb"), ("p(JB)", "jb_p"))
WIDE = (("p(W)", "shapiro_p"), ("mean", "mean"), ("std", "std"), ("k3", "k3"), ("k4", "k4"))


def run_inspect(target: Target, json_out: Path | None, latency: bool, measure=None) -> None:
    """`measure`: a core.session.MeasureSection (device, batch sizes) or None for CPU at batch 1."""
    from core.measure import latency_warning, parse_device

    out, err = Console(), Console(stderr=True)
    device = str(parse_device(measure.device)) if measure else "cpu"
    sizes = tuple(measure.batch_sizes) if measure else (1,)
    opened = open_target(target)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("statistics", total=None)
        ov = gather(opened, latency, lambda i, n, what: progress.update(task, completed=i, total=n, description=what),
                    device, sizes)
    stats, costs, accuracy = ov.stats, ov.costs, ov.accuracy
    out.print(for_console(layer_table(stats, opened.loaded.source, out.width), out))
    for line in note_lines(stats.layers):
        out.print(line, highlight=False, markup=False)
    out.print(
        f"params {costs.params:,}   FLOPs {costs.flops:,} ({count(costs.flops)})   "
        f"latency {ms(costs.latency.median_ms) if costs.latency else '-'}   accuracy {percent(accuracy)}"
    )
    for lat in ov.costs.latencies[1:]:
        out.print(f"latency at batch {lat.batch} on {lat.device}: {ms(lat.median_ms)} (iqr {ms(lat.iqr_ms)})",
                  highlight=False)
    if warning := latency_warning({"": ov.costs.latencies}):
        out.print(f"warning: {warning}", highlight=False, markup=False)
    out.print("T range   " + "   ".join(f"{k} [{num(a)}, {num(b)}]" for k, (a, b) in stats.t_range.items()))
    for note in opened.loaded.notes:
        out.print(f"note: {note}")
    if json_out is not None:
        write_json(json_out, overview_json(ov))
        err.print(f"wrote {json_out}")


def note_lines(layers) -> list[str]:
    """Each distinct note once (sizes 'N = 9216' merged), with the layers it applies to, counted."""
    by_note: dict[str, list[str]] = {}
    for layer in layers:
        for note in layer.notes:
            by_note.setdefault(re.sub(r"\bN = \d+ ", "N ", note), []).append(layer.name)
    lines = []
    for note, names in by_note.items():
        where = names[0] if len(names) == 1 else \
            f"all {len(names)} layers" if len(names) == len(layers) else \
            f"{len(names)} layers"
        lines.append(f"{where}: {note}")
    return lines


def cell(layer, attr: str) -> str:
    if attr == "jb_p":
        return jb_p(layer.jb, layer.jb_p)
    return num(getattr(layer, attr), 4 if attr == "shapiro_w" else 3)


def layer_table(stats, title: str, width: int) -> Table:
    """One row per conv layer; mean/std/k3/k4 too when the terminal is wide enough."""
    columns = COMPACT + (WIDE if width >= 130 else ())
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    table.add_column("layer", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for layer in stats.layers:
        table.add_row(layer.name, shape(layer.shape), *(cell(layer, attr) for _, attr in columns))
    return table

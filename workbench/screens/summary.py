"""The model summary screen: what was opened, what it costs, how accurate it is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from workbench.format import count, ms, num, percent, plural
from workbench.screens.base import WorkbenchScreen

if TYPE_CHECKING:  # types only: the screens import without torch
    from core.overview import Overview


def summary_text(ov: Overview) -> str:
    loaded, costs, data = ov.opened.loaded, ov.costs, ov.opened.data
    arch = loaded.arch
    lines = [
        f"[b]model[/]      {arch.model}  ({plural(arch.num_classes, 'class')}, {plural(arch.in_channels, 'input channel')})",
        f"[b]weights[/]    {loaded.source}",
        f"[b]input[/]      {'x'.join(map(str, ov.opened.input_shape))}",
        f"[b]params[/]     {costs.params:,} ({count(costs.params)})",
        f"[b]FLOPs[/]      {costs.flops:,} ({count(costs.flops)}) per image",
        "[b]latency[/]    " + (f"{ms(costs.latency.median_ms)} median of {costs.latency.repeats}, batch 1, "
                                f"{costs.latency.device}" if costs.latency else "not measured"),
        "[b]data[/]       " + (f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
                                f"{data.num_classes} classes" if data else "none (pass --data for accuracy)"),
        f"[b]accuracy[/]   {percent(ov.accuracy)} (test)",
        f"[b]conv layers[/] {len(ov.stats.layers)}",
    ]
    if arch.cfg:
        lines.append(f"[b]widths[/]     {arch.cfg}")
    lines.append("[b]T range[/]    " + "   ".join(f"{k} [{num(a)}, {num(b)}]" for k, (a, b) in ov.stats.t_range.items()))
    lines += [f"[yellow]note:[/] {note}" for note in loaded.notes]
    return "\n".join(lines)


def steps_text(steps: list[tuple[str, Overview]]) -> str:
    """The compression so far, one line per applied step, with ratios to the opened model."""
    base = steps[0][1].costs
    lines = ["", f"[b]{'step':<11}{'params':>11}{'FLOPs':>9}{'latency':>11}{'accuracy':>10}{'÷params':>9}{'÷FLOPs':>8}[/]"]
    for name, ov in steps:
        c = ov.costs
        lat = ms(c.latency.median_ms) if c.latency else "-"
        lines.append(f"{name:<11}{c.params:>11,}{count(c.flops):>9}{lat:>11}{percent(ov.accuracy):>10}"
                     f"{base.params / c.params:>9.2f}{base.flops / c.flops:>8.2f}")
    return "\n".join(lines)


class SummaryScreen(WorkbenchScreen):
    def body(self) -> ComposeResult:
        with VerticalScroll(id="summary-scroll"):
            yield Static(id="summary")

    def show_overview(self, overview: Overview) -> None:
        app = self.app
        steps = [(name, ov) for name, ov in (("opened", app.base), ("pruned", app.pruned),
                                             ("decomposed", app.decomposed)) if ov is not None]
        self.query_one("#summary", Static).update(summary_text(overview) + (steps_text(steps) if len(steps) > 1 else ""))

"""The model summary screen: what was opened, what it costs, how accurate it is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Static

from core import report
from core.errors import WorkbenchError
from core.session import measure_override
from workbench.format import count, ms, num, percent, plural
from workbench.messages import MeasureChanged
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
    """The compression so far (core.report), one line per applied step, with ratios to the opened model."""
    table = report.steps_table([{"name": name, "params": ov.costs.params, "flops": ov.costs.flops,
                                 "latency_ms": ov.costs.latency.median_ms if ov.costs.latency else None,
                                 "accuracy": ov.accuracy} for name, ov in steps])
    lines = ["", f"[b]{'step':<11}{'params':>11}{'FLOPs':>9}{'latency':>11}{'accuracy':>10}{'÷params':>9}{'÷FLOPs':>8}[/]"]
    for row in table.rows:
        lines.append(f"{row.name:<11}{row.params:>11,}{count(row.flops):>9}{ms(row.latency_ms):>11}"
                     f"{percent(row.accuracy):>10}{report.fixed(row.fewer_params):>9}{report.fixed(row.fewer_flops):>8}")
    return "\n".join(lines)


class SummaryScreen(WorkbenchScreen):
    AUTO_FOCUS = "#summary-scroll"  # the screen keys work at once; tab reaches the fields
    HELP = ("[b]latency on[/]  the device (cpu, cuda, cuda:N) and batch sizes (1 64) latency is measured at:\n"
            "  the session's [measure], used by the per-layer times (t on Prune and Decompose) and a\n"
            "  latency target (at the first batch size); ctrl+s saves it. Empty fields: cpu, batch 1.")

    def body(self) -> ComposeResult:
        with Horizontal(classes="fields"):
            yield Label("latency on")
            yield Input(compact=True, id="device", placeholder="cpu")
            yield Label("batch sizes")
            yield Input(compact=True, id="batch_sizes", placeholder="1")
            yield Static(id="measure-error")
        with VerticalScroll(id="summary-scroll"):
            yield Static(id="summary")

    def on_mount(self) -> None:
        m = self.app.state.measure
        if m is not None:
            self.query_one("#device", Input).value = m.device
            self.query_one("#batch_sizes", Input).value = " ".join(map(str, m.batch_sizes))

    def on_input_changed(self, event: Input.Changed) -> None:
        """Post the [measure] the fields give (empty: the defaults), or say what is wrong with them."""
        device = self.query_one("#device", Input).value.strip() or None
        sizes = ",".join(self.query_one("#batch_sizes", Input).value.replace(",", " ").split()) or None
        try:
            measure = measure_override(None, device=device, batch_sizes=sizes)
        except WorkbenchError as exc:
            self.query_one("#measure-error", Static).update(f"[red]{exc}[/]")
            return
        self.query_one("#measure-error", Static).update("")
        if measure != self.app.state.measure:
            self.post_message(MeasureChanged(measure))

    def show_overview(self, overview: Overview) -> None:
        app = self.app
        steps = [(name, ov) for name, ov in (("opened", app.base), ("pruned", app.pruned),
                                             ("decomposed", app.decomposed)) if ov is not None]
        self.query_one("#summary", Static).update(summary_text(overview) + (steps_text(steps) if len(steps) > 1 else ""))

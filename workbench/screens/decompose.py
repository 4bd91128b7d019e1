"""The decomposition screen: method, rank rule and X, the layer table with ranks editable
in place and layers switched on/off, predicted savings, reconstruction errors filled in by
a background worker, totals, apply and save.

It plans on the pruned model when a pruning was applied (A3), else on the opened one (A2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static

from core.budget import Solved, solve_decompose
from core.decompose.plan import DecomposePlan, Decomposer
from core.errors import WorkbenchError
from core.layer_times import time_decomposed
from core.session import DecomposeSection, LayerRanks
from workbench import target_field
from workbench.format import count, num, shape
from workbench.screens.plan import PlanScreen
from workbench.widgets.layer_edit import LayerEditor

if TYPE_CHECKING:  # types only: the screens import without torch
    from core.overview import Overview


def parse_ranks(text: str) -> LayerRanks | None:
    """'12 10' -> r_out 12, r_in 10 (Tucker-2); '27' -> rank 27 (CP3, SVD); '' -> from X."""
    parts = text.replace(",", " ").split()
    try:
        if not parts:
            return None
        if len(parts) == 2:
            return LayerRanks(r_out=int(parts[0]), r_in=int(parts[1]))
        if len(parts) == 1:
            return LayerRanks(rank=int(parts[0]))
    except (ValueError, ValidationError):
        pass
    raise WorkbenchError(f"'{text}': write 'R_out R_in' (Tucker-2, e.g. 12 10) or one rank (CP3/SVD, e.g. 27), "
                         "whole numbers >= 1")


class DecomposeScreen(PlanScreen):
    BINDINGS = [
        Binding("e", "edit", "Ranks", id="decompose.edit"),
        Binding("space", "toggle", "On/off", id="decompose.toggle"),
        Binding("a", "apply", "Apply", id="decompose.apply"),
        Binding("t", "time_layers", "Time", id="decompose.time"),
    ]
    STEP, TOOL, SECTION, TOTALS, TABLE = "decompose", "decomposer", DecomposeSection, "#dtotals", "#layers-d"
    COLUMNS = (("name", "layer"), ("shape", "shape"), ("ranks", "ranks"), ("params", "params"), ("flops", "FLOPs÷"),
               ("error", "rel err"), ("note", "note"), ("ms", "ms"))
    HELP = ("[b]shape[/]    the layer's weight: out x in x kh x kw\n"
            "[b]ranks[/]    R_out R_in (Tucker-2) or the rank (CP3, SVD)\n"
            "[b]params[/]   parameters before → after\n"
            "[b]FLOPs÷[/]   how many times fewer FLOPs\n"
            "[b]rel err[/]  relative reconstruction error of the weight (… while computed)\n"
            "[b]note[/]     custom ranks, off, or why the layer is skipped\n"
            "[b]ms[/]       the layer timed alone on its real input, before→after (t; skip slower times them too)\n"
            "[b]skip slower[/] leave whole every layer whose decomposed form is not faster ([decompose] skip_slower)\n"
            + target_field.HELP + "\n"
            "The table dims while the settings are in error; a is refused until they are fixed.")

    def body(self) -> ComposeResult:
        with Horizontal(classes="fields"):
            yield Select([("Tucker-2", "tucker2"), ("CP3", "cp3")], value="tucker2", allow_blank=False,
                         compact=True, id="method")
            yield Select([("ranks from X", "x"), ("VBMF ranks", "vbmf")], value="x", allow_blank=False,
                         compact=True, id="rule")
            yield Label(" X")
            yield Input(compact=True, id="x", placeholder="1.71")
            yield Select([("convs", False), ("convs+linear", True)], value=False, allow_blank=False,
                         compact=True, id="linear")
        with Horizontal(classes="fields"):
            yield Label("target")
            yield Select(target_field.CHOICES, value="none", allow_blank=False, compact=True, id="target-metric")
            yield Input(compact=True, id="target-value", placeholder="0.5")
            yield Select([("all layers", False), ("skip slower", True)], value=False, allow_blank=False,
                         compact=True, id="skip_slower")
            yield Static(id="target-solved")
        yield Static(id="dtotals")
        yield DataTable(id="layers-d", cursor_type="row", zebra_stripes=True)
        yield LayerEditor(id="ranks-edit")

    def on_mount(self) -> None:
        self.errors: dict[tuple, float] = {}  # reconstruction errors by (layer, method, ranks)

    def show_overview(self, overview: Overview) -> None:
        if self.source_of(self.app.state) is not self.source:  # a pruning applied: errors of other weights
            self.errors = {}
        super().show_overview(overview)

    def source_of(self, state) -> Overview:
        """The pruned model when a pruning was applied (A3), else the opened one (A2)."""
        return state.pruned or state.base

    def make_tool(self, source: Overview, settings: DecomposeSection) -> Decomposer:
        opened = source.opened
        return Decomposer(opened.model, opened.loaded.arch, opened.input_shape)

    def fill_fields(self, s: DecomposeSection) -> None:
        self.query_one("#method", Select).value = s.method
        self.query_one("#rule", Select).value = s.rank_rule
        self.query_one("#linear", Select).value = s.linear
        self.query_one("#skip_slower", Select).value = s.skip_slower
        self.query_one("#x", Input).value = "" if s.x == DecomposeSection.model_fields["x"].default else str(s.x)

    def settings_from_fields(self) -> DecomposeSection:
        text = self.query_one("#x", Input).value.strip()
        try:
            x = float(text) if text else DecomposeSection.model_fields["x"].default
        except ValueError:
            raise WorkbenchError(f"X: '{text}' is not a number") from None
        data = {**self.settings.model_dump(), "method": self.query_one("#method", Select).value,
                "rank_rule": self.query_one("#rule", Select).value, "linear": self.query_one("#linear", Select).value,
                "skip_slower": self.query_one("#skip_slower", Select).value,
                "x": x}
        if data["method"] != self.settings.method and data["ranks"]:
            dropped = ", ".join(data["ranks"])
            data["ranks"] = {}  # Tucker-2 ranks do not carry over to CP3 and back
            self.notify(f"custom ranks dropped (they do not carry over to {data['method']}): {dropped}",
                        severity="warning", timeout=8)
        return self.validated(data)

    def solve(self, settings: DecomposeSection) -> tuple[DecomposeSection, Solved]:
        """x solved for the target, as a fraction of the model as opened (as replay does)."""
        base = self.app.state.base
        return solve_decompose(self.decomposer, settings, self.budget, (base.costs.params, base.costs.flops),
                               base.opened.model)

    def time_plan(self, plan: DecomposePlan) -> None:
        time_decomposed(self.decomposer, plan.layers)

    def show_plan(self, plan: DecomposePlan) -> None:
        super().show_plan(plan)
        self.fill_errors(plan)

    def summary(self, plan: DecomposePlan) -> str:
        done = sum(x.skipped is None for x in plan.layers)
        on = "A3: the pruned model" if self.app.state.pruned else "A2: the opened model"
        return f"{done} layers decomposed, {len(plan.layers) - done} skipped; on {on}"

    def rows_of(self, plan: DecomposePlan) -> list[tuple[str, tuple[str, ...]]]:
        """Every layer the method can decompose: the planned ones, and the others marked off."""
        planned = {layer.name: layer for layer in plan.layers}
        rows = []
        for name, site in self.decomposer.sites.items():
            layer = planned.get(name)
            if layer is None:
                if site.kind == "conv" or plan.settings.linear:
                    rows.append((name, (name, shape(site.module.weight.shape), "-", "-", "-", "-", "off", "")))
                continue
            error = self.errors.get(self._key(layer))
            rows.append((name, (name, shape(layer.shape), " ".join(map(str, layer.ranks)) if layer.ranks else "-",
                                f"{count(layer.params[0])}→{count(layer.params[1])}",
                                f"{layer.flops[0] / layer.flops[1]:.2f}" if layer.flops[1] else "-",
                                num(error, 3) if error is not None else ("…" if layer.skipped is None else "-"),
                                layer.skipped or ("custom" if name in plan.settings.ranks else ""),
                                target_field.time_cell(layer.time_ms))))
        return rows

    @staticmethod
    def _key(layer) -> tuple:
        return (layer.name, layer.method, tuple(layer.ranks))

    @work(thread=True, exclusive=True, group="derrors", exit_on_error=False)
    def fill_errors(self, plan: DecomposePlan) -> None:
        """Reconstruction error of each decomposed layer, one at a time, off the UI thread."""
        for layer in plan.layers:
            key = self._key(layer)
            if layer.skipped is not None or key in self.errors:
                continue
            self.errors[key] = self.decomposer.layer_error(layer.name, plan.settings)
            self.app.call_from_thread(self._show_error, layer.name, self.errors[key])

    def _show_error(self, name: str, error: float) -> None:
        table = self.query_one(self.TABLE, DataTable)
        if name in table.rows:
            table.update_cell(name, "error", num(error, 3))

    def action_toggle(self) -> None:
        """Switch the highlighted layer in or out of the decomposition."""
        name = self.current()
        if name is None:
            return
        chosen = [x.name for x in self.plan.layers]
        chosen = [n for n in chosen if n != name] if name in chosen else chosen + [name]
        ranks = {k: v for k, v in self.settings.ranks.items() if k in chosen}
        self.choose(self.settings.model_copy(update={"layers": chosen, "exclude": [], "ranks": ranks}))

    def action_edit(self) -> None:
        name = self.current()
        if name is None or name not in {x.name for x in self.plan.layers}:
            return
        given = self.settings.ranks.get(name)
        value = "" if given is None else (str(given.rank) if given.rank else f"{given.r_out} {given.r_in}")
        self.query_one(LayerEditor).open(name, f"{name}: 'R_out R_in' or one rank; empty = from X", value)

    def edited(self, name: str, text: str) -> DecomposeSection:
        """The settings with layer `name`'s ranks set to `text` (from X when empty)."""
        ranks = parse_ranks(text)
        given = {k: v for k, v in self.settings.ranks.items() if k != name}
        if ranks is not None:
            given[name] = ranks
        return self.settings.model_copy(update={"ranks": given})

    def applies_with(self) -> tuple[Decomposer]:
        return (self.decomposer,)

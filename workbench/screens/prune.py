"""The pruning screen: strategy, metric and threshold fields (empty = computed default), the
plan per layer with in-place ratio/keep edits, live totals, apply and save.

All planning runs in a worker on a `core.prune.plan.Planner` built once for the opened
model; the screen only renders the plan and posts the user's `PruneSection` to the app
(SettingsChanged), which holds it."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static

from core.budget import Solved, solve_prune
from core.errors import WorkbenchError
from core.layer_times import time_prune_plan
from core.prune.plan import Planner, PrunePlan
from core.prune.scores import METRICS
from core.prune.strategies import STRATEGIES, p5_plan
from core.session import LayerChoice, PruneSection
from workbench import target_field
from workbench.format import num
from workbench.screens.plan import PlanScreen
from workbench.widgets.layer_edit import LayerEditor

if TYPE_CHECKING:  # types only: the screens import without torch
    from core.overview import Overview

FIELDS = {"tmin": float, "tmax": float, "coef": float, "percent": float, "variant": str, "multiple_of": int,
          "stage_bounds": list[int], "stage_ratios": list[float], "skip": list[int]}
ROWS = {"P1": "row-t", "P2": "row-t", "P3": "row-t", "P4": "row-p4", "P5": "row-p5", "manual": "row-manual"}


def parse_field(name: str, kind, text: str):
    """A field's typed text as its settings value: numbers, or lists of them ('18 36' or '18, 36')."""
    item = kind.__args__[0] if hasattr(kind, "__args__") else kind
    try:
        if kind is not item:
            return [item(part) for part in text.replace(",", " ").split()]
        return kind(text)
    except ValueError:
        what = f"{'whole numbers' if item is int else 'numbers'}, e.g. {'18 36' if item is int else '0.1 0.2 0.3'}" \
            if kind is not item else f"a {item.__name__}"
        raise WorkbenchError(f"{name}: '{text}' is not {what}") from None


def parse_edit(text: str) -> LayerChoice | None:
    """'0.4' -> ratio 0.4, '12' -> keep 12, '' -> no override."""
    text = text.strip()
    if not text:
        return None
    try:
        return LayerChoice(ratio=float(text)) if "." in text else LayerChoice(keep=int(text))
    except ValueError:
        raise WorkbenchError(f"'{text}': write a ratio in [0, 1) with a decimal point (0.3) "
                             "or a whole number of filters to keep (12)") from None


class PruneScreen(PlanScreen):
    BINDINGS = [
        Binding("e", "edit", "Edit layer", id="prune.edit"),
        Binding("a", "apply", "Apply", id="prune.apply"),
        Binding("t", "time_layers", "Time", id="prune.time"),
    ]
    STEP, TOOL, SECTION, TOTALS, TABLE = "prune", "planner", PruneSection, "#totals", "#plan"
    COLUMNS = (("name", "layer"), ("id", "id"), ("ch", "ch"), ("T", "T"), ("ratio", "ratio"), ("keep", "keep"),
               ("cut", "cut"), ("by", "by"), ("ms", "ms"))
    HELP = ("[b]id[/]     the layer's number (P5 stage ends and skip use it)\n"
            "[b]ch[/]     its filters (output channels)\n"
            "[b]T[/]      the layer statistic of P1-P3: W (P1), smoothed JB (P2), smoothed k3·k4 (P3)\n"
            "[b]ratio[/]  the fraction of filters pruned (eq. 9 for P1-P3)\n"
            "[b]keep[/]   the filters kept; [b]cut[/] the filters removed\n"
            "[b]by[/]     what decided it: the strategy, an override (e), or skip (P5)\n"
            "[b]ms[/]     the layer's conv timed alone on its real input, before→after (t)\n"
            + target_field.HELP + "\n"
            "Fields left empty take the default shown in grey; the table dims while the fields are in error.")

    def body(self) -> ComposeResult:
        with Horizontal(classes="fields"):
            yield Select([(s, s) for s in (*STRATEGIES, "manual")], value="P1", allow_blank=False,
                         compact=True, id="strategy")
            yield Select([(m, m) for m in METRICS], value="k34", allow_blank=False, compact=True, id="metric")
            yield Label("keep ×")
            yield Input(compact=True, id="multiple_of", placeholder="1")
        # the second line holds the fields of the chosen strategy only
        with Horizontal(classes="fields", id="row-t"):
            yield Label("Tmin")
            yield Input(compact=True, id="tmin")
            yield Label("Tmax")
            yield Input(compact=True, id="tmax")
            yield Label("coef")
            yield Input(compact=True, id="coef")
        with Horizontal(classes="fields", id="row-p4"):
            yield Label("prune % of all filters")
            yield Input(compact=True, id="percent", placeholder="0.32")
        with Horizontal(classes="fields", id="row-p5"):
            yield Label("var")
            yield Input(compact=True, id="variant", placeholder="A/B/C")
            yield Label("ends≤")
            yield Input(compact=True, id="stage_bounds")
            yield Label("ratios")
            yield Input(compact=True, id="stage_ratios")
            yield Label("skip")
            yield Input(compact=True, id="skip", placeholder="none")
        with Horizontal(classes="fields", id="row-manual"):
            yield Label("manual: e sets each layer's ratio or keep")
        with Horizontal(classes="fields", id="row-target"):
            yield Label("target")
            yield Select(target_field.CHOICES, value="none", allow_blank=False, compact=True, id="target-metric")
            yield Input(compact=True, id="target-value", placeholder="0.5")
            yield Static(id="target-solved")
        yield Static(id="totals")
        yield DataTable(id="plan", cursor_type="row", zebra_stripes=True)
        yield LayerEditor(id="edit")

    def on_mount(self) -> None:
        self.show_rows("P1")

    def show_rows(self, strategy: str) -> None:
        """Show the second line of fields that `strategy` uses."""
        for row in set(ROWS.values()):
            self.query_one(f"#{row}").display = row == ROWS.get(strategy)

    @on(Select.Changed, "#strategy")
    def strategy_changed(self, event: Select.Changed) -> None:
        self.show_rows(str(event.value))

    def make_tool(self, source: Overview, s: PruneSection) -> Planner:
        opened = source.opened
        return Planner(opened.model, opened.loaded.arch, opened.input_shape, source.stats, s.coupled, s.ignore,
                       dataset=opened.data.name if opened.data else None)

    def fill_fields(self, s: PruneSection) -> None:
        self._filling = True
        self.query_one("#strategy", Select).value = s.strategy
        self.query_one("#metric", Select).value = s.metric
        for name in FIELDS:
            value = getattr(s, name)
            default = PruneSection.model_fields[name].default
            text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            self.query_one(f"#{name}", Input).value = "" if value is None or value == default else text
        self.show_rows(s.strategy)
        self._filling = False

    def stage_ends(self) -> list[int]:
        """P5's default stage ends: the last layer id before the width changes."""
        groups = sorted(self.planner.groups, key=lambda g: g.layer_id) if self.planner else []
        return [a.layer_id for a, b in pairwise(groups) if a.channels != b.channels]

    def settings_from_fields(self) -> PruneSection:
        """The app's settings with the fields applied; empty fields mean the default."""
        update = {"strategy": self.query_one("#strategy", Select).value,
                  "metric": self.query_one("#metric", Select).value}
        for name, kind in FIELDS.items():
            text = self.query_one(f"#{name}", Input).value.strip()
            update[name] = parse_field(name, kind, text) if text else PruneSection.model_fields[name].default
        ratios, ends = update["stage_ratios"], self.stage_ends()
        if ratios is not None and update["stage_bounds"] is None and len(ratios) == len(ends) + 1:
            update["stage_bounds"] = ends  # one ratio per stage: the stages the placeholder shows
        return self.validated({**self.settings.model_dump(), **update})

    def solves(self) -> bool:
        return self.budget is not None and self.app.state.decompose is None

    def solve(self, settings: PruneSection) -> tuple[PruneSection, Solved]:
        return solve_prune(self.planner, settings, self.budget)

    def time_plan(self, plan: PrunePlan) -> None:
        time_prune_plan(self.planner, plan)

    def out_of_date(self, message: str) -> None:
        super().out_of_date(message)
        self.p5_placeholders()

    def p5_placeholders(self) -> None:
        """P5's fields show what an empty field stands for: the variant's values, else the computed stage ends."""
        if self.planner is None:
            return
        ends = self.stage_ends()
        variant = self.query_one("#variant", Input).value.strip()
        try:
            stages = p5_plan(self.planner.arch.model, variant) if variant else None
        except WorkbenchError:
            stages = None

        def join(xs) -> str:
            return " ".join(map(str, xs))

        self.query_one("#stage_bounds", Input).placeholder = join(stages.bounds) if stages else f"auto {join(ends)}"
        self.query_one("#stage_ratios", Input).placeholder = join(stages.ratios) if stages else \
            f"{len(ends) + 1} ratios"
        self.query_one("#skip", Input).placeholder = join(stages.skip) if stages and stages.skip else "none"

    def show_plan(self, plan: PrunePlan) -> None:
        self.p5_placeholders()
        for name, placeholder in self._defaults(plan).items():
            self.query_one(f"#{name}", Input).placeholder = placeholder
        super().show_plan(plan)

    def summary(self, plan: PrunePlan) -> str:
        t = f"T range [{num(plan.t_range[0])}, {num(plan.t_range[1])}], coef {num(plan.coef)}; " if plan.t_range else ""
        kept = sum(x.keep for x in plan.layers)
        return f"{t}{kept}/{sum(x.channels for x in plan.layers)} filters kept in {len(plan.layers)} layers"

    def rows_of(self, plan: PrunePlan) -> list[tuple[str, tuple[str, ...]]]:
        return [(layer.name, (layer.name, str(layer.layer_id), str(layer.channels), num(layer.statistic),
                              f"{layer.ratio:.2f}", str(layer.keep), str(layer.channels - layer.keep), layer.source,
                              target_field.time_cell(layer.time_ms)))
                for layer in plan.layers]

    def _defaults(self, plan: PrunePlan) -> dict[str, str]:
        """Placeholders show the value an empty field stands for."""
        t = plan.t_range  # the session's values, else the reference row's or the network's range
        out = {}
        if t:
            out["tmin"], out["tmax"] = f"auto {num(t[0])}", f"auto {num(t[1])}"
        if plan.coef is not None:
            out["coef"] = f"auto {num(plan.coef)}" if plan.settings.coef is None else ""
        return out

    def action_edit(self) -> None:
        name = self.current()
        if name is None:
            return
        layer = self.plan.layers[self.rows.index(name)]
        choice = self.settings.layers.get(layer.name)
        value = "" if choice is None else str(choice.ratio if choice.ratio is not None else choice.keep)
        self.query_one(LayerEditor).open(
            layer.name, f"{layer.name}: ratio (0.3) or keep (12) of {layer.channels}; empty = strategy", value)

    def edited(self, name: str, text: str) -> PruneSection:
        """The settings with layer `name`'s choice set to `text` (cleared when empty)."""
        choice = parse_edit(text)
        layers = {k: v for k, v in self.settings.layers.items() if k != name}
        if choice is not None:
            layers[name] = choice
        return self.settings.model_copy(update={"layers": layers})

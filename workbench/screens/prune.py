"""The pruning screen: strategy, metric and threshold fields (empty = computed default), the
plan per layer with in-place ratio/keep edits, live totals, apply and save.

All planning runs in a worker on a `core.prune.plan.Planner` built once for the opened
model; the screen only edits the app's `PruneSection` and renders the plan."""

from __future__ import annotations

from pydantic import ValidationError
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static

from core.errors import WorkbenchError
from core.overview import Overview
from core.prune.plan import Planner, PrunePlan
from core.prune.scores import METRICS
from core.prune.strategies import STRATEGIES
from core.session import LayerChoice, PruneSection
from workbench.format import count, num
from workbench.screens.base import WorkbenchScreen
from workbench.widgets.layer_edit import LayerEditor

FIELDS = {"tmin": float, "tmax": float, "coef": float, "percent": float, "variant": str, "multiple_of": int}
USES = {"tmin": "P1 P2 P3", "tmax": "P1 P2 P3", "coef": "P1 P2 P3", "percent": "P4", "variant": "P5"}


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


class PruneScreen(WorkbenchScreen):
    BINDINGS = [
        Binding("e", "edit", "Edit", id="prune.edit"),
        Binding("a", "apply", "Apply", id="prune.apply"),
        Binding("ctrl+s", "app.save_session", "Save", show=False, id="prune.save"),
    ]

    @property
    def settings(self) -> PruneSection:
        """The app's pruning choices, or the defaults while the user has made none."""
        return self.app.prune_settings or PruneSection()

    def body(self) -> ComposeResult:
        with Horizontal(classes="fields"):
            yield Select([(s, s) for s in (*STRATEGIES, "manual")], value="P1", allow_blank=False,
                         compact=True, id="strategy")
            yield Select([(m, m) for m in METRICS], value="k34", allow_blank=False, compact=True, id="metric")
            yield Label(" %")
            yield Input(compact=True, id="percent", placeholder="0.32")
            yield Label(" var")
            yield Input(compact=True, id="variant", placeholder="A/B/C")
            yield Label(" ×")
            yield Input(compact=True, id="multiple_of", placeholder="1")
        with Horizontal(classes="fields"):
            yield Label("Tmin")
            yield Input(compact=True, id="tmin")
            yield Label(" Tmax")
            yield Input(compact=True, id="tmax")
            yield Label(" coef")
            yield Input(compact=True, id="coef")
        yield Static(id="totals")
        yield DataTable(id="plan", cursor_type="row", zebra_stripes=True)
        yield LayerEditor(id="edit")

    def on_mount(self) -> None:
        table = self.query_one("#plan", DataTable)
        for key, label in (("name", "layer"), ("id", "id"), ("ch", "ch"), ("T", "T"), ("ratio", "ratio"),
                           ("keep", "keep"), ("cut", "cut"), ("by", "by")):
            table.add_column(label, key=key)
        self.planner: Planner | None = None
        self.plan: PrunePlan | None = None
        self._filling = False

    def show_overview(self, overview: Overview) -> None:
        if self.planner is None:
            self.fill_fields(self.settings)
            self.build_planner(self.app.base)

    @work(thread=True, exclusive=True, group="planner")
    def build_planner(self, base: Overview) -> None:
        s = self.settings
        opened = base.opened
        try:
            planner = Planner(opened.model, opened.loaded.arch, opened.input_shape, base.stats, s.coupled, s.ignore)
        except WorkbenchError as exc:
            self.app.call_from_thread(self.query_one("#totals", Static).update, f"[red]{exc}[/]")
            return
        self.app.call_from_thread(self._planner_ready, planner)

    def _planner_ready(self, planner: Planner) -> None:
        self.planner = planner
        self.replan()

    def fill_fields(self, s: PruneSection) -> None:
        self._filling = True
        self.query_one("#strategy", Select).value = s.strategy
        self.query_one("#metric", Select).value = s.metric
        for name in FIELDS:
            value = getattr(s, name)
            default = PruneSection.model_fields[name].default
            self.query_one(f"#{name}", Input).value = "" if value is None or value == default else str(value)
        self._filling = False

    def settings_from_fields(self) -> PruneSection:
        """The app's settings with the fields applied; empty fields mean the default."""
        update = {"strategy": self.query_one("#strategy", Select).value,
                  "metric": self.query_one("#metric", Select).value}
        for name, kind in FIELDS.items():
            text = self.query_one(f"#{name}", Input).value.strip()
            try:
                update[name] = kind(text) if text else PruneSection.model_fields[name].default
            except ValueError:
                raise WorkbenchError(f"{name}: '{text}' is not a {kind.__name__}") from None
        data = {**self.settings.model_dump(), **update}
        try:
            return PruneSection.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"])) or "settings"
            raise WorkbenchError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None

    def on_select_changed(self, event: Select.Changed) -> None:
        self.settings_changed()

    def on_input_changed(self, event: Input.Changed) -> None:
        if not isinstance(event.input, LayerEditor):
            self.settings_changed()

    def settings_changed(self) -> None:
        if self._filling or self.planner is None:
            return
        try:
            settings = self.settings_from_fields()
        except WorkbenchError as exc:
            self.query_one("#totals", Static).update(f"[red]{exc}[/]")
            return
        if settings != self.settings:  # field events also fire when the screen fills them in
            self.app.prune_settings = settings
        self.replan()

    @work(thread=True, exclusive=True, group="plan")
    def replan(self) -> None:
        settings = self.settings
        try:
            plan = self.planner.plan(settings)
        except WorkbenchError as exc:
            self.app.call_from_thread(self.query_one("#totals", Static).update, f"[red]{exc}[/]")
            return
        self.app.call_from_thread(self.show_plan, plan)

    def show_plan(self, plan: PrunePlan) -> None:
        first, self.plan = self.plan is None, plan
        (p0, p1), (f0, f1) = plan.params, plan.flops
        t = f"T range [{num(plan.t_range[0])}, {num(plan.t_range[1])}], coef {num(plan.coef)}; " if plan.t_range else ""
        kept = sum(x.keep for x in plan.layers)
        total = sum(x.channels for x in plan.layers)
        self.query_one("#totals", Static).update(
            f"params {p0:,} → [b]{p1:,}[/] ({p0 / p1:.2f}x)   FLOPs {count(f0)} → [b]{count(f1)}[/] ({f0 / f1:.2f}x)\n"
            f"[dim]{t}{kept}/{total} filters kept in {len(plan.layers)} layers; a apply, e edit[/]")
        for name, placeholder in self._defaults(plan).items():
            self.query_one(f"#{name}", Input).placeholder = placeholder
        table = self.query_one("#plan", DataTable)
        row = table.cursor_row
        table.clear()
        for layer in plan.layers:
            table.add_row(layer.name, str(layer.layer_id), str(layer.channels), num(layer.statistic),
                          f"{layer.ratio:.2f}", str(layer.keep), str(layer.channels - layer.keep), layer.source,
                          key=layer.name)
        if plan.layers:
            table.move_cursor(row=min(row, len(plan.layers) - 1))
        if first:
            table.focus()

    def _defaults(self, plan: PrunePlan) -> dict[str, str]:
        """Placeholders show the value an empty field stands for."""
        t = self.planner.t_defaults(plan.settings.strategy) if self.planner else None
        out = {}
        if t:
            out["tmin"], out["tmax"] = f"auto {num(t[0])}", f"auto {num(t[1])}"
        if plan.coef is not None:
            out["coef"] = f"auto {num(plan.coef)}" if plan.settings.coef is None else ""
        return out

    def action_edit(self) -> None:
        table = self.query_one("#plan", DataTable)
        if self.plan is None or not table.row_count:
            return
        layer = self.plan.layers[table.cursor_row]
        choice = self.settings.layers.get(layer.name)
        value = "" if choice is None else str(choice.ratio if choice.ratio is not None else choice.keep)
        self.query_one(LayerEditor).open(
            layer.name, f"{layer.name}: ratio (0.3) or keep (12) of {layer.channels}; empty = strategy", value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def on_layer_editor_edited(self, event: LayerEditor.Edited) -> None:
        try:
            choice = parse_edit(event.text)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        layers = {k: v for k, v in self.settings.layers.items() if k != event.layer}
        if choice is not None:
            layers[event.layer] = choice
        self.app.prune_settings = self.settings.model_copy(update={"layers": layers})
        self.query_one(LayerEditor).action_close()
        self.replan()

    def action_apply(self) -> None:
        if self.plan is None:
            return
        self.app.prune_settings = self.plan.settings
        self.app.apply_plan(self.plan)

"""The decomposition screen: method, rank rule and X, the layer table with ranks editable
in place and layers switched on/off, predicted savings, reconstruction errors filled in by
a background worker, totals, apply and save.

It plans on the pruned model when a pruning was applied (A3), else on the opened one (A2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError
from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static

from core.budget import solve_decompose
from core.decompose.plan import DecomposePlan, Decomposer
from core.errors import WorkbenchError
from core.layer_times import time_decomposed
from core.session import DecomposeSection, LayerRanks
from workbench import target_field
from workbench.format import count, num, shape
from workbench.messages import SettingsChanged
from workbench.screens.base import PlanScreen
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
    STEP, TOOL = "decompose", "decomposer"
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

    @property
    def settings(self) -> DecomposeSection:
        """The app's decomposition choices, or the defaults while the user has made none."""
        return self.app.state.decompose or DecomposeSection()

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
        table = self.query_one("#layers-d", DataTable)
        table.fixed_columns = 1  # the layer name stays when scrolling right
        for key, label in (("name", "layer"), ("shape", "shape"), ("ranks", "ranks"), ("params", "params"),
                           ("flops", "FLOPs÷"), ("error", "rel err"), ("note", "note"), ("ms", "ms")):
            table.add_column(label, key=key)
        self.decomposer: Decomposer | None = None
        self.source: Overview | None = None
        self.plan: DecomposePlan | None = None
        self.apply_when_planned = False  # a pressed before the plan was ready
        self.error: str | None = None  # why the table is out of date
        self.errors: dict[tuple, float] = {}
        self.budget = self.app.state.budget  # [target] as the fields show it
        self.timed = False                   # t: time each layer of every plan
        self.planned_for: DecomposeSection | None = None  # the settings the plan shown was made from
        self._filling = False

    def show_overview(self, overview: Overview) -> None:
        """(Re)build the decomposer when the model to decompose changed (a pruning applied)."""
        source = self.app.state.pruned or self.app.state.base
        if source is not self.source:
            self.source, self.decomposer, self.errors = source, None, {}
            self.fill_fields(self.settings)
            self.fill_budget(self.app.state.budget)
            self.build(source)

    @work(thread=True, exclusive=True, group="decomposer", exit_on_error=False)
    def build(self, source: Overview) -> None:
        opened = source.opened
        try:
            decomposer = Decomposer(opened.model, opened.loaded.arch, opened.input_shape)
        except WorkbenchError as exc:
            self.app.call_from_thread(self.query_one("#dtotals", Static).update, f"[red]{exc}[/]")
            return
        self.app.call_from_thread(self._ready, decomposer)

    def _ready(self, decomposer: Decomposer) -> None:
        self.decomposer = decomposer
        self.settings_changed()  # the fields may have changed while it was built

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
        try:
            return DecomposeSection.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise WorkbenchError(f"{'.'.join(map(str, err['loc'])) or 'settings'}: "
                                 f"{err['msg'].removeprefix('Value error, ')}") from None

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "target-metric":
            self.budget_changed()
        else:
            self.settings_changed()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "x":
            self.settings_changed()
        elif event.input.id == "target-value":
            self.budget_changed()

    def show_solved(self, asked: DecomposeSection, note: str) -> None:
        self.planned_for = asked
        self.query_one("#target-solved", Static).update(note)

    def settings_changed(self) -> None:
        if self.decomposer is None:
            return
        try:
            settings = self.settings_from_fields()
        except WorkbenchError as exc:
            self.out_of_date(str(exc))
            return
        if settings != self.settings:  # field events also fire when the screen fills them in
            self.post_message(SettingsChanged(decompose=settings))
        self.replan(settings)

    def choose(self, settings: DecomposeSection) -> None:
        """Post `settings` to the app and plan them."""
        self.post_message(SettingsChanged(decompose=settings))
        self.replan(settings)

    @work(thread=True, exclusive=True, group="dplan", exit_on_error=False)
    def replan(self, settings: DecomposeSection) -> None:
        """Plan `settings` (posted to the app already: its state may not have them yet); with a
        target, x solved first (of the model as opened, as replay does)."""
        asked, solved, base = settings, None, self.app.state.base
        self.decomposer.timing = self.timing()
        try:
            if self.budget is not None:
                if note := target_field.solving_text(self.budget, self.decomposer.timing):
                    self.app.call_from_thread(self.query_one("#target-solved", Static).update, note)
                settings, solved = solve_decompose(self.decomposer, settings, self.budget,
                                                   (base.costs.params, base.costs.flops), base.opened.model)
            plan = self.decomposer.plan(settings)
            if self.timed:
                time_decomposed(self.decomposer, plan.layers)
        except WorkbenchError as exc:
            self.app.call_from_thread(self.out_of_date, str(exc))
            return
        self.app.call_from_thread(self.show_solved, asked, target_field.solved_text(solved, self.decomposer.timing))
        self.app.call_from_thread(self.show_plan, plan)
        self.app.call_from_thread(self.fill_errors, plan)

    def out_of_date(self, message: str) -> None:
        """The settings are in error: say why, dim the table, refuse to apply it."""
        self.error, self.apply_when_planned = message, False
        self.query_one("#dtotals", Static).update(
            f"[red]{escape(message)}[/]\n[dim]the table below is out of date: fix the settings to re-plan[/]")
        self.query_one("#layers-d", DataTable).add_class("-stale")

    def show_plan(self, plan: DecomposePlan) -> None:
        first, self.plan, self.error = self.plan is None, plan, None
        self.query_one("#layers-d", DataTable).remove_class("-stale")
        (p0, p1), (f0, f1) = plan.params, plan.flops
        done = [x for x in plan.layers if x.skipped is None]
        on = "A3: the pruned model" if self.app.state.pruned else "A2: the opened model"
        self.query_one("#dtotals", Static).update(
            f"params {p0:,} → [b]{p1:,}[/] ({p0 / p1:.2f}x)   FLOPs {count(f0)} → [b]{count(f1)}[/] ({f0 / f1:.2f}x)\n"
            f"[dim]{len(done)} layers decomposed, {len(plan.layers) - len(done)} skipped; on {on}[/]")
        table = self.query_one("#layers-d", DataTable)
        row = table.cursor_row
        table.clear()
        planned = {layer.name: layer for layer in plan.layers}
        self.rows = [name for name, site in self.decomposer.sites.items()
                     if name in planned or site.kind == "conv" or plan.settings.linear]
        for name in self.rows:
            layer = planned.get(name)
            if layer is None:
                weight = self.decomposer.sites[name].module.weight
                table.add_row(name, shape(weight.shape), "-", "-", "-", "-", "off", "", key=name)
                continue
            error = self.errors.get(self._key(layer))
            table.add_row(name, shape(layer.shape), " ".join(map(str, layer.ranks)) if layer.ranks else "-",
                          f"{count(layer.params[0])}→{count(layer.params[1])}",
                          f"{layer.flops[0] / layer.flops[1]:.2f}" if layer.flops[1] else "-",
                          num(error, 3) if error is not None else ("…" if layer.skipped is None else "-"),
                          layer.skipped or ("custom" if name in plan.settings.ranks else ""),
                          target_field.time_cell(layer.time_ms), key=name)
        if self.rows:
            table.move_cursor(row=min(row, len(self.rows) - 1))
        if first:
            table.focus()
        if self.apply_when_planned and self.planned_for == self.settings:
            self.action_apply()

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
        table = self.query_one("#layers-d", DataTable)
        if name in table.rows:
            table.update_cell(name, "error", num(error, 3))

    def _current(self) -> str | None:
        table = self.query_one("#layers-d", DataTable)
        if self.plan is None or not table.row_count:
            return None
        return self.rows[table.cursor_row]

    def action_toggle(self) -> None:
        """Switch the highlighted layer in or out of the decomposition."""
        name = self._current()
        if name is None:
            return
        chosen = [x.name for x in self.plan.layers]
        chosen = [n for n in chosen if n != name] if name in chosen else chosen + [name]
        ranks = {k: v for k, v in self.settings.ranks.items() if k in chosen}
        self.choose(self.settings.model_copy(update={"layers": chosen, "exclude": [], "ranks": ranks}))

    def action_edit(self) -> None:
        name = self._current()
        if name is None or name not in {x.name for x in self.plan.layers}:
            return
        given = self.settings.ranks.get(name)
        value = "" if given is None else (str(given.rank) if given.rank else f"{given.r_out} {given.r_in}")
        self.query_one(LayerEditor).open(name, f"{name}: 'R_out R_in' or one rank; empty = from X", value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def on_layer_editor_edited(self, event: LayerEditor.Edited) -> None:
        try:
            ranks = parse_ranks(event.text)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        given = {k: v for k, v in self.settings.ranks.items() if k != event.layer}
        if ranks is not None:
            given[event.layer] = ranks
        self.query_one(LayerEditor).action_close()
        self.choose(self.settings.model_copy(update={"ranks": given}))

    def action_apply(self) -> None:
        if not self.ready_to_apply():
            return
        self.post_message(SettingsChanged(decompose=self.planned_for))  # the choices; a target's solution is the plan's
        self.app.apply_plan(self.plan, self.decomposer)

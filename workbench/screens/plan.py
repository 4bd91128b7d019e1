"""What the Prune and Decompose screens share: a tool (planner, decomposer) built once in a
worker for the model the step starts from, settings fields posted to the app (SettingsChanged),
which holds them, a plan computed in a worker (its knob solved first under a [target]), a table
of the plan's layers with a one-line editor for a layer's choice, totals, and apply.

A subclass sets the class attributes below, defines its fields (`body`, `fill_fields`,
`settings_from_fields`), `action_edit` and the hooks `make_tool`, `solve`, `time_plan`, `summary`,
`rows_of` and `edited`, and may redefine `source_of`, `solves` and `applies_with`."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from rich.markup import escape
from textual import work
from textual.widgets import DataTable, Input, Select, Static

from core.errors import WorkbenchError
from workbench import target_field
from workbench.format import count
from workbench.messages import BudgetChanged, SettingsChanged
from workbench.screens.base import WorkbenchScreen
from workbench.widgets.layer_edit import LayerEditor


class PlanScreen(WorkbenchScreen):
    """A screen that plans one compression step."""

    STEP = ""                          # the session section it edits: "prune" or "decompose"
    TOOL = ""                          # the attribute holding its planner once built
    SECTION: type[BaseModel] = BaseModel  # that section's settings class
    TOTALS = TABLE = ""                # ids of its totals line and its plan table
    COLUMNS: tuple[tuple[str, str], ...] = ()  # (key, label) of the table's columns

    @property
    def settings(self):
        """The app's choices for this step, or the defaults while the user has made none."""
        return getattr(self.app.state, self.STEP) or self.SECTION()

    def on_mount(self) -> None:
        table = self.query_one(self.TABLE, DataTable)
        table.fixed_columns = 1  # the layer name stays when scrolling right
        for key, label in self.COLUMNS:
            table.add_column(label, key=key)
        setattr(self, self.TOOL, None)
        self.source = None                   # the opened (or pruned) model the tool was built for
        self.plan = None
        self.rows: list[str] = []            # the table's row keys (layer names), in order
        self.apply_when_planned = False      # a pressed before the plan was ready
        self.error: str | None = None        # why the table is out of date (the fields or the plan failed)
        self._filling = False                # the fields are being filled from the settings
        self.budget = self.app.state.budget  # [target] as the fields show it
        self.timed = False                   # t: time each layer of every plan
        self.planned_for = None              # the settings the plan shown was made from

    # ------------------------------------------------------------------ the tool

    def source_of(self, state):
        """The overview of the model this step starts from (the opened one; overridden)."""
        return state.base

    def show_overview(self, overview) -> None:
        """Build the tool for the model this step starts from, again when that model changed."""
        source = self.source_of(self.app.state)
        if source is not self.source:
            self.source = source
            setattr(self, self.TOOL, None)
            self.fill_fields(self.settings)
            self.fill_budget(self.app.state.budget)
            self.build(source, self.settings)

    @work(thread=True, exclusive=True, group="tool", exit_on_error=False)
    def build(self, source, settings) -> None:
        try:
            tool = self.make_tool(source, settings)
        except WorkbenchError as exc:
            self.app.call_from_thread(self.query_one(self.TOTALS, Static).update, f"[red]{escape(str(exc))}[/]")
            return
        self.app.call_from_thread(self._ready, tool)

    def _ready(self, tool) -> None:
        setattr(self, self.TOOL, tool)
        self.settings_changed()  # the fields may have changed while it was built

    def _planning(self) -> bool:
        return getattr(self, self.TOOL, None) is not None

    # ------------------------------------------------------------------ settings

    def validated(self, data: dict):
        """`data` as this step's settings; the first invalid field is a WorkbenchError naming it."""
        try:
            return self.SECTION.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"])) or "settings"
            raise WorkbenchError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "target-metric":
            self.budget_changed()
        else:
            self.settings_changed()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "target-value":
            self.budget_changed()
        elif not isinstance(event.input, LayerEditor):
            self.settings_changed()

    def settings_changed(self) -> None:
        """The fields changed: post the settings they give and re-plan (or say what is wrong)."""
        if self._filling or not self._planning():
            return
        try:
            settings = self.settings_from_fields()
        except WorkbenchError as exc:
            self.out_of_date(str(exc))
            return
        if settings != self.settings:  # field events also fire when the screen fills them in
            self.post_message(SettingsChanged(**{self.STEP: settings}))
        self.replan(settings)

    def choose(self, settings) -> None:
        """Post `settings` (a choice made in the table) to the app and plan them."""
        self.post_message(SettingsChanged(**{self.STEP: settings}))
        self.replan(settings)

    # ------------------------------------------------------------------ the target

    def budget_changed(self) -> None:
        """The target fields changed: post the [target] they give (with this step when the session
        has none yet: a target needs the step whose knob it solves) and re-plan with it."""
        if self._filling or not self._planning():
            return
        try:
            budget = target_field.budget_from(self.query_one("#target-metric", Select).value,
                                              self.query_one("#target-value", Input).value)
        except WorkbenchError as exc:
            self.out_of_date(str(exc))
            return
        if budget != self.budget:
            self.budget = budget
            self.post_message(BudgetChanged(budget))
            if budget is not None and getattr(self.app.state, self.STEP) is None:
                self.post_message(SettingsChanged(**{self.STEP: self.settings}))
        self.settings_changed()

    def on_screen_resume(self) -> None:
        """The other plan screen may have changed [target]: show it here too."""
        if self._planning() and self.app.state.budget != self.budget:
            self.fill_budget(self.app.state.budget)
            self.settings_changed()

    def fill_budget(self, budget) -> None:
        self._filling, self.budget = True, budget
        metric, text = target_field.metric_of(budget)
        self.query_one("#target-metric", Select).value = metric
        self.query_one("#target-value", Input).value = text
        self._filling = False

    def solves(self) -> bool:
        """Whether this step solves the [target] (the decomposition does when there is one)."""
        return self.budget is not None

    # ------------------------------------------------------------------ planning

    def timing(self) -> tuple[str, int]:
        """The device and first batch size of the Model screen's [measure] (default: cpu, 1)."""
        m = self.app.state.measure
        return (m.device, m.batch_sizes[0]) if m is not None else ("cpu", 1)

    def action_time_layers(self) -> None:
        """t: time each layer of this and every later plan (before and after); again to stop."""
        self.timed = not self.timed
        self.notify(f"timing each layer on {' batch '.join(map(str, self.timing()))}: a few seconds, cached"
                    if self.timed else "per-layer times off")
        self.settings_changed()

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def replan(self, settings) -> None:
        """Plan `settings` (posted to the app already: its state may not have them yet); with a
        target this step solves, its knob solved first."""
        asked, solved, solving, tool = settings, None, self.solves(), getattr(self, self.TOOL)
        tool.timing = self.timing()
        try:
            if solving:
                if note := target_field.solving_text(self.budget, tool.timing):
                    self.app.call_from_thread(self.query_one("#target-solved", Static).update, note)
                settings, solved = self.solve(settings)
            plan = tool.plan(settings)
            if self.timed:
                self.time_plan(plan)
        except WorkbenchError as exc:
            self.app.call_from_thread(self.out_of_date, str(exc))
            return
        note = target_field.solved_text(solved, tool.timing) if solving else \
            "[dim]solves the decomposition (the last step)[/]" if self.budget is not None else ""
        self.app.call_from_thread(self.show_solved, asked, note)
        self.app.call_from_thread(self.show_plan, plan)

    def show_solved(self, asked, note: str) -> None:
        self.planned_for = asked
        self.query_one("#target-solved", Static).update(note)

    def out_of_date(self, message: str) -> None:
        """The fields (or the plan) are in error: say why, dim the table, refuse to apply it; the target
        line, which may say it is solving, is cleared."""
        self.error, self.apply_when_planned = message, False
        self.query_one("#target-solved", Static).update("")
        self.query_one(self.TOTALS, Static).update(
            f"[red]{escape(message)}[/]\n[dim]the table below is out of date: fix the settings to re-plan[/]")
        self.query_one(self.TABLE, DataTable).add_class("-stale")

    def show_plan(self, plan) -> None:
        """The plan's totals and its layers, the cursor kept on the row it was on."""
        first, self.plan, self.error = self.plan is None, plan, None
        (p0, p1), (f0, f1) = plan.params, plan.flops
        self.query_one(self.TOTALS, Static).update(
            f"params {p0:,} → [b]{p1:,}[/] ({p0 / p1:.2f}x)   FLOPs {count(f0)} → [b]{count(f1)}[/] ({f0 / f1:.2f}x)\n"
            f"[dim]{self.summary(plan)}[/]")
        table = self.query_one(self.TABLE, DataTable)
        table.remove_class("-stale")
        row = table.cursor_row
        table.clear()
        rows = self.rows_of(plan)
        self.rows = [key for key, _ in rows]
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if rows:
            table.move_cursor(row=min(row, len(rows) - 1))
        if first:
            table.focus()
        if self.apply_when_planned and self.planned_for == self.settings:
            self.action_apply()

    # ------------------------------------------------------------------ the table's editor, apply

    def current(self) -> str | None:
        """The name of the layer under the table's cursor, once a plan is shown."""
        table = self.query_one(self.TABLE, DataTable)
        return self.rows[table.cursor_row] if self.plan is not None and table.row_count else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def on_layer_editor_edited(self, event: LayerEditor.Edited) -> None:
        try:
            settings = self.edited(event.layer, event.text)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one(LayerEditor).action_close()
        self.choose(settings)

    def ready_to_apply(self) -> bool:
        """Whether `a` may apply the plan now. Refused while the settings are in error; a plan
        still being computed is applied as soon as it is ready."""
        if self.error is not None:
            self.notify(f"not applied: {self.error}", severity="error")
            return False
        if self.plan is None or self.planned_for != self.settings:  # a target solves
            self.apply_when_planned = True
            self.notify("planning: the plan is applied as soon as it is ready")
            return False
        self.apply_when_planned = False
        return True

    def action_apply(self) -> None:
        if self.ready_to_apply():
            self.post_message(SettingsChanged(**{self.STEP: self.planned_for}))  # a target's solution is the plan's
            self.app.apply_plan(self.plan, *self.applies_with())

    def applies_with(self) -> tuple:
        """What `apply_plan` needs beside the plan (a decomposition: the decomposer, which holds the factors)."""
        return ()

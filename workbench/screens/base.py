"""What every workbench screen shares: a header, a footer, a progress line while the
app is still opening the model, and `sync()` to show the app's overview once it exists."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, ProgressBar, Select, Static
from textual.worker import Worker, WorkerState

from core.errors import WorkbenchError
from workbench import target_field
from workbench.messages import BudgetChanged, SettingsChanged


class WorkbenchScreen(Screen):
    """Base screen. Subclasses define `body()` (their widgets) and `show_overview(overview)`,
    maybe `show_stats(stats)` (the statistics, before the costs are in), and `HELP`: what
    their columns mean, shown by the help panel."""

    HELP = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="loading"):
            yield Static("opening…", id="loading-what")
            yield ProgressBar(id="loading-bar", show_eta=False)
        yield from self.body()
        yield Footer(compact=True, show_command_palette=False)

    def on_screen_resume(self) -> None:
        self.sync()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.app.worker_failed(event.worker)

    def sync(self) -> None:
        """Bring the screen up to the app's state (overview ready, statistics ready while the
        rest is measured, failed, or still loading); what is already shown is not redrawn."""
        state = self.app.state
        if state.overview is not None:
            if getattr(self, "_shown", None) is not state.overview:
                self._shown = state.overview
                self.query_one("#loading").display = False
                self.show_overview(state.overview)
            return
        if state.stats is not None and getattr(self, "_shown_stats", None) is not state.stats:
            self._shown_stats = state.stats
            self.show_stats(state.stats)
        if state.error is not None:
            self.query_one("#loading-what", Static).update(f"[b red]cannot open:[/] {state.error}")
            self.query_one("#loading-bar").display = False

    def show_stats(self, stats) -> None:
        """The opened model's statistics, before its costs and accuracy are in: most screens wait."""

    def show_progress(self, done: int, total: int, what: str) -> None:
        self.query_one("#loading").display = done < total
        self.query_one("#loading-what", Static).update(f"computing {what} ({done}/{total})")
        self.query_one("#loading-bar", ProgressBar).update(total=total, progress=done)

    def ready_to_apply(self) -> bool:
        """For the plan screens (Prune, Decompose, with `error`, `plan`, `settings` and
        `apply_when_planned`): whether `a` may apply the plan now. Refused while the settings
        are in error; a plan still being computed is applied as soon as it is ready."""
        if self.error is not None:
            self.notify(f"not applied: {self.error}", severity="error")
            return False
        if self.plan is None or getattr(self, "planned_for", self.plan.settings) != self.settings:  # a target solves
            self.apply_when_planned = True
            self.notify("planning: the plan is applied as soon as it is ready")
            return False
        self.apply_when_planned = False
        return True


class PlanScreen(WorkbenchScreen):
    """A screen that plans one compression step (Prune, Decompose): its target fields
    (`#target-metric`, `#target-value`) and per-layer timing. Subclasses set `STEP` (the session
    section they edit, "prune" or "decompose") and `TOOL` (the attribute holding their planner once
    built), and define `settings`, `settings_changed()` and `out_of_date(message)`."""

    STEP = ""
    TOOL = ""

    def _planning(self) -> bool:
        return getattr(self, self.TOOL, None) is not None

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

"""The fine-tuning screen: the stages (`[[finetune]]`) edited in a table, start/cancel/resume,
and a followed run: live plots of each loss term and of the validation accuracy, a progress
line with throughput and ETA, and the results of every step (baseline, pruned, decomposed,
fine-tuned).

The run is its own process (workbench/finetune_process.py), so an SSH drop that ends the app
does not end the run. The screen only follows the run directory: new lines of metrics.jsonl
(typed events, folded by workbench/run_progress.py) and status.json, twice a second. The
stages live in the app's state: edits are posted to it (SettingsChanged)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import DataTable, ProgressBar, Static

from core import report
from core.errors import WorkbenchError
from core.finetune.events import Steps, parse
from core.finetune.rundir import read_status
from core.finetune.settings import FinetuneStage
from workbench.finetune_process import FollowedRun
from workbench.format import count, duration, num, percent
from workbench.messages import SettingsChanged
from workbench.run_progress import Change, RunProgress
from workbench.screens.base import WorkbenchScreen
from workbench.screens.stage_edit import COLUMNS, edit_stage, stage_cells
from workbench.widgets.layer_edit import LayerEditor
from workbench.widgets.plots import SeriesPlot

if TYPE_CHECKING:  # types only: the screens import without torch
    from core.overview import Overview

POLL_S = 0.5
STALLED_S = 60  # no event nor heartbeat for this long: say so


def ago(seconds: float) -> str:
    """'12 s' under two minutes, h:mm:ss under two days, else days."""
    if seconds < 120:
        return f"{max(0, int(seconds))} s"
    return duration(seconds) if seconds < 2 * 86400 else f"{int(seconds // 86400)} days"


def step_rows(steps) -> list[tuple] | None:
    """The results table's rows (cells, then the row key) for a `steps` list; None when malformed."""
    try:
        return [(row.name, count(row.params), count(row.flops), percent(row.accuracy), num(row.latency_ms),
                 report.fixed(row.fewer_params), report.fixed(row.fewer_flops), row.name)
                for row in report.steps_table(steps).rows]
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, IndexError):
        return None


def report_rows(run_dir: Path) -> list[tuple] | None:
    """The rows of a run directory's report.json, or None when it is missing or unreadable."""
    try:
        return step_rows(json.loads((Path(run_dir) / "report.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FinetuneScreen(WorkbenchScreen):
    _posted: tuple[FinetuneStage, ...] | None = None  # stages posted to the app, not in its state yet
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start", id="finetune.start"),
        Binding("c", "cancel_run", "Cancel run", id="finetune.cancel"),
        Binding("r", "resume", "Resume", id="finetune.resume"),
        Binding("e", "edit", "Edit", id="finetune.edit"),
        Binding("a,plus", "add_stage", "Add", id="finetune.add"),
        Binding("x,delete", "delete_stage", "Delete", id="finetune.delete"),
    ]

    HELP = ("[b]mode[/]        ce (cross-entropy), mse (logits vs the original), aux (auxiliary losses)\n"
            "[b]milestones[/]  epochs where lr is multiplied by gamma; [b]batch[/] the batch size\n"
            "[b]mse×[/]        weight of the logits MSE (mse, aux); [b]losses[/] aux losses; [b]decay[/] their v\n"
            "Results: [b]ms[/] latency (batch 1, median), [b]÷params ÷FLOPs[/] how many times fewer than the baseline.")

    def body(self) -> ComposeResult:
        yield DataTable(id="stages", cursor_type="cell", zebra_stripes=True)
        yield LayerEditor(id="stage-edit")
        yield Static(id="run-line")
        with Horizontal(id="ft-progress-line"):
            yield ProgressBar(id="ft-bar", show_eta=False, show_percentage=False)
            yield Static(id="ft-progress")
        with Horizontal(id="ft-plots"):
            yield SeriesPlot("loss per step", id="loss-plot")
            yield SeriesPlot("val acc % per epoch", id="acc-plot")
        yield DataTable(id="ft-results", cursor_type="row", show_cursor=False)

    def on_mount(self) -> None:
        self.clock = time.time  # tests freeze it
        table = self.query_one("#stages", DataTable)
        for name, label, _ in COLUMNS:
            table.add_column(label, key=name)
        results = self.query_one("#ft-results", DataTable)
        for key, label in (("name", "step"), ("params", "params"), ("flops", "FLOPs"), ("acc", "accuracy"),
                           ("ms", "ms"), ("dparams", "÷params"), ("dflops", "÷FLOPs")):
            results.add_column(label, key=key)
        self.fill_stages()
        table.focus()
        self._attached: FollowedRun | None = None
        self._reset_view()
        self.set_interval(POLL_S, self.poll)
        self.poll()

    def show_overview(self, overview: Overview) -> None:
        pass  # the screen shows the stages and the run, not the opened model

    def on_resize(self) -> None:
        """Collapse instead of overflowing: drop the accuracy plot when narrow, shrink when short."""
        self.set_class(self.size.width < 70, "-narrow")
        self.set_class(self.size.height < 22, "-short")

    # ------------------------------------------------------------------ stages

    @property
    def stages(self) -> list[FinetuneStage]:
        """The stages shown: the last ones posted to the app, else the app's."""
        return list(self._posted if self._posted is not None else self.app.state.finetune)

    def set_stages(self, stages: list[FinetuneStage], row: int | None = None) -> None:
        """Post the edited stages to the app and show them."""
        self._posted = tuple(stages)
        self.post_message(SettingsChanged(finetune=self._posted))
        self.fill_stages(row)

    def sync(self) -> None:
        super().sync()
        if self._posted is not None and self._posted is self.app.state.finetune:
            self._posted = None  # the app has them: its state is what is shown

    def fill_stages(self, row: int | None = None) -> None:
        table = self.query_one("#stages", DataTable)
        column = table.cursor_column
        row = table.cursor_row if row is None else row
        table.clear()
        for i, stage in enumerate(self.stages):
            table.add_row(*stage_cells(stage), key=str(i), label=str(i + 1))
        if self.stages:
            table.move_cursor(row=max(0, min(row, len(self.stages) - 1)), column=column)

    def action_add_stage(self) -> None:
        """A cross-entropy stage (METHOD.md step 4) after the highlighted one."""
        table = self.query_one("#stages", DataTable)
        at = table.cursor_row + 1 if self.stages else 0
        self.set_stages([*self.stages[:at], FinetuneStage(mode="ce"), *self.stages[at:]], at)

    def action_delete_stage(self) -> None:
        if not self.stages:
            return
        at = self.query_one("#stages", DataTable).cursor_row
        self.set_stages([s for i, s in enumerate(self.stages) if i != at], at)

    def action_edit(self) -> None:
        table = self.query_one("#stages", DataTable)
        if not self.stages:
            return
        row, col = table.cursor_coordinate
        name, label, kind = COLUMNS[col]
        value = getattr(self.stages[row], name)
        text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        hint = {"mode": "ce, mse or aux", "milestones": "epochs, e.g. 80 120; empty = none"}.get(name, kind.__name__)
        self.query_one(LayerEditor).open(f"{row}:{name}", f"stage {row + 1} {label}: {hint}", text)

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        if event.data_table.id == "stages":
            self.action_edit()

    def on_layer_editor_edited(self, event: LayerEditor.Edited) -> None:
        row, name = event.layer.split(":")
        row = int(row)
        try:
            stage = edit_stage(self.stages[row], name, event.text)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one(LayerEditor).action_close()
        self.set_stages([stage if i == row else s for i, s in enumerate(self.stages)])

    # ------------------------------------------------------------------ the run

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        run = self.app.followed
        if action == "start":
            return run is None or not run.alive()
        if action == "cancel_run":
            return run is not None and run.alive()
        if action == "resume":
            return run is not None and not run.alive() and self._state() in ("stopped", "failed", "exited")
        return True

    def action_start(self) -> None:
        if self.app.followed is not None and self.app.followed.alive():
            self.notify("a run is going: c cancels it", severity="warning")
            return
        try:
            self.app.start_run()
        except (WorkbenchError, OSError) as exc:
            self.notify(f"cannot start: {exc}", severity="error")

    def action_cancel_run(self) -> None:
        run = self.app.followed
        pid = run.terminate() if run is not None else None
        if pid is None:
            self.notify("no run is going")
            return
        self.stopping = True
        self.notify(f"stopping the run (pid {pid}): it checkpoints, then exits; r resumes it")
        self.show_state(run)

    def action_resume(self) -> None:
        run = self.app.followed
        if run is None or run.alive():
            return
        try:
            run.resume(self.app.latency)
        except OSError as exc:
            self.notify(f"cannot resume: {exc}", severity="error")
            return
        self.stopping, self.status = False, None
        self.notify(f"resuming {run.dir.name}")
        self.show_state(run)

    def _reset_view(self) -> None:
        self.status: dict | None = None
        self.stopping = False
        self.run_progress = RunProgress()
        self.progress_text = ""
        self._last_progress: tuple | None = None
        self.query_one("#loss-plot", SeriesPlot).clear()
        self.query_one("#acc-plot", SeriesPlot).clear()
        self.query_one("#ft-results", DataTable).clear()
        self.query_one("#ft-bar", ProgressBar).update(total=None, progress=0)
        self.query_one("#ft-progress", Static).update("waiting for the first stage…")
        self.query_one("#ft-progress-line").display = self.app.followed is not None

    def poll(self) -> None:
        """Read what the run wrote since the last poll and show it."""
        try:
            run_line = self.query_one("#run-line", Static)
        except NoMatches:  # a tick while the app closes: the screen's widgets are already gone
            return
        run = self.app.followed
        if run is None:
            run_line.update("[dim]no run yet: s starts one · enter edits a cell · a adds, x deletes a stage[/]")
            return
        if run is not self._attached:
            self._attached = run
            self._reset_view()
        for event in run.follower.poll():
            self.apply(event)
        self.status = read_status(run.dir)
        self.show_state(run)

    def apply(self, record: dict) -> None:
        """Show one line of metrics.jsonl; a line this version cannot read is skipped (a
        malformed `steps` line falls back to report.json)."""
        self.run_progress.saw(record)
        event = parse(record)
        if isinstance(event, Steps) or (event is None and isinstance(record, dict) and record.get("event") == "steps"):
            self._steps(event or record)
        elif event is not None:
            try:
                change = self.run_progress.apply(event)
                if change is not None:
                    self.draw(change)
            except (KeyError, TypeError, ValueError):
                pass  # values a plot cannot take (another version's): the line is skipped, not fatal

    def draw(self, change: Change) -> None:
        """What an event changed: plot points, the progress bar, the progress line."""
        plot = self.query_one("#loss-plot", SeriesPlot)
        for name, x, value in change.losses:
            plot.add(name, x, value)
        if change.accuracy is not None:
            self.query_one("#acc-plot", SeriesPlot).add("val", *change.accuracy)
        if change.bar is not None:
            total, done = change.bar
            self.query_one("#ft-bar", ProgressBar).update(total=total, progress=done)
        if change.line is not None:
            self._progress_line(*change.line)

    def _steps(self, e: dict) -> None:
        rows = step_rows(e.get("steps"))
        if rows is None:  # a malformed line: the results table keeps what report.json says
            run = self.app.followed
            rows = report_rows(run.dir) if run is not None else None
            self.notify("skipped a malformed `steps` line of metrics.jsonl" +
                        ("; the results come from report.json" if rows else ""), severity="warning", timeout=30)
            if rows is None:
                return
        table = self.query_one("#ft-results", DataTable)
        table.clear()
        for *cells, key in rows:
            table.add_row(*cells, key=key)

    def _progress_line(self, epochs, epoch, speed, eta, e: dict | None = None) -> None:
        """Stage, epoch, throughput and ETA (these two only while the run is alive), best accuracy."""
        self._last_progress = (epochs, epoch, speed, eta, e)
        progress = self.run_progress
        stage = e or progress.stage or {}
        n = (progress.stage or {}).get("stages", "?")
        parts = [f"stage {stage.get('stage', 0) + 1}/{n} {stage.get('mode', '')}",
                 f"epoch {epoch}/{epochs if epochs is not None else '?'}"]
        if self._state() not in ("stopping", "stopped", "failed", "exited"):  # no speed for a halted run
            if speed is not None:
                parts.append(f"{speed:,.0f} img/s")
            parts.append(f"ETA {duration(eta)}")
        if progress.best_val is not None:
            parts.append(f"best {percent(progress.best_val)}")
        self.progress_text = "  ".join(parts)
        self.query_one("#ft-progress", Static).update(self.progress_text)

    def _state(self) -> str:
        """running, stopping, done, stopped, failed, exited (died without saying), starting."""
        run, status = self.app.followed, self.status
        if run is None:
            return ""
        if run.alive():
            return "stopping" if self.stopping else "running" if status and status.get("state") == "running" \
                else "starting"
        state = (status or {}).get("state")
        return state if state in ("done", "stopped", "failed") else "exited"

    def show_state(self, run: FollowedRun) -> None:
        state, status = self._state(), self.status or {}
        style = {"running": "green", "starting": "yellow", "stopping": "yellow", "done": "b green",
                 "stopped": "yellow", "failed": "b red", "exited": "b red"}.get(state, "")
        line = f"[b]{run.dir.name}[/] [{style}]{state}[/]"
        beat = max(x for x in (self.run_progress.last_time, status.get("heartbeat"), 0.0)
                   if isinstance(x, (int, float)))
        if beat:
            since = self.clock() - beat
            stalled = state == "running" and since > STALLED_S
            line += f" · {'[b yellow]' if stalled else ''}last update {ago(since)} ago{'[/]' if stalled else ''}"
        if state in ("failed", "exited"):
            code = run.exit_code()
            message = status.get("message") or (f"exit code {code}" if code is not None else "the process is gone")
            line += f" · {message} (see stdout.log); r resumes"
        elif state == "stopped":
            line += " · r resumes"
        self.query_one("#run-line", Static).update(line)
        if getattr(self, "_shown_state", None) != state:
            self._shown_state = state
            self.refresh_bindings()
            if getattr(self, "_last_progress", None):  # img/s and ETA only while it runs
                self._progress_line(*self._last_progress)

"""The fine-tuning screen: the stages (`[[finetune]]`) edited in a table, start/cancel/resume,
and a followed run: live plots of each loss term and of the validation accuracy, a progress
line with throughput and ETA, and the results of every step (baseline, pruned, decomposed,
fine-tuned).

The run is its own process (`workbench replay ... --out RUN_DIR`, in a new session), so an
SSH drop that ends the app does not end the run (ARCHITECTURE.md, "Long jobs"). The screen
only follows the run directory: new lines of metrics.jsonl and status.json, twice a second."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import ValidationError
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, ProgressBar, Static

from core.errors import WorkbenchError
from core.finetune.rundir import METRICS, MetricsFollower, is_alive, read_status
from core.finetune.settings import REFERENCE, FinetuneStage
from workbench.format import count, duration, num, percent
from workbench.screens.base import WorkbenchScreen
from workbench.widgets.layer_edit import LayerEditor
from workbench.widgets.plots import SeriesPlot

if TYPE_CHECKING:  # types only: the screens import without torch
    from core.overview import Overview

# (FinetuneStage field, column header, parser of the typed text)
COLUMNS = [("mode", "mode", str), ("epochs", "epochs", int), ("lr", "lr", float), ("milestones", "milestones", list),
           ("batch_size", "batch", int), ("mse_factor", "mse×", float), ("n_losses", "losses", int),
           ("decay", "decay", float)]
USED_BY = {"mse_factor": ("mse", "aux"), "n_losses": ("aux",), "decay": ("aux",)}
POLL_S = 0.5
STALLED_S = 60  # no event nor heartbeat for this long: say so


def default_stages() -> list[FinetuneStage]:
    """METHOD.md steps 3 and 4: auxiliary losses, then plain cross-entropy."""
    return [FinetuneStage(mode="aux"), FinetuneStage(mode="ce")]


def ago(seconds: float) -> str:
    """'12 s' under two minutes, h:mm:ss under two days, else days."""
    if seconds < 120:
        return f"{max(0, int(seconds))} s"
    return duration(seconds) if seconds < 2 * 86400 else f"{int(seconds // 86400)} days"


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(map(str, err["loc"])) or "stage"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def edit_stage(stage: FinetuneStage, name: str, text: str) -> FinetuneStage:
    """The stage with one field set from typed text, validated as a whole stage. Changing the
    mode moves lr/epochs/milestones still at the old mode's reference values to the new one's."""
    kind = next(k for f, _, k in COLUMNS if f == name)
    text = text.strip()
    try:
        if kind is list:
            value = [int(p) for p in text.replace(",", " ").split()]
        elif kind is str:
            value = text.lower()
        else:
            value = kind(text)
    except ValueError:
        what = "whole numbers" if kind is list else "a whole number" if kind is int else "a number"
        raise WorkbenchError(f"{name}: '{text}' is not {what}") from None
    data = stage.model_dump(exclude_none=True)
    if name == "mode" and value != stage.mode and value in REFERENCE:
        for key, ref in REFERENCE[stage.mode].items():
            if data[key] == ref:
                del data[key]
        if value != "aux":
            data.pop("pivots", None), data.pop("pivot_modules", None)
    data[name] = value
    try:
        return FinetuneStage.model_validate(data)
    except ValidationError as exc:
        raise WorkbenchError(_one_line(exc)) from None


def stage_cells(stage: FinetuneStage) -> list:
    cells = []
    for name, _, _ in COLUMNS:
        value = getattr(stage, name)
        text = (" ".join(map(str, value)) or "-") if isinstance(value, list) else num(value) if isinstance(value, float) \
            else str(value)
        used = stage.mode in USED_BY.get(name, (stage.mode,))
        cells.append(Text(text, style="" if used else "dim"))
    return cells


def step_rows(steps) -> list[tuple] | None:
    """The results table's rows (cells, then the row key) for a `steps` list; None when malformed."""
    try:
        base = steps[0] if steps else {}

        def ratio(step: dict, key: str) -> str:
            return f"{base[key] / step[key]:.2f}" if base.get(key) and step.get(key) else "-"

        return [(str(step["name"]), count(step.get("params")), count(step.get("flops")), percent(step.get("accuracy")),
                 num(step.get("latency_ms")), ratio(step, "params"), ratio(step, "flops"), str(step["name"]))
                for step in steps]
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, IndexError):
        return None


def report_rows(run_dir: Path) -> list[tuple] | None:
    """The rows of a run directory's report.json, or None when it is missing or unreadable."""
    try:
        return step_rows(json.loads((Path(run_dir) / "report.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def replay_command(session_file: Path, run_dir: Path, resume: bool = False, latency: bool = True,
                   trust: bool = False) -> list[str]:
    """The run's command line; latency is measured (the results' ms column) unless the app was
    opened without it; `trust` (the app was opened with code the user allowed) passes --trust-pickle."""
    return [sys.executable, "-m", "workbench", "replay", str(session_file), "--out", str(run_dir),
            *([] if latency else ["--no-latency"]), *(["--resume"] if resume else []),
            *(["--trust-pickle"] if trust else [])]


def replay_command_line(session_file: Path, run_dir: Path, trust: bool = False) -> str:
    """What a user types to resume the run from a shell."""
    return shlex.join(["workbench", "replay", str(Path(session_file).resolve()), "--out", str(Path(run_dir).resolve()),
                       "--resume", *(["--trust-pickle"] if trust else [])])


def launch(session_file: Path, run_dir: Path, resume: bool = False, latency: bool = True,
           trust: bool = False) -> subprocess.Popen:
    """Start `workbench replay` as its own process, in its own session: it outlives the app."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # the run imports the same code as this app, whatever the current folder
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(run_dir / "stdout.log", "ab") as log:
        return subprocess.Popen(replay_command(session_file, run_dir, resume, latency, trust), start_new_session=True,
                                env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@dataclass(eq=False)
class FollowedRun:
    """A run directory the app follows, and the process writing it when the app started it."""

    dir: Path
    process: subprocess.Popen | None = None
    follower: MetricsFollower = field(init=False)

    def __post_init__(self) -> None:
        self.dir = Path(self.dir)
        self.follower = MetricsFollower(self.dir / METRICS)

    @property
    def session_file(self) -> Path:
        """The session the run was started from (beside it), else the run's frozen copy."""
        beside = self.dir.parent / f"{self.dir.name}.toml"
        return beside if beside.is_file() else self.dir / "session.toml"

    def exit_code(self) -> int | None:
        """The exit status of the process this app started (None: running, or not ours)."""
        return self.process.poll() if self.process is not None else None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return is_alive(read_status(self.dir))

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        status = read_status(self.dir)
        return status["pid"] if is_alive(status) else None

    def terminate(self) -> int | None:
        """SIGTERM to the run (it checkpoints and exits with state "stopped"); its pid, if alive."""
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return None
        return pid

    def resume(self, latency: bool = True) -> None:
        self.process = launch(self.session_file, self.dir, resume=True, latency=latency)


class QuitRunScreen(ModalScreen[str]):
    """Asked when quitting while the followed run is alive: leave it, stop it, or cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "choose('leave')", "Leave it running", id="quit.leave"),
        Binding("s", "choose('stop')", "Stop it, quit", id="quit.stop"),
        Binding("c,escape", "choose('cancel')", "Back", id="quit.cancel"),
    ]

    def __init__(self, name: str, folder: str | None = None) -> None:
        super().__init__()
        self.run_name, self.folder = name, folder or name

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            yield Static(f"The run [b]{self.run_name}[/] is still going.\n"
                         "[b]l[/] leave it running: it goes on without the workbench; "
                         f"`workbench open {self.folder}` follows it again\n"
                         "[b]s[/] stop it (it checkpoints; resume later), then quit\n"
                         "[b]c[/] / [b]esc[/] back to the workbench (the run goes on)")
            with Horizontal(id="quit-buttons"):
                yield Button("Leave (l)", id="leave", variant="primary", compact=True)
                yield Button("Stop (s)", id="stop", variant="warning", compact=True)
                yield Button("Back (c)", id="cancel", compact=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class FinetuneScreen(WorkbenchScreen):
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
        return self.app.finetune_settings

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
        self.app.finetune_settings = [*self.stages[:at], FinetuneStage(mode="ce"), *self.stages[at:]]
        self.fill_stages(at)

    def action_delete_stage(self) -> None:
        if not self.stages:
            return
        at = self.query_one("#stages", DataTable).cursor_row
        self.app.finetune_settings = [s for i, s in enumerate(self.stages) if i != at]
        self.fill_stages(at)

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
        self.app.finetune_settings = [stage if i == row else s for i, s in enumerate(self.stages)]
        self.query_one(LayerEditor).action_close()
        self.fill_stages()

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
        self.last_time: float | None = None
        self.stage_event: dict | None = None
        self.best_val = self.speed = self.eta = None
        self.step_offsets: dict[int, int] = {}   # stage -> steps of the stages before it
        self.epoch_offsets: dict[int, int] = {}
        self.max_step = self.max_epoch = 0
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
        run = self.app.followed
        if run is None:
            self.query_one("#run-line", Static).update(
                "[dim]no run yet: s starts one · enter edits a cell · a adds, x deletes a stage[/]")
            return
        if run is not self._attached:
            self._attached = run
            self._reset_view()
        for event in run.follower.poll():
            self.apply(event)
        self.status = read_status(run.dir)
        self.show_state(run)

    def apply(self, event: dict) -> None:
        when = event.get("time")
        if isinstance(when, (int, float)):
            self.last_time = max(self.last_time or 0.0, float(when))
        handler = {"stage": self._stage, "step": self._step, "epoch": self._epoch, "steps": self._steps}.get(
            event.get("event"))
        if handler is not None:
            try:
                handler(event)
            except (KeyError, TypeError, ValueError):
                pass  # a malformed event (another version's) is skipped, not fatal

    def _stage(self, e: dict) -> None:
        i = e["stage"]
        self.step_offsets.setdefault(i, self.max_step)
        self.epoch_offsets.setdefault(i, self.max_epoch)
        self.stage_event, self.best_val = e, None
        self.query_one("#ft-bar", ProgressBar).update(total=e["epochs"] * e["steps_per_epoch"], progress=0)
        self._progress_line(e["epochs"], 0, None, None)

    def _step(self, e: dict) -> None:
        i, x = e["stage"], None
        x = self.step_offsets.get(i, 0) + e["global_step"]
        self.max_step = max(self.max_step, x)
        plot = self.query_one("#loss-plot", SeriesPlot)
        for name, value in (e.get("losses") or {"loss": e.get("loss")}).items():
            plot.add(name, x, value)
        stage = self.stage_event or {}
        epochs = stage.get("epochs") if stage.get("stage") == i else None
        steps = e["steps_per_epoch"]
        bar = self.query_one("#ft-bar", ProgressBar)
        bar.update(total=(epochs or e["epoch"] + 1) * steps, progress=e["epoch"] * steps + e["step"])
        self._progress_line(epochs, e["epoch"] + 1, e.get("images_per_s"), e.get("eta_s"), e)

    def _epoch(self, e: dict) -> None:
        x = self.epoch_offsets.get(e["stage"], 0) + e["epoch"]
        self.max_epoch = max(self.max_epoch, x)
        if e.get("val_acc") is not None:
            self.query_one("#acc-plot", SeriesPlot).add("val", x, 100 * e["val_acc"])
        self.best_val = e.get("best_val")
        stage = self.stage_event or {}
        if stage.get("stage") == e["stage"]:
            steps = stage["steps_per_epoch"]
            self.query_one("#ft-bar", ProgressBar).update(total=e["epochs"] * steps, progress=e["epoch"] * steps)
            self._progress_line(e["epochs"], e["epoch"], self.speed, self.eta)

    def _steps(self, e: dict) -> None:
        rows = step_rows(e.get("steps"))
        if rows is None:  # a malformed line: the results table keeps what report.json says
            run = self.app.followed
            rows = report_rows(run.dir) if run is not None else None
            self.notify("skipped a malformed `steps` line of metrics.jsonl" +
                        ("; the results come from report.json" if rows else ""), severity="warning")
            if rows is None:
                return
        table = self.query_one("#ft-results", DataTable)
        table.clear()
        for *cells, key in rows:
            table.add_row(*cells, key=key)

    def _progress_line(self, epochs, epoch, speed, eta, e: dict | None = None) -> None:
        """Stage, epoch, throughput and ETA (these two only while the run is alive), best accuracy."""
        self._last_progress = (epochs, epoch, speed, eta, e)
        stage = e or self.stage_event or {}
        n = (self.stage_event or {}).get("stages", "?")
        parts = [f"stage {stage.get('stage', 0) + 1}/{n} {stage.get('mode', '')}",
                 f"epoch {epoch}/{epochs if epochs is not None else '?'}"]
        if self._state() not in ("stopping", "stopped", "failed", "exited"):  # no speed for a halted run
            if speed is not None:
                parts.append(f"{speed:,.0f} img/s")
            parts.append(f"ETA {duration(eta)}")
        if self.best_val is not None:
            parts.append(f"best {percent(self.best_val)}")
        self.speed, self.eta = speed, eta
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
        beat = max(x for x in (self.last_time, status.get("heartbeat"), 0.0) if isinstance(x, (int, float)))
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

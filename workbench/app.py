"""The Textual app: opens a model in a background thread, then shows its screens."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import ValidationError
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from core.errors import WorkbenchError
from core.finetune.rundir import read_status
from core.finetune.settings import FinetuneStage
from core.session import (
    DecomposeSection,
    MeasureSection,
    PruneSection,
    Session,
    TargetSection,
    first_error,
    load_session,
    runs_code,
)
from core.session_file import save_session_file, written_by_workbench
from core.target import Target
from workbench import messages
from workbench.finetune_process import FollowedRun, launch, replay_command_line
from workbench.screens.base import WorkbenchScreen
from workbench.screens.dialogs import ConfirmScreen, PathScreen
from workbench.screens.finetune import FinetuneScreen
from workbench.screens.help import HelpScreen
from workbench.screens.quit_run import QuitRunScreen
from workbench.screens.stage_edit import default_stages
from workbench.screens.stats import StatsScreen
from workbench.screens.summary import SummaryScreen
from workbench.state import WorkbenchState

if TYPE_CHECKING:  # the app imports without torch, so its first frame shows at once
    from core.decompose.plan import DecomposePlan, Decomposer
    from core.overview import Opened
    from core.prune.plan import PrunePlan

SCREENS_GROUP = Binding.Group("screens", compact=True)


def _prune_screen() -> Screen:
    from workbench.screens.prune import (
        PruneScreen,  # imports torch: built when first shown
    )

    return PruneScreen()


def _decompose_screen() -> Screen:
    from workbench.screens.decompose import (
        DecomposeScreen,  # imports torch: built when first shown
    )

    return DecomposeScreen()


class Workbench(App):
    """HOS Workbench. Start with a Target (what to open); heavy work runs in a thread worker.

    `state` (workbench/state.py) is its single state: the session's choices and the models they
    produced. Screens change it by posting typed messages (workbench/messages.py), workers post
    their results; only the handlers here replace it, and every change is shown on the screen."""

    TITLE = "HOS Workbench"
    CSS_PATH = "app.tcss"
    SCREENS: ClassVar[dict] = {"stats": StatsScreen, "summary": SummaryScreen, "prune": _prune_screen, "decompose": _decompose_screen,
               "finetune": FinetuneScreen}
    SCREEN_NAMES: ClassVar[dict] = {"stats": "Stats", "prune": "Prune", "decompose": "Decompose",
                                    "finetune": "Tune (fine-tuning)", "summary": "Model"}
    # the screen keys share one footer entry ("wpdfm screens") so every screen's keys fit 80 columns
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "switch_screen('stats')", "Stats", id="screen.stats", group=SCREENS_GROUP),
        Binding("p", "switch_screen('prune')", "Prune", id="screen.prune", group=SCREENS_GROUP),
        Binding("d", "switch_screen('decompose')", "Decompose", id="screen.decompose", group=SCREENS_GROUP),
        Binding("f", "switch_screen('finetune')", "Tune", id="screen.finetune", group=SCREENS_GROUP),
        Binding("m", "switch_screen('summary')", "Model", id="screen.summary", group=SCREENS_GROUP),
        Binding("question_mark,f1", "toggle_help", "Help", id="help"),
        Binding("ctrl+s", "save_session", "Save", id="save"),
        Binding("q", "quit", "Quit", id="quit"),
    ]
    state: reactive[WorkbenchState] = reactive(WorkbenchState, init=False)

    # the state's parts, read-only: they change through messages
    prune_settings = property(lambda self: self.state.prune, doc="The pruning choices (None: the defaults).")
    decompose_settings = property(lambda self: self.state.decompose, doc="The decomposition choices (None: defaults).")
    finetune_settings = property(lambda self: list(self.state.finetune), doc="The fine-tune stages.")
    base = property(lambda self: self.state.base, doc="The model as opened, measured.")
    pruned = property(lambda self: self.state.pruned, doc="After the pruning plan was applied.")
    decomposed = property(lambda self: self.state.decomposed, doc="After the decomposition was applied.")
    overview = property(lambda self: self.state.overview, doc="The latest of these, shown by the screens.")
    error = property(lambda self: self.state.error, doc="Why the model could not be opened.")

    def __init__(self, target: Target, opened: Opened | None = None, latency: bool = True,
                 prune: PruneSection | None = None, session_path: Path | None = None,
                 decompose: DecomposeSection | None = None, finetune: list[FinetuneStage] | None = None,
                 measure: MeasureSection | None = None, budget: TargetSection | None = None) -> None:
        super().__init__()
        self.target, self.opened, self.latency = target, opened, latency
        self.set_reactive(Workbench.state, WorkbenchState(
            prune=prune, decompose=decompose, finetune=tuple(finetune or default_stages()), measure=measure,
            budget=budget))
        self.may_overwrite: set[Path] = set()     # files the user agreed to have rewritten
        self.session_path = session_path or Path("session.toml")
        self.runs_dir = Path("runs")             # where started runs go: runs/<session>-<time>/
        self.followed: FollowedRun | None = None      # the run directory being followed
        self.reopen: Path | None = None          # a session to open once this app has ended

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Notifications are plain text (from screens too, which pass markup=True): error messages
        name keys like [data] literally."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def run(self, *args, **kwargs):
        """Run the app; when it ends on an unexpected error, the shell sees a non-zero status."""
        result = super().run(*args, **kwargs)
        if self.return_code:
            raise SystemExit(self.return_code)
        if self.reopen is not None:  # "Open session…": a fresh workbench on that session
            os.execv(sys.executable, [sys.executable, "-m", "workbench", "open", "--session", str(self.reopen)])
        return result

    def on_mount(self) -> None:
        self.push_screen("stats")
        self.call_after_refresh(self.load)  # the first frame is drawn before torch is imported
        if self.followed is not None:  # follow_run was called before the app ran
            self.follow_run(self.followed.dir, self.followed.process)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load(self) -> None:
        """Open the target and compute its overview, reporting progress to the screens. torch
        is first imported here, in the worker, while the loading screen is already shown."""
        import torch

        from core.overview import gather, open_target
        from core.threads import free_cores

        # the free cores less one for the UI thread: torch's thread pool slows down many times
        # over when another busy thread takes one of its cores
        torch.set_num_threads(max(1, free_cores() - 1))
        try:
            opened = self.opened or open_target(self.target)
            self.post_message(messages.Progress(0, 1, "statistics"))
            # the statistics table shows as soon as the statistics exist; the rest fills in
            overview = gather(opened, self.latency, self._post_progress,
                              stats_ready=lambda stats: self.post_message(messages.StatsReady(stats)))
        except WorkbenchError as exc:
            self.post_message(messages.OpenFailed(str(exc)))
            return
        self.post_message(messages.ModelOpened(overview))

    def _post_progress(self, done: int, total: int, what: str) -> None:
        self.post_message(messages.Progress(done, total, what))

    def watch_state(self, state: WorkbenchState) -> None:
        """Show every change of the state on the current screen."""
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.sync()

    def on_settings_changed(self, message: messages.SettingsChanged) -> None:
        changes = {name: value for name in ("prune", "decompose", "finetune")
                   if (value := getattr(message, name)) is not None}
        self.state = self.state.but(**changes)

    def on_measure_changed(self, message: messages.MeasureChanged) -> None:
        self.state = self.state.but(measure=message.measure)

    def on_budget_changed(self, message: messages.BudgetChanged) -> None:
        self.state = self.state.but(budget=message.budget)

    def on_progress(self, message: messages.Progress) -> None:
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.show_progress(message.done, message.total, message.what)

    def on_stats_ready(self, message: messages.StatsReady) -> None:
        if self.state.base is None:
            self.state = self.state.but(stats=message.stats)

    def on_model_opened(self, message: messages.ModelOpened) -> None:
        self.sub_title = message.overview.opened.loaded.source
        self.state = self.state.but(base=message.overview, overview=message.overview, stats=message.overview.stats)

    def on_open_failed(self, message: messages.OpenFailed) -> None:
        self._failed(message.message)

    def on_plan_applied(self, message: messages.PlanApplied) -> None:
        overview = message.overview
        self.sub_title = overview.opened.loaded.source
        if message.step == "pruned":
            self.state = self.state.but(pruned=overview, decomposed=None, overview=overview)
        else:
            self.state = self.state.but(decomposed=overview, overview=overview)
        self.notify(message.note, severity="information" if message.as_planned else "warning")

    def on_apply_failed(self, message: messages.ApplyFailed) -> None:
        self.notify(message.message, severity="error")

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def apply_plan(self, plan: PrunePlan | DecomposePlan, decomposer: Decomposer | None = None) -> None:
        """Apply a pruning plan (to the opened model) or a decomposition plan (to the pruned
        model if there is one, else the opened one: approaches A3 and A2), measure the
        result and show it on every screen (the result is posted: PlanApplied)."""
        from core.chain import apply
        from core.overview import gather
        from core.prune.plan import PrunePlan

        pruning, state = isinstance(plan, PrunePlan), self.state  # the state is only read here
        start = (state.base if pruning else state.pruned or state.base).opened
        self.post_message(messages.Progress(0, 1, "pruning" if pruning else "decomposing"))
        label = f"pruned {plan.settings.strategy}" if pruning else f"{plan.settings.method} X={plan.settings.x}"
        try:
            opened = apply(start, plan, decomposer, f"{start.loaded.source}, {label}")
        except WorkbenchError as exc:
            self.post_message(messages.ApplyFailed(str(exc)))
            return
        overview = gather(opened, self.latency, self._post_progress)
        ok = overview.costs.params == plan.params[1] and overview.costs.flops == plan.flops[1]
        note = (f"{label}: {overview.costs.params:,} params, {overview.costs.flops:,} FLOPs measured"
                + (" (as planned)" if ok else f" (plan said {plan.params[1]:,} / {plan.flops[1]:,})"))
        self.post_message(messages.PlanApplied("pruned" if pruning else "decomposed", overview, note, ok))

    def session(self, stages: bool = True) -> Session:
        """The session the screens show (model, data, pruning, decomposition and, with `stages`,
        the fine-tune stages); what is missing or invalid is a WorkbenchError naming the fix."""
        if stages and self.finetune_settings and not self.target.data:
            raise WorkbenchError("fine-tuning needs data: reopen with --data DIR (or give [data] spec in the "
                                 "session file); without data, delete the stages (x on Tune)")
        try:
            fields = dict(Session.from_target(self.target, self.prune_settings, self.decompose_settings,
                                              self.finetune_settings if stages else []))
            fields.pop("budget")  # [target] goes by its TOML name
            return Session.model_validate({**fields, "measure": self.state.measure, "target": self.state.budget})
        except ValidationError as exc:
            raise WorkbenchError(f"session: {first_error(exc)}") from None

    def action_save_session(self) -> None:
        """Write the session to `session_path`, editing the file in place (its comments and key
        order kept); a file the workbench did not write is only rewritten once the user agrees."""
        path = self.session_path
        stages = bool(self.target.data)  # stages without data are no valid session: saved without them
        try:
            session = self.session(stages)
        except WorkbenchError as exc:
            self.notify(str(exc), title="not saved", severity="error")
            return
        if path.resolve() not in self.may_overwrite and not written_by_workbench(path):
            def answered(yes: bool | None) -> None:
                if yes:
                    self.may_overwrite.add(path.resolve())
                    self.action_save_session()
                else:
                    self.notify(f"not saved: {path} is unchanged")

            self.push_screen(ConfirmScreen(
                f"[b]{path}[/] was not written by the workbench.\nUpdate it with this session? Its comments, "
                "key order and other keys stay; changed values are replaced."), answered)
            return
        try:
            save_session_file(session, path)
        except WorkbenchError as exc:
            self.notify(str(exc), title="not saved", severity="error")
            return
        skipped = "" if stages or not self.finetune_settings else " (without the fine-tune stages: they need data)"
        self.notify(f"saved {path}{skipped}", severity="information" if not skipped else "warning")

    def start_run(self) -> FollowedRun:
        """Save the session beside a new run directory (runs/<session>-<time>.toml) and start
        `workbench replay` on it as its own process; then follow the directory."""
        stem = f"{self.session_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, n = self.runs_dir / stem, 1
        while run_dir.exists() or run_dir.with_name(f"{run_dir.name}.toml").exists():
            run_dir, n = self.runs_dir / f"{stem}-{n}", n + 1
        session_file = run_dir.with_name(f"{run_dir.name}.toml")
        session = self.session()
        if not session.finetune:
            raise WorkbenchError("no fine-tune stages: add one with a on Tune")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        save_session_file(session, session_file)
        trust = runs_code(self.target.model, self.target.trust_pickle)  # code the user allowed when opening
        return self.follow_run(run_dir, launch(session_file, run_dir, latency=self.latency, trust=trust))

    def follow_run(self, run_dir: Path, process=None) -> FollowedRun:
        """Follow a run directory (started here, or earlier: `workbench open RUN_DIR`) on the
        fine-tune screen."""
        self.followed = FollowedRun(Path(run_dir), process)
        if self.screen_stack:  # else on_mount comes back here
            self.switch_screen("finetune")
            screen = self.get_screen("finetune")
            if screen.is_mounted:
                screen.poll()
        return self.followed

    def farewell(self, stopped: bool = False) -> str:
        """What the terminal shows after quitting with a followed run: its folder and the exact
        commands to follow, reopen or resume it."""
        run = self.followed
        if run is None:
            return ""
        state = "stopped (checkpointed)" if stopped else "still running" if run.alive() else \
            (read_status(run.dir) or {}).get("state", "ended")
        lines = [f"run {state}: {run.dir.resolve()}", f"  reopen:  workbench open {run.dir.resolve()}"]
        if stopped or state in ("stopped", "failed"):
            trust = runs_code(self.target.model, self.target.trust_pickle)
            lines.append(f"  resume:  {replay_command_line(run.session_file, run.dir, trust)}")
        return "\n".join(lines)

    async def action_quit(self) -> None:
        """Quit; while the followed run is alive, ask first: leave it running, or stop it."""
        if isinstance(self.screen, QuitRunScreen):
            return  # already asking
        run = self.followed
        if run is None or not run.alive():
            self.exit(message=self.farewell() or None)
            return

        def chosen(choice: str | None) -> None:
            if choice == "leave":
                self.exit(message=self.farewell())
            elif choice == "stop":
                self.stop_run_and_exit()

        self.push_screen(QuitRunScreen(run.dir.name, str(run.dir.resolve())), chosen)

    @work(exclusive=True, group="quit", exit_on_error=False)
    async def stop_run_and_exit(self, wait_s: float = 10.0) -> None:
        """SIGTERM the run, wait (bounded) until it says it stopped, then exit."""
        run = self.followed
        run.terminate()
        self.notify("stopping the run: waiting for its checkpoint…", timeout=wait_s)
        deadline = time.monotonic() + wait_s
        while run.alive() and time.monotonic() < deadline:
            if (read_status(run.dir) or {}).get("state") not in (None, "running"):
                break
            await asyncio.sleep(0.2)
        self.exit(message=self.farewell(stopped=True))

    def action_toggle_help(self) -> None:
        """? / F1: the keys of this screen and what its columns mean; again (or esc) closes."""
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss()
        else:
            self.push_screen(HelpScreen(self.screen))

    def worker_failed(self, worker: Worker) -> None:
        """A background job raised something unexpected: say so and keep the app up."""
        if worker.group == "load" and self.state.overview is None:
            self._failed(f"{type(worker.error).__name__}: {worker.error}")
            return
        self.notify(f"{worker.name} failed: {type(worker.error).__name__}: {worker.error}", title="error",
                    severity="error", timeout=15)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.worker_failed(event.worker)

    def get_system_commands(self, screen: Screen):
        """The command palette (ctrl+p): Textual's commands and the workbench's own."""
        yield from super().get_system_commands(screen)
        for name, title in self.SCREEN_NAMES.items():
            yield SystemCommand(f"Screen: {title}", f"switch to the {title} screen",
                                lambda name=name: self.switch_screen(name))
        yield SystemCommand("Save session", f"write the session to {self.session_path} (ctrl+s)",
                            self.action_save_session)
        for key, title, help_ in (("prune", "Apply pruning plan", "prune the opened model as planned"),
                                  ("decompose", "Apply decomposition plan", "decompose as planned")):
            yield SystemCommand(title, help_, lambda key=key: self.run_on_screen(key, "apply"))
        yield SystemCommand("Export statistics", "write the statistics as JSON (ctrl+e on Stats)",
                            lambda: self.run_on_screen("stats", "export"))
        run = self.followed
        if run is not None and run.alive():
            yield SystemCommand("Stop run", f"stop {run.dir.name}: it checkpoints, resume later",
                                lambda: self.run_on_screen("finetune", "cancel_run"))
        else:
            yield SystemCommand("Start run", "start fine-tuning with the stages on Tune",
                                lambda: self.run_on_screen("finetune", "start"))
        yield SystemCommand("Open session…", "start again on another session file",
                            lambda: self.push_screen(PathScreen("session file to open"), self.open_session))
        yield SystemCommand("Open run…", "follow a run directory (a replay's --out)",
                            lambda: self.push_screen(PathScreen("run directory to follow"), self.open_run))

    def run_on_screen(self, name: str, action: str) -> None:
        """Switch to screen `name` and run its action `action` once it is shown."""
        self.switch_screen(name)
        self.call_after_refresh(getattr(self.get_screen(name), f"action_{action}"))

    def open_session(self, path: str | None) -> None:
        """Check the session file `path` (from the palette), then, once the user agreed that the
        unsaved choices on screen go, end this app and open that session in a fresh one."""
        if not path:
            return
        file = Path(path).expanduser()
        try:
            if not file.is_file():
                raise WorkbenchError(f"session file {file} does not exist")
            load_session(file).resolved(file.resolve().parent).require_trust(False)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.reopen = file
                self.exit()

        running = " (the run being followed goes on)" if self.followed is not None and self.followed.alive() else ""
        self.push_screen(ConfirmScreen(f"Open [b]{file}[/]?\nChoices not saved with ctrl+s are lost{running}."),
                         answered)

    def open_run(self, path: str | None) -> None:
        """Follow the run directory `path` (from the palette)."""
        if not path:
            return
        run_dir = Path(path).expanduser()
        if not (run_dir / "status.json").is_file() and not (run_dir / "metrics.jsonl").is_file():
            self.notify(f"{run_dir} holds no run (status.json, metrics.jsonl): give a replay's --out folder",
                        severity="error")
            return
        self.follow_run(run_dir)

    def _failed(self, message: str) -> None:
        self.notify(message, title="cannot open", severity="error", timeout=30)
        self.state = self.state.but(error=message)

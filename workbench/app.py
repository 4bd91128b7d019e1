"""The Textual app: opens a model in a background thread, then shows its screens."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import ClassVar

import torch
from textual import work
from textual.app import App
from textual.binding import Binding, BindingType

from core.decompose.plan import DecomposePlan, Decomposer, apply_decomposition
from core.errors import WorkbenchError
from core.finetune.rundir import read_status
from core.finetune.settings import FinetuneStage
from core.models.checkpoint import Loaded
from core.overview import Opened, Overview, Target, gather, open_target
from core.prune.plan import PrunePlan
from core.prune.surgery import apply_pruning
from core.session import DecomposeSection, PruneSection, Session, save_session
from workbench.screens.base import WorkbenchScreen
from workbench.screens.decompose import DecomposeScreen
from workbench.screens.finetune import (
    FinetuneScreen,
    FollowedRun,
    QuitRunScreen,
    launch,
)
from workbench.screens.prune import PruneScreen
from workbench.screens.stats import StatsScreen
from workbench.screens.summary import SummaryScreen


class Workbench(App):
    """HOS Workbench. Start with a Target (what to open); heavy work runs in a thread worker."""

    TITLE = "HOS Workbench"
    CSS_PATH = "app.tcss"
    SCREENS: ClassVar[dict] = {"stats": StatsScreen, "summary": SummaryScreen, "prune": PruneScreen, "decompose": DecomposeScreen,
               "finetune": FinetuneScreen}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "switch_screen('stats')", "Stats", id="screen.stats"),
        Binding("p", "switch_screen('prune')", "Prune", id="screen.prune"),
        Binding("d", "switch_screen('decompose')", "Decomp", id="screen.decompose"),
        Binding("f", "switch_screen('finetune')", "Tune", id="screen.finetune"),
        Binding("m", "switch_screen('summary')", "Model", id="screen.summary"),
        Binding("question_mark,f1", "show_help_panel", "Help", id="help"),
        Binding("ctrl+s", "save_session", "Save", show=False, id="save"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, target: Target, opened: Opened | None = None, latency: bool = True,
                 prune: PruneSection | None = None, session_path: Path | None = None,
                 decompose: DecomposeSection | None = None, finetune: list[FinetuneStage] | None = None) -> None:
        super().__init__()
        self.target, self.opened, self.latency = target, opened, latency
        self.prune_settings = prune          # None until the user makes a pruning choice
        self.decompose_settings = decompose  # likewise for the decomposition
        self.finetune_settings = list(finetune or [])  # the fine-tune screen fills in METHOD.md's on first visit
        self.session_path = session_path or Path("session.toml")
        self.runs_dir = Path("runs")             # where started runs go: runs/<session>-<time>/
        self.followed: FollowedRun | None = None      # the run directory being followed
        self.base: Overview | None = None        # the model as opened
        self.pruned: Overview | None = None      # after the pruning plan was applied
        self.decomposed: Overview | None = None  # after the decomposition was applied
        self.overview: Overview | None = None    # the latest of these, shown by the screens
        self.error: str | None = None

    def on_mount(self) -> None:
        # leave a core to the UI thread: torch's thread pool slows down many times over when
        # another busy thread takes one of its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
        self.push_screen("stats")
        self.load()
        if self.followed is not None:  # follow_run was called before the app ran
            self.follow_run(self.followed.dir, self.followed.process)

    @work(thread=True, exclusive=True, group="load")
    def load(self) -> None:
        """Open the target and compute its overview, reporting progress to the screens."""
        try:
            opened = self.opened or open_target(self.target)
            self.call_from_thread(self._progress, 0, 1, "statistics")
            overview = gather(opened, self.latency,
                              lambda i, n, what: self.call_from_thread(self._progress, i, n, what))
        except WorkbenchError as exc:
            self.call_from_thread(self._failed, str(exc))
            return
        self.call_from_thread(self._loaded, overview)

    def _progress(self, done: int, total: int, what: str) -> None:
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.show_progress(done, total, what)

    def _loaded(self, overview: Overview) -> None:
        self.base = self.base or overview
        self.overview = overview
        self.sub_title = overview.opened.loaded.source
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.sync()

    @work(thread=True, exclusive=True, group="load")
    def apply_plan(self, plan: PrunePlan | DecomposePlan, decomposer: Decomposer | None = None) -> None:
        """Apply a pruning plan (to the opened model) or a decomposition plan (to the pruned
        model if there is one, else the opened one: approaches A3 and A2), measure the
        result and show it on every screen."""
        pruning = isinstance(plan, PrunePlan)
        start = (self.base if pruning else self.pruned or self.base).opened
        self.call_from_thread(self._progress, 0, 1, "pruning" if pruning else "decomposing")
        try:
            if pruning:
                model, arch = apply_pruning(start.model, start.loaded.arch, plan.keep(), start.input_shape)
            else:
                model, arch = apply_decomposition(start.model, start.loaded.arch, plan, decomposer)
        except WorkbenchError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")
            return
        label = f"pruned {plan.settings.strategy}" if pruning else f"{plan.settings.method} X={plan.settings.x}"
        opened = Opened(Loaded(model, arch, f"{start.loaded.source}, {label}", []), start.data, start.input_shape)
        overview = gather(opened, self.latency, lambda i, n, what: self.call_from_thread(self._progress, i, n, what))
        if pruning:
            self.pruned, self.decomposed = overview, None
        else:
            self.decomposed = overview
        ok = overview.costs.params == plan.params[1] and overview.costs.flops == plan.flops[1]
        self.call_from_thread(self._loaded, overview)
        self.call_from_thread(
            self.notify, f"{label}: {overview.costs.params:,} params, {overview.costs.flops:,} FLOPs measured"
            + (" (as planned)" if ok else f" (plan said {plan.params[1]:,} / {plan.flops[1]:,})"),
            severity="information" if ok else "warning")

    def action_save_session(self) -> None:
        """Write the session (model, data, pruning choices) to `session_path`."""
        try:
            save_session(Session.from_target(self.target, self.prune_settings, self.decompose_settings,
                                             self.finetune_settings), self.session_path)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"saved {self.session_path}")

    def start_run(self) -> FollowedRun:
        """Save the session beside a new run directory (runs/<session>-<time>.toml) and start
        `workbench replay` on it as its own process; then follow the directory."""
        stem = f"{self.session_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, n = self.runs_dir / stem, 1
        while run_dir.exists() or run_dir.with_name(f"{run_dir.name}.toml").exists():
            run_dir, n = self.runs_dir / f"{stem}-{n}", n + 1
        session_file = run_dir.with_name(f"{run_dir.name}.toml")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        save_session(Session.from_target(self.target, self.prune_settings, self.decompose_settings,
                                         self.finetune_settings), session_file)
        return self.follow_run(run_dir, launch(session_file, run_dir))

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

    async def action_quit(self) -> None:
        """Quit; while the followed run is alive, ask first: leave it running, or stop it."""
        if isinstance(self.screen, QuitRunScreen):
            return  # already asking
        run = self.followed
        if run is None or not run.alive():
            self.exit()
            return

        def chosen(choice: str | None) -> None:
            if choice == "leave":
                self.exit()
            elif choice == "stop":
                self.stop_run_and_exit()

        self.push_screen(QuitRunScreen(run.dir.name), chosen)

    @work(exclusive=True, group="quit")
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
        self.exit()

    def _failed(self, message: str) -> None:
        self.error = message
        self.notify(message, title="cannot open", severity="error", timeout=30)
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.sync()

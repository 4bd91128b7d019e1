"""The Textual app: opens a model in a background thread, then shows its screens."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from textual import work
from textual.app import App
from textual.binding import Binding

from core.errors import WorkbenchError
from core.models.checkpoint import Loaded
from core.overview import Opened, Overview, Target, gather, open_target
from core.decompose.plan import DecomposePlan, Decomposer, apply_decomposition
from core.prune.plan import PrunePlan
from core.prune.surgery import apply_pruning
from core.session import DecomposeSection, PruneSection, Session, save_session
from workbench.screens.base import WorkbenchScreen
from workbench.screens.decompose import DecomposeScreen
from workbench.screens.prune import PruneScreen
from workbench.screens.stats import StatsScreen
from workbench.screens.summary import SummaryScreen


class Workbench(App):
    """HOS Workbench. Start with a Target (what to open); heavy work runs in a thread worker."""

    TITLE = "HOS Workbench"
    CSS_PATH = "app.tcss"
    SCREENS = {"stats": StatsScreen, "summary": SummaryScreen, "prune": PruneScreen, "decompose": DecomposeScreen}
    BINDINGS = [
        Binding("w", "switch_screen('stats')", "Stats", id="screen.stats"),
        Binding("p", "switch_screen('prune')", "Prune", id="screen.prune"),
        Binding("d", "switch_screen('decompose')", "Decomp", id="screen.decompose"),
        Binding("m", "switch_screen('summary')", "Model", id="screen.summary"),
        Binding("question_mark,f1", "show_help_panel", "Help", id="help"),
        Binding("ctrl+s", "save_session", "Save", show=False, id="save"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, target: Target, opened: Opened | None = None, latency: bool = True,
                 prune: PruneSection | None = None, session_path: Path | None = None,
                 decompose: DecomposeSection | None = None) -> None:
        super().__init__()
        self.target, self.opened, self.latency = target, opened, latency
        self.prune_settings = prune          # None until the user makes a pruning choice
        self.decompose_settings = decompose  # likewise for the decomposition
        self.session_path = session_path or Path("session.toml")
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
            save_session(Session.from_target(self.target, self.prune_settings, self.decompose_settings),
                         self.session_path)
        except WorkbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"saved {self.session_path}")

    def _failed(self, message: str) -> None:
        self.error = message
        self.notify(message, title="cannot open", severity="error", timeout=30)
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.sync()

"""The Textual app: opens a model in a background thread, then shows its screens."""

from __future__ import annotations

import os

import torch
from textual import work
from textual.app import App
from textual.binding import Binding

from core.errors import WorkbenchError
from core.overview import Opened, Overview, Target, gather, open_target
from workbench.screens.base import WorkbenchScreen
from workbench.screens.stats import StatsScreen
from workbench.screens.summary import SummaryScreen


class Workbench(App):
    """HOS Workbench. Start with a Target (what to open); heavy work runs in a thread worker."""

    TITLE = "HOS Workbench"
    CSS_PATH = "app.tcss"
    SCREENS = {"stats": StatsScreen, "summary": SummaryScreen}
    BINDINGS = [
        Binding("w", "switch_screen('stats')", "Weights", id="screen.stats"),
        Binding("m", "switch_screen('summary')", "Model", id="screen.summary"),
        Binding("question_mark,f1", "show_help_panel", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, target: Target, opened: Opened | None = None, latency: bool = True) -> None:
        super().__init__()
        self.target, self.opened, self.latency = target, opened, latency
        self.overview: Overview | None = None
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
        self.overview = overview
        self.sub_title = overview.opened.loaded.source
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.sync()

    def _failed(self, message: str) -> None:
        self.error = message
        self.notify(message, title="cannot open", severity="error", timeout=30)
        if isinstance(self.screen, WorkbenchScreen):
            self.screen.sync()

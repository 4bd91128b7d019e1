"""What every workbench screen shares: a header, a footer, a progress line while the
app is still opening the model, and `sync()` to show the app's overview once it exists."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, Static
from textual.worker import Worker, WorkerState


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

"""The Compare screen (`workbench open RUNS_DIR` on a folder of runs): every run's final step in
one table (select a column header to sort by it), accuracy against FLOPs or latency with the
Pareto frontier beside it, re-read every few seconds so runs still going move as they train."""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual_plotext import PlotextPlot

from core.compare import RunRow, compare, table
from core.errors import WorkbenchError
from workbench.compare_view import draw

REFRESH_S = 5.0
# the sort key of each column of the compact table (None: not sortable)
SORT_OF_COLUMN = (None, "run", None, None, "params", "flops", "latency", "accuracy", "delta", "params_ratio",
                  "flops_ratio", "latency_ratio")


class CompareScatter(PlotextPlot):
    """Accuracy against the chosen cost, each run by its row number, the frontier as a line."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[RunRow] = []
        self.by = "flops"

    def show(self, rows: list[RunRow], by: str) -> None:
        self.rows, self.by = rows, by
        self.refresh()

    def render(self):
        self.plt.clear_data()
        self.plt.title(f"accuracy against {self.by} (* the Pareto frontier)")
        draw(self.plt, self.rows, self.by)
        return super().render()


class CompareScreen(Screen):
    """The comparison of the runs under `paths`."""

    BINDINGS = [Binding("b", "toggle_by", "FLOPs/latency"), Binding("r", "reload", "re-read"),
                Binding("q", "app.quit", "quit")]
    DEFAULT_CSS = """
    CompareScreen #compare-table { height: 1fr; }
    CompareScreen #compare-plot { height: 1fr; min-height: 10; }
    CompareScreen #compare-note { height: auto; color: $text-muted; }
    """

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self.paths, self.by, self.sort = list(paths), "flops", None
        self.rows: list[RunRow] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="compare-note")
            yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
            yield CompareScatter(id="compare-plot")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(REFRESH_S, self.action_reload)

    def action_reload(self) -> None:
        """Read every run again (a run still going has measured more since)."""
        try:
            note = self.query_one("#compare-note", Static)
        except NoMatches:  # a refresh tick while the app closes: the screen's widgets are already gone
            return
        try:
            self.rows = compare(self.paths, self.by, self.sort)
        except WorkbenchError as exc:
            self.rows = []
            note.update(f"error: {exc}")
        else:
            going = sum(r.state == "running" for r in self.rows)
            note.update(f"{len(self.rows)} runs in {', '.join(map(str, self.paths))}"
                        f"{f', {going} still going' if going else ''}; sorted by {self.sort or self.by} "
                        "(select a header to sort); * the frontier")
        self._fill()

    def _fill(self) -> None:
        grid = self.query_one("#compare-table", DataTable)
        headers, cells = table(self.rows, compact=True)
        grid.clear(columns=True)
        grid.add_columns(*headers)
        grid.add_rows(cells)
        self.query_one("#compare-plot", CompareScatter).show(self.rows, self.by)

    def action_toggle_by(self) -> None:
        self.by = "latency" if self.by == "flops" else "flops"
        self.action_reload()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = SORT_OF_COLUMN[event.column_index] if event.column_index < len(SORT_OF_COLUMN) else None
        if key is not None:
            self.sort = key
            self.action_reload()


class CompareApp(App):
    """The Compare screen on its own: what `workbench open` shows for a folder of runs."""

    TITLE = "HOS Workbench: compare runs"

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self.paths = list(paths)

    def on_mount(self) -> None:
        self.push_screen(CompareScreen(self.paths))

"""The statistics screen: a sortable table of conv layers and, for the highlighted layer,
its weight histogram with the fitted normal and the distribution of per-filter k3*k4."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Static

from core.overview import Overview
from workbench.format import num, shape
from workbench.screens.base import WorkbenchScreen
from workbench.widgets.histogram import HistogramView

# (column key, header, LayerStats attribute); the first two sort by text, the rest by value
COLUMNS = [
    ("name", "layer", "name"), ("shape", "shape", "shape"),
    ("skew", "skew", "skew"), ("kurt", "kurt", "kurt"), ("k34", "k3·k4", "k34"),
    ("W", "W", "shapiro_w"), ("JB", "JB", "jb"), ("k3", "k3", "k3"), ("k4", "k4", "k4"),
    ("mean", "mean", "mean"), ("std", "std", "std"), ("pW", "p(W)", "shapiro_p"), ("pJB", "p(JB)", "jb_p"),
]


def sort_value(value):
    """Sort numbers with NaN last; tuples and text as they are."""
    if isinstance(value, float):
        return (value != value, value if value == value else 0.0)
    return (False, value)


class StatsScreen(WorkbenchScreen):
    BINDINGS = [
        Binding("s", "sort", "Sort col", id="stats.sort"),
        Binding("slash", "filter", "Filter", id="stats.filter"),
        Binding("escape", "clear_filter", "Clear", show=False, id="stats.clear"),
        Binding("ctrl+e", "export", "Export", id="stats.export"),
    ]

    def body(self) -> ComposeResult:
        yield Input(placeholder="filter layers by name (enter to apply, esc to clear)", id="filter")
        yield DataTable(id="layers", cursor_type="cell", zebra_stripes=True)
        with Vertical(id="detail"):
            yield Static(id="layer-line")
            with Horizontal(id="plots"):
                yield HistogramView(id="weights-hist")
                yield HistogramView(id="k34-hist")

    def on_mount(self) -> None:
        self.query_one("#filter").display = False
        table = self.query_one("#layers", DataTable)
        for key, header, _ in COLUMNS:
            table.add_column(header, key=key)
        self.sort_key: str | None = None
        self.sort_reverse = False
        self.filter_text = ""

    def show_overview(self, overview: Overview) -> None:
        self.by_name = {layer.name: layer for layer in overview.stats.layers}
        self.fill_table()

    def fill_table(self) -> None:
        table = self.query_one("#layers", DataTable)
        table.clear()
        for layer in self.by_name.values():
            if self.filter_text and self.filter_text not in layer.name:
                continue
            cells = [layer.name, shape(layer.shape)] + [num(getattr(layer, attr)) for _, _, attr in COLUMNS[2:]]
            table.add_row(*cells, key=layer.name)
        if self.sort_key:
            self._sort(table)
        if table.row_count:
            self.show_layer(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        table.focus()

    def _sort(self, table: DataTable) -> None:
        attr = next(a for k, _, a in COLUMNS if k == self.sort_key)
        table.sort("name", key=lambda name: sort_value(getattr(self.by_name[name], attr)), reverse=self.sort_reverse)

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        self.show_layer(event.cell_key.row_key.value)

    def show_layer(self, name: str) -> None:
        layer = self.by_name[name]
        self.query_one("#layer-line", Static).update(
            f"[b]{name}[/] {shape(layer.shape)}  {layer.n_filters} filters × {layer.n_per_filter}  "
            f"W {num(layer.shapiro_w)} (p {num(layer.shapiro_p, 2)})  JB {num(layer.jb)} (p {num(layer.jb_p, 2)})"
            + (f"  [yellow]{'; '.join(layer.notes)}[/]" if layer.notes else "")
        )
        self.query_one("#weights-hist", HistogramView).show(layer.hist, "weights (• normal fit)")
        self.query_one("#k34-hist", HistogramView).show(layer.k34_hist, f"per-filter k3·k4 ({layer.n_filters})")

    def action_sort(self) -> None:
        """Sort by the column under the cursor; again on the same column reverses."""
        table = self.query_one("#layers", DataTable)
        if not table.row_count:
            return
        key = COLUMNS[table.cursor_coordinate.column][0]
        self.sort_reverse = (not self.sort_reverse) if key == self.sort_key else False
        self.sort_key = key
        self._sort(table)
        self.notify(f"sorted by {dict((k, h) for k, h, _ in COLUMNS)[key]}{' (descending)' if self.sort_reverse else ''}",
                    timeout=2)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        event.input.display = bool(self.filter_text)
        self.fill_table()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value, box.display, self.filter_text = "", False, ""
        self.fill_table()

    def action_export(self) -> None:
        """Write the overview (same document as `inspect --json`) next to the working directory."""
        from pathlib import Path

        from core.overview import overview_json
        from core.atomic import write_json

        overview = self.app.overview
        if overview is None:
            return
        path = Path.cwd() / f"workbench-stats-{overview.opened.loaded.arch.model.replace(':', '_')}.json"
        write_json(path, overview_json(overview))
        self.notify(f"wrote {path}")

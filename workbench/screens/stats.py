"""The statistics screen: a sortable table of conv layers and, for the highlighted layer,
its weight histogram with the fitted normal and the distribution of per-filter k3*k4."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Static

from workbench.format import jb_p, num, shape
from workbench.screens.base import WorkbenchScreen
from workbench.widgets.histogram import HistogramView

if TYPE_CHECKING:  # types only: the screens import without torch
    from core.overview import Overview
    from core.stats import NetworkStats

PENDING = "…"  # a normality test not computed yet (the table shows before scipy is loaded)
TESTS = {"W", "pW", "pJB"}  # the columns that wait for them
# (column key, header, LayerStats attribute); the first two sort by text, the rest by value
COLUMNS = [
    ("name", "layer", "name"), ("shape", "shape", "shape"),
    ("skew", "skew", "skew"), ("kurt", "kurt", "kurt"), ("k34", "k3·k4", "k34"),
    ("W", "W", "shapiro_w"), ("JB", "JB", "jb"), ("k3", "k3", "k3"), ("k4", "k4", "k4"),
    ("mean", "mean", "mean"), ("std", "std", "std"), ("pW", "p(W)", "shapiro_p"), ("pJB", "p(JB)", "jb_p"),
]


def column_pages(widths: list[tuple[str, int]], room: int) -> list[list[str]]:
    """Columns (key, width) split into pages that each fit `room` cells, in order; a column
    wider than the room gets a page of its own."""
    pages, page, used = [], [], 0
    for key, width in widths:
        if page and used + width > room:
            pages.append(page)
            page, used = [], 0
        page.append(key)
        used += width
    return pages + [page] if page else pages


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
        Binding("c", "columns", "More cols", id="stats.columns"),
    ]
    HELP = ("[b]skew[/]   skewness of the layer's weights (0 for a normal distribution)\n"
            "[b]kurt[/]   excess kurtosis (0 for a normal)\n"
            "[b]k3·k4[/]  product of the 3rd and 4th k-statistics (P3's statistic; near 0 = normal)\n"
            "[b]W[/]      Shapiro-Wilk statistic (1 = normal; P1's statistic); [b]p(W)[/] its p-value\n"
            "[b]JB[/]     Jarque-Bera statistic (0 = normal; P2's statistic); [b]p(JB)[/] its p-value\n"
            "[b]k3 k4[/]  the unbiased 3rd and 4th k-statistics; [b]mean std[/] of the weights\n"
            "Columns that do not fit the width are on further pages: c shows them (the layer stays).\n"
            "Below: the highlighted layer's weight histogram (• the fitted normal) and its per-filter k3·k4.")

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
        self.page, self.pages = 0, [[k for k, _, _ in COLUMNS[1:]]]
        self.sort_key: str | None = None
        self.sort_reverse = False
        self.filter_text = ""

    def show_overview(self, overview: Overview) -> None:
        self.show_stats(overview.stats)

    def show_stats(self, stats: NetworkStats) -> None:
        """The table as soon as the statistics exist; the normality tests' cells show … until
        they are in (then the same figures as a complete overview)."""
        if stats is getattr(self, "stats_shown", None):
            return  # the overview brought the statistics already shown
        self.stats_shown = stats
        self.by_name = {layer.name: layer for layer in stats.layers}
        self.paginate()
        self.fill_table()

    def cells(self, layer) -> dict[str, str]:
        return {key: layer.name if key == "name" else shape(layer.shape) if key == "shape" else
                PENDING if key in TESTS and not layer.tested else
                jb_p(layer.jb, layer.jb_p) if key == "pJB" else num(getattr(layer, attr)) for key, _, attr in COLUMNS}

    def paginate(self) -> None:
        """Split the columns after the layer's into pages that fit the table's width: no cut digits."""
        cells = [self.cells(layer) for layer in self.by_name.values()]
        widths = [(key, max([len(header)] + [len(c[key]) for c in cells]) + 2) for key, header, _ in COLUMNS]
        room = max(self.query_one("#layers").size.width or self.size.width, 40) - widths[0][1] - 2  # scrollbar
        self.pages = column_pages(widths[1:], room)
        self.page = min(self.page, len(self.pages) - 1)
        self.refresh_bindings()

    def fill_table(self) -> None:
        """(Re)build the table: the layer column (fixed) and the current page of columns."""
        table = self.query_one("#layers", DataTable)
        current = self.current()
        column = table.cursor_column
        table.clear(columns=True)
        self.shown_columns = ["name", *self.pages[self.page]]
        headers = {k: h for k, h, _ in COLUMNS}
        for key in self.shown_columns:
            table.add_column(headers[key], key=key)
        table.fixed_columns = 1
        for layer in self.by_name.values():
            if self.filter_text and self.filter_text not in layer.name:
                continue
            cells = self.cells(layer)
            table.add_row(*(cells[k] for k in self.shown_columns), key=layer.name)
        if self.sort_key:
            self._sort(table)
        if table.row_count:
            row = table.get_row_index(current) if current is not None and current in table.rows else 0
            table.move_cursor(row=row, column=min(column, len(self.shown_columns) - 1))
        self.show_current()
        table.focus()

    def current(self) -> str | None:
        """The layer under the table's cursor."""
        table = self.query_one("#layers", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def show_current(self) -> None:
        name = self.current()
        if name is not None:
            self.show_layer(name)

    def _sort(self, table: DataTable) -> None:
        attr = next(a for k, _, a in COLUMNS if k == self.sort_key)
        table.sort("name", key=lambda name: sort_value(getattr(self.by_name[name], attr)), reverse=self.sort_reverse)

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        self.show_current()  # the row under the cursor now, not the one the (maybe late) event names

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if getattr(self, "by_name", None):
            self.show_current()

    def on_resize(self) -> None:
        if getattr(self, "by_name", None):
            pages = self.pages
            self.paginate()
            if pages != self.pages:
                self.fill_table()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """`c` only shows when some columns do not fit."""
        return len(getattr(self, "pages", ())) > 1 if action == "columns" else True

    def action_columns(self) -> None:
        """Show the next page of columns (the layer column stays)."""
        if getattr(self, "by_name", None) and len(self.pages) > 1:
            self.page = (self.page + 1) % len(self.pages)
            self.fill_table()

    def show_layer(self, name: str) -> None:
        layer = self.by_name[name]
        tests = (f"W {num(layer.shapiro_w)} (p {num(layer.shapiro_p, 2)})  JB {num(layer.jb)} "
                 f"(p {jb_p(layer.jb, layer.jb_p)})") if layer.tested else \
            f"W {PENDING}  JB {num(layer.jb)} (p {PENDING})  [dim]measuring the normality tests…[/]"
        self.query_one("#layer-line", Static).update(
            f"[b]{name}[/] {shape(layer.shape)}  {layer.n_filters} filters × {layer.n_per_filter}  {tests}"
            + (f"  [yellow]{'; '.join(layer.notes)}[/]" if layer.notes else "")
        )
        self.query_one("#weights-hist", HistogramView).show(layer.hist, "weights (• normal fit)")
        self.query_one("#k34-hist", HistogramView).show(layer.k34_hist, f"per-filter k3·k4 ({layer.n_filters})")

    def action_sort(self) -> None:
        """Sort by the column under the cursor; again on the same column reverses."""
        table = self.query_one("#layers", DataTable)
        if not table.row_count:
            return
        key = self.shown_columns[table.cursor_coordinate.column]
        self.sort_reverse = (not self.sort_reverse) if key == self.sort_key else False
        self.sort_key = key
        self._sort(table)
        self.show_current()
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

        from core.atomic import write_json
        from core.overview import overview_json

        overview = self.app.overview
        if overview is None:
            return
        path = Path.cwd() / f"workbench-stats-{overview.opened.loaded.arch.model.replace(':', '_')}.json"
        try:
            write_json(path, overview_json(overview))
        except OSError as exc:
            self.notify(f"not exported: {exc.strerror or exc}", severity="error")
            return
        # on the detail line, not in a toast over the histogram; the name is never broken
        self.query_one("#layer-line", Static).update(f"[green]exported[/] ./{path.name}")

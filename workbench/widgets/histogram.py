"""An ASCII histogram with a fitted normal curve drawn over it."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from workbench.format import num

BLOCKS = " ▁▂▃▄▅▆▇█"


def fit_columns(values: list[float], width: int) -> list[float]:
    """One value per screen column: bins repeated to fill the width, or summed when too many."""
    bins = len(values)
    if width >= bins:
        return [v for v in values for _ in range(width // bins)]
    return [sum(values[c * bins // width:(c + 1) * bins // width]) for c in range(width)]


def render_histogram(counts: list[float], normal: list[float], width: int, height: int) -> list[Text]:
    """Rows (top first) of bars made of eighth-blocks; a red dot marks the normal curve's height."""
    if not counts or width <= 0 or height <= 0:
        return []
    bars = fit_columns(counts, width)
    curve = fit_columns(normal, width) if normal else [None] * len(bars)
    peak = max(max(bars), max((c for c in curve if c is not None), default=0.0)) or 1.0
    cell = peak / height
    rows = []
    for r in range(height):
        lo = (height - 1 - r) * cell
        line = Text()
        for bar, fit in zip(bars, curve):
            fill = min(8, max(0, round((bar - lo) / cell * 8)))
            if fit is not None and lo < fit <= lo + cell and fit >= cell / 2:
                line.append("•", style="bold red" if fill >= 4 else "red")
            else:
                line.append(BLOCKS[fill], style="cyan")
        rows.append(line)
    return rows


class HistogramView(Widget):
    """Shows one core.stats.Histogram with a title line and the range on the bottom line."""

    DEFAULT_CSS = "HistogramView { height: 1fr; }"
    data = reactive(None, layout=False)

    def __init__(self, title: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title

    def show(self, hist, title: str) -> None:
        self.title = title
        self.data = hist

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        text = Text(self.title[:width], style="bold", no_wrap=True, overflow="ellipsis")
        hist = self.data
        if hist is None or not hist.counts or sum(hist.counts) == 0:
            text.append("\n(no finite values)" if hist is not None else "")
            return text
        for row in render_histogram(list(hist.counts), list(hist.normal), width, height - 2):
            text.append("\n")
            text.append_text(row)
        lo, hi = num(hist.edges[0], 3), num(hist.edges[-1], 3)
        text.append("\n" + lo + " " * max(width - len(lo) - len(hi), 1) + hi, style="dim")
        return text
